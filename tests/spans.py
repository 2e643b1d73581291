"""Build OTLP requests for core tests from plain values (protobuf classes, never the code under test)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

Value = str | int | float | bool


def kv(key: str, value: Value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


@dataclass
class S:
    """One span, as plain values."""

    trace: int  # trace number; the trace id is derived from it
    span: int  # span number within the request builder's namespace
    parent: int | None = None
    name: str = "op"
    start_ms: int = 0
    end_ms: int = 10
    status: int = 0
    attrs: Mapping[str, Value] = field(default_factory=dict)
    service: str = "svc"
    trace_state: str = ""
    flags: int = 0
    events: list[tuple[str, dict[str, Value]]] = field(default_factory=list)
    kind: int = 2  # Span.SPAN_KIND_SERVER


def tid(n: int) -> bytes:
    """A well-mixed trace id per number (real ids are random; FNV is weak on sequential ones)."""
    return hashlib.sha256(n.to_bytes(8, "big")).digest()[:16]


def sid(n: int) -> bytes:
    return (n + 1).to_bytes(8, "big")


def span_message(s: S) -> Span:
    return Span(
        trace_id=tid(s.trace), span_id=sid(s.span), parent_span_id=sid(s.parent) if s.parent is not None else b"",
        name=s.name, kind=s.kind,  # type: ignore[arg-type]
        start_time_unix_nano=s.start_ms * 10**6,
        end_time_unix_nano=s.end_ms * 10**6, status=Status(code=s.status),  # type: ignore[arg-type]
        attributes=[kv(k, v) for k, v in s.attrs.items()], trace_state=s.trace_state, flags=s.flags,
        events=[Span.Event(name=n, attributes=[kv(k, v) for k, v in a.items()]) for n, a in s.events],
    )


def request(spans: Iterable[S], resource: Mapping[str, Value] | None = None) -> bytes:
    """A request grouping spans by service (one ResourceSpans per service)."""
    msg = ExportTraceServiceRequest()
    groups: dict[str, ResourceSpans] = {}
    for s in spans:
        rs = groups.get(s.service)
        if rs is None:
            rs = msg.resource_spans.add()
            rs.resource.attributes.append(kv("service.name", s.service))
            for k, v in (resource or {}).items():
                rs.resource.attributes.append(kv(k, v))
            rs.scope_spans.add().scope.name = "test"
            groups[s.service] = rs
        rs.scope_spans[0].spans.append(span_message(s))
    return msg.SerializeToString()


def parse(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(data)


@dataclass
class L:
    """One log record, as plain values; `trace` None: a record without a trace id."""

    trace: int | None
    record: int  # a number carried in the body, to tell records apart
    severity: int = 9  # INFO
    span: int | None = None
    service: str = "svc"
    attrs: Mapping[str, Value] = field(default_factory=dict)


def record_message(r: L) -> LogRecord:
    return LogRecord(
        time_unix_nano=r.record * 10**6, severity_number=r.severity,  # type: ignore[arg-type]
        body=AnyValue(string_value=f"record {r.record}"), attributes=[kv(k, v) for k, v in r.attrs.items()],
        trace_id=tid(r.trace) if r.trace is not None else b"", span_id=sid(r.span) if r.span is not None else b"",
    )


def logs_request(records: Iterable[L]) -> bytes:
    """A logs request grouping records by service (one ResourceLogs per service)."""
    msg = ExportLogsServiceRequest()
    groups: dict[str, ResourceLogs] = {}
    for r in records:
        rl = groups.get(r.service)
        if rl is None:
            rl = msg.resource_logs.add()
            rl.resource.attributes.append(kv("service.name", r.service))
            rl.scope_logs.add().scope.name = "test"
            groups[r.service] = rl
        rl.scope_logs[0].log_records.append(record_message(r))
    return msg.SerializeToString()


def record_number(data: bytes) -> int:
    """The number `logs_request` put in a record's body."""
    return int(LogRecord.FromString(data).body.string_value.split()[1])
