"""The rest of the Collector policy set: span_count, trace_state, trace_flags, boolean_attribute,
and/not/drop, rate_limiting and bytes_limiting (token buckets on an injected clock), composite
budgets over several seconds, ottl_condition, sample_on_first_match."""

from __future__ import annotations

import pytest

from sampler.config.yamlfile import ConfigError, parse_yaml
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.engine import Verdict
from sampler.policy.limiter import TokenBucket
from sampler.policy.loader import load_policies
from sampler.policy.ottl import OttlError, compile_condition
from sampler.policy.summary import TraceSummary
from tests.spans import S, request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(policies: str, traces: list[list[S]], clock: Clock | None = None,
        step: float = 0.0) -> list[Verdict]:
    """Decide each trace in turn (advancing the clock by `step` before each), in order."""
    clock = clock or Clock()
    out: list[Verdict] = []

    def record(summary: TraceSummary, v: Verdict, reason: str) -> None:
        out.append(v)

    policy_set = load_policies(parse_yaml(policies, "p.yaml"), clock=clock)
    core = Core(Buffer(1000, 10**9, 5, 60), policy_set.engine(), DecisionCache(10, 10), lambda t: None,
                on_decision=record)
    for spans in traces:
        clock.now += step
        core.ingest(request(spans), "grpc", 0.0)
        core.decide_all(0.0)
    return out


def keeps(policies: str, spans: list[S]) -> bool:
    return run(policies, [spans])[0].keep


def one(kind: str, body: str) -> str:
    return f"policies: [{{name: p, type: {kind}, {kind}: {body}}}]"


@pytest.mark.parametrize(("body", "n", "kept"), [
    ("{min_spans: 2}", 1, False), ("{min_spans: 2}", 2, True), ("{min_spans: 2}", 50, True),
    ("{min_spans: 2, max_spans: 3}", 3, True), ("{min_spans: 2, max_spans: 3}", 4, False),
])
def test_span_count(body: str, n: int, kept: bool) -> None:
    assert keeps(one("span_count", body), [S(1, i) for i in range(n)]) is kept


@pytest.mark.parametrize(("state", "kept"), [
    ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", True), ("congo=t61rcWkgMzE", False),
    ("rojo=other", False), ("", False), ("rojo", False),
])
def test_trace_state(state: str, kept: bool) -> None:
    body = "{key: rojo, values: [00f067aa0ba902b7]}"
    assert keeps(one("trace_state", body), [S(1, 1), S(1, 2, trace_state=state)]) is kept


@pytest.mark.parametrize(("flags", "kept"), [(0, False), (1, True), (0x101, True), (0x100, False)])
def test_trace_flags(flags: int, kept: bool) -> None:
    assert keeps(one("trace_flags", "{}"), [S(1, 1), S(1, 2, flags=flags)]) is kept


@pytest.mark.parametrize(("body", "value", "kept"), [
    ("{key: b, value: true}", True, True), ("{key: b, value: true}", False, False),
    ("{key: b, value: false}", False, True), ("{key: b, value: true}", "true", False),
    ("{key: b, value: true, invert_match: true}", True, False),
    ("{key: b, value: true, invert_match: true}", False, True),
])
def test_boolean_attribute(body: str, value: object, kept: bool) -> None:
    assert keeps(one("boolean_attribute", body), [S(1, 1, attrs={"b": value})]) is kept  # type: ignore[dict-item]


AND = ("policies: [{name: both, type: and, and: {and_sub_policy: ["
       "{name: slow, type: latency, latency: {threshold_ms: 100}},"
       "{name: checkout, type: string_attribute, string_attribute: {key: svc, values: [checkout]}}]}}]")


@pytest.mark.parametrize(("ms", "svc", "kept"), [(200, "checkout", True), (50, "checkout", False),
                                                 (200, "cart", False)])
def test_and(ms: int, svc: str, kept: bool) -> None:
    assert keeps(AND, [S(1, 1, end_ms=ms, attrs={"svc": svc})]) is kept


def test_not_inverts_its_sub_policy() -> None:
    policies = one("not", "{not_sub_policy: {name: errs, type: status_code, status_code: {status_codes: [ERROR]}}}")
    assert keeps(policies, [S(1, 1)])
    assert not keeps(policies, [S(1, 1, status=2)])


DROP = ("policies: [{name: all, type: always_sample},"
        " {name: no-health, type: drop, drop: {drop_sub_policy: ["
        "  {name: health, type: string_attribute, string_attribute: {key: http.route, values: [/health]}}]}}]")


def test_drop_vetoes_and_is_named_as_the_deciding_policy() -> None:
    (v,) = run(DROP, [[S(1, 1, attrs={"http.route": "/health"})]])
    assert v == Verdict(False, "no-health", 0.0)
    (v,) = run(DROP, [[S(1, 1, attrs={"http.route": "/cart"})]])
    assert v.keep and v.policy == "all"


def test_sample_on_first_match_stops_at_the_first_sampled_vote() -> None:
    text = ("sample_on_first_match: true\npolicies: [{name: all, type: always_sample},"
            " {name: no-health, type: drop, drop: {drop_sub_policy: ["
            "  {name: health, type: string_attribute, string_attribute: {key: http.route, values: [/health]}}]}}]")
    (v,) = run(text, [[S(1, 1, attrs={"http.route": "/health"})]])
    assert v.keep and v.policy == "all"  # as upstream: later policies, drops included, are not evaluated


def test_token_bucket_matches_go_rate_limiter() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 20, clock)
    assert bucket.allow(20)  # starts full
    assert not bucket.allow(1)
    clock.now += 0.5
    assert bucket.allow(5) and not bucket.allow(1)  # 5 tokens refilled in half a second
    clock.now += 100
    assert not bucket.allow(21)  # never more than the burst
    assert bucket.allow(20)


def test_rate_limiting_admits_spans_per_second_with_burst() -> None:
    policies = one("rate_limiting", "{spans_per_second: 10, burst_capacity: 10}")
    clock = Clock()
    traces = [[S(t, t * 10 + i) for i in range(4)] for t in range(1, 11)]  # 4 spans each
    verdicts = run(policies, traces, clock, step=0.1)  # 10 traces over 1 s: 40 spans offered
    kept = sum(v.keep for v in verdicts)
    # 10 burst tokens plus 1 token per 0.1 s: the first 2 pass, then one every 0.4 s.
    assert kept == 4


def test_bytes_limiting_uses_the_trace_size() -> None:
    from tests.spans import span_message

    sizes = {len(span_message(S(t, t)).SerializeToString()) for t in range(1, 8)}
    assert len(sizes) == 1  # every trace is one span of the same size
    policies = one("bytes_limiting", f"{{bytes_per_second: {sizes.pop() * 2}}}")
    verdicts = run(policies, [[S(t, t)] for t in range(1, 8)])  # one instant: the burst (2x rate) only
    assert sum(v.keep for v in verdicts) == 4


COMPOSITE = """
policies:
  - name: budget
    type: composite
    composite:
      max_total_spans_per_second: 100
      policy_order: [errors, everything]
      composite_sub_policy:
        - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
        - {name: everything, type: always_sample}
      rate_allocation:
        - {policy: errors, percent: 60}
        - {policy: everything, percent: 20}
"""


def test_composite_budgets_reset_every_second() -> None:
    clock = Clock()
    out: list[Verdict] = []
    policy_set = load_policies(parse_yaml(COMPOSITE, "p.yaml"), clock=clock)
    core = Core(Buffer(1000, 10**9, 5, 60), policy_set.engine(), DecisionCache(10, 10), lambda t: None,
                on_decision=lambda s, v, r: out.append(v))
    n = 0

    def ten_traces(error: bool) -> int:
        """Decide 10 traces of 10 spans within the current second; how many were kept."""
        nonlocal n
        before = len(out)
        for _ in range(10):
            n += 1
            core.ingest(request([S(n, n * 100 + i, status=2 if error else 0) for i in range(10)]), "grpc", 0.0)
            core.decide_all(0.0)
        return sum(v.keep for v in out[before:])

    for _ in range(3):
        clock.now = float(int(clock.now) + 1)
        # 60 and 20 spans per second for errors and everything else, 10 spans per trace.
        assert (ten_traces(error=True), ten_traces(error=False)) == (6, 2)


@pytest.mark.parametrize(("text", "reason"), [
    ("composite: {max_total_spans_per_second: 10, composite_sub_policy: [{name: a, type: always_sample}],"
     " rate_allocation: [{policy: a, percent: 80}, {policy: a, percent: 30}]}", "over 100%"),
    ("composite: {max_total_spans_per_second: 10, composite_sub_policy: [{name: a, type: always_sample}],"
     " rate_allocation: [{policy: b, percent: 10}]}", "not a composite_sub_policy"),
    ("and: {and_sub_policy: []}", "at least 1"),
    ("not: {}", "not_sub_policy"),
    ("drop: {drop_sub_policy: [{name: x, type: composite}]}", "cannot be used here"),
])
def test_compound_policy_problems(text: str, reason: str) -> None:
    kind = text.split(":")[0]
    with pytest.raises(ConfigError) as info:
        load_policies(parse_yaml(f"policies: [{{name: p, type: {kind}, {text}}}]", "p.yaml"))
    assert any(reason in p.reason or reason in p.field for p in info.value.problems), info.value.problems


OTTL_CASES = [
    ('attributes["http.route"] == "/checkout"', {"http.route": "/checkout"}, True),
    ('attributes["http.route"] == "/checkout"', {"http.route": "/cart"}, False),
    ('attributes["n"] > 5', {"n": 6}, True),
    ('attributes["n"] > 5', {"n": 5}, False),
    ('attributes["n"] >= 5.0', {"n": 5}, True),  # ints and floats compare as numbers
    ('attributes["n"] > 5', {"n": "6"}, False),  # a string is not ordered against a number
    ('attributes["missing"] == nil', {}, True),
    ('attributes["n"] != nil and not (attributes["n"] < 3)', {"n": 3}, True),
    ('kind == SPAN_KIND_SERVER', {}, True),
    ('status.code == STATUS_CODE_ERROR or name == "op"', {}, True),
    ('duration > 1000000000', {}, False),
    ('IsMatch(attributes["url.path"], "^/api/v[0-9]+/")', {"url.path": "/api/v2/x"}, True),
    ('IsMatch(name, "p$")', {}, True),
    ('resource.attributes["service.name"] == "svc"', {}, True),
    ('attributes["flag"] == true', {"flag": True}, True),
]


@pytest.mark.parametrize(("condition", "attrs", "kept"), OTTL_CASES)
def test_ottl_span_conditions(condition: str, attrs: dict[str, object], kept: bool) -> None:
    body = "{span: [" + repr(condition).replace("\\'", "''") + "]}"
    spans = [S(1, 1, attrs=attrs)]  # type: ignore[arg-type]
    assert keeps(one("ottl_condition", body), spans) is kept


def test_ottl_span_event_conditions() -> None:
    body = """{spanevent: ['name == "exception" and attributes["exception.type"] == "Timeout"']}"""
    hit = [S(1, 1), S(1, 2, events=[("exception", {"exception.type": "Timeout"})])]
    miss = [S(1, 1, events=[("exception", {"exception.type": "KeyError"}), ("log", {})])]
    assert keeps(one("ottl_condition", body), hit)
    assert not keeps(one("ottl_condition", body), miss)


@pytest.mark.parametrize(("condition", "events", "part"), [
    ('attributes["a"]["b"] == 1', False, "nested keys"),
    ('Concat(name, "x") == "y"', False, "'Concat'"),
    ("span_id == nil", False, "'span_id'"),
    ('name =~ "x"', False, "'=~ \"x\"'"),
    ('trace_id.string == "x"', False, "'trace_id.string'"),
    ('time_unix_nano > 0', True, "'time_unix_nano'"),
    ('IsMatch(name, attributes["p"])', False, "string literal pattern"),
])
def test_unsupported_ottl_is_named(condition: str, events: bool, part: str) -> None:
    with pytest.raises(OttlError, match=None) as info:
        compile_condition(condition, events)
    assert part in str(info.value)


def test_unsupported_ottl_fails_validation_with_its_place() -> None:
    text = """policies:
  - name: o
    type: ottl_condition
    ottl_condition:
      span: ['name == "a"', 'Len(name) > 3']
"""
    with pytest.raises(ConfigError) as info:
        load_policies(parse_yaml(text, "p.yaml"))
    (problem,) = info.value.problems
    assert (problem.field, problem.line) == ("policies[0].ottl_condition.span[1]", 5)
    assert "'Len'" in problem.reason
