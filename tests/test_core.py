"""The sans-I/O core with a hand-advanced clock: timing, bounds, eviction, late spans, reloads,
and the invariant that every span is forwarded at most once, or dropped, never both."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.config.yamlfile import parse_yaml
from sampler.otlp.splice import POLICY_KEY, RATE_KEY
from sampler.pipeline.buffer import Buffer, trace_cost
from sampler.pipeline.core import POLICY_ERROR, Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.base import Policy, Vote
from sampler.policy.engine import Engine, Verdict
from sampler.policy.loader import load_policies
from sampler.policy.summary import TraceSummary
from tests.spans import S, parse, request, tid

KEEP_MARKED = "policies: [{name: marked, type: string_attribute, string_attribute: {key: keep, values: ['yes']}}]"


def engine(text: str = KEEP_MARKED) -> Engine:
    return Engine(load_policies(parse_yaml(text, "test.yaml")).policies)


class Harness:
    def __init__(self, max_traces: int = 1000, max_bytes: int = 10**9, wait: float = 5.0, age: float = 60.0,
                 policies: str = KEEP_MARKED) -> None:
        self.kept: list[KeptTrace] = []
        self.decided: list[tuple[bytes, bool, str]] = []
        self.core = Core(Buffer(max_traces, max_bytes, wait, age), engine(policies), DecisionCache(1000, 1000),
                         self.kept.append, on_decision=self._on_decision)

    def _on_decision(self, summary: TraceSummary, verdict: Verdict, reason: str) -> None:
        self.decided.append((summary.trace_id, verdict.keep, reason))

    def send(self, now: float, *spans: S) -> None:
        self.core.ingest(request(spans), "grpc", now)

    def kept_span_ids(self) -> list[bytes]:
        return [parse_span_id(data) for t in self.kept for data in t.spans]


def parse_span_id(data: bytes) -> bytes:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    return bytes(Span.FromString(data).span_id)


def test_decided_when_quiet_for_decision_wait_not_before() -> None:
    h = Harness(wait=5.0)
    h.send(0.0, S(1, 1, attrs={"keep": "yes"}))
    h.send(3.0, S(1, 2, parent=1))
    assert h.core.sweep(7.99) == 0  # last span at 3.0: due at 8.0
    assert h.core.sweep(8.0) == 1
    assert h.decided == [(tid(1), True, "quiet")]
    assert len(h.kept[0].spans) == 2


def test_decided_at_max_trace_age_even_while_spans_keep_arriving() -> None:
    h = Harness(wait=5.0, age=10.0)
    for second in range(10):
        h.send(float(second), S(1, second))
        assert h.core.sweep(float(second)) == 0
    h.send(10.0, S(1, 10))
    assert h.core.sweep(10.0) == 1
    assert h.decided == [(tid(1), False, "max_age")]


def test_hitting_max_traces_decides_the_oldest_early() -> None:
    h = Harness(max_traces=3)
    for n in range(1, 4):
        h.send(float(n), S(n, n, attrs={"keep": "yes"}))
    h.send(3.5, S(1, 10))  # trace 1 is still the oldest by first arrival
    h.send(4.0, S(4, 4))
    assert h.decided == [(tid(1), True, "evicted")]
    assert h.core.stats.evicted == 1
    assert len(h.core.buffer) == 3
    assert len(h.kept[0].spans) == 2  # decided on everything that had arrived


def test_hitting_max_bytes_decides_oldest_until_under_bound() -> None:
    span = len(parse(request([S(1, 1)])).resource_spans[0].scope_spans[0].spans[0].SerializeToString())
    one = trace_cost(span, 1)  # what a one-span trace holds
    h = Harness(max_bytes=one * 2)
    h.send(0.0, S(1, 1))
    h.send(1.0, S(2, 2))
    assert h.decided == []
    h.send(2.0, S(3, 3))
    assert [d[0] for d in h.decided] == [tid(1)]
    assert h.core.buffer.nbytes <= one * 2


def test_late_spans_follow_the_recorded_decision() -> None:
    h = Harness(wait=1.0)
    h.send(0.0, S(1, 1, attrs={"keep": "yes"}), S(2, 2))
    h.core.sweep(2.0)
    assert {d[0]: d[1] for d in h.decided} == {tid(1): True, tid(2): False}
    h.send(3.0, S(1, 3, parent=1), S(2, 4, parent=2, attrs={"keep": "yes"}))
    late = [t for t in h.kept if t.summary is None]
    assert len(late) == 1 and late[0].trace_id == tid(1) and late[0].policy == "marked"
    assert h.core.stats.late_spans == {"keep": 1, "drop": 1}
    assert len(h.core.buffer) == 0  # late spans do not start a new trace


def test_a_malformed_request_changes_nothing() -> None:
    h = Harness()
    h.send(0.0, S(1, 1))
    bad = request([S(2, 2)])[:-3]
    try:
        h.core.ingest(bad, "grpc", 1.0)
    except ValueError:
        pass
    else:
        raise AssertionError("truncated request accepted")
    assert len(h.core.buffer) == 1 and h.core.stats.spans_received["grpc"] == 1


def test_policy_reload_resummarises_buffered_traces() -> None:
    h = Harness()
    h.send(0.0, S(1, 1, attrs={"tier": "gold"}))
    h.core.set_engine(engine("policies: [{name: gold, type: string_attribute, "
                             "string_attribute: {key: tier, values: [gold]}}]"))
    h.core.decide_all(1.0)
    assert h.decided == [(tid(1), True, "shutdown")] and h.kept[0].policy == "gold"


def test_resource_attributes_match_too() -> None:
    h = Harness(policies="policies: [{name: ns, type: string_attribute, "
                         "string_attribute: {key: k8s.namespace.name, values: [prod]}}]")
    h.core.ingest(request([S(1, 1)], resource={"k8s.namespace.name": "prod"}), "grpc", 0.0)
    h.core.ingest(request([S(2, 2)], resource={"k8s.namespace.name": "dev"}), "grpc", 0.0)
    h.core.decide_all(1.0)
    assert {d[0]: d[1] for d in h.decided} == {tid(1): True, tid(2): False}


def test_kept_trace_splices_into_a_valid_annotated_request() -> None:
    from sampler.exporters.base import encode_batch

    h = Harness()
    h.send(0.0, S(1, 1, attrs={"keep": "yes"}, service="a"), S(1, 2, parent=1, service="b"))
    h.send(0.5, S(1, 3, parent=1, service="a"))
    h.core.decide_all(1.0)
    msg = parse(encode_batch(h.kept, annotate=True))
    by_service = {}
    for rs in msg.resource_spans:
        service = rs.resource.attributes[0].value.string_value
        for ss in rs.scope_spans:
            assert ss.scope.name == "test"
            by_service.setdefault(service, []).extend(ss.spans)
    assert sorted(by_service) == ["a", "b"] and len(by_service["a"]) == 2
    for spans in by_service.values():
        for span in spans:
            attrs = {a.key: a.value for a in span.attributes}
            assert attrs[POLICY_KEY].string_value == "marked"
            assert attrs[RATE_KEY].int_value == 1
    plain = parse(encode_batch(h.kept, annotate=False))
    assert all(POLICY_KEY not in {a.key for a in s.attributes}
               for rs in plain.resource_spans for ss in rs.scope_spans for s in ss.spans)


ops = st.lists(
    st.tuples(
        st.sampled_from(["send", "tick"]),
        st.integers(1, 12),  # trace number
        st.booleans(),  # marked keep
        st.floats(0.0, 3.0),  # time step
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(1, 6), st.integers(1, 4))
def test_bounds_hold_and_every_span_is_forwarded_once_or_dropped(
    steps: list[tuple[str, int, bool, float]], max_traces: int, max_spans: int
) -> None:
    span_size = len(parse(request([S(1, 1, attrs={"keep": "yes"})])).resource_spans[0].scope_spans[0]
                    .spans[0].SerializeToString())
    h = Harness(max_traces=max_traces, max_bytes=trace_cost(span_size, 1) * max_spans * 2,
                wait=2.0, age=6.0)
    now = 0.0
    sent: list[tuple[int, int]] = []
    for n, (op, trace, marked, step) in enumerate(steps):
        now += step
        if op == "send":
            h.send(now, S(trace, n, attrs={"keep": "yes"} if marked else {}))
            sent.append((trace, n))
        else:
            h.core.sweep(now)
        assert len(h.core.buffer) <= max_traces
        assert h.core.buffer.nbytes <= h.core.buffer.max_bytes
        assert h.core.buffer.nbytes == sum(e.cost for e in h.core.buffer.entries())
        assert h.core.buffer.spans == sum(e.summary.spans for e in h.core.buffer.entries())
    h.core.decide_all(now)
    decisions = {}
    for trace_id, keep, _ in h.decided:
        assert trace_id not in decisions, "a trace was decided twice"
        decisions[trace_id] = keep
    forwarded = h.kept_span_ids()
    assert len(forwarded) == len(set(forwarded)), "a span was forwarded twice"
    should_forward = {(n + 1).to_bytes(8, "big") for trace, n in sent if decisions[tid(trace)]}
    assert set(forwarded) == should_forward  # kept traces' spans forwarded, all others dropped
    late_dropped = h.core.stats.late_spans["drop"]
    assert late_dropped <= len(sent) - len(forwarded)


def _buffered_objects(core: Core) -> list[object]:
    return [o for e in core.buffer.entries() for o in (e, e.summary, e.spans, e.groups)]


def test_buffered_traces_are_hidden_from_the_cycle_collector_and_still_freed() -> None:
    import gc
    import tracemalloc

    h = Harness(policies="policies: [{name: none, type: probabilistic, probabilistic: {sampling_percentage: 0}}]")
    h.send(0.0, S(1, 1), S(2, 1))
    h.send(1.0, S(1, 2, parent=1))  # a second chunk extends the first one's (adopted) lists
    h.core.set_engine(engine())  # a reload replaces every entry's summary and lists...
    assert not h.core.resummarise(1 << 30)  # ...once they are re-summarised
    assert len(h.core.buffer) == 2 and not any(gc.is_tracked(o) for o in _buffered_objects(h.core))
    assert [len(e.spans) for e in h.core.buffer.entries()] == [2, 1]
    # untracked objects are still freed by reference counting when their trace is decided
    h.core.sweep(100.0)
    tracemalloc.start()
    try:
        before = 0
        for round_ in range(40):  # the first 20 fill the decision cache and the splitter's caches
            if round_ == 20:
                before = tracemalloc.get_traced_memory()[0]
            fresh = range(100 * round_ + 3, 100 * round_ + 53)
            h.send(1000.0 * round_, *(S(t, s, attrs={"filler": "x" * 300}) for t in fresh for s in (1, 2)))
            assert h.core.sweep(1000.0 * round_ + 100) == 50
            h.decided.clear()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, grown  # 20 rounds of ~40 KB of spans each, all gone


def test_untrack_without_the_compiled_module() -> None:
    import gc

    from sampler.pipeline.untrack import _untrack

    held = [[1]]
    _untrack(held)
    assert not gc.is_tracked(held) and held == [[1]]


def test_untrack_leaves_objects_the_collector_never_tracked_alone() -> None:
    """Objects without a GC header must be left alone (untracking one would write into the memory
    before it), an untracked object may be passed again, and only the object itself is untracked."""
    import gc

    from sampler.pipeline.untrack import _untrack, untrack

    for fn in (untrack, _untrack):
        atoms: list[object] = [None, "text", b"bytes", 7, 2**100, 1.5, True]  # no GC header at all
        copies = [(repr(a), hash(a)) for a in atoms]
        for obj in atoms:
            fn(obj)
            fn(obj)
        assert [(repr(a), hash(a)) for a in atoms] == copies
        inner = [b"span"]
        held = (inner, {"k": [1]})  # a tuple holding containers: tracked
        assert gc.is_tracked(held)
        fn(held)
        fn(held)  # already untracked: nothing to undo
        assert not gc.is_tracked(held)
        assert gc.is_tracked(inner) and gc.is_tracked(held[1])  # what it holds is not touched
        inner.append(b"more")
        assert held == ([b"span", b"more"], {"k": [1]})
        gc.collect()  # the collector's own lists survived all of the above
        assert held[0] is inner and not gc.is_tracked(held)


class _RaisingRate(Policy):
    """Votes keep, then fails to say at what rate: Engine.decide raises (its try covers evaluate only)."""

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED

    def sample_rate(self, trace: TraceSummary) -> float:
        raise ZeroDivisionError("a bug in a policy")


def test_a_trace_whose_decision_raises_is_kept_and_counted_not_lost() -> None:
    h = Harness(wait=1.0)
    h.core.set_engine(Engine([_RaisingRate("boom")]))
    h.send(0.0, S(1, 1), S(1, 2, parent=1))
    h.send(0.5, S(2, 3))
    assert h.core.sweep(5.0) == 2  # the sweep goes on past the failure
    assert sorted(t.trace_id for t in h.kept) == sorted([tid(1), tid(2)])
    assert {len(t.spans) for t in h.kept} == {2, 1} and {t.policy for t in h.kept} == {POLICY_ERROR}
    assert h.core.stats.policy_errors[POLICY_ERROR] == 2
    assert h.core.stats.decided["keep", POLICY_ERROR] == 2
    assert len(h.core.buffer) == 0 and h.core.buffer.nbytes == 0
    h.send(6.0, S(1, 9, parent=1))  # a late span follows the recorded (safe) decision
    assert h.core.stats.late_spans["keep"] == 1


GOLD = "policies: [{name: gold, type: string_attribute, string_attribute: {key: tier, values: [gold]}}]"


def test_a_reload_resummarises_in_steps_and_ingest_meanwhile_uses_the_new_policies() -> None:
    h = Harness()
    for n in range(1, 11):  # gold only on the first span of each trace, which arrived before the reload
        h.send(0.0, S(n, n * 10, attrs={"tier": "gold"}), S(n, n * 10 + 1, parent=n * 10))
    new = engine(GOLD)
    h.core.set_engine(new)
    gold = new.policies[0].bit
    assert not any(e.summary.matches & gold for e in h.core.buffer.entries())  # nothing re-split yet
    assert h.core.resummarise(4)  # two traces of two spans; more remain
    assert sum(bool(e.summary.matches & gold) for e in h.core.buffer.entries()) == 2
    h.send(1.0, S(9, 99, parent=90))  # a stale trace gets a span: re-summarised, then merged
    nine = h.core.buffer.get(tid(9))
    assert nine is not None and nine.summary.matches & gold and nine.summary.spans == 3
    h.send(1.0, S(11, 110, attrs={"tier": "gold"}))  # a new trace: split with the new policies
    h.core.sweep(7.0)  # stale ones are re-summarised before they are decided, too
    assert {d[0]: d[1] for d in h.decided} == {tid(n): True for n in range(1, 12)}
    assert {t.policy for t in h.kept} == {"gold"}
    assert not h.core.resummarise(1 << 30)


def test_a_reload_stalls_the_event_loop_for_a_step_not_for_the_whole_buffer(tmp_path: Path) -> None:
    """The policy reload of a large buffer, in-process with the real sweeper: the longest the event loop
    is held at once (what every Export call waiting on it would see) is a small share of the whole
    re-summarising, which is spread over steps like the sweep's. A task that wakes at every turn of the
    loop records the longest gap between two turns, in the loop thread's CPU time (a wall-clock gap
    would also count the moments this process was not scheduled at all)."""
    import asyncio
    import time

    from sampler.server.app import App
    from sampler.server.settings import load_config
    from tests.test_ops_units import _Collect

    policies = tmp_path / "policies.yaml"
    policies.write_text(KEEP_MARKED)
    config = tmp_path / "tailsampler.yaml"
    config.write_text("receivers: {otlp: {grpc: {endpoint: '127.0.0.1:0'}, http: null}}\n"
                      "buffer: {decision_wait: 600s, max_trace_age: 600s, max_bytes: 1GiB, sweep_interval: 20ms}\n"
                      "memory_limit: null\nadmin: {endpoint: null}\npolicies_file: policies.yaml\n")
    traces, spans_per_trace = 20_000, 8

    async def main() -> tuple[float, float, float, float, int]:
        app = App(load_config(config), sender=_Collect())
        await app.start()
        try:
            for first in range(0, traces, 500):
                app._ingest(request([S(t, t * 10 + i, parent=None if i == 0 else t * 10,
                                       attrs={"tier": "gold" if i == 0 else "x", "pad": "p" * 200})
                                     for t in range(first, first + 500) for i in range(spans_per_trace)]),
                            "grpc", "traces")
            assert len(app.core.buffer) == traces
            cpu_gaps: list[float] = []
            wall_gaps: list[float] = []
            stop = asyncio.Event()

            async def ticker() -> None:
                cpu, wall = time.thread_time(), time.perf_counter()
                while not stop.is_set():
                    await asyncio.sleep(0)
                    cpu_now, wall_now = time.thread_time(), time.perf_counter()
                    cpu_gaps.append(cpu_now - cpu)
                    wall_gaps.append(wall_now - wall)
                    cpu, wall = cpu_now, wall_now

            task = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            policies.write_text(GOLD)
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            turns = len(cpu_gaps)
            assert app.reload(policies)
            gold = app.core.engine.policies[0].bit
            newest = next(reversed(app.core.buffer.by_first.values()))  # re-summarised last, oldest first
            while not newest.summary.matches & gold:
                await asyncio.sleep(0.005)
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            stop.set()
            await task
            assert all(e.summary.matches & gold for e in app.core.buffer.entries())
            return max(cpu_gaps[turns:]), cpu, max(wall_gaps[turns:]), wall, len(cpu_gaps) - turns
        finally:
            await app.shutdown()

    longest, total, longest_wall, total_wall, turns = asyncio.run(main())
    print(f"\n[reload] {traces * spans_per_trace} spans re-summarised in {total_wall * 1000:.0f} ms "
          f"({total * 1000:.0f} ms CPU), {turns} loop turns; longest stall {longest_wall * 1000:.1f} ms "
          f"({longest * 1000:.1f} ms CPU)")
    # Done in one go, the longest stall is the whole re-summarising; in steps, about a step's worth.
    assert longest < total / 5, (longest, total)


def test_spans_that_arrive_annotated_leave_with_our_annotation_only() -> None:
    """A tailsampler behind another one: the policy and rate a span arrives with are replaced, not
    repeated; spans without them are only appended to, and nothing else of a span changes."""
    from sampler.exporters.base import encode_batch
    from sampler.otlp.splice import field, strip_annotation
    from tests.spans import span_message

    h = Harness()
    upstream = {POLICY_KEY: "tier1", RATE_KEY: 10, "keep": "yes", "z": 1}
    h.send(0.0, S(1, 1, attrs=upstream), S(1, 2, parent=1, attrs={POLICY_KEY: "tier1"}), S(1, 3, parent=1))
    h.send(0.0, S(2, 4, attrs={"keep": "yes"}))
    h.core.decide_all(1.0)
    assert {t.trace_id: t.marked for t in h.kept} == {tid(1): True, tid(2): False}
    spans = [s for rs in parse(encode_batch(h.kept, annotate=True)).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 4
    for span in spans:
        keys = [a.key for a in span.attributes]
        assert keys.count(POLICY_KEY) == 1 and keys.count(RATE_KEY) == 1, keys
        attrs = {a.key: a.value for a in span.attributes}
        assert attrs[POLICY_KEY].string_value == "marked" and attrs[RATE_KEY].int_value == 1
    first = next(s for s in spans if s.span_id == (2).to_bytes(8, "big"))
    assert [a.key for a in first.attributes] == ["keep", "z", POLICY_KEY, RATE_KEY]  # order kept
    # Without annotation, what arrived leaves as it came.
    plain = Harness()
    plain.send(0.0, S(1, 1, attrs=upstream))
    plain.core.decide_all(1.0)
    assert [a.key for a in parse(encode_batch(plain.kept, annotate=False)).resource_spans[0].scope_spans[0]
            .spans[0].attributes] == list(upstream)
    # A span without the keys is returned as it is; repeated keys all go.
    clean = span_message(S(5, 5, attrs={"a": 1})).SerializeToString()
    assert strip_annotation(clean) is clean
    twice = clean + field(0x4A, field(0x0A, POLICY_KEY.encode()) + field(0x12, field(0x0A, b"x"))) * 2
    assert strip_annotation(twice) == clean
