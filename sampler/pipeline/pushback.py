"""When a request is refused, and why: every pushback rule in one place.

A refused request changes nothing and is answered with a retryable error (gRPC UNAVAILABLE with
RetryInfo, HTTP 503 with Retry-After), so the sender's own retry holds the spans instead of us. The
rules read parts the server wires in; a part left unwired never refuses (a bare core in tests, the
simulator)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sampler.otlp.logs import LogChunk
from sampler.otlp.split import Chunk
from sampler.pipeline.buffer import HOT_LISTS, TRACE_OVERHEAD, Buffer, spans_cost
from sampler.pipeline.memory import Governor, InFlight

# The export queue refuses new requests at this fill, not at 100%: what is buffered now still has to
# fit in it once decided.
QUEUE_HIGH_WATER = 0.9


class Backpressure(Exception):
    """The request cannot be taken now; the sender should retry later. `reason` labels the refusal
    metric: memory, export_queue_full, forward_queue_full or buffer_full."""

    def __init__(self, reason: str = "buffer_full") -> None:
        super().__init__(reason)
        self.reason = reason


class Pushback:
    def __init__(self) -> None:
        self.governor: Governor | None = None  # refuses while the resident memory is above its hard mark
        self.inflight: InFlight | None = None  # bodies being read, before they can be parsed (HTTP)
        self.export_fill: Callable[[], float] | None = None  # of the export queue, 0..1
        # whether the forward queues have room for a request's chunks, by owner
        self.forward_room: Callable[[dict[str, list[Chunk | LogChunk]]], bool] | None = None

    def admit(self, cost: int) -> str | None:
        """Before a body of estimated `cost` bytes is read: None (then release the cost afterwards),
        or why not: "memory" or "too_large"."""
        if self.governor is not None and self.governor.refusing:
            return "memory"
        return self.inflight.admit(cost) if self.inflight is not None else None

    def check(self) -> None:
        """Before a request is parsed: raise Backpressure when memory or the export queue is full."""
        if self.governor is not None and self.governor.refusing:
            raise Backpressure("memory")
        if self.export_fill is not None and self.export_fill() >= QUEUE_HIGH_WATER:
            raise Backpressure("export_queue_full")

    def check_forward(self, remote: dict[str, list[Chunk | LogChunk]]) -> None:
        """Chunks owned elsewhere are refused with the request when their forward queue is full,
        rather than kept here, split from their trace's other spans at the owner."""
        if remote and self.forward_room is not None and not self.forward_room(remote):
            raise Backpressure("forward_queue_full")

    @staticmethod
    def check_buffer(buffer: Buffer, local: Iterable[Chunk | LogChunk], now: float) -> None:
        """Refuse when taking these chunks (of spans or log records) would make the buffer decide
        traces younger than its min_eviction_age to make room."""
        if buffer.min_eviction_age <= 0:
            return
        new = 0
        cost = 0
        for chunk in local:
            cost += spans_cost(chunk.nbytes, len(chunk.records) if isinstance(chunk, LogChunk) else len(chunk.spans))
            if buffer.get(chunk.trace_id) is None:
                new += 1
                cost += TRACE_OVERHEAD + HOT_LISTS
        if buffer.would_evict_young(new, cost, now):
            raise Backpressure("buffer_full")
