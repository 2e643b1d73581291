"""What every exporter implements, and the errors that tell the queue whether to retry."""

from __future__ import annotations

from typing import Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import Counter

from sampler.otlp.logs import NO_TRACE
from sampler.otlp.splice import annotation, decision_attribute, encode_request, strip_annotation
from sampler.otlp.tracestate import with_threshold
from sampler.otlp.transport import LOGS, TRACES
from sampler.pipeline.core import KeptTrace

WORKERS = 4  # export batches in flight at once


class RetryableError(Exception):
    """The backend may accept the same batch later; `delay` is its hint (RetryInfo/Retry-After)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """The backend refused the batch for good (bad data, auth); retrying cannot help."""


class TooLargeError(PermanentError):
    """The backend refused the request as too large (gRPC RESOURCE_EXHAUSTED without RetryInfo, HTTP
    413): the same spans may pass in smaller requests."""


class ExportMetrics(Protocol):
    """The counters an export queue moves. The server's `Metrics` satisfies it; the queue names only
    this, so exporters do not import the server shell above them."""

    spans_exported: Counter
    export_failures: Counter
    spans_dropped: Counter


class RawRequest:
    """An export request passed through as it came (OTLP metrics: no sampling), with how many items
    (data points) it holds, for the counters."""

    __slots__ = ("body", "cost", "count", "signal")

    def __init__(self, signal: str, body: bytes, count: int) -> None:
        self.signal = signal
        self.body = body
        self.count = count
        self.cost = len(body) + RAW_OVERHEAD


RAW_OVERHEAD = 200  # memory a queued RawRequest holds besides its body's bytes


def signal_of(batch: list[KeptTrace]) -> str:
    """The signal of a batch of kept traces (all of one: the queue never mixes them)."""
    return LOGS if batch[0].logs else TRACES



class Sender(Protocol):
    async def send(self, batch: list[KeptTrace]) -> int:
        """Deliver the batch (all spans, or all log records: `signal_of`); return how many of them
        the backend rejected (partial success)."""

    async def send_raw(self, request: RawRequest) -> int:
        """Deliver a request passed through; return how many of its items the backend rejected."""

    async def close(self) -> None: ...


def encode_batch(batch: list[KeptTrace], annotate: bool) -> bytes:
    """The export request for a batch (traces or logs, as its items are). When annotating, items
    that arrived annotated already have that annotation cut out first (once: the trace keeps the
    stripped items for any retry), so each leaves with one `tailsampling.policy` and one
    `tailsampling.sample_rate`, ours. Log records without a trace were not decided: left as they are.
    Spans of a trace kept by a probability get its threshold in their tracestate (once, too)."""
    for t in batch:
        if (annotate or t.decision) and t.marked and t.trace_id != NO_TRACE:
            t.spans = [strip_annotation(s, t.logs) for s in t.spans]
            t.marked = False
        if t.probability > 0:
            if not t.logs:
                t.spans = [with_threshold(s, t.probability) for s in t.spans]
            t.probability = 0.0
    return encode_request((t.spans, t.groups, suffix(t, annotate)) for t in batch)


def suffix(trace: KeptTrace, annotate: bool) -> bytes:
    """The annotation each item of `trace` gets in an export request (under dry_run, the decision
    always)."""
    if trace.trace_id == NO_TRACE:
        return b""
    dry = decision_attribute(trace.decision, trace.logs) if trace.decision else b""
    if not annotate:
        return dry
    return annotation(trace.policy, trace.sample_rate, trace.logs) + dry


def rejected_spans(payload: bytes) -> int:
    """What a backend's ExportTraceServiceResponse says it rejected (partial success)."""
    return int(ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans)


def rejected_records(payload: bytes) -> int:
    return int(ExportLogsServiceResponse.FromString(payload).partial_success.rejected_log_records)


def rejected_points(payload: bytes) -> int:
    return int(ExportMetricsServiceResponse.FromString(payload).partial_success.rejected_data_points)


def signal_endpoint(endpoint: str, signal: str) -> str:
    """The OTLP/HTTP endpoint of logs or metrics given the traces one (`exporter.endpoint`): a path
    ending in /v1/traces has /v1/<signal> in its place; any other path is taken as a base, as the
    Collector's otlphttp exporter takes it, and gets /v1/<signal> appended."""
    authority, tls, path = split_endpoint(endpoint)
    base = path[: -len("/v1/traces")] if path.endswith("/v1/traces") else path.rstrip("/")
    return f"{'https' if tls else 'http'}://{authority}{base}/v1/{signal}"


def split_endpoint(endpoint: str) -> tuple[str, bool, str]:
    """`http://h:p/path` -> ("h:p", tls=False, "/path"); https means TLS; a bare host:port is plaintext."""
    tls = endpoint.startswith("https://")
    rest = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
    authority, slash, path = rest.partition("/")
    return authority, tls, slash + path
