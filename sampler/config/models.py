"""The config file's models: every key with its default, durations and sizes in human units, and
`TAILSAMPLER_<SECTION>__<KEY>` environment overrides that win over the file."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from sampler.config.units import _DURATION, _SIZE, parse_duration, parse_size
from sampler.config.yamlfile import ConfigError, parse_yaml

_DURATION_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION.pattern}]}
_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE.pattern}]}
_AUTO_SIZE_SCHEMA = {"anyOf": [*_SIZE_SCHEMA["anyOf"], {"const": "auto"}]}
AUTO: Final = "auto"
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]


def _auto_size(value: Any) -> int | str:
    if value == AUTO:
        return AUTO
    size = parse_size(value)
    if size == 0:
        raise ValueError("a size here must be greater than 0 (or auto)")
    return size


# A size, or `auto`: derived from memory_limit at start (sampler/pipeline/memory.py).
AutoSize = Annotated[int | Literal["auto"], BeforeValidator(_auto_size), WithJsonSchema(_AUTO_SIZE_SCHEMA)]


# Many OTLP receivers refuse requests over 4 MiB (the Collector's gRPC max_recv_msg_size_mib, gRPC's own
# default); the headroom is for receivers or proxies in between that count a little more than the message.
DEFAULT_BATCH_MAX_BYTES = 4 * 2**20 - 64 * 2**10


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsServer(_Model):
    """Receiver TLS; with client_ca_file, clients must present a certificate it signed (mutual TLS).
    The files are re-read when they change (certificate rotation without a restart)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


class TlsClient(_Model):
    """TLS for connections tailsampler makes (exporter, peers): the CA that signs the server's
    certificate (default: the system's), and a client certificate for mutual TLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsClient:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Auth(_Model):
    """Bearer-token authentication on the receivers: `Authorization: Bearer <token>` must carry one of
    the tokens (each non-empty line of the file, or the environment variable's value)."""

    bearer_token_file: str | None = None
    bearer_token_env: str | None = None

    @model_validator(mode="after")
    def _source(self) -> Auth:
        if self.bearer_token_file is None and self.bearer_token_env is None:
            raise ValueError("set bearer_token_file or bearer_token_env")
        return self


class Listen(_Model):
    endpoint: str
    tls: TlsServer | None = None

    @model_validator(mode="after")
    def _host_port(self) -> Listen:
        split_host_port(self.endpoint)
        return self


def split_host_port(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, got {endpoint!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class OtlpReceivers(_Model):
    grpc: Listen | None = Listen(endpoint="0.0.0.0:4317")
    http: Listen | None = Listen(endpoint="0.0.0.0:4318")


class Receivers(_Model):
    otlp: OtlpReceivers = OtlpReceivers()
    auth: Auth | None = None
    max_request_bytes: Size = Field(default=16 * 2**20, gt=0)  # after decompression
    # Request bodies being received, inflated and decoded at once (estimated decoded cost); beyond it
    # requests are refused with retryable errors. auto: a tenth of memory_limit (none without one).
    max_inflight_bytes: AutoSize | None = AUTO


class BufferConfig(_Model):
    decision_wait: Duration = 5.0
    max_trace_age: Duration = 60.0
    max_traces: int = Field(default=100_000, gt=0)
    # What the buffered traces may hold in memory, overhead included. auto: what memory_limit leaves
    # after the other components' bounds (256MiB without a memory_limit).
    max_bytes: AutoSize = AUTO
    max_spans_per_trace: int = Field(default=20_000, gt=0)  # beyond it the trace is decided early
    max_bytes_per_trace: Size = Field(default=16 * 2**20, gt=0)  # ...likewise
    min_eviction_age: Duration = 1.0  # evicting younger traces to make room means push back instead
    # A trace quiet this long has its spans packed and compressed (sampler/pipeline/frames.py); spans arriving
    # later are packed in a frame of their own. zstd: compressed with a dictionary trained on the
    # live stream; none: only packed.
    compression: Literal["zstd", "none"] = "zstd"
    compress_after: Duration = 0.5
    decision_cache_kept: int = Field(default=100_000, gt=0)  # trace ids remembered as kept
    decision_cache_dropped: int = Field(default=1_000_000, gt=0)  # ...and as dropped
    sweep_interval: Duration = 0.1


class Retry(_Model):
    initial_interval: Duration = 1.0
    max_interval: Duration = 10.0
    max_elapsed_time: Duration = 300.0


class ExporterConfig(_Model):
    protocol: Literal["grpc", "http", "stdout", "file"] = "grpc"
    endpoint: str = "http://127.0.0.1:4317"
    # where kept log records go when not to `endpoint` (gRPC: LogsService there; HTTP: /v1/logs beside it)
    logs_endpoint: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    retry: Retry = Retry()
    timeout: Duration = 10.0
    queue_max_bytes: AutoSize = AUTO  # kept spans waiting for export; auto: 64MiB, or a tenth of memory_limit
    batch_max_spans: int = Field(default=4096, gt=0)
    # bound on one export request's size (uncompressed, annotation included); a larger trace is sent in parts
    batch_max_bytes: Size = Field(default=DEFAULT_BATCH_MAX_BYTES, gt=0)
    annotate: bool = True  # add tailsampling.policy / tailsampling.sample_rate to kept spans
    tls: TlsClient = TlsClient()  # for https:// endpoints


class AdminConfig(_Model):
    endpoint: str | None = "0.0.0.0:8888"


class DnsPeers(_Model):
    name: str
    port: int = 4317
    interval: Duration = 5.0


class PeersConfig(_Model):
    self_: str = Field(default="127.0.0.1:4317", alias="self")
    static: list[str] = Field(default_factory=list)
    dns: DnsPeers | None = None
    tls: TlsClient | None = None  # when the peers' gRPC receivers use TLS
    forward_max_elapsed: Duration = 5.0  # retrying a peer that does not answer this long, then its spans are kept here
    down_cooldown: Duration = 30.0  # ...and it is left out of the hashing this long
    # A peer that pushes back stays a member and is retried after its delay, as long as it accepts
    # something at least this often; beyond that its spans are kept here until it accepts again.
    forward_busy_max_elapsed: Duration = 60.0
    # Bound on the encoded size of one forward request: keep it under the members' max_request_bytes
    # (it is also capped at this instance's own).
    forward_batch_max_bytes: Size = Field(default=8 * 2**20, gt=0)
    # Spans on their way to other members, all peers together; auto: 32MiB, or a sixteenth of memory_limit
    queue_max_bytes: AutoSize = AUTO
    # Callers whose forwarded header counts besides the members' own addresses: where a service mesh
    # or NAT hides those addresses (Istio delivers from 127.0.0.6), e.g. ["127.0.0.6/32"].
    trusted_networks: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _members(self) -> PeersConfig:
        for member in (self.self_, *self.static):
            split_host_port(member)
        for network in self.trusted_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"trusted_networks: {network!r} is not an IP network (e.g. 10.0.0.0/8)") from None
        if self.static and self.dns is not None:
            raise ValueError("use either a static member list or dns discovery, not both")
        if self.static and self.self_ not in self.static:
            raise ValueError(f"self ({self.self_}) must be one of the static members")
        return self

    @property
    def enabled(self) -> bool:
        return self.dns is not None or any(m != self.self_ for m in self.static)


class LogsConfig(_Model):
    # Log records without a trace id: `pass` exports them at once (no sampling), `drop` drops them (counted).
    untraced: Literal["pass", "drop"] = "pass"


class SpanMetricsConfig(_Model):
    # traces_spanmetrics_calls_total and traces_spanmetrics_latency from every span received, at ingest.
    enabled: bool = True
    # Span attributes added as labels (dots and other characters Prometheus refuses become "_").
    dimensions: list[str] = []
    # Label sets counted by name; spans of any further one are counted in one otel_metric_overflow="true" series.
    max_series: int = Field(default=10_000, ge=1)


class ServiceGraphConfig(_Model):
    # traces_service_graph_* and the orphan-span counts from every trace decided, and the live /graph page.
    enabled: bool = True


class DebugConfig(_Model):
    # Decisions remembered for /debug (each policy's vote, the reason...); 0: none recorded. Counted
    # against memory_limit, at most 1% of it (fewer entries then; docs/operations.md: bytes per entry).
    recent_decisions: int = Field(default=100_000, ge=0)


class Config(_Model):
    # The process's resident memory stays under this (sampler/pipeline/memory.py). auto: 80% of the container's
    # memory limit (cgroup), none when there is none; null: no limit.
    memory_limit: AutoSize | None = AUTO
    receivers: Receivers = Receivers()
    buffer: BufferConfig = BufferConfig()
    exporter: ExporterConfig = ExporterConfig()
    policies_file: str | None = None
    policies: list[Any] | None = None
    admin: AdminConfig = AdminConfig()
    peers: PeersConfig = PeersConfig()
    logs: LogsConfig = LogsConfig()
    span_metrics: SpanMetricsConfig = SpanMetricsConfig()
    service_graph: ServiceGraphConfig = ServiceGraphConfig()
    debug: DebugConfig = DebugConfig()
    # Forward every trace whatever the policies say, each span annotated with tailsampling.decision
    # (keep | drop): to see a policy set's effect before it drops anything. Metrics count the real decisions.
    dry_run: bool = False
    shutdown_timeout: Duration = 20.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"


_ENV_PREFIX = "TAILSAMPLER_"
_TOP_LEVEL_ENV_KEYS = frozenset({"policies_file", "shutdown_timeout", "log_level", "memory_limit", "dry_run"})


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`TAILSAMPLER_EXPORTER__ENDPOINT=x` -> {"exporter": {"endpoint": "x"}}; `null`, `[...]` and
    `{...}` values are YAML, everything else a string."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(_ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(_ENV_PREFIX) :].split("__")]
        if not all(parts) or (len(parts) == 1 and parts[0] not in _TOP_LEVEL_ENV_KEYS):
            continue
        value: Any = raw
        try:  # parse_yaml: its limits on aliases and nesting, and every error as a ConfigError
            parsed = parse_yaml(raw, name).data if raw else None
        except ConfigError:  # not YAML: taken as the string
            parsed = raw
        # Only null and YAML collections are taken as parsed; scalars stay strings (a token of
        # digits must stay a string) and pydantic converts them where a number or bool is wanted.
        if raw and (parsed is None or isinstance(parsed, list | dict)):
            value = parsed
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`, mappings merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
