"""The per-trace summary folded at ingest, so that a decision costs O(policies), not O(spans)."""

from __future__ import annotations

from typing import Final

from sampler.otlp.logs import LogChunk
from sampler.otlp.split import Chunk
from sampler.otlp.wire import AttrValue, Group

NO_ATTRS: Final[dict[str, AttrValue]] = {}  # shared by every summary without root attributes; never changed

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
        "graph",
        "graph_groups",
        "log_records",
        "log_severity_max",
        "matches",
        "max_end",
        "min_start",
        "nbytes",
        "peers",
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
        self.root_attrs: dict[str, AttrValue] = NO_ATTRS
        self.root_resource_attrs: dict[str, AttrValue] = {}
        self.first_service = ""
        self.log_records = 0  # log records held with the trace (their bytes count in nbytes)
        self.log_severity_max = 0  # the highest severity_number among them
        # What the service graph and exemplars read at decision time (Splitter.records): a
        # split.RECORD per span, each span's group, the PEER_KEYS' values of spans with any.
        self.graph: bytearray | None = None
        self.graph_groups: list[Group] = []
        self.peers: list[tuple[str | None, str | None, str | None]] | None = None

    def merge(self, chunk: Chunk, root_attrs: bool = True) -> None:
        """Fold one request's spans of this trace in (their predicate bits included). The root
        span's attributes are kept only when some policy reads them (`root_attrs`)."""
        if self.spans == 0:
            self.min_start = chunk.min_start
            self.max_end = chunk.max_end
            self.first_service = chunk.groups[0].service  # a span's service wins over a log record's
        else:
            if chunk.min_start < self.min_start:
                self.min_start = chunk.min_start
            if chunk.max_end > self.max_end:
                self.max_end = chunk.max_end
        graph = chunk.graph
        if graph is not None:
            if chunk.peers is not None:  # in span order, as the RECORDs flagged as having one
                if self.peers is None:
                    self.peers = chunk.peers  # the chunk's own, as its graph
                else:
                    self.peers += chunk.peers
            if self.graph is None:
                self.graph = graph  # the chunk's own: it is not used again
            else:
                self.graph += graph
            self.graph_groups.extend(chunk.groups)
        self.spans += len(chunk.spans)
        self.nbytes += chunk.nbytes
        self.status_mask |= chunk.status_mask
        self.matches |= chunk.bits
        root = chunk.root_group
        if root is not None:
            self.root_name = chunk.root_name
            self.root_service = root.service
            self.root_attrs = (chunk.root_attrs or NO_ATTRS) if root_attrs else NO_ATTRS
            self.root_resource_attrs = root.attrs

    def merge_logs(self, chunk: LogChunk) -> None:
        """Fold one request's log records of this trace in."""
        if self.spans == 0 and self.log_records == 0:
            self.first_service = chunk.groups[0].service
        self.log_records += len(chunk.records)
        self.nbytes += chunk.nbytes
        if chunk.severity_max > self.log_severity_max:
            self.log_severity_max = chunk.severity_max

    @property
    def duration_ns(self) -> int:
        """Latency of the whole trace: latest span end minus earliest span start."""
        return max(0, self.max_end - self.min_start)
