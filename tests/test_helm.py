"""Renders the Helm chart with Helm's own library (helm-python-sdk, no helm binary, no cluster) for every
mode and every ci/*-values.yaml scenario, lints it, validates every manifest against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict) and checks what the pods would actually run: ports, probes, security
context, the ConfigMap mount and contents, the rollout checksum, Services, PDB, ServiceMonitor, and the
sidecar named template from a parent chart."""

from __future__ import annotations

import contextlib
import copy
import io
import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sampler.cli import main as tailsampler_main
from sampler.server.settings import load_config
from sampler.tools.validate import validate_file

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e '.[test]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")


ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tailsampler"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MODES = ("daemonset", "deployment", "statefulset")
WORKLOAD_KINDS = {"daemonset": "DaemonSet", "deployment": "Deployment", "statefulset": "StatefulSet"}
# The chart's minimum (Chart.yaml kubeVersion) and a recent release bundled with kubernetes-validate.
KUBE_VERSIONS = ("1.26", "1.33")
RELEASE, NAMESPACE = "demo", "observability"
FULLNAME = f"{RELEASE}-tailsampler"
EXPECTED_PORTS = {"otlp-grpc": 4317, "otlp-http": 4318, "admin": 8888}


def _load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


# Scenario name -> user-supplied values (what `helm install -f` / `--set` would pass).
SCENARIOS: dict[str, dict[str, Any]] = {
    **{f"mode-{mode}": {"mode": mode} for mode in MODES},
    **{
        f"mode-{mode}-all-features": {
            "mode": mode,
            "podDisruptionBudget": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "replicaCount": 2,
        }
        for mode in MODES
    },
    **{f"ci-{path.name.removesuffix('-values.yaml')}": _load_values(path) for path in CI_VALUES},
}


# --- rendering ---------------------------------------------------------------------------------------


def render(values: dict[str, Any], chart: Path = CHART) -> dict[str, str]:
    with helm_python.Chart.load(str(chart)) as loaded:
        rendered: dict[str, str] = loaded.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    return rendered


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                out.append(doc)
    return out


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with helm_python.Chart.load(str(CHART)) as loaded:
        merged: dict[str, Any] = loaded.merge_values(copy.deepcopy(values))
    return merged


def workload(objs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    return one(objs, WORKLOAD_KINDS[mode])


def container(pod_spec: dict[str, Any], name: str = "tailsampler") -> dict[str, Any]:
    matches: list[dict[str, Any]] = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(matches) == 1, [c["name"] for c in pod_spec["containers"]]
    return matches[0]


def walk_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_keys(item)


def config_path(c: dict[str, Any]) -> str:
    argv = [*c.get("command", []), *c.get("args", [])]
    assert "--config" in argv, f"the container does not pass --config: {argv}"
    path = argv[argv.index("--config") + 1]
    assert posixpath.isabs(path), path
    return str(path)


def write_configmap(objs: list[dict[str, Any]], directory: Path) -> Path:
    """The ConfigMap's files as the kubelet would project them into the mounted directory."""
    configmap = one(objs, "ConfigMap")
    assert set(configmap["data"]) == {"config.yaml", "policies.yaml"}
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in configmap["data"].items():
        (directory / key).write_text(text, encoding="utf-8")
    return directory / "config.yaml"


def checksum(values: dict[str, Any]) -> str:
    mode = values.get("mode", "deployment")
    pod = workload(objects(render(values)), mode)["spec"]["template"]
    value = pod["metadata"]["annotations"]["checksum/config"]
    assert isinstance(value, str) and len(value) == 64, value
    return value


# --- lint and schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_lint_clean(values_file: Path | None) -> None:
    values = _load_values(values_file) if values_file else None
    report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not serious, serious


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_values_pass_schema(scenario: str) -> None:
    with helm_python.Chart.load(str(CHART)) as loaded:
        loaded.validate_schema(loaded.merge_values(copy.deepcopy(SCENARIOS[scenario])))


@pytest.mark.parametrize("bad", [{"mode": "sidecar-ish"}, {"mode": "Deployment"}, {"mode": ""}])
def test_schema_rejects_invalid_mode(bad: dict[str, Any]) -> None:
    with helm_python.Chart.load(str(CHART)) as loaded:
        with pytest.raises(helm_python.HelmValuesError):
            loaded.validate_schema(loaded.merge_values(bad))
        with pytest.raises(helm_python.HelmError):
            loaded.render(bad, name=RELEASE, namespace=NAMESPACE)


def test_ci_scenarios_cover_every_mode() -> None:
    assert {v["mode"] for v in map(_load_values, CI_VALUES)} == set(MODES)


# --- every manifest is valid Kubernetes --------------------------------------------------------------


def _validate_service_monitor(obj: dict[str, Any]) -> None:
    """kubernetes-validate ships no CRD schemas: check the monitoring.coreos.com/v1 fields we use."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(obj["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
    for endpoint in obj["spec"]["endpoints"]:
        assert set(endpoint) <= {
            "port", "path", "interval", "scrapeTimeout", "metricRelabelings", "relabelings", "scheme",
        }, endpoint


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_validates(scenario: str) -> None:
    objs = objects(render(SCENARIOS[scenario]))
    assert objs
    for obj in objs:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]
        if obj["kind"] == "ServiceMonitor":
            _validate_service_monitor(obj)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {exc.message}")
        assert "subPath" not in set(walk_keys(obj)), f"{obj['kind']} uses subPath: it never sees ConfigMap updates"


# --- the pods ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_workload_pod_spec(scenario: str, tmp_path: Path) -> None:
    values = SCENARIOS[scenario]
    mode = values["mode"]
    objs = objects(render(values))
    kinds = {o["kind"] for o in objs}
    assert WORKLOAD_KINDS[mode] in kinds
    assert not (kinds & (set(WORKLOAD_KINDS.values()) - {WORKLOAD_KINDS[mode]})), kinds
    obj = workload(objs, mode)
    template = obj["spec"]["template"]
    pod = template["spec"]
    c = container(pod)

    # Ports, named so that probes, Services and ServiceMonitor can refer to them.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == EXPECTED_PORTS
    if mode == "daemonset" and scenario.startswith("ci-"):
        host_ports = {p["name"]: p.get("hostPort") for p in c["ports"]}
        assert host_ports["otlp-grpc"] == 4317 and host_ports["otlp-http"] == 4318
    elif mode != "daemonset":
        assert all("hostPort" not in p for p in c["ports"])

    # Probes on the admin port.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}

    # Non-root, read-only root filesystem, no privilege escalation, no capabilities.
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Memory: a limit, which reaches memory_limit: auto through the downward API (by default requested
    # in full: a pod holding traces in memory should not be the first evicted).
    assert c["resources"]["limits"]["memory"]
    if not values.get("resources"):
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]

    # The ConfigMap is mounted as a directory, and --config points at config.yaml inside it.
    cfg = config_path(c)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volumes = [name for name, v in volumes.items() if v.get("configMap", {}).get("name") == FULLNAME]
    assert len(config_volumes) == 1, volumes
    mount = mounts[config_volumes[0]]
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert mount.get("readOnly") is True
    assert posixpath.dirname(cfg) == mount["mountPath"].rstrip("/")
    assert posixpath.basename(cfg) == "config.yaml"
    # The only writable place is an emptyDir at /tmp.
    tmp_mounts = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp_mounts and "emptyDir" in volumes[tmp_mounts[0]["name"]]

    # POD_IP from the downward API (for peers.self).
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # Sharding is on by default: each pod advertises itself to its peers.
    assert env["TAILSAMPLER_PEERS__SELF"]["value"] == "$(POD_IP):4317"
    assert env["TAILSAMPLER_CONTAINER_MEMORY_LIMIT"]["valueFrom"] == {"resourceFieldRef": {"resource": "limits.memory"}}

    # Rollout on config changes.
    assert len(template["metadata"]["annotations"]["checksum/config"]) == 64

    # Labels: the pod template matches the selector, which the Services use too.
    selector = obj["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    if mode == "statefulset":
        assert obj["spec"]["serviceName"] == f"{FULLNAME}-headless"

    # Shutdown has time to decide everything buffered and flush the exports.
    loaded = load_config(write_configmap(objs, tmp_path / "etc"), environ={})
    grace = pod["terminationGracePeriodSeconds"]
    needed = loaded.config.buffer.decision_wait + loaded.config.exporter.timeout
    assert grace > needed, f"terminationGracePeriodSeconds {grace} <= decision_wait + exporter timeout {needed}"
    assert grace > loaded.config.shutdown_timeout
    assert loaded.config.memory_limit == "auto"
    if "max_bytes" not in values.get("config", {}).get("buffer", {}):
        assert loaded.config.buffer.max_bytes == "auto"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_services(scenario: str) -> None:
    values = SCENARIOS[scenario]
    mode = values["mode"]
    objs = objects(render(values))
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service")}
    assert set(services) == {FULLNAME, f"{FULLNAME}-headless"}
    pod_labels = workload(objs, mode)["spec"]["template"]["metadata"]["labels"]

    main = services[FULLNAME]["spec"]
    assert main["selector"].items() <= pod_labels.items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in main["ports"]}
    assert ports == {name: (port, name) for name, port in EXPECTED_PORTS.items()}
    if mode == "daemonset":
        assert main["internalTrafficPolicy"] == "Local"
    else:
        assert main.get("internalTrafficPolicy", "Cluster") == "Cluster"
    assert main.get("clusterIP") != "None"

    headless = services[f"{FULLNAME}-headless"]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"].items() <= pod_labels.items()
    assert [(p["name"], p["port"]) for p in headless["ports"]] == [("otlp-grpc", 4317)]


@pytest.mark.parametrize("mode", MODES)
def test_pod_disruption_budget(mode: str) -> None:
    assert not of_kind(objects(render({"mode": mode})), "PodDisruptionBudget")
    objs = objects(render({"mode": mode, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}}))
    pdbs = of_kind(objs, "PodDisruptionBudget")
    if mode == "daemonset":
        assert not pdbs  # a DaemonSet's pods are not evicted by drains the PDB could protect
        return
    assert len(pdbs) == 1
    spec = pdbs[0]["spec"]
    assert spec["minAvailable"] == 1
    assert spec["selector"]["matchLabels"].items() <= workload(objs, mode)["spec"]["template"]["metadata"][
        "labels"
    ].items()


@pytest.mark.parametrize("mode", MODES)
def test_service_monitor(mode: str) -> None:
    assert not of_kind(objects(render({"mode": mode})), "ServiceMonitor")
    objs = objects(render({"mode": mode, "serviceMonitor": {"enabled": True, "extraLabels": {"release": "prom"}}}))
    monitor = one(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s"}]
    main = next(s for s in of_kind(objs, "Service") if s["metadata"]["name"] == FULLNAME)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= main["metadata"]["labels"].items()
    # The headless Service carries the same labels but has no admin port, so nothing is scraped twice.
    headless = next(s for s in of_kind(objs, "Service") if s["metadata"]["name"] != FULLNAME)
    assert "admin" not in {p["name"] for p in headless["spec"]["ports"]}


# --- the ConfigMap ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_configmap_files_pass_tailsampler_validate(scenario: str, tmp_path: Path) -> None:
    values = SCENARIOS[scenario]
    objs = objects(render(values))
    config_file = write_configmap(objs, tmp_path)
    policies_file = tmp_path / "policies.yaml"
    assert validate_file(config_file) == []
    assert validate_file(policies_file) == []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = tailsampler_main(["validate", str(config_file), str(policies_file)])
    assert code == 0, out.getvalue()
    assert out.getvalue().count(": ok") == 2

    loaded = load_config(config_file, environ={})
    assert loaded.policies_path == policies_file  # found beside config.yaml in the mounted directory
    merged = merged_values(values)
    assert [p.name for p in loaded.policies.policies] == [p["name"] for p in merged["policies"]]
    assert yaml.safe_load(policies_file.read_text()) == {"policies": merged["policies"]}
    # The listen ports agree with the container ports.
    config = loaded.config
    assert config.receivers.otlp.grpc is not None and config.receivers.otlp.grpc.endpoint.endswith(":4317")
    assert config.receivers.otlp.http is not None and config.receivers.otlp.http.endpoint.endswith(":4318")
    assert config.admin.endpoint is not None and config.admin.endpoint.endswith(":8888")
    # Sharding by trace id, members discovered through the headless Service.
    assert config.peers.dns is not None and config.peers.dns.port == 4317
    assert config.peers.dns.name.endswith(f".{NAMESPACE}.svc.cluster.local") and "headless" in config.peers.dns.name


def test_checksum_tracks_config_and_policies_unless_hot_reloaded() -> None:
    base = {"mode": "deployment"}
    original = checksum(base)
    assert checksum(base) == original  # deterministic
    assert checksum({**base, "config": {"buffer": {"decision_wait": "7s"}}}) != original
    assert checksum({**base, "podAnnotations": {"team": "obs"}}) == original

    new_policies = {"policies": [{"name": "everything", "type": "always_sample"}]}
    # hotReload (the default): policies are reloaded in place, the pods do not roll.
    assert checksum({**base, **new_policies}) == original
    # hotReload off: a policies change rolls the pods too.
    cold = {**base, "hotReload": False}
    assert checksum({**cold, **new_policies}) != checksum(cold)
    assert checksum({**cold, "config": {"buffer": {"decision_wait": "7s"}}}) != checksum(cold)


def test_notes_tell_users_where_to_send() -> None:
    notes = render({"mode": "deployment"})["tailsampler/templates/NOTES.txt"]
    host = f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"
    assert f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://{host}:4317" in notes
    assert f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://{host}:4318/v1/traces" in notes
    assert "sharded" in notes


# --- the sidecar named template, used from a parent chart ------------------------------------------------

APP_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-shop
  namespace: {{ .Release.Namespace }}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: shop
  template:
    metadata:
      labels:
        app: shop
      annotations:
        checksum/tailsampler-config: {{ include "tailsampler.sidecarChecksum" . }}
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: shop
          image: example.com/shop:1.2.3
          env:
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: http://localhost:4317
        {{- include "tailsampler.sidecar" . | nindent 8 }}
      volumes:
        {{- include "tailsampler.sidecarVolumes" . | nindent 8 }}
"""

SIDECAR_VALUES = {
    "sidecar": {"enabled": True},
    "image": {"repository": "registry.example.com/tailsampler"},
    "config": {"exporter": {"protocol": "grpc", "endpoint": "http://otel-collector.observability:4317"}},
}


def _wrapper_chart(tmp_path: Path) -> Path:
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "shop",
                "version": "1.0.0",
                "appVersion": "1.2.3",
                "dependencies": [
                    {"name": "tailsampler", "version": "0.1.0", "repository": CHART.as_uri()},
                ],
            }
        ),
        encoding="utf-8",
    )
    (parent / "values.yaml").write_text(yaml.safe_dump({"tailsampler": SIDECAR_VALUES}), encoding="utf-8")
    (parent / "templates" / "deployment.yaml").write_text(APP_DEPLOYMENT, encoding="utf-8")
    shutil.copytree(CHART, parent / "charts" / "tailsampler")  # what `helm dependency build` would vendor
    return parent


def test_sidecar_named_template_in_a_parent_chart(tmp_path: Path) -> None:
    parent = _wrapper_chart(tmp_path)
    manifests = render({}, chart=parent)
    objs = objects(manifests)

    # The dependency renders only the ConfigMap the sidecars mount.
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "Deployment"]
    configmap = one(objs, "ConfigMap")
    assert configmap["metadata"]["name"] == FULLNAME
    deployment = one(objs, "Deployment")
    assert deployment["metadata"]["name"] == f"{RELEASE}-shop"
    for obj in objs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)

    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["shop", "tailsampler"]
    c = container(pod)
    assert c["image"] == "registry.example.com/tailsampler:0.1.0"  # the dependency's appVersion
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == EXPECTED_PORTS
    assert all("hostPort" not in p for p in c["ports"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["name"] in volumes and "configMap" in volumes[m["name"]])
    assert volumes[mount["name"]]["configMap"]["name"] == FULLNAME
    assert "subPath" not in set(walk_keys(deployment))
    assert posixpath.dirname(config_path(c)) == mount["mountPath"]

    # The sidecar's config is the parent's `tailsampler:` values, and it validates.
    config_file = write_configmap(objs, tmp_path / "etc")
    assert validate_file(config_file) == [] and validate_file(tmp_path / "etc" / "policies.yaml") == []
    assert load_config(config_file, environ={}).config.exporter.endpoint.startswith("http://otel-collector")

    # The pod-template checksum is the one the chart itself computes for the same values.
    standalone = {**SIDECAR_VALUES, "sidecar": {"enabled": False}}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/tailsampler-config"] == checksum(standalone)
