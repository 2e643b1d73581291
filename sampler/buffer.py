"""The bounded per-trace store: spans held as their serialized bytes, plus each trace's summary.

Traces are kept in two orders: by last arrival (the quiet-time sweep pops from its front) and by
first arrival (the max-age sweep and bound evictions pop from its front). Both are OrderedDicts,
so every operation is O(1) and a sweep touches only what is due.
"""

from __future__ import annotations

from collections import OrderedDict

from sampler.otlp.wire import Group
from sampler.summary import TraceSummary
from sampler.untrack import untrack

# What holding spans costs besides their serialized bytes, as tracemalloc sees it (tests/test_memory.py
# holds these to it): per span, its bytes object's header and its slots in the span and group lists;
# per trace, its entry, summary, lists, id, root span name and attributes, and its places in both
# orders of the buffer.
SPAN_OVERHEAD = 52
TRACE_OVERHEAD = 720


def spans_cost(nbytes: int, spans: int) -> int:
    """Memory held by `spans` span bytes objects of `nbytes` serialized bytes in all."""
    return nbytes + spans * SPAN_OVERHEAD


class TraceEntry:
    """One buffered trace. It adopts the lists of its first chunk (no copy); it, its summary and
    its lists are hidden from the cycle collector (sampler/untrack.py says why that is safe).
    `generation` is the policy set its summary was made under (Core re-summarises after a reload);
    `marked`: some span of it arrived annotated by a tailsampler before this one (Chunk.marked)."""

    __slots__ = ("cost", "first_seen", "generation", "groups", "last_seen", "marked", "spans", "summary")

    def __init__(
        self, trace_id: bytes, now: float, spans: list[bytes], groups: list[Group], generation: int = 0,
    ) -> None:
        self.first_seen = now
        self.last_seen = now
        self.generation = generation
        self.marked = False
        self.cost = TRACE_OVERHEAD  # memory held, spans added as they are folded in (Buffer.touched)
        self.hold(TraceSummary(trace_id), spans, groups)
        untrack(self)

    def hold(self, summary: TraceSummary, spans: list[bytes], groups: list[Group]) -> None:
        """Take these as the trace's summary and spans (groups[i] is the resource/scope of spans[i])."""
        self.summary = summary
        self.spans = spans
        self.groups = groups
        untrack(summary)
        untrack(spans)
        untrack(groups)

    @property
    def nbytes(self) -> int:
        """Span bytes held for this trace (the summary sums them as spans are folded in)."""
        return self.summary.nbytes

    @property
    def trace_id(self) -> bytes:
        return self.summary.trace_id


class Buffer:
    def __init__(
        self, max_traces: int, max_bytes: int, decision_wait: float, max_trace_age: float,
        max_spans_per_trace: int = 1 << 62, max_bytes_per_trace: int = 1 << 62, min_eviction_age: float = 0.0,
    ) -> None:
        self.max_traces = max_traces
        self.max_bytes = max_bytes
        self.bound = max_bytes  # what it may hold now: max_bytes, or less while memory is short
        self.max_spans_per_trace = max_spans_per_trace
        self.max_bytes_per_trace = max_bytes_per_trace
        self.min_eviction_age = min_eviction_age
        self.decision_wait = decision_wait
        self.max_trace_age = max_trace_age
        self.by_last: OrderedDict[bytes, TraceEntry] = OrderedDict()
        self.by_first: OrderedDict[bytes, TraceEntry] = OrderedDict()
        self.nbytes = 0  # memory held by the buffered traces (spans_cost plus TRACE_OVERHEAD each)
        self.spans = 0

    def __len__(self) -> int:
        return len(self.by_first)

    def get(self, trace_id: bytes) -> TraceEntry | None:
        return self.by_first.get(trace_id)

    def create(
        self, trace_id: bytes, now: float, spans: list[bytes], groups: list[Group], generation: int = 0,
    ) -> TraceEntry:
        """A new trace holding `spans` (the lists are the entry's from now on; `touched` counts them)."""
        entry = TraceEntry(trace_id, now, spans, groups, generation)
        self.by_first[trace_id] = entry
        self.by_last[trace_id] = entry
        self.nbytes += entry.cost
        return entry

    def touched(self, entry: TraceEntry, now: float, added_spans: int, added_cost: int) -> None:
        """Record that `added_spans` spans costing `added_cost` bytes were just folded into `entry`:
        it becomes the most recently active."""
        entry.last_seen = now
        entry.cost += added_cost
        self.nbytes += added_cost
        self.spans += added_spans
        self.by_last.move_to_end(entry.trace_id)

    def remove(self, entry: TraceEntry) -> None:
        del self.by_first[entry.trace_id]
        del self.by_last[entry.trace_id]
        self.nbytes -= entry.cost
        self.spans -= entry.summary.spans

    def over_bounds(self) -> bool:
        return len(self.by_first) > self.max_traces or self.nbytes > self.bound

    def would_evict_young(self, new_traces: int, new_cost: int, now: float) -> bool:
        """Whether admitting this much would force deciding a trace younger than min_eviction_age
        (any of those the bounds would decide, oldest first, not only the oldest): bounds are being
        hit faster than decisions free room, so the sender should retry later."""
        excess_traces = len(self.by_first) + new_traces - self.max_traces
        excess_bytes = self.nbytes + new_cost - self.bound
        if excess_traces <= 0 and excess_bytes <= 0:
            return False
        young = now - self.min_eviction_age
        for entry in self.by_first.values():
            if excess_traces <= 0 and excess_bytes <= 0:
                return False
            if entry.first_seen > young:
                return True
            excess_traces -= 1
            excess_bytes -= entry.cost
        return False

    def oldest(self) -> TraceEntry:
        return next(iter(self.by_first.values()))

    def next_quiet(self, now: float) -> TraceEntry | None:
        """The least recently active trace, if no span of it has arrived for decision_wait."""
        if self.by_last:
            entry = next(iter(self.by_last.values()))
            if entry.last_seen + self.decision_wait <= now:
                return entry
        return None

    def next_aged(self, now: float) -> TraceEntry | None:
        """The oldest trace, if max_trace_age has passed since its first span."""
        if self.by_first:
            entry = next(iter(self.by_first.values()))
            if entry.first_seen + self.max_trace_age <= now:
                return entry
        return None

    def entries(self) -> list[TraceEntry]:
        return list(self.by_first.values())
