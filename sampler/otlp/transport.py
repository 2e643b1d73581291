"""OTLP over gRPC, as both ends of it speak it: the service and method names, the retry hint a
server sends when it pushes back and how a client reads it, and the options tailsampler's own
channels (exporter, peers) share."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT_METHOD = f"/{SERVICE}/Export"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
LOGS_EXPORT_METHOD = f"/{LOGS_SERVICE}/Export"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
METRICS_EXPORT_METHOD = f"/{METRICS_SERVICE}/Export"
# The signals, as receivers name them to the ingest callback and as the OTLP/HTTP paths end.
TRACES = "traces"
LOGS = "logs"
METRICS = "metrics"
SERVICES = {TRACES: SERVICE, LOGS: LOGS_SERVICE, METRICS: METRICS_SERVICE}
NOUNS = {TRACES: "trace", LOGS: "log", METRICS: "metrics"}  # as error messages name a request
# Marks spans one instance forwarded to their owner, which must never forward them again.
FORWARDED_HEADER = "tailsampler-forwarded"
RETRY_AFTER_SECONDS = 1  # what both receivers tell senders to wait when pushing back


def retry_details(message: str, seconds: int = RETRY_AFTER_SECONDS) -> tuple[tuple[str, bytes], ...]:
    """The retry hint as trailing metadata, in the two places OTLP clients look for it: RetryInfo
    inside the google.rpc.Status details (the Collector, grpc-go and grpc-java clients), and RetryInfo
    alone in a `google.rpc.retryinfo-bin` trailer (the OpenTelemetry Python exporter reads only that
    one, and otherwise backs off 1, 2, 4... s whatever the hint)."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),
            ("google.rpc.retryinfo-bin", info.SerializeToString()))


def retry_hint(trailers: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The RetryInfo delay in an answer's trailers, in seconds, wherever the server put it: in the
    google.rpc.Status details (the Collector, grpc-go and grpc-java servers), or alone in a
    `google.rpc.retryinfo-bin` trailer; tailsampler's receivers send both."""
    for key, value in trailers or ():
        if not isinstance(value, bytes):
            continue
        info: error_details_pb2.RetryInfo | None = None
        try:
            if key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
            elif key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
        except DecodeError:
            continue
        if info is not None:
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def channel_options(max_backoff_ms: int) -> list[tuple[str, int]]:
    """Client channel options: gRPC's own reconnect backoff grows to 120 s by default, so a recovered
    server would wait for the channel long after our own retries have started asking again."""
    return [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", max_backoff_ms)]
