"""What the core learns from all traffic as it runs: span metrics counted at ingest (the splitter's
tally), and at each decision the trace's part of the service graph, its broken context propagation,
and (for a kept trace) the exemplars. The core calls `decided` for every trace it decides; the
trace is whole by then (as far as this instance saw it), so pairing is exact and needs no store.

What the graph reads of a trace was extracted by the splitter as the spans arrived (a fixed record
per span, the span's group, and client spans' peer attributes, in the trace's summary), so a dropped
trace, most of them, is never unpacked or decompressed for it. Log records held with a trace have
no records: only spans are read.
"""

from __future__ import annotations

from collections.abc import Iterator

from sampler.insight.servicegraph import KIND_CLIENT, KIND_PRODUCER, ServiceGraph, SpanRecord, trace_graph
from sampler.insight.spanmetrics import SpanMetrics
from sampler.otlp.split import PEER_KEYS, RECORD, Tally
from sampler.policy.summary import TraceSummary

_CALLERS = (KIND_CLIENT, KIND_PRODUCER)


class Insight:
    def __init__(self, spanmetrics: SpanMetrics | None = None, graph: ServiceGraph | None = None) -> None:
        self.spanmetrics = spanmetrics
        self.graph = graph

    @property
    def tally(self) -> Tally | None:
        """Where the splitter counts every span (None: span metrics are off)."""
        return self.spanmetrics.tally if self.spanmetrics is not None else None

    @property
    def records(self) -> bool:
        """Whether the splitter must record each span for decision time."""
        return self.graph is not None or self.spanmetrics is not None

    def decided(self, summary: TraceSummary, keep: bool, whole: bool) -> None:
        """One trace decided: `keep`, and `whole` when it was decided on quiet or max age (not early),
        so that its orphan spans and missing root say something about context propagation."""
        records = summary.graph
        if records is None:
            return
        if keep and self.spanmetrics is not None:
            self.spanmetrics.kept(summary.trace_id, records)
        graph = self.graph
        if graph is not None:
            if graph.table is not None:  # the compiled splitter's: paired and counted in C
                graph.add_records(records, summary.graph_groups, summary.peers, summary.trace_id, keep, whole)
            else:
                graph.add(trace_graph(span_records(summary)), summary.trace_id, keep, whole)

    @property
    def nbytes(self) -> int:
        n = self.spanmetrics.nbytes if self.spanmetrics is not None else 0
        if self.graph is not None:
            n += 2000 * (self.graph.edge_count + 1) + 100 * len(self.graph.services)
        return n


def span_records(summary: TraceSummary) -> Iterator[SpanRecord]:
    """The trace's spans as the service graph reads them. A peer attribute comes from the span, else
    from its resource (as Tempo reads them)."""
    records = summary.graph
    if records is None:
        return
    peers = iter(summary.peers or ())
    groups = summary.graph_groups
    for i, (span_id, parent, start, end, kind, status, has_peer, _) in enumerate(RECORD.iter_unpack(records)):
        group = groups[i]
        found = next(peers) if has_peer else None
        if kind not in _CALLERS:  # only a client span reads its peer
            yield SpanRecord(group.service, span_id, parent, kind, status == 2, start, end)
            continue
        values: list[str | None] = []
        for slot, key in enumerate(PEER_KEYS):
            value = found[slot] if found is not None else None
            if value is None:
                attr = group.attrs.get(key)
                value = attr if isinstance(attr, str) else None
            values.append(value)
        yield SpanRecord(group.service, span_id, parent, kind, status == 2, start, end, *values)
