"""Policy semantics, table-driven, through the real walker and core (spans in, verdict out)."""

from __future__ import annotations

import itertools
import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sampler.config.yamlfile import ConfigError, parse_yaml
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.engine import Engine, Verdict
from sampler.policy.hashing import fnv1a64, threshold
from sampler.policy.loader import load_policies
from sampler.policy.summary import TraceSummary
from tests.spans import S, request, span_message, tid


def verdict(policies: str, spans: list[S], resource: dict[str, object] | None = None) -> Verdict:
    return verdict_of(policies, request(spans, resource))  # type: ignore[arg-type]


def verdict_of(policies: str, data: bytes) -> Verdict:
    """The verdict on the one trace in the OTLP request `data`."""
    out: list[Verdict] = []

    def record(summary: TraceSummary, v: Verdict, reason: str) -> None:
        out.append(v)

    core = Core(Buffer(100, 10**9, 5, 60), Engine(load_policies(parse_yaml(policies, "p.yaml")).policies),
                DecisionCache(10, 10), lambda t: None, on_decision=record)
    core.ingest(data, "grpc", 0.0)
    core.decide_all(1.0)
    assert len(out) == 1
    return out[0]


def one(kind: str, body: str) -> str:
    return f"policies: [{{name: p, type: {kind}, {kind}: {body}}}]"


def keeps(policies: str, spans: list[S], resource: dict[str, object] | None = None) -> bool:
    return verdict(policies, spans, resource).keep


LATENCY = [
    # (threshold, upper, trace duration in ms, kept)
    (100, 0, 99, False),
    (100, 0, 101, True),
    (100, 0, 5000, True),
    (100, 200, 150, True),
    (100, 200, 201, False),
]


@pytest.mark.parametrize(("low", "high", "ms", "kept"), LATENCY)
def test_latency_uses_the_whole_trace(low: int, high: int, ms: int, kept: bool) -> None:
    body = f"{{threshold_ms: {low}, upper_threshold_ms: {high}}}"
    # No single span is long: the duration is the earliest start to the latest end.
    spans = [S(1, 1, start_ms=0, end_ms=ms // 2), S(1, 2, parent=1, start_ms=ms // 2, end_ms=ms)]
    for order in itertools.permutations(spans):
        assert keeps(one("latency", body), list(order)) is kept


MS = 1_000_000  # nanoseconds
LATENCY_BOUNDS = [
    # (threshold_ms, upper_threshold_ms, trace duration in ns, kept). As upstream since
    # opentelemetry-collector-contrib #49595: the duration is truncated to whole milliseconds, the
    # lower bound is exclusive with or without an upper bound, the upper bound inclusive.
    (100, 0, 100 * MS - 1, False),
    (100, 0, 100 * MS, False),  # exactly the threshold
    (100, 0, 100 * MS + 1, False),  # still 100 ms once truncated
    (100, 0, 101 * MS - 1, False),
    (100, 0, 101 * MS, True),
    (100, 200, 100 * MS - 1, False),
    (100, 200, 100 * MS, False),
    (100, 200, 100 * MS + 1, False),
    (100, 200, 101 * MS, True),
    (100, 200, 200 * MS - 1, True),
    (100, 200, 200 * MS, True),  # exactly the upper bound
    (100, 200, 200 * MS + 1, True),  # 200 ms once truncated
    (100, 200, 201 * MS - 1, True),
    (100, 200, 201 * MS, False),
    (0, 0, 0, False),  # threshold 0: any trace of at least 1 ms
    (0, 0, MS - 1, False),
    (0, 0, MS, True),
    (100, 100, 100 * MS, False),  # equal bounds: nothing fits
    (100, 100, 101 * MS, False),
]


@pytest.mark.parametrize(("low", "high", "ns", "kept"), LATENCY_BOUNDS)
def test_latency_bounds_to_the_nanosecond(low: int, high: int, ns: int, kept: bool) -> None:
    body = f"{{threshold_ms: {low}, upper_threshold_ms: {high}}}"
    start = 1_700_000_000 * 10**9 + 123_456_789  # a real epoch time, not aligned to a millisecond
    msg = ExportTraceServiceRequest()
    scope = msg.resource_spans.add().scope_spans.add()
    for n, (begin, end) in enumerate([(start, start + ns // 2), (start + ns // 3, start + ns)]):
        span = span_message(S(1, n, parent=None if n == 0 else 0))
        span.start_time_unix_nano, span.end_time_unix_nano = begin, end
        scope.spans.append(span)
    assert verdict_of(one("latency", body), msg.SerializeToString()).keep is kept


@pytest.mark.parametrize(("codes", "statuses", "kept"), [
    ("[ERROR]", [0, 1], False),
    ("[ERROR]", [0, 2], True),
    ("[OK, UNSET]", [2, 2], False),
    ("[UNSET]", [2, 0], True),
    ("[OK]", [1], True),
])
def test_status_code(codes: str, statuses: list[int], kept: bool) -> None:
    spans = [S(1, i, status=st) for i, st in enumerate(statuses)]
    assert keeps(one("status_code", f"{{status_codes: {codes}}}"), spans) is kept


@pytest.mark.parametrize(("body", "attrs", "resource", "kept"), [
    ("{key: k, values: [a, b]}", {"k": "b"}, None, True),
    ("{key: k, values: [a, b]}", {"k": "ab"}, None, False),  # exact match without regex
    ("{key: k, values: [a]}", {}, {"k": "a"}, True),  # resource attributes count
    ("{key: k, values: [a]}", {"k": 1}, None, False),  # not a string
    ("{key: k, values: ['b.d'], enabled_regex_matching: true}", {"k": "abcde"}, None, True),  # unanchored
    ("{key: k, values: ['^bcd$'], enabled_regex_matching: true}", {"k": "abcde"}, None, False),
    ("{key: k, values: [a], invert_match: true}", {"k": "a"}, None, False),
    ("{key: k, values: [a], invert_match: true}", {"k": "z"}, None, True),
    ("{key: k, values: [a], invert_match: true}", {}, None, True),
])
def test_string_attribute(
    body: str, attrs: dict[str, object], resource: dict[str, object] | None, kept: bool
) -> None:
    spans = [S(1, 1), S(1, 2, parent=1, attrs=attrs)]  # type: ignore[arg-type]
    assert keeps(one("string_attribute", body), spans, resource) is kept


def test_invert_match_vetoes_other_keep_votes() -> None:
    policies = ("policies: [{name: all, type: always_sample},"
                " {name: not-health, type: string_attribute,"
                "  string_attribute: {key: http.route, values: [/health], invert_match: true}}]")
    assert not keeps(policies, [S(1, 1, attrs={"http.route": "/health"})])
    v = verdict(policies, [S(1, 1, attrs={"http.route": "/checkout"})])
    assert v.keep and v.policy == "all"


@pytest.mark.parametrize(("body", "value", "kept"), [
    ("{key: n, min_value: 10, max_value: 20}", 10, True),
    ("{key: n, min_value: 10, max_value: 20}", 20, True),
    ("{key: n, min_value: 10, max_value: 20}", 21, False),
    ("{key: n, min_value: 10, max_value: 20}", 9, False),
    ("{key: n, min_value: 10}", 10**12, True),  # only one bound
    ("{key: n, max_value: 10}", -(10**12), True),
    ("{key: n, min_value: 10, max_value: 20, invert_match: true}", 15, False),
    ("{key: n, min_value: 10, max_value: 20, invert_match: true}", 25, True),
    ("{key: n, min_value: 0, max_value: 20}", "5", False),  # a string is not a number
])
def test_numeric_attribute(body: str, value: object, kept: bool) -> None:
    assert keeps(one("numeric_attribute", body), [S(1, 1, attrs={"n": value})]) is kept  # type: ignore[dict-item]


@pytest.mark.parametrize(("status", "attrs", "kept"), [
    (0, {}, False),
    (2, {}, True),
    (0, {"http.response.status_code": 500}, True),
    (0, {"http.response.status_code": 499}, False),
    (0, {"http.status_code": 503}, True),  # the older key
    (0, {"http.status_code": "502"}, True),  # as a string of digits
])
def test_errors(status: int, attrs: dict[str, object], kept: bool) -> None:
    spans = [S(1, 1), S(1, 2, parent=1, status=status, attrs=attrs)]  # type: ignore[arg-type]
    assert keeps("policies: [{name: e, type: errors}]", spans) is kept


def test_errors_threshold_is_configurable() -> None:
    spans = [S(1, 1, attrs={"http.response.status_code": 404})]
    assert keeps(one("errors", "{http_status_min: 400}"), spans)
    assert not keeps(one("errors", "{}"), spans)


def test_fnv1a64_golden_vectors() -> None:
    # Published FNV-1a 64-bit test vectors (Fowler/Noll/Vo reference), independent of the code.
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_threshold_is_exact() -> None:
    assert threshold(100) == 2**64 - 1
    assert threshold(0) == 0
    assert threshold(50) == (2**64 - 1) // 2


def test_probabilistic_rate_over_many_ids() -> None:
    from sampler.policy.configs import ProbabilisticConfig
    from sampler.policy.probabilistic import Probabilistic

    policy = Probabilistic("p", ProbabilisticConfig(sampling_percentage=10))
    rng = random.Random(11)
    n = 100_000
    kept = 0
    for _ in range(n):
        summary = TraceSummary(rng.randbytes(16))
        kept += policy.evaluate(summary).value == "sampled"
    assert abs(100 * kept / n - 10) < 0.5
    assert policy.sample_rate(TraceSummary(b"")) == 10


def test_probabilistic_is_deterministic_per_trace_and_salt() -> None:
    base = "{sampling_percentage: 50, hash_salt: s1}"
    results = {keeps(one("probabilistic", base), [S(7, 1)]) for _ in range(3)}
    assert len(results) == 1
    decided = [keeps(one("probabilistic", base), [S(n, 1)]) for n in range(1, 200)]
    assert 60 < sum(decided) < 140


ROUTE = ("policies: [{name: r, type: route, route: {rules: ["
         "{match: '/checkout/*', sample_percentage: 100},"
         "{match: '^/api/v[0-9]+/health$', regex: true, sample_percentage: 0}],"
         " default_percentage: 0}}]")


@pytest.mark.parametrize(("root_attrs", "kept"), [
    ({"http.route": "/checkout/pay"}, True),
    ({"http.route": "/checkout/a/b"}, True),
    ({"http.route": "/cart"}, False),  # default 0%
    ({"url.path": "/checkout/x"}, True),  # fallback key
    ({"http.target": "/checkout/x"}, True),
    ({"http.route": "/api/v2/health"}, False),
])
def test_route_rules(root_attrs: dict[str, object], kept: bool) -> None:
    spans = [S(1, 1, attrs=root_attrs), S(1, 2, parent=1, attrs={"http.route": "/checkout/child"})]  # type: ignore[arg-type]
    assert keeps(ROUTE, spans) is kept


def test_route_sample_rate_is_inverse_percentage() -> None:
    policies = "policies: [{name: r, type: route, route: {default_percentage: 100, rules: []}}]"
    v = verdict(policies, [S(1, 1)])
    assert v.keep and v.sample_rate == 1
    rates = set()
    for n in range(1, 300):
        v = verdict("policies: [{name: r, type: route, route: {default_percentage: 25}}]", [S(n, 1)])
        if v.keep:
            rates.add(v.sample_rate)
    assert rates == {4.0}


def test_first_keeping_policy_in_file_order_decides() -> None:
    policies = ("policies: [{name: slow, type: latency, latency: {threshold_ms: 5}},"
                " {name: errs, type: errors}]")
    v = verdict(policies, [S(1, 1, status=2, end_ms=100)])
    assert v == Verdict(True, "slow", 1.0)
    v = verdict(policies, [S(1, 1, status=2, end_ms=1)])
    assert v == Verdict(True, "errs", 1.0)
    assert verdict(policies, [S(1, 1, end_ms=1)]) == Verdict(False, None, 0.0)


def test_a_failing_policy_abstains() -> None:
    from sampler.policy.base import Policy, Vote

    class Broken(Policy):
        def evaluate(self, trace: TraceSummary) -> Vote:
            raise RuntimeError("boom")

    errors: list[str] = []
    from sampler.policy.always_sample import AlwaysSample
    from sampler.policy.configs import AlwaysSampleConfig

    engine = Engine([Broken("broken"), AlwaysSample("all", AlwaysSampleConfig())],
                    on_error=lambda p, e: errors.append(p.name))
    assert engine.decide(TraceSummary(tid(1))) == Verdict(True, "all", 1.0)
    assert errors == ["broken"]


@pytest.mark.parametrize(("text", "field", "reason"), [
    ("policies: [{name: a, type: nope}]", "policies[0].type", "unknown policy type"),
    ("policies: [{name: a, type: always_sample}, {name: a, type: always_sample}]", "policies[1].name", "duplicate"),
    ("policies: [{name: '', type: always_sample}]", "policies[0].name", "non-empty name"),
    ("policies: [{name: a, type: numeric_attribute, numeric_attribute: {key: k, min_value: 5, max_value: 1}}]",
     "policies[0].numeric_attribute", "greater than max_value"),
    ("policies: [{name: a, type: numeric_attribute, numeric_attribute: {key: k}}]",
     "policies[0].numeric_attribute", "at least one"),
    ("policies: [{name: a, type: string_attribute, string_attribute: {key: k, values: ['('], "
     "enabled_regex_matching: true}}]", "policies[0].string_attribute", "invalid regex"),
    ("policies: [{name: a, type: latency, latency: {threshold_ms: fast}}]", "policies[0].latency.threshold_ms", ""),
    ("policies: [{name: a, type: rate_limiting}]", "policies[0].rate_limiting.spans_per_second", "required"),
    ("policies: []", "policies", "non-empty"),
])
def test_invalid_policies_name_the_field(text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_policies(parse_yaml(text, "p.yaml"))
    problems = info.value.problems
    assert any(p.field == field and reason in p.reason for p in problems), problems


def test_collector_config_shapes_load_unchanged() -> None:
    block = """
processors:
  tail_sampling:
    decision_wait: 10s
    num_traces: 50000
    policies:
      - name: test-policy-1
        type: always_sample
      - name: test-policy-2
        type: latency
        latency: {threshold_ms: 5000}
"""
    loaded = load_policies(parse_yaml(block, "collector.yaml"))
    assert [p.name for p in loaded.policies] == ["test-policy-1", "test-policy-2"]
    assert (loaded.decision_wait, loaded.num_traces) == ("10s", 50000)
    ts = load_policies(parse_yaml("tail_sampling:\n  policies: [{name: a, type: always_sample}]\n", "t.yaml"))
    assert [p.name for p in ts.policies] == ["a"]
