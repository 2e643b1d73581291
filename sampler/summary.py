"""The per-trace summary folded at ingest, so that a decision costs O(policies), not O(spans)."""

from __future__ import annotations

from sampler.otlp.wire import AttrValue, SpanFields

# Bits of TraceSummary.status_mask, by OTLP status code (UNSET=0, OK=1, ERROR=2).
STATUS_UNSET = 1
STATUS_OK = 2
STATUS_ERROR = 4


class TraceSummary:
    """What policies read about a trace: counts, time range, statuses, root span, attribute matches.

    `matches` has one bit per attribute predicate of the loaded policies (assigned by the engine):
    the bit is set once any span or resource of the trace satisfied that predicate.
    """

    __slots__ = (
        "first_service",
        "matches",
        "max_end",
        "min_start",
        "nbytes",
        "root_attrs",
        "root_name",
        "root_resource_attrs",
        "root_service",
        "spans",
        "status_mask",
        "trace_id",
    )

    def __init__(self, trace_id: bytes) -> None:
        self.trace_id = trace_id
        self.spans = 0
        self.nbytes = 0
        self.min_start = 0
        self.max_end = 0
        self.status_mask = 0
        self.matches = 0
        self.root_name: str | None = None
        self.root_service: str | None = None
        self.root_attrs: dict[str, AttrValue] = {}
        self.root_resource_attrs: dict[str, AttrValue] = {}
        self.first_service = ""

    def add(self, span: SpanFields, bits: int) -> None:
        """Fold one span (and the policy-predicate bits it and its resource satisfied) in."""
        if self.spans == 0:
            self.min_start = span.start
            self.max_end = span.end
            self.first_service = span.group.service
        else:
            if span.start < self.min_start:
                self.min_start = span.start
            if span.end > self.max_end:
                self.max_end = span.end
        self.spans += 1
        self.nbytes += len(span.data)
        self.status_mask |= 1 << (span.status if span.status <= 2 else 0)
        self.matches |= bits
        if span.is_root:
            self.root_name = span.name
            self.root_service = span.group.service
            self.root_attrs = span.attrs or {}
            self.root_resource_attrs = span.group.attrs

    @property
    def duration_ns(self) -> int:
        """Latency of the whole trace: latest span end minus earliest span start."""
        return max(0, self.max_end - self.min_start)
