"""Log records in the sans-I/O core, with a hand-advanced clock: held with their trace and decided
with it, late records following the decision cache, untraced records passed or dropped, the `errors`
policy reading severities; and the invariant that every span and record is forwarded once or dropped,
never both."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from sampler.config.yamlfile import parse_yaml
from sampler.otlp.logs import NO_TRACE
from sampler.otlp.splice import POLICY_KEY
from sampler.otlp.wire import WireError
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.engine import Engine, Verdict
from sampler.policy.loader import load_policies
from sampler.policy.summary import TraceSummary
from tests.spans import L, S, logs_request, record_number, request, tid
from tests.test_core import parse_span_id

ERRORS = "policies: [{name: errors, type: errors}]"


class LogHarness:
    def __init__(self, policies: str = ERRORS, max_traces: int = 1000, max_bytes: int = 10**9, wait: float = 5.0,
                 untraced_pass: bool = True) -> None:
        self.kept: list[KeptTrace] = []
        self.decided: list[tuple[bytes, bool, str]] = []
        engine = Engine(load_policies(parse_yaml(policies, "test.yaml")).policies)
        self.core = Core(Buffer(max_traces, max_bytes, wait, 60.0), engine, DecisionCache(1000, 1000),
                         self.kept.append, on_decision=self._on_decision)
        self.core.untraced_pass = untraced_pass

    def _on_decision(self, summary: TraceSummary, verdict: Verdict, reason: str) -> None:
        self.decided.append((summary.trace_id, verdict.keep, reason))

    def spans(self, now: float, *spans: S) -> None:
        self.core.ingest(request(spans), "grpc", now)

    def logs(self, now: float, *records: L) -> int:
        return self.core.ingest_logs(logs_request(records), "grpc", now)

    def kept_records(self) -> list[int]:
        return [record_number(r) for t in self.kept if t.logs for r in t.spans]

    def kept_spans(self) -> list[bytes]:
        return [parse_span_id(s) for t in self.kept if not t.logs for s in t.spans]


def test_records_wait_with_their_trace_and_leave_in_a_logs_request_of_their_own() -> None:
    h = LogHarness()
    h.spans(0.0, S(1, 1, status=2))
    assert h.logs(1.0, L(1, 10), L(1, 11, span=1)) == 2
    assert h.kept == []
    assert h.core.sweep(6.0) == 1  # quiet since 1.0: records count as activity
    assert [(t.logs, len(t.spans)) for t in h.kept] == [(False, 1), (True, 2)]
    assert h.kept_records() == [10, 11]
    records = next(t for t in h.kept if t.logs)
    assert records.trace_id == tid(1) and records.policy == "errors"
    assert [g.attrs["service.name"] for g in records.groups] == ["svc", "svc"]
    assert h.core.stats.records_received["grpc"] == 2


def test_records_of_a_dropped_trace_are_dropped_and_counted() -> None:
    h = LogHarness()
    h.spans(0.0, S(1, 1))
    h.logs(0.5, L(1, 10), L(1, 11))
    h.core.sweep(10.0)
    assert h.decided == [(tid(1), False, "quiet")]
    assert h.kept == []
    assert h.core.stats.records_dropped == {"trace_dropped": 2}


def test_an_error_record_keeps_a_trace_whose_spans_are_fine() -> None:
    h = LogHarness()
    h.spans(0.0, S(1, 1), S(2, 2))
    h.logs(0.0, L(1, 10, severity=17), L(2, 20, severity=13))
    h.core.sweep(10.0)
    assert sorted(h.decided) == sorted([(tid(1), True, "quiet"), (tid(2), False, "quiet")])
    assert h.kept_records() == [10]


@pytest.mark.parametrize(("config", "severity", "kept"), [
    ("{}", 16, False), ("{}", 17, True), ("{}", 24, True),
    ("{log_severity_min: 13}", 13, True), ("{log_severity_min: 13}", 12, False),
    ("{log_severity_min: null}", 24, False),
])
def test_log_severity_min(config: str, severity: int, kept: bool) -> None:
    h = LogHarness(f"policies: [{{name: errors, type: errors, errors: {config}}}]")
    h.spans(0.0, S(1, 1))
    h.logs(0.0, L(1, 10, severity=severity))
    h.core.sweep(10.0)
    assert h.decided == [(tid(1), kept, "quiet")]


def test_a_trace_of_records_only_is_held_and_decided_by_the_policies() -> None:
    h = LogHarness()
    h.logs(0.0, L(1, 10, severity=21), L(1, 11))
    h.logs(0.0, L(2, 20))
    assert len(h.core.buffer) == 2
    h.core.sweep(10.0)
    assert sorted(h.decided) == sorted([(tid(1), True, "quiet"), (tid(2), False, "quiet")])
    assert [t.logs for t in h.kept] == [True]
    assert h.kept_records() == [10, 11]


def test_late_records_follow_the_decision() -> None:
    h = LogHarness()
    h.spans(0.0, S(1, 1, status=2), S(2, 2))
    h.core.sweep(10.0)
    h.kept.clear()
    h.logs(11.0, L(1, 10), L(2, 20), L(2, 21))
    assert h.kept_records() == [10]
    late = h.kept[0]
    assert late.logs and late.policy == "errors" and late.summary is None
    assert h.core.stats.late_records == {"keep": 1, "drop": 2}
    assert h.core.stats.records_dropped == {"trace_dropped": 2}
    assert len(h.core.buffer) == 0


@pytest.mark.parametrize("passed", [True, False])
def test_untraced_records_pass_at_once_or_are_dropped(passed: bool) -> None:
    h = LogHarness(untraced_pass=passed)
    h.logs(0.0, L(None, 1), L(1, 10), L(None, 2))
    assert len(h.core.buffer) == 1  # the traced record waits for its trace
    if passed:
        assert [(t.trace_id, t.logs, t.policy) for t in h.kept] == [(NO_TRACE, True, "")]
        assert h.kept_records() == [1, 2]
        assert h.core.stats.records_dropped == {}
    else:
        assert h.kept == []
        assert h.core.stats.records_dropped == {"untraced": 2}


def test_an_all_zero_trace_id_is_no_trace_id() -> None:
    h = LogHarness()
    record = LogRecord(trace_id=bytes(16), severity_number=9)  # type: ignore[arg-type]
    body = logs_request([L(None, 1)])
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    msg = ExportLogsServiceRequest.FromString(body)
    msg.resource_logs[0].scope_logs[0].log_records.append(record)
    h.core.ingest_logs(msg.SerializeToString(), "http", 0.0)
    assert len(h.core.buffer) == 0
    assert [len(t.spans) for t in h.kept] == [2]


@pytest.mark.parametrize("body", [
    b"\x0a\x05\x12\x03\x12\x01",  # truncated
    logs_request([L(1, 1)]).replace(tid(1), tid(1)[:15] + b"\xff")[:-3],  # cut mid-record
    b"\x0a\x07\x12\x05\x12\x03\x4a\x01\x00",  # a trace id of one byte
])
def test_malformed_logs_requests_raise_and_change_nothing(body: bytes) -> None:
    h = LogHarness()
    h.logs(0.0, L(1, 10))
    with pytest.raises(WireError):
        h.core.ingest_logs(body, "grpc", 1.0)
    assert len(h.core.buffer) == 1 and h.core.stats.records_received["grpc"] == 1


def test_records_count_against_the_buffer_bytes_and_evict_like_spans() -> None:
    h = LogHarness(max_bytes=4000)
    for n in range(1, 60):
        h.logs(float(n) / 100, L(n, n, attrs={"pad": "x" * 100}))
    assert h.core.buffer.nbytes <= 4000
    assert h.core.stats.evicted > 0
    assert h.core.stats.evicted == len(h.decided)


def test_kept_records_are_the_received_bytes_and_carry_no_annotation_in_the_core() -> None:
    """The core hands records on as received; the exporter splices the annotation in (tested there)."""
    h = LogHarness()
    body = logs_request([L(1, 10, severity=17, attrs={"k": "v"})])
    h.core.ingest_logs(body, "grpc", 0.0)
    h.core.sweep(10.0)
    (kept,) = h.kept
    record = LogRecord.FromString(kept.spans[0])
    assert record.body.string_value == "record 10" and record.severity_number == 17
    assert [a.key for a in record.attributes] == ["k"]
    assert POLICY_KEY not in kept.spans[0].decode("latin-1")


# --- every span and record forwarded once or dropped, never both ---------------------------------------

EVENT = st.one_of(
    st.tuples(st.just("span"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("log"), st.integers(0, 5), st.sampled_from([9, 13, 17, 21])),
    st.tuples(st.just("untraced"), st.just(0), st.booleans()),
    st.tuples(st.just("sweep"), st.just(0), st.just(False)),
)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(EVENT, st.floats(0.0, 3.0)), max_size=60),
       max_traces=st.integers(1, 4), untraced_pass=st.booleans())
def test_every_span_and_record_is_forwarded_once_or_dropped(
    events: list[tuple[tuple[str, int, object], float]], max_traces: int, untraced_pass: bool
) -> None:
    h = LogHarness(max_traces=max_traces, wait=2.0, untraced_pass=untraced_pass)
    now = 0.0
    span_trace: dict[bytes, int] = {}
    record_trace: dict[int, int | None] = {}
    for i, ((kind, trace, arg), dt) in enumerate(events):
        now += dt
        if kind == "span":
            h.spans(now, S(trace, 1000 + i, status=2 if arg else 0))
            span_trace[(1001 + i).to_bytes(8, "big")] = trace
        elif kind == "log":
            assert isinstance(arg, int)
            h.logs(now, L(trace, i, severity=arg))
            record_trace[i] = trace
        elif kind == "untraced":
            h.logs(now, L(None, i))
            record_trace[i] = None
        else:
            h.core.sweep(now)
    h.core.decide_all(now + 100.0)
    assert len(h.core.buffer) == 0

    spans = Counter(h.kept_spans())
    records = Counter(h.kept_records())
    assert all(n == 1 for n in spans.values()) and all(n == 1 for n in records.values())
    assert set(spans) <= set(span_trace) and set(records) <= set(record_trace)
    stats = h.core.stats
    dropped_records = sum(stats.records_dropped.values())
    assert len(records) + dropped_records == len(record_trace)
    assert stats.records_received["grpc"] == len(record_trace)
    # a trace is kept or dropped as a whole: its spans and records go the same way
    kept_traces = {t.trace_id for t in h.kept if t.trace_id != NO_TRACE}
    for span_id, trace in span_trace.items():
        assert (span_id in spans) == (tid(trace) in kept_traces)
    for number, trace in record_trace.items():
        if trace is None:
            assert (number in records) == untraced_pass
        else:
            assert (number in records) == (tid(trace) in kept_traces)
