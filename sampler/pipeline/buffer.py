"""The bounded per-trace store: spans held as their serialized bytes, plus each trace's summary.

A trace's spans arrive as one bytes object each and stay so while the trace is active ("hot");
once it has been quiet for `compress_after` they are packed into a frame and compressed
(sampler/pipeline/frames.py), and spans arriving after that start a new hot list.

Traces are kept in three orders: by last arrival (the quiet-time sweep pops from its front), by
first arrival (the max-age sweep and bound evictions pop from its front), and hot traces by last
arrival (packing pops from its front). All are OrderedDicts, so every operation is O(1) and a sweep
touches only what is due.
"""

from __future__ import annotations

from collections import OrderedDict

from sampler.otlp.wire import Group
from sampler.pipeline.frames import Frame
from sampler.pipeline.untrack import untrack
from sampler.policy.summary import TraceSummary

# What holding spans costs besides their serialized bytes, as tracemalloc sees it (tests/test_memory.py
# holds these to it): per span, its bytes object's header and its slots in the span and group lists;
# per trace, its entry, summary, lists, id, root span name and attributes, and its places in both
# orders of the buffer.
SPAN_OVERHEAD = 52
TRACE_OVERHEAD = 720
HOT_LISTS = 112  # the two lists a trace's hot spans are held in (besides their slots, in SPAN_OVERHEAD)


def spans_cost(nbytes: int, spans: int) -> int:
    """Memory held by `spans` span bytes objects of `nbytes` serialized bytes in all."""
    return nbytes + spans * SPAN_OVERHEAD


def trace_cost(nbytes: int, spans: int) -> int:
    """Memory held by a trace whose spans are all hot (not packed yet)."""
    return TRACE_OVERHEAD + HOT_LISTS + spans_cost(nbytes, spans)


class TraceEntry:
    """One buffered trace. It adopts the lists of its first chunk (no copy); it, its summary and
    its lists are hidden from the cycle collector (sampler/pipeline/untrack.py says why that is safe).
    `generation` is the policy set its summary was made under (Core re-summarises after a reload);
    `marked`: some span of it arrived annotated by a tailsampler before this one (Chunk.marked)."""

    __slots__ = ("cost", "first_seen", "frames", "generation", "groups", "last_seen", "marked", "pending", "spans",
                 "summary")

    def __init__(
        self, trace_id: bytes, now: float, spans: list[bytes], groups: list[Group], generation: int = 0,
    ) -> None:
        self.first_seen = now
        self.last_seen = now
        self.generation = generation
        self.marked = False
        self.cost = TRACE_OVERHEAD + HOT_LISTS  # memory held, spans added as they are folded in (Buffer.touched)
        self.frames: tuple[Frame, ...] = ()  # spans packed (and compressed) so far, in arrival order
        self.pending: tuple[tuple[list[bytes], list[Group]], ...] = ()  # spans being packed, in order
        self.hold(TraceSummary(trace_id), spans, groups)
        untrack(self)

    def hold(self, summary: TraceSummary, spans: list[bytes], groups: list[Group]) -> None:
        """Take these as the trace's summary and hot spans (groups[i] is the resource/scope of spans[i])."""
        self.summary = summary
        untrack(summary)
        self.adopt(spans, groups)

    def adopt(self, spans: list[bytes], groups: list[Group]) -> None:
        """Take these lists as the trace's hot spans (the trace has none: None until spans arrive
        after its last packing)."""
        self.spans: list[bytes] | None = spans
        self.groups: list[Group] | None = groups
        untrack(spans)
        untrack(groups)

    def resummarised(self, summary: TraceSummary) -> None:
        """Take a summary made anew from the same spans (after a policy reload)."""
        self.summary = summary
        untrack(summary)

    def detach(self) -> None:
        """Its hot spans are being packed: pending until `attach` (spans arriving meanwhile start
        new hot lists)."""
        if self.spans is not None and self.groups is not None:
            self.pending = (*self.pending, (self.spans, self.groups))
            untrack(self.pending)
        self.spans = None
        self.groups = None

    def attach(self, spans: list[bytes], frame: Frame) -> bool:
        """The pending `spans` are now `frame`; False when they are not pending here."""
        for i, (pending, _) in enumerate(self.pending):
            if pending is spans:
                self.pending = self.pending[:i] + self.pending[i + 1 :]
                self.frames = (*self.frames, frame)
                untrack(frame)
                untrack(self.frames)
                untrack(self.pending)
                return True
        return False

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
        compress_after: float = 0.5,
    ) -> None:
        self.max_traces = max_traces
        self.compress_after = compress_after
        self.max_bytes = max_bytes
        self.bound = max_bytes  # what it may hold now: max_bytes, or less while memory is short
        self.max_spans_per_trace = max_spans_per_trace
        self.max_bytes_per_trace = max_bytes_per_trace
        self.min_eviction_age = min_eviction_age
        self.decision_wait = decision_wait
        self.max_trace_age = max_trace_age
        self.by_last: OrderedDict[bytes, TraceEntry] = OrderedDict()
        self.by_first: OrderedDict[bytes, TraceEntry] = OrderedDict()
        self.hot: OrderedDict[bytes, TraceEntry] = OrderedDict()  # traces with spans not yet packed
        self.nbytes = 0  # memory held by the buffered traces (trace_cost while hot, less once packed)
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
        self.hot[trace_id] = entry
        self.nbytes += entry.cost
        return entry

    def touched(self, entry: TraceEntry, now: float, added_spans: int, added_cost: int) -> None:
        """Record that `added_spans` spans costing `added_cost` bytes were just folded into `entry`:
        it becomes the most recently active."""
        entry.last_seen = now
        entry.cost += added_cost
        self.nbytes += added_cost
        self.spans += added_spans
        trace_id = entry.trace_id
        self.by_last.move_to_end(trace_id)
        hot = self.hot
        if trace_id in hot:
            hot.move_to_end(trace_id)
        else:
            hot[trace_id] = entry

    def recost(self, entry: TraceEntry, delta: int) -> None:
        """The memory `entry` holds changed by `delta` bytes (its spans were packed or compressed)."""
        entry.cost += delta
        self.nbytes += delta

    def next_hot(self, quiet_since: float) -> TraceEntry | None:
        """The least recently active trace with spans not yet packed, if none arrived since `quiet_since`;
        it leaves the hot order (the caller packs it)."""
        if self.hot:
            entry = next(iter(self.hot.values()))
            if entry.last_seen <= quiet_since:
                del self.hot[entry.trace_id]
                return entry
        return None

    def remove(self, entry: TraceEntry) -> None:
        trace_id = entry.trace_id
        del self.by_first[trace_id]
        del self.by_last[trace_id]
        self.hot.pop(trace_id, None)
        self.nbytes -= entry.cost
        self.spans -= entry.summary.spans + entry.summary.log_records

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
