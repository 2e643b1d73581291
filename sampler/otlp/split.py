"""Split a request into per-trace chunks: the one call the receive path makes per request.

A chunk carries the spans of one trace in one request (their bytes and resource/scope groups) and
what they fold into the trace's summary: span count and bytes, time range, statuses, the policy
predicate bits they satisfy, and the root span's name and attributes. The core then does
O(1) work per trace, not per span.

The package build compiles this step with Cython (`_split.pyx`); without a compiled module the
same chunks come from the interpreted walker (`wire.walk_request`) and the grouping below.
`COMPILED` says which one is loaded.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from sampler.otlp.splice import MARK_KEYS
from sampler.otlp.wire import AttrValue, Group, SpanFields, walk_request

CACHE_SIZE = 4096  # bound on cached predicate results per attribute key, and on interned groups
CACHE_MAX_BYTES = 4 * 2**20  # bound on the memory of all of a splitter's caches together
# Estimated memory of one cache entry besides the bytes and strings it holds (its dict slots, the
# Group object and its attributes; a cached value's bits).
_GROUP_COST = 600
_VALUE_COST = 120

# What the service graph reads of a client span besides its own fields (sampler/insight/servicegraph.py).
PEER_KEYS = ("peer.service", "db.system", "server.address")
# One span as the service graph and the exemplars read it at decision time, kept with the trace's
# summary so that a dropped trace is never unpacked: span id, parent span id (zeros for a root),
# start and end (ns), kind and status code (each at most 255), whether it has an entry in the peers
# (1, else 0: the n-th span with one has the n-th entry), and its span-metrics series (NO_SERIES when
# it was not counted here).
RECORD = struct.Struct("<8s8sQQBBBxI")
# PEER_KEYS' str values of a CLIENT or PRODUCER span with any (the same tuple for equal values in a row)
Peer = tuple[str | None, str | None, str | None]
NO_SERIES = 0xFFFFFFFF
_NO_PARENT = bytes(8)
# A span-metrics series: service, span name, kind, status code, the dimensions' values.
SeriesKey = tuple[str, str, int, int, tuple[str, ...]]


def dim_str(value: AttrValue) -> str:
    """A dimension's label value: strings as they are, booleans as OTLP/JSON spells them."""
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)


class SpanTally:
    """Calls and latency of spans counted as they are split, per series (service, span name, kind,
    status code, dimension values): at most `max_series` of them, and series 0 (key None) for the
    spans of any further label set. Latency buckets are in integer nanoseconds, `le` as in
    Prometheus. Plain integers and lists: what they mean, and their exposition, is insight's
    (sampler/insight/spanmetrics.py). The compiled splitter has its own twin (`_split.Tally`),
    counting into C arrays; `new_tally` gives the one of the loaded splitter."""

    def __init__(self, bounds_ns: Sequence[int], dims: Sequence[str] = (), max_series: int = 10_000) -> None:
        self.bounds_ns = tuple(bounds_ns)
        self.dims = tuple(dims)
        self.max_series = max_series
        self.index: dict[SeriesKey, int] = {}
        self.keys: list[SeriesKey | None] = [None]
        self.stride = len(self.bounds_ns) + 3  # calls, sum in ns, then each bucket and +Inf
        self.counts: list[int] = [0] * self.stride

    def series(self, key: SeriesKey) -> int:
        """The series index of a label set (0, the overflow series, beyond max_series)."""
        i = self.index.get(key)
        if i is not None:
            return i
        if len(self.keys) > self.max_series:
            return 0
        i = self.index[key] = len(self.keys)
        self.keys.append(key)
        self.counts.extend([0] * self.stride)
        return i

    def add(self, series: int, duration_ns: int) -> None:
        row = series * self.stride
        counts = self.counts
        counts[row] += 1
        counts[row + 1] += duration_ns
        counts[row + 2 + bisect_left(self.bounds_ns, duration_ns)] += 1

    def snapshot(self) -> list[tuple[SeriesKey | None, int, int, list[int]]]:
        """(key, calls, latency sum in ns, bucket counts, not cumulative, +Inf last) per series with
        calls, the overflow series (key None) first."""
        out: list[tuple[SeriesKey | None, int, int, list[int]]] = []
        stride = self.stride
        counts = self.counts
        for i, key in enumerate(self.keys):
            row = i * stride
            if counts[row]:
                out.append((key, counts[row], counts[row + 1], counts[row + 2 : row + stride]))
        return out

    @property
    def nbytes(self) -> int:
        """Estimated memory held: the counts, and each key with its strings."""
        return len(self.counts) * 8 + sum(200 + len(k[1]) for k in self.keys if k is not None)


class Tally(Protocol):
    bounds_ns: tuple[int, ...]
    dims: tuple[str, ...]
    max_series: int
    index: dict[SeriesKey, int]

    def series(self, key: SeriesKey) -> int: ...
    def add(self, series: int, duration_ns: int) -> None: ...
    def snapshot(self) -> list[tuple[SeriesKey | None, int, int, list[int]]]: ...
    @property
    def nbytes(self) -> int: ...


def new_tally(bounds_ns: Sequence[int], dims: Sequence[str] = (), max_series: int = 10_000) -> Tally:
    """A tally for the loaded splitter: the compiled one's C arrays when it is compiled."""
    if COMPILED:
        from sampler.otlp._split import Tally as CompiledTally

        return CompiledTally(bounds_ns, dims, max_series)
    return SpanTally(bounds_ns, dims, max_series)


class Splitter:
    """What one engine (policy set) needs from every request, and the caches that make it cheap.

    - `keys`: the attributes whose values policies read (span and resource level);
    - `value_bits(key, value)`: the predicate bits one span attribute satisfies; cached per key for
      strings and integers, since the same few values (status codes, routes) recur endlessly;
    - `resource_bits(attrs)`: the bits a resource's attributes satisfy, once per distinct group;
    - `span_bits(span)`: for policies that read whole spans (None when no policy does);
    - `tally`: where every span is counted for the span metrics (None: not counted);
    - `records`: whether chunks carry each span's RECORD (and client spans' PEER_KEYS values) for the
      service graph and exemplars at decision time.
    Groups with the same resource and scope bytes are shared between requests (interned).
    """

    def __init__(
        self,
        keys: frozenset[str],
        value_bits: Callable[[str, AttrValue], int],
        resource_bits: Callable[[Mapping[str, AttrValue]], int],
        span_bits: Callable[[SpanFields], int] | None = None,
        tally: Tally | None = None,
        records: bool = False,
    ) -> None:
        # the keys whose values predicates read; the others are wanted for their values only, and
        # satisfy no predicate (an engine's value_bits gives 0 for a key no predicate reads)
        self.bits_keys = keys
        if records:
            keys = keys | frozenset(PEER_KEYS)
        if tally is not None:
            keys = keys | frozenset(tally.dims)
        self.keys = keys
        self.tally = tally
        self.records = records
        self.value_bits = value_bits
        self.resource_bits = resource_bits
        self.span_bits = span_bits
        self.groups: dict[tuple[bytes, bytes], Group] = {}
        self.log_groups: dict[tuple[bytes, bytes], Group] = {}  # of log records (otlp/logs.py), apart
        self.cache_str: dict[str, dict[AttrValue, int]] = {}
        self.cache_int: dict[str, dict[AttrValue, int]] = {}
        self.nbytes = 0  # estimated memory of the caches; all are cleared beyond CACHE_MAX_BYTES

    def _grew(self, nbytes: int) -> None:
        self.nbytes += nbytes
        if self.nbytes > CACHE_MAX_BYTES:
            self.groups.clear()
            self.log_groups.clear()
            self.cache_str.clear()
            self.cache_int.clear()
            self.nbytes = 0

    def group(self, group: Group) -> Group:
        """The shared Group with these resource and scope bytes, with its predicate bits."""
        key = (group.resource, group.scope)
        found = self.groups.get(key)
        if found is not None:
            return found
        group.match_bits = self.resource_bits(group.attrs)
        if len(self.groups) >= CACHE_SIZE:
            self.groups.clear()
        self._grew(len(group.resource) + len(group.scope) + _GROUP_COST)
        self.groups[key] = group
        return group

    def log_group(self, resource: bytes, scope: bytes) -> Group | None:
        """The shared Group of log records with these resource and scope bytes, if interned."""
        return self.log_groups.get((resource, scope))

    def add_log_group(self, group: Group) -> Group:
        """Intern a new group of log records. Policies read no log attributes: no predicate bits."""
        group.match_bits = 0
        if len(self.log_groups) >= CACHE_SIZE:
            self.log_groups.clear()
        self._grew(len(group.resource) + len(group.scope) + _GROUP_COST)
        self.log_groups[(group.resource, group.scope)] = group
        return group

    def bits_of(self, key: str, value: AttrValue) -> int:
        """The predicate bits of one span attribute, cached per key for strings and integers (kept
        apart, since 1 == True == 1.0 as dictionary keys)."""
        if type(value) is str:
            caches = self.cache_str
        elif type(value) is int:
            caches = self.cache_int
        else:
            return self.value_bits(key, value)
        per_key = caches.setdefault(key, {})
        bits = per_key.get(value)
        if bits is None:
            if len(per_key) >= CACHE_SIZE:
                per_key.clear()
            bits = self.value_bits(key, value)
            self._grew(_VALUE_COST + (len(value) if type(value) is str else 0))
            caches.setdefault(key, {})[value] = bits
        return bits


class Chunk(Protocol):
    """The spans of one trace in one request, and what they fold into the trace's summary. `marked`:
    some span carries a wanted key of MARK_KEYS (with a primitive value): annotated by a tailsampler
    before this one. Both splitters' chunk classes satisfy it: `_Chunk` below, and the compiled
    `_split.Chunk` (mypy checks it against the stub, in `_compiled_chunk_is_a_chunk`)."""

    trace_id: bytes
    spans: list[bytes]
    groups: list[Group]
    nbytes: int
    min_start: int
    max_end: int
    status_mask: int
    marked: bool
    root_name: str | None
    root_attrs: dict[str, AttrValue] | None
    root_group: Group | None
    graph: bytearray | None  # a RECORD per span (Splitter.records), else None
    # PEER_KEYS' str values of the CLIENT and PRODUCER spans with any, in span order; their RECORDs
    # are flagged (Splitter.records)
    peers: list[Peer] | None

    @property
    def bits(self) -> int:
        """The predicate bits the spans satisfied."""


class _Chunk:
    """The interpreted splitter's Chunk."""

    __slots__ = (
        "bits", "graph", "groups", "marked", "max_end", "min_start", "nbytes", "peers", "root_attrs", "root_group",
        "root_name", "spans", "status_mask", "trace_id",
    )

    def __init__(self, trace_id: bytes, start: int, end: int, records: bool) -> None:
        self.trace_id = trace_id
        self.spans: list[bytes] = []
        self.groups: list[Group] = []
        self.nbytes = 0
        self.min_start = start
        self.max_end = end
        self.status_mask = 0
        self.bits = 0
        self.marked = False
        self.root_name: str | None = None
        self.root_attrs: dict[str, AttrValue] | None = None
        self.root_group: Group | None = None
        self.graph: bytearray | None = bytearray() if records else None
        self.peers: list[Peer] | None = None


if TYPE_CHECKING:
    from sampler.otlp import _split

    def _compiled_chunk_is_a_chunk(chunk: _split.Chunk) -> Chunk:
        return chunk


def _split_request(data: bytes, splitter: Splitter, count: bool = True) -> list[Chunk]:
    """Interpreted: walk into SpanFields, then fold each span into its trace's chunk. With `count`,
    every span is counted in the splitter's tally (if any)."""
    by_trace: dict[bytes, _Chunk] = {}
    tally = splitter.tally if count else None
    records = splitter.records
    for span in walk_request(data, splitter.keys):
        chunk = by_trace.get(span.trace_id)
        if chunk is None:
            chunk = by_trace[span.trace_id] = _Chunk(span.trace_id, span.start, span.end, records)
        group = span.group = splitter.group(span.group)
        series = NO_SERIES
        if tally is not None:
            attrs = span.attrs or {}
            dims = tuple(dim_str(attrs[d]) if d in attrs else "" for d in tally.dims)
            series = tally.series((group.service, span.name, span.kind, span.status, dims))
            tally.add(series, span.end - span.start if span.end > span.start else 0)
        if chunk.graph is not None:
            has_peer = 0
            if span.attrs and (span.kind == 3 or span.kind == 4):  # a client span's peer
                peers = [span.attrs.get(k) for k in PEER_KEYS]
                if any(type(p) is str for p in peers):
                    if chunk.peers is None:
                        chunk.peers = []
                    p0, p1, p2 = (p if type(p) is str else None for p in peers)
                    chunk.peers.append((p0, p1, p2))
                    has_peer = 1
            chunk.graph += RECORD.pack(span.span_id, span.parent_span_id or _NO_PARENT, span.start, span.end,
                                       min(span.kind, 255), min(span.status, 255), has_peer, series)
        chunk.spans.append(span.data)
        chunk.groups.append(group)
        chunk.nbytes += len(span.data)
        chunk.min_start = min(chunk.min_start, span.start)
        chunk.max_end = max(chunk.max_end, span.end)
        chunk.status_mask |= 1 << (span.status if span.status <= 2 else 0)
        bits = group.match_bits
        if span.attrs:
            for key, value in span.attrs.items():
                if key in splitter.bits_keys:
                    bits |= splitter.bits_of(key, value)
                if key in MARK_KEYS:
                    chunk.marked = True
        if splitter.span_bits is not None:
            bits |= splitter.span_bits(span)
        chunk.bits |= bits
        if span.is_root:
            chunk.root_name = span.name
            chunk.root_attrs = span.attrs or {}
            chunk.root_group = group
    return list(by_trace.values())


split_request: Callable[[bytes, Splitter, bool], list[Chunk]]
try:
    from sampler.otlp._split import split_request
except ImportError:  # no compiled module (TAILSAMPLER_NO_COMPILE, no compiler): the interpreted path
    split_request = _split_request
    COMPILED = False
else:
    COMPILED = True
