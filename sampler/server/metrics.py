"""Every metric, defined once with its help text.

The core keeps plain counters (no metrics calls on the hot path); a custom collector turns them
into Prometheus families at scrape time. I/O shells (exporter, reloader) count with ordinary
prometheus_client metrics, per request or per batch, never per span.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from sampler.exporters.queue import ExportQueue
from sampler.insight.live import Insight
from sampler.insight.servicegraph import EdgeStats, Histogram, ServiceGraph
from sampler.insight.spanmetrics import OVERFLOW_LABEL, SpanMetrics
from sampler.pipeline.core import LAG_BUCKETS, Core
from sampler.sharding.forwarder import Forwarder
from sampler.sharding.membership import Membership


class CoreCollector(Collector):
    def __init__(self, core: Core) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        core = self.core
        stats = core.stats
        received = CounterMetricFamily(
            "tailsampler_spans_received", "Spans accepted by the receivers.", labels=["protocol"]
        )
        for protocol in ("grpc", "http", "peer"):  # peer: forwarded here by the sharding group
            received.add_metric([protocol], stats.spans_received[protocol])
        yield received
        decided = CounterMetricFamily(
            "tailsampler_traces_decided",
            "Traces decided, by decision (keep|drop) and deciding policy ('' when no policy voted).",
            labels=["decision", "policy"],
        )
        for (decision, policy), n in sorted(stats.decided.items()):
            decided.add_metric([decision, policy], n)
        yield decided
        yield GaugeMetricFamily("tailsampler_traces_in_buffer", "Traces held awaiting a decision.", len(core.buffer))
        yield GaugeMetricFamily("tailsampler_buffer_bytes",
                                "Memory the buffered traces hold: their span bytes and all their overhead.",
                                core.buffer.nbytes)
        yield GaugeMetricFamily("tailsampler_buffer_spans", "Spans held in the buffer (buffer_bytes / buffer_spans is "
                                "the true cost of a buffered span).", core.buffer.spans)
        yield GaugeMetricFamily("tailsampler_buffer_max_traces", "Configured bound on traces held.",
                                core.buffer.max_traces)
        yield GaugeMetricFamily("tailsampler_buffer_max_bytes",
                                "Bound on tailsampler_buffer_bytes (buffer.max_bytes, auto resolved).",
                                core.buffer.max_bytes)
        yield GaugeMetricFamily("tailsampler_buffer_bound_bytes",
                                "What the buffer may hold now: buffer.max_bytes, or less while memory is short.",
                                core.buffer.bound)
        yield CounterMetricFamily(
            "tailsampler_traces_evicted",
            "Traces decided early because max_traces or max_bytes was reached (oldest first).",
            stats.evicted,
        )
        yield CounterMetricFamily(
            "tailsampler_traces_limited",
            "Traces decided early because they reached max_spans_per_trace or max_bytes_per_trace.",
            stats.limited,
        )
        late = CounterMetricFamily(
            "tailsampler_late_spans",
            "Spans that arrived after their trace was decided; they follow the recorded decision.",
            labels=["decision"],
        )
        for decision in ("keep", "drop"):
            late.add_metric([decision], stats.late_spans[decision])
        yield late
        yield CounterMetricFamily(
            "tailsampler_buffer_packed_frames",
            "Frames packed: the spans of a trace quiet for buffer.compress_after, held together from then on.",
            stats.packed_frames,
        )
        yield CounterMetricFamily(
            "tailsampler_buffer_packed_bytes", "Serialized span bytes packed into frames.", stats.packed_bytes,
        )
        yield CounterMetricFamily(
            "tailsampler_compression_input_bytes", "Packed bytes of the frames compressed (zstd).",
            stats.compressed_in,
        )
        yield CounterMetricFamily(
            "tailsampler_compression_output_bytes",
            "What those frames became once compressed: input / output is the compression ratio.",
            stats.compressed_out,
        )
        errors = CounterMetricFamily(
            "tailsampler_policy_evaluation_errors",
            "Policy evaluations that failed (the policy abstained); policy=\"policy_error\": a decision that failed "
            "as a whole (the trace was kept).",
            labels=["policy"],
        )
        for name, n in sorted(stats.policy_errors.items()):
            errors.add_metric([name], n)
        yield errors
        bounds = (*map(str, LAG_BUCKETS), "+Inf")
        buckets = list(zip(bounds, itertools.accumulate(stats.lag_counts), strict=True))
        yield HistogramMetricFamily(
            "tailsampler_decision_lag_seconds",
            "How late a trace was decided: decision time minus due time (quiet or max age).",
            buckets=buckets, sum_value=stats.lag_sum,
        )


class SignalsCollector(Collector):
    """Log records and metric data points: what the receivers took, what was exported or passed
    through, and what was dropped, by reason (the core's and the export queue's counts together)."""

    LOG_DROP_REASONS = ("trace_dropped", "untraced", "export_queue_full", "export_failed", "export_rejected")
    POINT_DROP_REASONS = ("export_queue_full", "export_failed", "export_rejected")

    def __init__(self, core: Core, queue: ExportQueue, points_received: Callable[[], dict[str, int]]) -> None:
        self.core = core
        self.queue = queue
        self.points_received = points_received

    def collect(self) -> Iterator[Metric]:
        stats = self.core.stats
        queue = self.queue
        received = CounterMetricFamily("tailsampler_log_records_received",
                                       "Log records accepted by the receivers.", labels=["protocol"])
        for protocol in ("grpc", "http", "peer"):
            received.add_metric([protocol], stats.records_received[protocol])
        yield received
        yield CounterMetricFamily("tailsampler_log_records_exported", "Log records delivered to the backend.",
                                  queue.records_exported)
        dropped = CounterMetricFamily(
            "tailsampler_log_records_dropped",
            "Log records not delivered, by reason: trace_dropped (their trace was dropped), untraced (no trace id, "
            "logs.untraced: drop), and those of spans (export_queue_full, export_failed, export_rejected).",
            labels=["reason"],
        )
        for reason in self.LOG_DROP_REASONS:
            dropped.add_metric([reason], stats.records_dropped[reason] + queue.records_dropped[reason])
        yield dropped
        late = CounterMetricFamily(
            "tailsampler_late_log_records",
            "Log records that arrived after their trace was decided; they follow the recorded decision.",
            labels=["decision"],
        )
        for decision in ("keep", "drop"):
            late.add_metric([decision], stats.late_records[decision])
        yield late
        points = CounterMetricFamily("tailsampler_metric_points_received",
                                     "OTLP metric data points accepted, to be passed through.", labels=["protocol"])
        taken = self.points_received()
        for protocol in ("grpc", "http"):
            points.add_metric([protocol], taken.get(protocol, 0))
        yield points
        yield CounterMetricFamily("tailsampler_metric_points_forwarded",
                                  "OTLP metric data points passed through to the backend.", queue.points_forwarded)
        lost = CounterMetricFamily("tailsampler_metric_points_dropped",
                                   "Metric data points not delivered, by reason.", labels=["reason"])
        for reason in self.POINT_DROP_REASONS:
            lost.add_metric([reason], queue.points_dropped[reason])
        yield lost


class InsightCollector(Collector):
    """What is learned from all traffic, under Grafana Tempo's metric names: span metrics (counted at
    ingest) and the service graph (counted at decision time), with exemplars naming kept traces
    (exposed when the scraper asks for OpenMetrics); and the broken context propagation found."""

    def __init__(self, insight: Insight) -> None:
        self.insight = insight

    def collect(self) -> Iterator[Metric]:
        if self.insight.spanmetrics is not None:
            yield from _span_metrics(self.insight.spanmetrics)
        if self.insight.graph is not None:
            yield from _service_graph(self.insight.graph)


def _span_metrics(metrics: SpanMetrics) -> Iterator[Metric]:
    labels = list(metrics.labels)
    calls = CounterMetricFamily("traces_spanmetrics_calls",
                                "Spans received (all of them, before sampling), by service, span name, kind, status.",
                                labels=labels)
    latency = HistogramMetricFamily("traces_spanmetrics_latency",
                                    "Span duration in seconds (all spans received, before sampling); exemplars name "
                                    "kept traces.", labels=labels)
    bounds = (*(str(b) for b in metrics.buckets), "+Inf")
    for series in metrics.series():
        buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        for i, (le, n) in enumerate(zip(bounds, series.buckets, strict=True)):
            found = series.exemplars.get(i)
            if found is None:
                buckets.append((le, n))
            else:
                buckets.append((le, n, Exemplar({"trace_id": found[0]}, found[1])))
        if series.labels is not None:
            calls.add_metric(list(series.labels), series.calls)
            latency.add_metric(list(series.labels), buckets, series.seconds)
        else:  # the overflow series: one label only
            overflow = CounterMetricFamily(calls.name, "", labels=[OVERFLOW_LABEL])
            overflow.add_metric(["true"], series.calls)
            calls.samples.extend(overflow.samples)
            overflow_latency = HistogramMetricFamily(latency.name, "", labels=[OVERFLOW_LABEL])
            overflow_latency.add_metric(["true"], buckets, series.seconds)
            latency.samples.extend(overflow_latency.samples)
    yield calls
    yield latency


_EDGE_LABELS = ["client", "server", "connection_type"]


def _service_graph(graph: ServiceGraph) -> Iterator[Metric]:
    total = CounterMetricFamily("traces_service_graph_request",
                                "Requests between two services (every trace decided, before sampling).",
                                labels=_EDGE_LABELS)
    failed = CounterMetricFamily("traces_service_graph_request_failed",
                                 "Requests between two services whose client or server span has status ERROR.",
                                 labels=_EDGE_LABELS)
    server = HistogramMetricFamily("traces_service_graph_request_server",
                                   "Server-side latency of requests between two services, in seconds.",
                                   labels=_EDGE_LABELS, unit="seconds")
    client = HistogramMetricFamily("traces_service_graph_request_client",
                                   "Client-side latency of requests between two services, in seconds.",
                                   labels=_EDGE_LABELS, unit="seconds")
    bounds = (*(str(b) for b in graph.buckets), "+Inf")
    edges: list[tuple[list[str], EdgeStats]] = [(list(key), stats) for key, stats in sorted(graph.edges.items())]
    if graph.overflow.requests:
        edges.append((["", "", "overflow"], graph.overflow))
    for labels, stats in edges:
        total.add_metric(labels, stats.requests)
        failed.add_metric(labels, stats.failed)
        for family, histogram, seconds in ((client, stats.client, stats.exemplar_seconds[0]),
                                           (server, stats.server, stats.exemplar_seconds[1])):
            family.add_metric(labels, _buckets(histogram, bounds, stats.exemplar, seconds), histogram.sum)
    yield total
    yield failed
    yield server
    yield client
    orphans = CounterMetricFamily(
        "tailsampler_orphan_spans",
        "Spans whose parent never arrived in their trace (broken context propagation), by service; counted for "
        "traces decided on quiet or max age only.", labels=["service"])
    for service, n in sorted(graph.orphans.items()):
        orphans.add_metric([service], n)
    if graph.orphans_overflow:
        orphans.add_metric([""], graph.orphans_overflow)
    yield orphans
    yield CounterMetricFamily("tailsampler_traces_without_root",
                              "Traces decided on quiet or max age with no root span (its parent-less span never "
                              "arrived).", graph.traces_without_root)


def _buckets(histogram: Histogram, bounds: tuple[str, ...], exemplar: bytes | None,
             seconds: float) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
    out: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
    at = -1
    if exemplar is not None:
        at = next((i for i, b in enumerate(histogram.bounds) if seconds <= b), len(histogram.bounds))
    for i, (le, n) in enumerate(zip(bounds, histogram.cumulative(), strict=True)):
        if i == at and exemplar is not None:
            out.append((le, n, Exemplar({"trace_id": exemplar.hex()}, seconds)))
        else:
            out.append((le, n))
    return out


MemoryReport = Callable[[], tuple[dict[str, int], int]]


class MemoryCollector(Collector):
    """The memory limit, what each component holds, the resident memory and the pressure."""

    def __init__(self, report: MemoryReport, pressure: Callable[[], int], limit: int) -> None:
        self.report = report
        self.pressure = pressure
        self.limit = limit

    def collect(self) -> Iterator[Metric]:
        components, rss = self.report()
        yield GaugeMetricFamily("tailsampler_memory_limit_bytes",
                                "memory_limit in bytes (auto resolved); 0 when there is none.", self.limit)
        held = GaugeMetricFamily(
            "tailsampler_memory_bytes",
            "Memory held by component: buffer (and the samples a compression dictionary is trained on), "
            "decision_cache, recent_decisions (the /debug ring), export_queue, forward_queues, requests (bodies "
            "being received and decoded), splitter "
            "(its caches), baseline (the process as it started), other (resident memory beyond all of these).",
            labels=["component"],
        )
        for name, n in components.items():
            held.add_metric([name], n)
        yield held
        yield GaugeMetricFamily("tailsampler_memory_rss_bytes", "Resident memory of the process (VmRSS).", rss)
        yield GaugeMetricFamily(
            "tailsampler_memory_pressure",
            "0 normal; 1 deciding traces early for lack of room; 2 refusing requests for lack of room "
            "(over the last sweep interval).",
            self.pressure(),
        )


class PeerCollector(Collector):
    """Sharding metrics, read at scrape time from the membership and the forwarder."""

    def __init__(self, membership: Membership, forwarder: Forwarder) -> None:
        self.membership = membership
        self.forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        stats = self.forwarder.stats
        yield GaugeMetricFamily("tailsampler_peer_members",
                                "Members of the sharding group that traces are spread over, self included.",
                                len(self.membership.alive))
        yield CounterMetricFamily("tailsampler_peer_membership_changes", "Changes of the sharding member list.",
                                  self.membership.changes)
        yield CounterMetricFamily("tailsampler_spans_forwarded", "Spans forwarded to the instance owning their trace.",
                                  stats.forwarded)
        yield CounterMetricFamily("tailsampler_log_records_forwarded",
                                  "Log records forwarded to the instance owning their trace.", stats.forwarded_records)
        yield CounterMetricFamily("tailsampler_forward_failures",
                                  "Attempts to forward spans to a peer that failed (pushbacks included).",
                                  stats.failures)
        yield CounterMetricFamily("tailsampler_forward_pushbacks",
                                  "Attempts to forward spans that the owner answered by pushing back (retryable, "
                                  "with RetryInfo): retried after its delay, the owner stays a member.",
                                  stats.pushbacks)
        fallback = CounterMetricFamily(
            "tailsampler_spans_forward_fallback",
            "Spans (and log records) kept here instead of at their owner, by reason (owner_left; "
            "owner_unreachable: marked down; owner_busy: it pushed back for forward_busy_max_elapsed without "
            "accepting anything; rejected: it refused them for good; shutdown: still on their way at shutdown; "
            "error: an unexpected failure, logged).",
            labels=["reason"],
        )
        for reason, n in sorted(stats.fallback.items()):
            fallback.add_metric([reason], n)
        yield fallback


class Metrics:
    """The metrics of one running instance, in a registry of its own (tests run several)."""

    def __init__(self, core: Core) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(CoreCollector(core))
        self.spans_exported = Counter(
            "tailsampler_spans_exported", "Spans delivered to the backend.", registry=self.registry
        )
        self.export_failures = Counter(
            "tailsampler_export_failures", "Export requests that failed (each failed attempt).",
            registry=self.registry,
        )
        self.spans_dropped = Counter(
            "tailsampler_spans_dropped",
            "Spans of kept traces that could not be delivered, by reason "
            "(export_queue_full, export_failed, export_rejected).",
            ["reason"], registry=self.registry,
        )
        for reason in ("export_queue_full", "export_failed", "export_rejected"):
            self.spans_dropped.labels(reason)
        self.policy_reloads = Counter(
            "tailsampler_policy_reloads", "Policy file reloads, by result (success|failure).", ["result"],
            registry=self.registry,
        )
        for result in ("success", "failure"):
            self.policy_reloads.labels(result)
        self.task_failures = Counter(
            "tailsampler_background_task_failures",
            "Background loops (sweeper, policy-watch, secrets, peer-dns, peer-names) and compression batches "
            "(compress) that failed unexpectedly and "
            "were restarted; each failure is logged with its traceback.",
            ["task"], registry=self.registry,
        )
        for task in ("sweeper", "policy-watch", "secrets", "peer-dns", "peer-names", "compress"):
            self.task_failures.labels(task)
        self.export_queue_bytes = Gauge(
            "tailsampler_export_queue_bytes",
            "Memory held by kept traces waiting for (or in) export; bounded by exporter.queue_max_bytes.",
            registry=self.registry,
        )
        self.requests_refused = Counter(
            "tailsampler_requests_refused",
            "Requests refused by a receiver, by protocol and reason (malformed, too_large, "
            "unsupported_media_type, unsupported_encoding, buffer_full, export_queue_full, forward_queue_full, "
            "memory).",
            ["protocol", "reason"], registry=self.registry,
        )
        for protocol in ("grpc", "http"):
            for reason in ("malformed", "unauthenticated", "buffer_full", "export_queue_full", "forward_queue_full",
                           "memory"):
                self.requests_refused.labels(protocol, reason)
