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

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from sampler.otlp.splice import MARK_KEYS
from sampler.otlp.wire import AttrValue, Group, SpanFields, walk_request

CACHE_SIZE = 4096  # bound on cached predicate results per attribute key, and on interned groups
CACHE_MAX_BYTES = 4 * 2**20  # bound on the memory of all of a splitter's caches together
# Estimated memory of one cache entry besides the bytes and strings it holds (its dict slots, the
# Group object and its attributes; a cached value's bits).
_GROUP_COST = 600
_VALUE_COST = 120


class Splitter:
    """What one engine (policy set) needs from every request, and the caches that make it cheap.

    - `keys`: the attributes whose values policies read (span and resource level);
    - `value_bits(key, value)`: the predicate bits one span attribute satisfies; cached per key for
      strings and integers, since the same few values (status codes, routes) recur endlessly;
    - `resource_bits(attrs)`: the bits a resource's attributes satisfy, once per distinct group;
    - `span_bits(span)`: for policies that read whole spans (None when no policy does).
    Groups with the same resource and scope bytes are shared between requests (interned).
    """

    def __init__(
        self,
        keys: frozenset[str],
        value_bits: Callable[[str, AttrValue], int],
        resource_bits: Callable[[Mapping[str, AttrValue]], int],
        span_bits: Callable[[SpanFields], int] | None = None,
    ) -> None:
        self.keys = keys
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

    @property
    def bits(self) -> int:
        """The predicate bits the spans satisfied."""


class _Chunk:
    """The interpreted splitter's Chunk."""

    __slots__ = (
        "bits", "groups", "marked", "max_end", "min_start", "nbytes", "root_attrs", "root_group", "root_name",
        "spans", "status_mask", "trace_id",
    )

    def __init__(self, trace_id: bytes, start: int, end: int) -> None:
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


if TYPE_CHECKING:
    from sampler.otlp import _split

    def _compiled_chunk_is_a_chunk(chunk: _split.Chunk) -> Chunk:
        return chunk


def _split_request(data: bytes, splitter: Splitter) -> list[Chunk]:
    """Interpreted: walk into SpanFields, then fold each span into its trace's chunk."""
    by_trace: dict[bytes, _Chunk] = {}
    for span in walk_request(data, splitter.keys):
        chunk = by_trace.get(span.trace_id)
        if chunk is None:
            chunk = by_trace[span.trace_id] = _Chunk(span.trace_id, span.start, span.end)
        group = span.group = splitter.group(span.group)
        chunk.spans.append(span.data)
        chunk.groups.append(group)
        chunk.nbytes += len(span.data)
        chunk.min_start = min(chunk.min_start, span.start)
        chunk.max_end = max(chunk.max_end, span.end)
        chunk.status_mask |= 1 << (span.status if span.status <= 2 else 0)
        bits = group.match_bits
        if span.attrs:
            for key, value in span.attrs.items():
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


split_request: Callable[[bytes, Splitter], list[Chunk]]
try:
    from sampler.otlp._split import split_request
except ImportError:  # no compiled module (TAILSAMPLER_NO_COMPILE, no compiler): the interpreted path
    split_request = _split_request
    COMPILED = False
else:
    COMPILED = True
