"""The service dependency graph of whole traces, as Grafana Tempo's metrics-generator draws it.

Semantics, from Tempo's `modules/generator/processor/servicegraphs` and the OpenTelemetry Collector's
`connector/servicegraphconnector`, applied to one whole trace at a time:

- A CLIENT or PRODUCER span and its SERVER or CONSUMER child in another service are one request on
  the edge client service -> server service. Its `connection_type` is `messaging_system` when either
  side is a PRODUCER or CONSUMER span, `database` when the client span names a `db.system`, else "".
- A client span with no such child is a request to its `peer.service`, else its `db.system`, else its
  `server.address` (span attribute first, then resource): `database` when it names a `db.system`,
  else `virtual_node` (a peer that sends no spans of its own). With none of them it is no request
  (Tempo counts it as an expired edge).
- A root SERVER or CONSUMER span is a request from the virtual node `user` (`virtual_node`): it came
  from outside, from a browser or curl.
- A request failed when its client or its server span has status ERROR.
- Client-side latency is the client span's duration, server-side the server span's. A side without a
  span observes 0, as in Tempo and the Collector, except a database's server side, which is the
  client span's duration (Tempo's `upsertDatabaseRequest`).

Tempo and the Collector pair spans in a store that waits (10 s by default) for the other half, and
lose pairs whose halves arrive further apart or on other instances. tailsampler holds whole traces,
so pairing at decision time is exact and needs no store; and what a store cannot see shows up here:
spans whose parent never arrived in their trace (broken context propagation) and traces with no root.

Where this differs from Tempo, on purpose: a server child in the same service as its client span does
not pair (the contract defines an edge across services; Tempo would draw a self-loop); the unpaired
peer order is the contract's (`peer.service`, `db.system`, `server.address`), where Tempo's default is
(`peer.service`, `db.name`, `db.system`) and a database's name prefers `server.address`; and
`messaging.system` is not read, as Tempo reads it only as an optional extra dimension.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from sampler.otlp.split import COMPILED

if TYPE_CHECKING:
    from sampler.otlp._split import Edges
    from sampler.otlp.wire import Group

# OTLP's Span.SpanKind values.
KIND_INTERNAL = 1
KIND_SERVER = 2
KIND_CLIENT = 3
KIND_PRODUCER = 4
KIND_CONSUMER = 5
_CALLERS = (KIND_CLIENT, KIND_PRODUCER)
_CALLEES = (KIND_SERVER, KIND_CONSUMER)

# connection_type label values, as Tempo's store/edge.go spells them.
DIRECT = ""
MESSAGING_SYSTEM = "messaging_system"
DATABASE = "database"
VIRTUAL_NODE = "virtual_node"

USER = "user"  # the virtual client of a trace's root server span (Tempo's name)

# Tempo's default service-graph histogram buckets: prometheus.ExponentialBuckets(0.1, 2, 8), seconds.
TEMPO_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)
# Finer buckets (factor sqrt 2, 0.5 ms to 65 s) for the p95 the graph page shows: with Tempo's, every
# call under 100 ms would read as a p95 near 95 ms. Within 19% of the true value.
DISPLAY_BUCKETS: tuple[float, ...] = tuple(0.0005 * 2 ** (k / 2) for k in range(35))

MAX_EDGES = 10_000  # Tempo's max_items default
MAX_SERVICES = 10_000


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """What the graph reads of one span: a few fixed fields and three attributes."""

    service: str
    span_id: bytes
    parent_span_id: bytes  # empty (or all zero) for a root span
    kind: int  # OTLP Span.SpanKind
    error: bool  # status ERROR
    start_ns: int
    end_ns: int
    peer_service: str | None = None
    db_system: str | None = None
    server_address: str | None = None

    @property
    def is_root(self) -> bool:
        return not any(self.parent_span_id)

    @property
    def seconds(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


class EdgeKey(NamedTuple):
    """One series of Tempo's traces_service_graph_* metrics."""

    client: str
    server: str
    connection_type: str


@dataclass(frozen=True, slots=True)
class EdgeRequest:
    """One request on an edge, from one trace."""

    key: EdgeKey
    span_id: bytes  # the client span's id; the root server span's for a request from `user`
    failed: bool
    client_seconds: float  # as Tempo observes them: 0 for a side without a span
    server_seconds: float
    seconds: float  # the latency the caller saw: the client span's, or the server span's without one


@dataclass(frozen=True, slots=True)
class TraceGraph:
    """What one whole trace adds to the graph."""

    requests: tuple[EdgeRequest, ...]
    orphans: Mapping[str, int]  # per service: spans whose parent is not in the trace
    has_root: bool
    services: frozenset[str]


def _peer(span: SpanRecord) -> str | None:
    return span.peer_service or span.db_system or span.server_address or None


def trace_graph(spans: Iterable[SpanRecord]) -> TraceGraph:
    """The edge requests, orphans and root of one whole trace. Spans may come in any order."""
    spans = list(spans)
    ids = {s.span_id for s in spans if any(s.span_id)}
    callees: dict[bytes, list[SpanRecord]] = {}
    orphans: dict[str, int] = {}
    has_root = False
    for s in spans:
        if s.is_root:
            has_root = True
        elif s.parent_span_id not in ids:
            orphans[s.service] = orphans.get(s.service, 0) + 1
        if s.kind in _CALLEES and not s.is_root:
            callees.setdefault(s.parent_span_id, []).append(s)
    requests: list[EdgeRequest] = []
    for s in spans:
        if s.kind in _CALLERS:
            request = _client_request(s, callees.get(s.span_id, ()))
            if request is not None:
                requests.append(request)
        elif s.kind in _CALLEES and s.is_root:
            requests.append(EdgeRequest(EdgeKey(USER, s.service, VIRTUAL_NODE), s.span_id, s.error,
                                        0.0, s.seconds, s.seconds))
    requests.sort(key=lambda r: (r.key, r.span_id))  # the same trace gives the same tuple in any span order
    return TraceGraph(tuple(requests), orphans, has_root, frozenset(s.service for s in spans))


def _client_request(client: SpanRecord, children: Sequence[SpanRecord]) -> EdgeRequest | None:
    """The one request a client span makes: to its first callee child in another service (a client
    span retried within itself, or fanned out, is still one request, as in Tempo's edge store), else
    to its peer attributes."""
    across = [c for c in children if c.service != client.service]
    if across:
        server = min(across, key=lambda c: (c.start_ns, c.span_id))
        if client.kind == KIND_PRODUCER or server.kind == KIND_CONSUMER:
            connection = MESSAGING_SYSTEM
        elif client.db_system:
            connection = DATABASE
        else:
            connection = DIRECT
        return EdgeRequest(EdgeKey(client.service, server.service, connection), client.span_id,
                           client.error or server.error, client.seconds, server.seconds, client.seconds)
    peer = _peer(client)
    if peer is None:
        return None
    if client.db_system:
        return EdgeRequest(EdgeKey(client.service, peer, DATABASE), client.span_id, client.error,
                           client.seconds, client.seconds, client.seconds)
    return EdgeRequest(EdgeKey(client.service, peer, VIRTUAL_NODE), client.span_id, client.error,
                       client.seconds, 0.0, client.seconds)


class Histogram:
    """Bucket counts, sum and count, as a Prometheus histogram keeps them (buckets here are not
    cumulative; `cumulative()` gives the exposition's), and the largest value seen."""

    __slots__ = ("bounds", "count", "counts", "max", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a value equal to a bound is within it (le)
        self.sum += value
        self.count += 1
        self.max = max(self.max, value)

    def cumulative(self) -> list[int]:
        out: list[int] = []
        running = 0
        for n in self.counts:
            running += n
            out.append(running)
        return out

    def quantile(self, q: float) -> float | None:
        """Prometheus's histogram_quantile (linear within the bucket the rank falls in; the highest
        finite bound when it falls in +Inf), but never above the largest value seen: with few
        observations the interpolation alone would put them near their bucket's upper bound.
        None without observations."""
        if self.count == 0:
            return None
        rank = q * self.count
        below = 0
        estimate = self.bounds[-1]
        for i, n in enumerate(self.counts):
            if below + n >= rank and n > 0:
                if i < len(self.bounds):
                    lower = self.bounds[i - 1] if i > 0 else 0.0
                    estimate = lower + (self.bounds[i] - lower) * (rank - below) / n
                break
            below += n
        return min(estimate, self.max)


class EdgeStats:
    """Totals of one edge since the graph started."""

    __slots__ = ("client", "exemplar", "exemplar_seconds", "failed", "latency", "requests", "server")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.requests = 0
        self.failed = 0
        self.client = Histogram(buckets)  # traces_service_graph_request_client_seconds
        self.server = Histogram(buckets)  # traces_service_graph_request_server_seconds
        self.latency = Histogram(DISPLAY_BUCKETS)  # what the caller saw, for the page's p95
        self.exemplar: bytes | None = None  # the last kept trace with a request on this edge
        self.exemplar_seconds = (0.0, 0.0)  # that request's client- and server-side latency

    def add(self, request: EdgeRequest, exemplar: bytes | None) -> None:
        self.requests += 1
        self.failed += request.failed
        self.client.observe(request.client_seconds)
        self.server.observe(request.server_seconds)
        self.latency.observe(request.seconds)
        if exemplar is not None:
            self.exemplar = exemplar
            self.exemplar_seconds = (request.client_seconds, request.server_seconds)


class ServiceGraph:
    """Edges and broken-propagation counts accumulated over every trace seen, bounded: at most
    `max_edges` edges (requests on further ones are counted in one overflow edge, as Tempo drops
    spans beyond max_items and the contract's span metrics count beyond max_series) and at most
    `max_services` services counted by name (orphans of further ones in one overflow count)."""

    def __init__(self, max_edges: int = MAX_EDGES, max_services: int = MAX_SERVICES,
                 buckets: Sequence[float] = TEMPO_BUCKETS) -> None:
        self.max_edges = max_edges
        self.max_services = max_services
        self.buckets = tuple(buckets)
        # The edges: in the compiled splitter's C arrays when it is loaded (read back as EdgeStats by
        # `edges` and `overflow`), else as EdgeStats here.
        self.table: Edges | None = None
        if COMPILED:
            from sampler.otlp._split import Edges

            self.table = Edges(self.buckets, DISPLAY_BUCKETS, max_edges,
                               (USER, DIRECT, MESSAGING_SYSTEM, DATABASE, VIRTUAL_NODE))
        self._edges: dict[EdgeKey, EdgeStats] = {}
        self._overflow = EdgeStats(self.buckets)
        self.services: set[str] = set()
        self.orphans: dict[str, int] = {}
        self.orphans_overflow = 0
        self.traces = 0
        self.traces_without_root = 0

    def add_trace(self, spans: Iterable[SpanRecord], trace_id: bytes = b"", kept: bool = False) -> TraceGraph:
        """Counts one whole trace; a kept one becomes the exemplar of its edges."""
        graph = trace_graph(spans)
        self.add(graph, trace_id, kept)
        return graph

    def add(self, graph: TraceGraph, trace_id: bytes = b"", kept: bool = False, broken: bool = True) -> None:
        """Counts one trace's graph; its orphan spans and missing root only with `broken` (a trace
        decided early, before all of it arrived, would look broken when it is not)."""
        self.traces += 1
        if broken and not graph.has_root:
            self.traces_without_root += 1
        for service in graph.services:
            self._service(service)
        for service, n in graph.orphans.items() if broken else ():
            if self._service(service):
                self.orphans[service] = self.orphans.get(service, 0) + n
            else:
                self.orphans_overflow += n
        exemplar = trace_id if kept and trace_id else None
        table = self.table
        for request in graph.requests:
            if table is not None:
                table.add_request(request.key, request.failed, request.client_seconds, request.server_seconds,
                                  request.seconds, exemplar)
            else:
                self._edge(request.key).add(request, exemplar)

    def add_records(self, records: bytes | bytearray, groups: list[Group],
                    peers: list[tuple[str | None, str | None, str | None]] | None,
                    trace_id: bytes = b"", kept: bool = False, broken: bool = True) -> None:
        """`add(trace_graph(...))` of one trace as the splitter recorded it (split.RECORD per span,
        each span's group, and the client spans' peer attributes, as live.span_records reads them),
        paired and counted in C; only with the compiled splitter (`table`)."""
        assert self.table is not None
        has_root, orphans = self.table.add_trace(records, groups, peers, trace_id, kept and bool(trace_id),
                                                 self.services, self.max_services)
        self.traces += 1
        if broken and not has_root:
            self.traces_without_root += 1
        if broken and orphans:
            for service, n in orphans.items():
                if self._service(service):
                    self.orphans[service] = self.orphans.get(service, 0) + n
                else:
                    self.orphans_overflow += n

    @property
    def edges(self) -> dict[EdgeKey, EdgeStats]:
        """The edges counted by name (a reading of the C arrays, with the compiled splitter)."""
        table = self.table
        if table is None:
            return self._edges
        return {EdgeKey(*key): self._row(i) for i, key in enumerate(table.keys) if key is not None}

    @property
    def overflow(self) -> EdgeStats:
        """Requests on edges beyond max_edges, together."""
        return self._overflow if self.table is None else self._row(0)

    @property
    def edge_count(self) -> int:
        return len(self._edges) if self.table is None else self.table.nedges

    def _row(self, i: int) -> EdgeStats:
        assert self.table is not None
        requests, failed, hists = self.table.row(i)
        stats = EdgeStats(self.buckets)
        stats.requests = requests
        stats.failed = failed
        for histogram, (counts, count, total, largest) in zip((stats.client, stats.server, stats.latency), hists,
                                                             strict=True):
            histogram.counts = counts
            histogram.count = count
            histogram.sum = total
            histogram.max = largest
        exemplar = self.table.exemplars[i]
        if exemplar is not None:
            stats.exemplar = exemplar[0]
            stats.exemplar_seconds = (exemplar[1], exemplar[2])
        return stats

    def _service(self, service: str) -> bool:
        """Whether the service is counted by name (known already, or room for it)."""
        if service in self.services:
            return True
        if len(self.services) >= self.max_services:
            return False
        self.services.add(service)
        return True

    def _edge(self, key: EdgeKey) -> EdgeStats:
        stats = self._edges.get(key)
        if stats is None:
            if len(self._edges) >= self.max_edges:
                return self._overflow
            stats = self._edges[key] = EdgeStats(self.buckets)
        return stats

    def to_json(self) -> dict[str, Any]:
        """The contract's `{"nodes": [{"id"}], "edges": [{"client", "server", "requests", "failed"}]}`
        (totals since start), plus per edge its connection type, error rate, p95 latency in ms and
        exemplar trace id, per node whether it sends spans of its own and its orphan spans, and the
        trace counts. Sorted, so equal graphs give equal documents."""
        edges = sorted(self.edges.items())
        ids = set(self.services)
        for key, _ in edges:
            ids.update((key.client, key.server))
        nodes = [{"id": n, "virtual": n not in self.services, "orphan_spans": self.orphans.get(n, 0)}
                 for n in sorted(ids)]
        return {
            "nodes": nodes,
            "edges": [_edge_json(key, stats) for key, stats in edges],
            "traces": self.traces,
            "traces_without_root": self.traces_without_root,
            "orphan_spans": sum(self.orphans.values()) + self.orphans_overflow,
            "overflow": {"requests": self.overflow.requests, "failed": self.overflow.failed},
        }


def _edge_json(key: EdgeKey, stats: EdgeStats) -> dict[str, Any]:
    p95 = stats.latency.quantile(0.95)
    return {
        "client": key.client,
        "server": key.server,
        "connection_type": key.connection_type,
        "requests": stats.requests,
        "failed": stats.failed,
        "error_rate": round(stats.failed / stats.requests, 4) if stats.requests else 0.0,
        "p95_ms": None if p95 is None else round(p95 * 1000, 1),
        "exemplar_trace_id": None if stats.exemplar is None else stats.exemplar.hex(),
    }
