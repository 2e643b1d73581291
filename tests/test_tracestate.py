"""The consistent-sampling threshold (`ot=th:`) against the OpenTelemetry specification's own
examples ("TraceState: Probability Sampling"), merged into existing tracestates, spliced into spans;
and which kept traces carry it, through the core and the exporter's encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sampler.exporters.base import encode_batch
from sampler.otlp.tracestate import merge, probability_of, threshold, with_threshold
from tests.spans import S, span_message, tid
from tests.test_core import Harness


def test_thresholds_match_the_specification_table() -> None:
    # the spec's table, precision 4 (its recommended default), with precision 3 and 5 beside it
    assert threshold(0.1) == "e666"
    assert threshold(0.1, 3) == "e66" and threshold(0.1, 5) == "e6666"
    assert threshold(0.01) == "fd70a"
    assert threshold(0.01, 3) == "fd71" and threshold(0.01, 5) == "fd70a4"  # "fd70a4" also in its prose
    assert threshold(1.0) == "0" and threshold(0.5) == "8" and threshold(0.25) == "c" and threshold(0.125) == "e"
    assert threshold(1 / 3) == "aaab" and threshold(0.2) == "cccd" and threshold(0.0625) == "f"
    assert threshold(0.001) == "ffbe77" and threshold(0.0001) == "fff9724" and threshold(0.00001) == "ffff583a"
    assert threshold(0.000001) == "ffffef39"
    assert abs(1 / probability_of("e666") - 9.99938968568813) < 1e-9  # its adjusted count column
    assert abs(1 / probability_of("fd70a") - 99.99771123402633) < 1e-9  # type: ignore[operator]


def test_merging_keeps_other_members_and_subkeys() -> None:
    assert merge("", 0.1) == "ot=th:e666"
    assert merge("vendor=abc,other=1", 0.1) == "ot=th:e666,vendor=abc,other=1"
    assert merge("vendor=abc,ot=rv:0123456789abcd", 0.01) == "ot=th:fd70a;rv:0123456789abcd,vendor=abc"
    # sampled before at 50%: kept here at 10% makes 5% (a threshold only rises)
    assert merge("ot=th:8;rv:0123456789abcd;x:y,v=1", 0.1) == f"ot=th:{threshold(0.05)};rv:0123456789abcd;x:y,v=1"
    assert merge("ot=th:0", 0.1) == "ot=th:e666"


def test_splicing_replaces_the_span_tracestate_only() -> None:
    data = span_message(S(1, 1, trace_state="congo=t61rcWkgMzE", attrs={"a": "b"}, name="op")).SerializeToString()
    span = Span.FromString(with_threshold(data, 0.1))
    assert span.trace_state == "ot=th:e666,congo=t61rcWkgMzE"
    assert span.name == "op" and span.attributes[0].key == "a"
    bare = Span.FromString(with_threshold(span_message(S(1, 2)).SerializeToString(), 0.01))
    assert bare.trace_state == "ot=th:fd70a"


PROBABILITY = """
policies:
  - {name: marked, type: string_attribute, string_attribute: {key: keep, values: ['yes']}}
  - {name: tenth, type: probabilistic, probabilistic: {sampling_percentage: 10}}
  - {name: routes, type: route, route: {attribute: http.route, default_percentage: 0,
      rules: [{match: /all, sample_percentage: 100}, {match: /some, sample_percentage: 1}]}}
"""


def _exported(h: Harness) -> dict[bytes, list[Span]]:
    out: dict[bytes, list[Span]] = {}
    for t in h.kept:
        msg = ExportTraceServiceRequest.FromString(encode_batch([t], True))
        out[t.trace_id] = [s for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return out


def test_probability_keeps_carry_the_threshold_rule_keeps_none() -> None:
    h = Harness(policies=PROBABILITY)
    for n in range(400):
        h.send(0.0, S(n, 1, trace_state="vendor=x", attrs={"http.route": "/all" if n % 2 else "/some"}),
               S(n, 2, parent=1, trace_state="vendor=x"))
    h.send(0.0, S(1000, 1, attrs={"keep": "yes"}))
    h.core.sweep(10.0)
    exported = _exported(h)
    by_policy: dict[str, set[str]] = {}
    for t in h.kept:
        for span in exported[t.trace_id]:
            by_policy.setdefault(t.policy or "", set()).add(span.trace_state)
    assert by_policy["marked"] == {""}  # a rule-based keep: no threshold
    assert by_policy["tenth"] == {"ot=th:e666,vendor=x"}
    assert by_policy["routes"] == {"ot=th:0,vendor=x"}  # /all: kept at 100%
    assert len(exported[tid(1000)]) == 1
    # encoded once: a retry of the same batch does not apply the threshold twice
    kept = next(t for t in h.kept if t.policy == "tenth")
    again = ExportTraceServiceRequest.FromString(encode_batch([kept], True))
    assert {s.trace_state for rs in again.resource_spans for ss in rs.scope_spans for s in ss.spans} == \
        {"ot=th:e666,vendor=x"}


def test_dry_run_passes_every_trace_with_its_decision() -> None:
    h = Harness(policies=PROBABILITY)
    h.core.dry_run = True
    h.send(0.0, S(1, 1, attrs={"keep": "yes"}), S(2, 2, attrs={"http.route": "/none"}))
    h.core.sweep(10.0)
    h.send(11.0, S(2, 3, parent=2))  # late: follows its (drop) decision, passed on all the same
    exported = _exported(h)
    decisions = {t: {next(a.value.string_value for a in s.attributes if a.key == "tailsampling.decision")
                     for s in spans} for t, spans in exported.items()}
    assert decisions == {tid(1): {"keep"}, tid(2): {"drop"}}
    assert sum(len(t.spans) for t in h.kept) == 3
    assert h.core.stats.decided == {("keep", "marked"): 1, ("drop", ""): 1}  # the real decisions
    # arriving with a decision already (a dry-run instance in front): replaced, not repeated
    h2 = Harness(policies=PROBABILITY)
    h2.core.dry_run = True
    h2.send(0.0, S(3, 1, attrs={"tailsampling.decision": "keep"}))
    h2.core.sweep(10.0)
    (spans,) = _exported(h2).values()
    assert [a.value.string_value for a in spans[0].attributes if a.key == "tailsampling.decision"] == ["drop"]


@settings(max_examples=300, deadline=None)
@given(states=st.lists(st.sampled_from(["", "ot=th:8", "vendor=x,ot=rv:abc;th:e666", "a=1"]), max_size=3),
       cut=st.integers(0, 200))
def test_compiled_and_interpreted_cut_field_agree(states: list[str], cut: int) -> None:
    """The compiled cut_field (used for every span kept by a probability) and the interpreted one
    give the same span and value, and refuse the same truncated bytes."""
    from sampler.otlp import tracestate
    from sampler.otlp.split import COMPILED
    from sampler.otlp.wire import WireError

    if not COMPILED:
        pytest.skip("the compiled splitter is not built")
    span = span_message(S(1, 1, trace_state=states[0] if states else "")).SerializeToString()
    for state in states[1:]:  # extra trace_state fields, as a non-canonical producer could send
        span += Span(trace_state=state).SerializeToString()
    for data in (span, span[:cut]):
        outcomes = []
        for cut_field in (tracestate.cut_field, tracestate._cut_field):
            try:
                outcomes.append(cut_field(data, tracestate.TRACE_STATE))
            except WireError as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1], data
