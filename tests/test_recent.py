"""The recent-decisions ring and the votes the engine records as it decides: a hand-advanced clock,
a reference model for the ring (hypothesis), peeking without side effects, and bytes per entry."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.insight.recent import RecentDecisions, bound
from sampler.policy.base import Policy, Vote
from sampler.policy.engine import VOTE_DROPPED, VOTE_NOT_SAMPLED, VOTE_SAMPLED
from sampler.policy.summary import TraceSummary
from tests.spans import S, request, tid
from tests.test_core import Harness

NAMES = ("errors", "slow", "sample")

POLICIES = """
policies:
  - {name: noisy, type: drop, drop: {drop_sub_policy: [
      {name: health, type: string_attribute, string_attribute: {key: http.route, values: [/health]}}]}}
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  - {name: marked, type: string_attribute, string_attribute: {key: keep, values: ['yes']}}
  - {name: budget, type: rate_limiting, rate_limiting: {spans_per_second: 2}}
"""


def test_ring_keeps_the_newest_capacity_entries_newest_first() -> None:
    ring = RecentDecisions(3)
    for n in range(5):
        ring.add(tid(n), n % 2 == 0, "sample" if n % 2 == 0 else None, "quiet", NAMES, bytes([0, 0, n % 2 == 0]),
                 n + 1, "svc", f"op{n}", float(n))
    assert len(ring) == 3
    got = ring.select(limit=10)
    assert [e["trace_id"] for e in got] == [tid(n).hex() for n in (4, 3, 2)]
    assert got[0] == {"trace_id": tid(4).hex(), "state": "kept", "reason": "quiet", "policy": "sample",
                      "votes": {"errors": "not_sampled", "slow": "not_sampled", "sample": "sampled"},
                      "spans": 5, "root": {"service": "svc", "name": "op4"}, "time": 4.0}
    assert ring.find(tid(1)) is None  # overwritten
    assert ring.find(tid(3))["state"] == "dropped"  # type: ignore[index]


def test_filters_and_epoch() -> None:
    ring = RecentDecisions(10)
    ring.epoch = 1000.0
    ring.add(tid(1), True, "errors", "max_age", NAMES, bytes([1, 0, 0]), 3, "api", "GET /", 1.5)
    ring.add(tid(2), False, None, "evicted", NAMES, bytes([0, 0, 0]), 1, "web", "GET /x", 2.0)
    ring.add(tid(3), True, "sample", "shutdown", NAMES, bytes([0, 0, 1]), 1, "web", "GET /y", 3.0)
    assert [e["trace_id"] for e in ring.select(decision="keep")] == [tid(3).hex(), tid(1).hex()]
    assert [e["trace_id"] for e in ring.select(decision="drop")] == [tid(2).hex()]
    assert [e["trace_id"] for e in ring.select(policy="errors")] == [tid(1).hex()]
    assert ring.select(policy="nobody") == []
    assert [e["trace_id"] for e in ring.select(service="web", limit=1)] == [tid(3).hex()]
    assert ring.find(tid(1))["time"] == 1001.5  # type: ignore[index]
    assert ring.find(tid(2))["reason"] == "evicted"  # type: ignore[index]


def test_summary_counts_traces_a_policy_alone_kept() -> None:
    ring = RecentDecisions(10)
    ring.add(tid(1), True, "errors", "quiet", NAMES, bytes([1, 1, 0]), 1, "a", "x", 0.0)  # two keepers
    ring.add(tid(2), True, "errors", "quiet", NAMES, bytes([1, 0, 0]), 1, "a", "x", 0.0)  # errors alone
    ring.add(tid(3), True, "sample", "quiet", NAMES, bytes([0, 0, 1]), 1, "a", "x", 0.0)  # sample alone
    ring.add(tid(4), False, None, "quiet", NAMES, bytes([0, 0, 0]), 1, "a", "x", 0.0)
    doc = ring.summary()
    by = {p["policy"]: p for p in doc["policies"]}
    assert doc["entries"] == 4 and doc["kept"] == 3
    assert by["errors"] == {"policy": "errors", "decided": 2, "kept": 2, "kept_alone": 1}
    assert by["sample"] == {"policy": "sample", "decided": 1, "kept": 1, "kept_alone": 1}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.lists(st.tuples(st.integers(0, 6), st.booleans(), st.sampled_from(["a", "b"])),
                                   max_size=40))
def test_ring_agrees_with_a_list_model(capacity: int, ops: list[tuple[int, bool, str]]) -> None:
    ring = RecentDecisions(capacity)
    model: list[tuple[bytes, bool, str, float]] = []
    for t, (n, keep, service) in enumerate(ops):
        ring.add(tid(n), keep, "p" if keep else None, "quiet", ("p",), bytes([int(keep)]), 1, service, "op", float(t))
        model.append((tid(n), keep, service, float(t)))
    model = model[-capacity:]
    newest = list(reversed(model))
    assert [(e["trace_id"], e["time"]) for e in ring.select(limit=100)] == [(i.hex(), t) for i, _, _, t in newest]
    for service in ("a", "b"):
        assert [e["time"] for e in ring.select(service=service, decision="keep", limit=100)] == \
            [t for _, k, s, t in newest if s == service and k]
    for n in range(7):
        hits = [t for i, _, _, t in newest if i == tid(n)]
        found = ring.find(tid(n))
        assert (found["time"] if found else None) == (hits[0] if hits else None)


def test_engine_records_votes_as_cast_and_the_ring_gets_them() -> None:
    h = Harness(policies=POLICIES)
    h.core.recent = RecentDecisions(100)
    h.send(0.0, S(1, 1, attrs={"http.route": "/health", "keep": "yes"}, name="health"))  # vetoed first
    h.send(0.0, S(2, 2, status=2, attrs={"keep": "yes"}, service="api", name="GET /a"))  # errors + marked
    h.send(0.0, S(3, 3, name="GET /b"))  # budget only
    h.core.sweep(10.0)
    ring = h.core.recent
    one = ring.find(tid(1))
    assert one is not None
    assert one["state"] == "dropped" and one["policy"] == "noisy" and one["votes"] == {"noisy": "dropped"}
    assert one["reason"] == "quiet" and one["root"] == {"service": "svc", "name": "health"}
    two = ring.find(tid(2))
    assert two is not None and two["policy"] == "errors"
    assert two["votes"] == {"noisy": "not_sampled", "errors": "sampled", "marked": "sampled", "budget": "sampled"}
    three = ring.find(tid(3))
    assert three is not None and three["policy"] == "budget" and three["votes"]["budget"] == "sampled"
    assert ring.summary()["policies"] == [
        {"policy": "budget", "decided": 1, "kept": 1, "kept_alone": 1},
        {"policy": "errors", "decided": 1, "kept": 1, "kept_alone": 0},
        {"policy": "noisy", "decided": 1, "kept": 0, "kept_alone": 0},
    ]


def test_peeking_spends_no_budget() -> None:
    clock = [0.0]
    from sampler.config.yamlfile import parse_yaml
    from sampler.policy.engine import Engine
    from sampler.policy.loader import load_policies

    text = """
policies:
  - {name: budget, type: rate_limiting, rate_limiting: {spans_per_second: 1, burst_capacity: 1}}
  - {name: shared, type: composite, composite: {max_total_spans_per_second: 1, policy_order: [all],
      composite_sub_policy: [{name: all, type: always_sample}], rate_allocation: [{policy: all, percent: 100}]}}
  - {name: both, type: and, and: {and_sub_policy: [{name: inner, type: rate_limiting,
      rate_limiting: {spans_per_second: 1, burst_capacity: 1}}]}}
"""
    engine = Engine(load_policies(parse_yaml(text, "t.yaml"), clock=lambda: clock[0]).policies)
    summary = TraceSummary(tid(1))
    summary.spans = 1
    for _ in range(1000):
        votes = bytearray()
        assert engine.decide(summary, votes, peek=True).keep
        assert list(votes) == [VOTE_SAMPLED, VOTE_SAMPLED, VOTE_SAMPLED]
    votes = bytearray()
    assert engine.decide(summary, votes).keep  # the live decision spends each budget once
    assert list(votes) == [VOTE_SAMPLED, VOTE_SAMPLED, VOTE_SAMPLED]
    votes = bytearray()
    assert not engine.decide(summary, votes).keep  # ...and then they are empty
    assert list(votes) == [VOTE_NOT_SAMPLED] * 3
    votes = bytearray()
    assert not engine.decide(summary, votes, peek=True).keep


def test_peek_buffered_changes_nothing() -> None:
    h = Harness(policies=POLICIES)
    h.send(0.0, S(5, 1, name="GET /c"), S(5, 2, parent=1))
    peeked = h.core.peek_buffered(tid(5))
    assert peeked is not None
    summary, verdict, votes = peeked
    assert summary.spans == 2 and verdict.keep and verdict.policy == "budget"
    assert list(votes) == [VOTE_NOT_SAMPLED, VOTE_NOT_SAMPLED, VOTE_NOT_SAMPLED, VOTE_SAMPLED]
    assert h.core.peek_buffered(tid(6)) is None
    assert len(h.core.buffer) == 1 and not h.kept
    # a posted request, evaluated: nothing buffered, one result per trace in order
    results = h.core.peek_request(request([S(7, 1), S(8, 2, attrs={"http.route": "/health"}), S(7, 3, parent=1)]))
    assert [(s.trace_id, s.spans, v.keep, v.policy) for s, v, _ in results] == \
        [(tid(7), 2, True, "budget"), (tid(8), 1, False, "noisy")]
    assert results[1][2] == bytes([VOTE_DROPPED])
    assert len(h.core.buffer) == 1


def _fill(ring: RecentDecisions, n: int, distinct_roots: int) -> None:
    names = ("errors", "slow", "marked", "sample")
    for i in range(n):
        ring.add(i.to_bytes(16, "big"), i % 10 == 0, "sample" if i % 10 == 0 else None, "quiet", names,
                 bytes([0, 0, 0, int(i % 10 == 0)]), 5 + i % 20, f"service-{i % 50}",
                 f"GET /api/v1/resource/{i % distinct_roots}", float(i))


def test_bytes_per_entry_measured() -> None:
    """What one entry costs (tracemalloc), against what the ring reports and the plan's bound:
    docs/operations.md quotes these numbers."""
    n = 100_000
    for distinct, at_most in ((1000, 70), (10**9, 130)):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        ring = RecentDecisions(n)
        _fill(ring, n, distinct)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        per_entry = used / n
        print(f"distinct roots {distinct}: {per_entry:.0f} bytes per entry, reported {ring.nbytes / n:.0f}")
        assert per_entry <= at_most
        assert ring.nbytes >= 0.8 * used  # the accounting sees (nearly) all of it
        assert bound(n) >= used
    ring = RecentDecisions(10_000)
    _fill(ring, 10_000, 10**9)  # distinct roots past the intern table: held alone up to their budget, then none
    roots = [e["root"] for e in ring.select(limit=10_000)]
    assert 0 < sum(r is None for r in roots) < 5000


def test_every_reason_and_vote_kind_reaches_the_ring() -> None:
    text = """
policies:
  - {name: not-internal, type: string_attribute, string_attribute: {key: internal, values: ['yes'], invert_match: true}}
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
"""
    h = Harness(max_traces=2, wait=5.0, age=10.0, policies=text)
    h.core.recent = RecentDecisions(100)

    class Broken(Policy):
        def evaluate(self, trace: TraceSummary) -> Vote:
            raise RuntimeError("bug")

    h.core.engine.policies.append(Broken("broken"))
    h.core.engine.names = (*h.core.engine.names, "broken")
    h.send(0.0, S(1, 1, attrs={"internal": "yes"}))
    h.send(1.0, S(2, 1))
    h.send(2.0, S(3, 1))  # a third trace: the oldest (1) is evicted
    for second in range(3, 11):
        h.send(float(second), S(2, 10 + second))  # trace 2 stays busy until max_trace_age
    h.core.sweep(11.0)  # trace 3 quiet, trace 2 at max_trace_age
    h.send(11.5, S(4, 1))
    h.core.decide_all(12.0)  # trace 4 at shutdown
    ring = h.core.recent
    one, two, three, four = (ring.find(tid(n)) for n in (1, 2, 3, 4))
    assert one is not None and two is not None and three is not None and four is not None
    assert (one["reason"], one["state"], one["votes"]) == \
        ("evicted", "dropped", {"not-internal": "inverted_not_sampled"})
    assert two["reason"] == "max_age" and two["state"] == "kept" and two["policy"] == "not-internal"
    assert two["votes"] == {"not-internal": "sampled", "errors": "not_sampled", "broken": "error"}
    assert three["reason"] == "quiet" and four["reason"] == "shutdown"
