"""The service graph of whole traces (sampler/insight/servicegraph.py): Tempo's pairing rules, table by
table, then the invariants that hold for any trace, checked with hypothesis."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.insight.servicegraph import (
    DATABASE,
    DIRECT,
    DISPLAY_BUCKETS,
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_INTERNAL,
    KIND_PRODUCER,
    KIND_SERVER,
    MESSAGING_SYSTEM,
    TEMPO_BUCKETS,
    USER,
    VIRTUAL_NODE,
    EdgeKey,
    Histogram,
    ServiceGraph,
    SpanRecord,
    trace_graph,
)

MS = 10**6


def sp(service: str, span: int, parent: int | None = None, kind: int = KIND_CLIENT, error: bool = False,
       start_ms: int = 0, end_ms: int = 10, peer: str | None = None, db: str | None = None,
       address: str | None = None) -> SpanRecord:
    return SpanRecord(service, span.to_bytes(8, "big"), b"" if parent is None else parent.to_bytes(8, "big"),
                      kind, error, start_ms * MS, end_ms * MS, peer, db, address)


def root(service: str = "frontend", span: int = 1, end_ms: int = 10) -> SpanRecord:
    return sp(service, span, None, KIND_SERVER, end_ms=end_ms)


Row = tuple[str, str, str, bool, float, float]  # client, server, connection_type, failed, client s, server s

CASES: list[tuple[str, list[SpanRecord], list[Row]]] = [
    ("client and server child in another service: a direct request",
     [root(end_ms=100), sp("frontend", 2, 1, start_ms=10, end_ms=60),
      sp("checkout", 3, 2, KIND_SERVER, start_ms=15, end_ms=55)],
     [("frontend", "checkout", DIRECT, False, 0.05, 0.04), (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.1)]),
    ("producer and consumer: across a messaging system",
     [root(), sp("checkout", 2, 1, KIND_PRODUCER, end_ms=2),
      sp("shipping", 3, 2, KIND_CONSUMER, start_ms=50, end_ms=80)],
     [("checkout", "shipping", MESSAGING_SYSTEM, False, 0.002, 0.03),
      (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("a database call names db.system; its server side is the client span's duration",
     [root(), sp("users", 2, 1, end_ms=7, db="postgresql", address="db.shop.local")],
     [("users", "postgresql", DATABASE, False, 0.007, 0.007), (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("peer.service wins over db.system for the name; still a database",
     [root(), sp("users", 2, 1, end_ms=7, peer="users-db", db="postgresql")],
     [("users", "users-db", DATABASE, False, 0.007, 0.007), (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("an uninstrumented peer by server.address: a virtual node, server side unseen",
     [root(), sp("payments", 2, 1, error=True, end_ms=300, address="api.stripe.com")],
     [("payments", "api.stripe.com", VIRTUAL_NODE, True, 0.3, 0.0),
      (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("a client span with nothing to name its peer makes no request",
     [root(), sp("frontend", 2, 1)],
     [(USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("a server child in the same service does not pair: the peer attribute names the edge",
     [root(), sp("frontend", 2, 1, peer="frontend-internal"), sp("frontend", 3, 2, KIND_SERVER)],
     [("frontend", "frontend-internal", VIRTUAL_NODE, False, 0.01, 0.0),
      (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("failed when only the server span has status ERROR",
     [root(), sp("frontend", 2, 1), sp("checkout", 3, 2, KIND_SERVER, error=True)],
     [("frontend", "checkout", DIRECT, True, 0.01, 0.01), (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("failed when only the client span has status ERROR",
     [root(), sp("frontend", 2, 1, error=True), sp("checkout", 3, 2, KIND_SERVER)],
     [("frontend", "checkout", DIRECT, True, 0.01, 0.01), (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("two server children: one request, to the first",
     [root(), sp("frontend", 2, 1), sp("inventory", 4, 2, KIND_SERVER, start_ms=5, end_ms=9),
      sp("checkout", 3, 2, KIND_SERVER, start_ms=1, end_ms=4)],
     [("frontend", "checkout", DIRECT, False, 0.01, 0.003), (USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("a server span under an internal span is no request, and neither is the internal span",
     [root(), sp("frontend", 2, 1, KIND_INTERNAL), sp("checkout", 3, 2, KIND_SERVER)],
     [(USER, "frontend", VIRTUAL_NODE, False, 0.0, 0.01)]),
    ("a root consumer span came from outside too",
     [sp("shipping", 1, None, KIND_CONSUMER, end_ms=20)],
     [(USER, "shipping", VIRTUAL_NODE, False, 0.0, 0.02)]),
    ("a root client span is a client like any other",
     [sp("cron", 1, None, KIND_CLIENT, end_ms=20), sp("billing", 2, 1, KIND_SERVER, end_ms=15)],
     [("cron", "billing", DIRECT, False, 0.02, 0.015)]),
]


@pytest.mark.parametrize(("spans", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_edges_of_one_trace(spans: list[SpanRecord], expected: list[Row]) -> None:
    got = trace_graph(spans).requests
    rows = [(r.key.client, r.key.server, r.key.connection_type, r.failed, round(r.client_seconds, 9),
             round(r.server_seconds, 9)) for r in got]
    assert sorted(rows) == sorted(expected)


def test_orphans_and_missing_root() -> None:
    """A span whose parent never arrived is an orphan of its own service; a trace whose root never
    arrived has none. A server span whose parent is missing makes no request (nothing called it here)."""
    spans = [sp("checkout", 3, 2, KIND_SERVER), sp("checkout", 4, 3), sp("payments", 5, 4, KIND_SERVER),
             sp("payments", 6, 99, KIND_INTERNAL)]
    graph = trace_graph(spans)
    assert not graph.has_root
    assert dict(graph.orphans) == {"checkout": 1, "payments": 1}
    assert [r.key for r in graph.requests] == [EdgeKey("checkout", "payments", DIRECT)]
    whole = trace_graph([root(span=2), *spans[:3]])
    assert whole.has_root and dict(whole.orphans) == {}


def test_an_all_zero_parent_is_a_root() -> None:
    span = replace(root(), parent_span_id=bytes(8))
    assert trace_graph([span]).has_root and span.is_root


def test_histogram_buckets_and_quantile_as_prometheus() -> None:
    h = Histogram(TEMPO_BUCKETS)
    for v in (0.05, 0.1, 0.15, 0.3, 20.0):
        h.observe(v)
    assert h.counts == [2, 1, 1, 0, 0, 0, 0, 0, 1]  # 0.1 is within le=0.1
    assert h.cumulative()[-1] == h.count == 5 and h.sum == pytest.approx(20.6)
    assert h.quantile(0.5) == pytest.approx(0.15)  # rank 2.5: half way through (0.1, 0.2]
    assert h.quantile(0.99) == 12.8  # in +Inf: the highest finite bound
    few = Histogram(TEMPO_BUCKETS)
    few.observe(0.25)
    assert few.quantile(0.95) == 0.25  # interpolation alone says 0.39: never above the largest seen
    assert Histogram(TEMPO_BUCKETS).quantile(0.95) is None
    fine = Histogram(DISPLAY_BUCKETS)
    for _ in range(100):
        fine.observe(0.02)
    p95 = fine.quantile(0.95)
    assert p95 is not None and 0.02 / 1.42 <= p95 <= 0.02 * 1.42


def test_service_graph_accumulates_with_exemplars_of_kept_traces() -> None:
    graph = ServiceGraph()
    call = [root(), sp("frontend", 2, 1, end_ms=40), sp("checkout", 3, 2, KIND_SERVER, end_ms=30)]
    failing = [root(), sp("frontend", 2, 1, end_ms=40), sp("checkout", 3, 2, KIND_SERVER, error=True, end_ms=30)]
    graph.add_trace(call, bytes.fromhex("01" * 16), kept=True)
    graph.add_trace(failing, bytes.fromhex("02" * 16), kept=False)
    graph.add_trace([sp("checkout", 7, 5, KIND_INTERNAL)], bytes.fromhex("03" * 16), kept=True)
    doc = graph.to_json()
    assert doc["nodes"] == [
        {"id": "checkout", "virtual": False, "orphan_spans": 1},
        {"id": "frontend", "virtual": False, "orphan_spans": 0},
        {"id": "user", "virtual": True, "orphan_spans": 0},
    ]
    edge = doc["edges"][0]
    assert (edge["client"], edge["server"], edge["connection_type"]) == ("frontend", "checkout", "")
    assert (edge["requests"], edge["failed"], edge["error_rate"]) == (2, 1, 0.5)
    assert edge["exemplar_trace_id"] == "01" * 16  # the failing trace was not kept: no exemplar names it
    assert 40 / 1.42 <= edge["p95_ms"] <= 40 * 1.42
    assert doc["traces"] == 3 and doc["traces_without_root"] == 1 and doc["orphan_spans"] == 1
    stats = graph.edges[EdgeKey("frontend", "checkout", DIRECT)]
    assert stats.client.count == stats.server.count == 2
    assert stats.server.sum == pytest.approx(0.06) and stats.client.sum == pytest.approx(0.08)


def test_edges_beyond_the_bound_go_to_the_overflow_edge() -> None:
    graph = ServiceGraph(max_edges=2, max_services=3)
    for n in range(5):
        graph.add_trace([sp(f"s{n}", 1, None, KIND_CLIENT, peer="db", error=n == 4), sp(f"s{n}", 2, 9)])
    assert len(graph.edges) == 2
    doc = graph.to_json()
    assert doc["overflow"] == {"requests": 3, "failed": 1}
    assert sum(e["requests"] for e in doc["edges"]) + doc["overflow"]["requests"] == 5
    assert len(graph.services) == 3 and doc["orphan_spans"] == 5 and graph.orphans_overflow == 2


# --- invariants over random traces ---------------------------------------------------------------

SERVICES = ("a", "b", "c")
KINDS = (0, KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER)
PEERS = (None, None, "p")


@st.composite
def traces(draw: st.DrawFn) -> list[SpanRecord]:
    """Up to 14 spans; parents are earlier spans, none (a root), or an id that never arrives."""
    n = draw(st.integers(1, 14))
    spans = []
    for i in range(1, n + 1):
        parent = draw(st.one_of(st.none(), st.integers(1, i - 1) if i > 1 else st.none(), st.just(1000 + i)))
        start = draw(st.integers(0, 50))
        spans.append(sp(draw(st.sampled_from(SERVICES)), i, parent, draw(st.sampled_from(KINDS)), draw(st.booleans()),
                        start, start + draw(st.integers(0, 50)), draw(st.sampled_from(PEERS)),
                        draw(st.sampled_from(PEERS)), draw(st.sampled_from(PEERS))))
    return spans


def _expected_count(spans: list[SpanRecord]) -> int:
    """Paired client spans + unpaired ones that name a peer + root server spans: written out plainly."""
    count = 0
    for s in spans:
        if s.kind in (KIND_CLIENT, KIND_PRODUCER):
            paired = any(c.parent_span_id == s.span_id and c.kind in (KIND_SERVER, KIND_CONSUMER)
                         and c.service != s.service for c in spans)
            count += paired or bool(s.peer_service or s.db_system or s.server_address)
        elif s.kind in (KIND_SERVER, KIND_CONSUMER) and not s.parent_span_id:
            count += 1
    return count


@settings(max_examples=300, deadline=None)
@given(traces(), st.randoms(use_true_random=False))
def test_invariants_of_one_trace(spans: list[SpanRecord], rnd: random.Random) -> None:
    graph = trace_graph(spans)
    by_id = {s.span_id: s for s in spans}
    client_requests = [r for r in graph.requests if r.key.client != USER]
    # every client span contributes at most one request, and only client spans do (besides `user`)
    assert len({r.span_id for r in client_requests}) == len(client_requests)
    assert all(by_id[r.span_id].kind in (KIND_CLIENT, KIND_PRODUCER) for r in client_requests)
    assert len(graph.requests) == _expected_count(spans)
    for r in graph.requests:
        caller = by_id[r.span_id]
        assert r.failed >= caller.error  # failed whenever the client (or root server) span failed
        assert r.client_seconds >= 0 and r.server_seconds >= 0
    # orphans: exactly the non-root spans whose parent is not in the trace
    assert sum(graph.orphans.values()) == sum(1 for s in spans if s.parent_span_id and s.parent_span_id not in by_id)
    assert graph.has_root == any(not s.parent_span_id for s in spans)
    # the order spans arrive in changes nothing
    shuffled = list(spans)
    rnd.shuffle(shuffled)
    assert trace_graph(shuffled) == graph


@settings(max_examples=100, deadline=None)
@given(st.lists(traces(), min_size=1, max_size=8), st.integers(1, 4))
def test_the_aggregate_conserves_requests_within_its_bound(batch: list[list[SpanRecord]], max_edges: int) -> None:
    graph = ServiceGraph(max_edges=max_edges)
    total = failed = orphans = 0
    for n, spans in enumerate(batch):
        one = graph.add_trace(spans, n.to_bytes(16, "big"), kept=n % 2 == 0)
        total += len(one.requests)
        failed += sum(r.failed for r in one.requests)
        orphans += sum(one.orphans.values())
    doc = graph.to_json()
    assert len(doc["edges"]) <= max_edges
    assert sum(e["requests"] for e in doc["edges"]) + doc["overflow"]["requests"] == total
    assert sum(e["failed"] for e in doc["edges"]) + doc["overflow"]["failed"] == failed
    assert doc["orphan_spans"] == orphans and doc["traces"] == len(batch)
    ids = {n["id"] for n in doc["nodes"]}
    assert all(e["client"] in ids and e["server"] in ids for e in doc["edges"])
    for stats in graph.edges.values():
        assert stats.client.count == stats.server.count == stats.latency.count == stats.requests
