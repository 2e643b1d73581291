{{/*
Names
*/}}

{{/* Chart name, honouring nameOverride. */}}
{{- define "tailsampler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name from a dict {Values, Release, chartName}, so that it can be computed both from this chart and
from a parent chart that uses the sidecar templates.
*/}}
{{- define "tailsampler.fullnameFrom" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .chartName .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fully qualified app name: release name plus chart name, at most 63 characters. */}}
{{- define "tailsampler.fullname" -}}
{{- include "tailsampler.fullnameFrom" (dict "Values" .Values "Release" .Release "chartName" .Chart.Name) }}
{{- end }}

{{/* Name of the headless Service used for peer discovery (and as the StatefulSet's serviceName). */}}
{{- define "tailsampler.headlessName" -}}
{{- printf "%s-headless" (include "tailsampler.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "tailsampler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "tailsampler.labels" -}}
helm.sh/chart: {{ include "tailsampler.chart" . }}
{{ include "tailsampler.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ ternary "sidecar" .Values.mode (.Values.sidecar.enabled | default false) }}
{{- end }}

{{/* Selector labels. */}}
{{- define "tailsampler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tailsampler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "tailsampler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tailsampler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference from a dict {image, appVersion}: by digest when one is set, else by tag. */}}
{{- define "tailsampler.imageFrom" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- $tag := .image.tag | default .appVersion | toString }}
{{- if not $tag }}
{{- fail "tailsampler: set image.tag (the chart's appVersion is not known in this context)" }}
{{- end }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Files
*/}}

{{/*
Where the ConfigMap is mounted, as a directory. The container's --config points at config.yaml in it, and
config.policies_file (policies.yaml) is resolved relative to it.
*/}}
{{- define "tailsampler.configDir" -}}
/etc/tailsampler
{{- end }}

{{/* config.yaml: .Values.config, plus peer discovery through the headless Service when peers.enabled. */}}
{{- define "tailsampler.configYaml" -}}
{{- $config := deepCopy (.Values.config | default (dict)) }}
{{- if .Values.peers.enabled }}
{{- $port := int (index .Values.ports "otlp-grpc" "containerPort") }}
{{- $host := printf "%s.%s.svc.%s" (include "tailsampler.headlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- $dns := dict "name" $host "port" $port "interval" .Values.peers.interval }}
{{- $peers := get $config "peers" | default (dict) }}
{{- if not (get $peers "dns") }}
{{- $_ := set $peers "dns" $dns }}
{{- end }}
{{- $_ := set $config "peers" $peers }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* policies.yaml: the Collector tail_sampling schema. */}}
{{- define "tailsampler.policiesYaml" -}}
{{- toYaml (dict "policies" (.Values.policies | default (list))) }}
{{- end }}

{{/*
Value of the checksum/config pod annotation. config.yaml changes always roll the pods; policies.yaml
changes only when hotReload is off (otherwise tailsampler reloads the refreshed file in place).
*/}}
{{- define "tailsampler.configChecksum" -}}
{{- $data := include "tailsampler.configYaml" . }}
{{- if not .Values.hotReload }}
{{- $data = printf "%s\n---\n%s" $data (include "tailsampler.policiesYaml" .) }}
{{- end }}
{{- $data | sha256sum }}
{{- end }}

{{/* Fails the render on value combinations the schema cannot express. */}}
{{- define "tailsampler.validateValues" -}}
{{- if not (has .Values.mode (list "daemonset" "deployment" "statefulset")) }}
{{- fail (printf "tailsampler: mode must be daemonset, deployment or statefulset, not %q" (toString .Values.mode)) }}
{{- end }}
{{- $strategy := .Values.rollout.strategy }}
{{- if and (eq .Values.mode "deployment") (eq $strategy "OnDelete") }}
{{- fail "tailsampler: rollout.strategy OnDelete is not valid for a Deployment (use RollingUpdate or Recreate)" }}
{{- end }}
{{- if and (ne .Values.mode "deployment") (eq $strategy "Recreate") }}
{{- fail (printf "tailsampler: rollout.strategy Recreate is not valid in %s mode (use RollingUpdate or OnDelete)" .Values.mode) }}
{{- end }}
{{- if and .Values.peers.enabled (not (index .Values.ports "otlp-grpc" "enabled")) }}
{{- fail "tailsampler: peers.enabled needs ports.otlp-grpc.enabled (peers forward spans over OTLP/gRPC)" }}
{{- end }}
{{- end }}

{{/*
Pod parts
*/}}

{{/*
The tailsampler container, as one item of a `containers:` list. Takes a dict:
  values     - the tailsampler chart's values
  fullname   - the tailsampler release's full name
  appVersion - image tag used when values.image.tag is empty
  peers      - whether to advertise this pod to its peers (TAILSAMPLER_PEERS__SELF)
  hostPorts  - whether to set the ports' hostPort (daemonset mode)
*/}}
{{- define "tailsampler.container" -}}
{{- $v := .values -}}
- name: tailsampler
  image: {{ include "tailsampler.imageFrom" (dict "image" $v.image "appVersion" .appVersion) | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy | default "IfNotPresent" }}
  # The image's ENTRYPOINT, spelled out so that the config path and the mount below visibly agree.
  command:
    - tailsampler
    - run
    - --config
    - {{ printf "%s/config.yaml" (include "tailsampler.configDir" .) }}
    {{- range $v.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    {{- range $name, $port := $v.ports }}
    {{- if $port.enabled }}
    - name: {{ $name }}
      containerPort: {{ $port.containerPort }}
      protocol: {{ $port.protocol | default "TCP" }}
      {{- if and $.hostPorts $port.hostPort }}
      hostPort: {{ $port.hostPort }}
      {{- end }}
    {{- end }}
    {{- end }}
  env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    {{- if and $v.resources $v.resources.limits $v.resources.limits.memory }}
    - name: TAILSAMPLER_CONTAINER_MEMORY_LIMIT
      valueFrom:
        resourceFieldRef:
          resource: limits.memory
    {{- end }}
    {{- if and .peers $v.peers.enabled }}
    - name: TAILSAMPLER_PEERS__SELF
      value: {{ printf "$(POD_IP):%v" (index $v.ports "otlp-grpc" "containerPort") | quote }}
    {{- end }}
    {{- with $v.extraEnvs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.extraEnvsFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    # The whole ConfigMap as a directory: the kubelet swaps its ..data symlink on updates, which
    # tailsampler's hot reload picks up. Mounting single keys would never update.
    - name: tailsampler-config
      mountPath: {{ include "tailsampler.configDir" . }}
      readOnly: true
    - name: tailsampler-tmp
      mountPath: /tmp
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes the container mounts, as `volumes:` list items. Takes a dict {fullname}. */}}
{{- define "tailsampler.volumes" -}}
- name: tailsampler-config
  configMap:
    name: {{ .fullname }}
- name: tailsampler-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* The pod template shared by the Deployment, DaemonSet and StatefulSet. */}}
{{- define "tailsampler.podTemplate" -}}
metadata:
  annotations:
    checksum/config: {{ include "tailsampler.configChecksum" . }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "tailsampler.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "tailsampler.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    {{- include "tailsampler.container" (dict "values" .Values "fullname" (include "tailsampler.fullname" .) "appVersion" .Chart.AppVersion "peers" true "hostPorts" (eq .Values.mode "daemonset")) | nindent 4 }}
  volumes:
    {{- include "tailsampler.volumes" (dict "fullname" (include "tailsampler.fullname" .)) | nindent 4 }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Sidecar
=======
To run tailsampler next to your app in the same pod, add this chart as a dependency of your chart, named
`tailsampler` (no alias), and set `tailsampler.sidecar.enabled: true` in your values: the dependency then
renders only the ConfigMap holding config.yaml and policies.yaml (no workload, Services, ServiceAccount,
PodDisruptionBudget or ServiceMonitor). In your pod template include:

  metadata:
    annotations:
      checksum/tailsampler-config: {{ include "tailsampler.sidecarChecksum" . }}
  spec:
    containers:
      - name: my-app
        env:
          - name: OTEL_EXPORTER_OTLP_ENDPOINT
            value: http://localhost:4317
      {{- include "tailsampler.sidecar" . | nindent 6 }}
    volumes:
      {{- include "tailsampler.sidecarVolumes" . | nindent 6 }}

All three accept the root context of this chart or of a parent chart. The sidecar container's port names
(otlp-grpc, otlp-http, admin) and volume names (tailsampler-config, tailsampler-tmp) must not clash with
your own. A sidecar has no peers: it only sees its own pod's spans.
*/}}

{{/* Resolves {values, fullname, appVersion} from this chart's or a parent chart's root context, as YAML. */}}
{{- define "tailsampler.sidecarContext" -}}
{{- $v := .Values }}
{{- $appVersion := .Chart.AppVersion }}
{{- if ne .Chart.Name "tailsampler" }}
{{- $v = .Values.tailsampler | default (dict) }}
{{- $appVersion = "" }}
{{- with .Subcharts }}
{{- with .tailsampler }}
{{- $appVersion = .Chart.AppVersion }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $v.image }}
{{- fail "tailsampler.sidecar: no tailsampler values found; add the tailsampler chart as a dependency" }}
{{- end }}
{{- $fullname := include "tailsampler.fullnameFrom" (dict "Values" $v "Release" .Release "chartName" "tailsampler") }}
{{- toYaml (dict "values" $v "fullname" $fullname "appVersion" $appVersion) }}
{{- end }}

{{/* The tailsampler sidecar container, as one item of a `containers:` list. */}}
{{- define "tailsampler.sidecar" -}}
{{- $ctx := include "tailsampler.sidecarContext" . | fromYaml }}
{{- include "tailsampler.container" (dict "values" $ctx.values "fullname" $ctx.fullname "appVersion" $ctx.appVersion "peers" false "hostPorts" false) }}
{{- end }}

{{/*
checksum/config value for a pod that runs the sidecar: it changes when config.yaml changes (and when the
policies change, with hotReload false), so that `helm upgrade` rolls those pods too.
*/}}
{{- define "tailsampler.sidecarChecksum" -}}
{{- $ctx := include "tailsampler.sidecarContext" . | fromYaml }}
{{- include "tailsampler.configChecksum" (dict "Values" $ctx.values "Release" .Release "Chart" (dict "Name" "tailsampler")) }}
{{- end }}

{{/* The volumes the sidecar mounts, as `volumes:` list items. */}}
{{- define "tailsampler.sidecarVolumes" -}}
{{- $ctx := include "tailsampler.sidecarContext" . | fromYaml }}
{{- include "tailsampler.volumes" (dict "fullname" $ctx.fullname) }}
{{- end }}
