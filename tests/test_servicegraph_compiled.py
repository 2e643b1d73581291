"""The compiled service graph (`_split.Edges`, paired over the splitter's packed RECORDs) against the
reference: `trace_graph(span_records(...))` and the interpreted ServiceGraph, on random traces."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampler.insight.live import span_records
from sampler.insight.servicegraph import (
    DATABASE,
    DIRECT,
    MESSAGING_SYSTEM,
    USER,
    VIRTUAL_NODE,
    ServiceGraph,
    trace_graph,
)
from sampler.otlp.split import COMPILED, NO_SERIES, RECORD
from sampler.otlp.wire import Group

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled splitter is not loaded")

LABELS = (USER, DIRECT, MESSAGING_SYSTEM, DATABASE, VIRTUAL_NODE)
SERVICES = ("a", "b", "c", "")
PEERS = (None, "", "db1", "peer", "a")


def _group(service: str, peer: str | None, db: str | None, address: str | None) -> Group:
    attrs: dict[str, object] = {"service.name": service}
    for key, value in (("peer.service", peer), ("db.system", db), ("server.address", address)):
        if value is not None:
            attrs[key] = value
    return Group(b"", b"", attrs)  # type: ignore[arg-type]


GROUPS = [_group(s, p, d, a) for s in SERVICES for p, d, a in ((None, None, None), (None, "pg", None),
                                                              ("svc", None, "host"), (None, None, "h2"))]


@st.composite
def traces(draw: st.DrawFn) -> SimpleNamespace:
    n = draw(st.integers(0, 14))
    ids = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))  # small: duplicates and zero ids happen
    records = bytearray()
    groups = []
    peers = []
    for i in range(n):
        parent = draw(st.one_of(st.just(0), st.sampled_from(ids) if ids else st.just(0), st.integers(1, 20)))
        kind = draw(st.integers(0, 6))
        status = draw(st.integers(0, 3))
        start = draw(st.integers(0, 5)) * 10**6
        end = draw(st.integers(0, 8)) * 10**6
        has_peer = kind in (3, 4) and draw(st.booleans())
        records += RECORD.pack(ids[i].to_bytes(8, "big"), parent.to_bytes(8, "big"), start, end, kind, status,
                               has_peer, NO_SERIES)
        groups.append(draw(st.sampled_from(GROUPS)))
        if has_peer:
            peers.append((draw(st.sampled_from(PEERS)), draw(st.sampled_from(PEERS)), draw(st.sampled_from(PEERS))))
    return SimpleNamespace(graph=records, graph_groups=groups, peers=peers or None,
                           trace_id=draw(st.binary(min_size=16, max_size=16)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_pairing_is_trace_graphs(trace: SimpleNamespace) -> None:
    from sampler.otlp._split import trace_requests

    requests, orphans, has_root, services = trace_requests(trace.graph, trace.graph_groups, trace.peers, LABELS)
    want = trace_graph(span_records(trace))  # type: ignore[arg-type]
    assert [(tuple(r.key), r.span_id, r.failed, r.client_seconds, r.server_seconds, r.seconds)
            for r in want.requests] == requests
    assert dict(want.orphans) == orphans
    assert want.has_root == has_root
    assert want.services == frozenset(services)


def _same(fast: ServiceGraph, slow: ServiceGraph) -> None:
    assert fast.to_json() == slow.to_json()
    edges, want = fast.edges, slow.edges
    assert edges.keys() == want.keys()
    for key, stats in [*edges.items(), (None, fast.overflow)]:
        ref = want[key] if key is not None else slow.overflow
        assert (stats.requests, stats.failed, stats.exemplar, stats.exemplar_seconds) == (
            ref.requests, ref.failed, ref.exemplar, ref.exemplar_seconds)
        for h, r in ((stats.client, ref.client), (stats.server, ref.server), (stats.latency, ref.latency)):
            assert (h.counts, h.count, h.max) == (r.counts, r.count, r.max)
            assert math.isclose(h.sum, r.sum, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("max_edges", [2, 10_000])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(traces(), st.booleans(), st.booleans()), max_size=8))
def test_counts_are_the_interpreted_graphs(max_edges: int, batch: list[tuple[SimpleNamespace, bool, bool]]) -> None:
    fast = ServiceGraph(max_edges=max_edges)  # services beyond max_services: in set order, arbitrary
    slow = ServiceGraph(max_edges=max_edges)
    slow.table = None  # the interpreted graph's own EdgeStats
    for trace, kept, whole in batch:
        fast.add_records(trace.graph, trace.graph_groups, trace.peers, trace.trace_id, kept, whole)
        slow.add(trace_graph(span_records(trace)), trace.trace_id, kept, whole)  # type: ignore[arg-type]
    _same(fast, slow)
    assert (fast.services, fast.orphans, fast.orphans_overflow, fast.traces, fast.traces_without_root) == (
        slow.services, slow.orphans, slow.orphans_overflow, slow.traces, slow.traces_without_root)


def test_a_huge_trace_then_small_ones_reuse_the_pairing_arrays_soundly() -> None:
    """The compiled graph pairs trace after trace in the same arrays, and lets them go after a huge one."""
    def chain(n: int, base: int) -> SimpleNamespace:
        records = bytearray()
        for i in range(n):
            parent = 0 if i == 0 else base + i - 1
            records += RECORD.pack((base + i).to_bytes(8, "big"), parent.to_bytes(8, "big"), i, i + 5,
                                   3 if i % 2 == 0 else 2, 0, 0, NO_SERIES)
        groups = [GROUPS[(i // 2) % len(GROUPS)] for i in range(n)]
        return SimpleNamespace(graph=records, graph_groups=groups, peers=None, trace_id=base.to_bytes(16, "big"))

    fast, slow = ServiceGraph(), ServiceGraph()
    slow.table = None
    for trace in (chain(5, 1), chain(9000, 10**6), chain(7, 2 * 10**6), chain(3000, 3 * 10**6), chain(4, 9)):
        fast.add_records(trace.graph, trace.graph_groups, trace.peers, trace.trace_id, True, True)
        slow.add(trace_graph(span_records(trace)), trace.trace_id, True, True)  # type: ignore[arg-type]
    _same(fast, slow)
