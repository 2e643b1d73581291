"""Span metrics counted at ingest, the live service graph and the exemplars counted at decision time:
plain values through a real Core (both splitters), then the Prometheus exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

import sampler.otlp.split as split
from sampler.config.yamlfile import YamlDoc
from sampler.insight.live import Insight
from sampler.insight.servicegraph import ServiceGraph
from sampler.insight.spanmetrics import SpanMetrics, label_name
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.loader import load_policies
from sampler.server.metrics import InsightCollector
from tests.spans import S, request, tid

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5
ERRORS_ONLY = {"policies": [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}]}
SPLITS = [pytest.param(False, id="interpreted")]
if split.COMPILED:
    SPLITS.append(pytest.param(True, id="compiled"))


@pytest.fixture(params=SPLITS)
def compiled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test once per splitter: the interpreted one with its own tally, and the compiled one."""
    if not request.param:
        monkeypatch.setattr(split, "COMPILED", False)
        monkeypatch.setattr("sampler.pipeline.core.split_request", split._split_request)
    return bool(request.param)


def new_core(metrics: SpanMetrics | None = None, graph: ServiceGraph | None = None,
             policies: dict[str, object] | None = None) -> tuple[Core, list[KeptTrace]]:
    kept: list[KeptTrace] = []
    engine = load_policies(YamlDoc("test.yaml", policies or ERRORS_ONLY, {})).engine()
    core = Core(Buffer(1000, 2**30, 1.0, 30.0), engine, DecisionCache(1000, 1000), kept.append,
                insight=Insight(metrics, graph))
    return core, kept


def shop(trace: int, error: bool = False) -> list[S]:
    """frontend -> checkout (HTTP), checkout -> payments (HTTP), checkout -> orders queue
    (PRODUCER/CONSUMER), payments -> postgres (a database client span)."""
    return [
        S(trace, 1, name="GET /cart", service="frontend", kind=SERVER, end_ms=50),
        S(trace, 2, 1, name="POST /checkout", service="frontend", kind=CLIENT, start_ms=1, end_ms=45),
        S(trace, 3, 2, name="POST /checkout", service="checkout", kind=SERVER, start_ms=2, end_ms=44),
        S(trace, 4, 3, name="charge", service="checkout", kind=CLIENT, start_ms=3, end_ms=30, status=2 if error else 0),
        S(trace, 5, 4, name="charge", service="payments", kind=SERVER, start_ms=4, end_ms=29, status=2 if error else 0),
        S(trace, 6, 5, name="SELECT", service="payments", kind=CLIENT, start_ms=5, end_ms=9,
          attrs={"db.system": "postgresql"}),
        S(trace, 7, 3, name="orders publish", service="checkout", kind=PRODUCER, start_ms=31, end_ms=32),
        S(trace, 8, 7, name="orders process", service="orders", kind=CONSUMER, start_ms=40, end_ms=60),
    ]


def ingest(core: Core, spans: list[S], now: float = 0.0) -> None:
    by_service: dict[str, list[S]] = {}
    for s in spans:
        by_service.setdefault(s.service, []).append(s)
    for service_spans in by_service.values():  # one request per service, as each SDK sends its own
        core.ingest(request(service_spans), "grpc", now)


def calls(metrics: SpanMetrics) -> dict[tuple[str, ...] | None, int]:
    return {s.labels: s.calls for s in metrics.series()}


def test_every_span_is_counted_with_tempo_labels(compiled: bool) -> None:
    metrics = SpanMetrics()
    core, _ = new_core(metrics)
    for trace in range(10):
        ingest(core, shop(trace, error=trace % 5 == 0))
    got = calls(metrics)
    assert got[("frontend", "GET /cart", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET")] == 10
    assert got[("checkout", "charge", "SPAN_KIND_CLIENT", "STATUS_CODE_ERROR")] == 2
    assert got[("checkout", "charge", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET")] == 8
    assert got[("orders", "orders process", "SPAN_KIND_CONSUMER", "STATUS_CODE_UNSET")] == 10
    assert sum(got.values()) == 80
    latency = {s.labels: s for s in metrics.series()}[("payments", "SELECT", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET")]
    assert latency.seconds == pytest.approx(10 * 0.004)
    assert latency.buckets[0] == 0 and latency.buckets[1] == 10  # 4 ms: le=0.004, not le=0.002
    assert latency.buckets[-1] == 10


def test_dimensions_come_from_span_attributes(compiled: bool) -> None:
    metrics = SpanMetrics(dimensions=["http.route", "retry"])
    core, _ = new_core(metrics)
    core.ingest(request([S(1, 1, attrs={"http.route": "/a", "retry": True}), S(1, 2, 1, attrs={"http.route": "/b"}),
                         S(2, 3, attrs={"http.route": "/a", "retry": True})]), "grpc", 0.0)
    assert metrics.labels[-2:] == ("http_route", "retry")
    assert calls(metrics) == {("svc", "op", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", "/a", "true"): 2,
                              ("svc", "op", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", "/b", ""): 1}
    assert label_name("http.route") == "http_route" and label_name("9x") == "_9x"


def test_twenty_thousand_span_names_stay_within_max_series_and_overflow(compiled: bool) -> None:
    metrics = SpanMetrics(max_series=1000)
    core, _ = new_core(metrics)
    for batch in range(20):
        core.ingest(request([S(batch * 1000 + i, 1, name=f"/users/{batch * 1000 + i}") for i in range(1000)]),
                    "grpc", 0.0)
    series = metrics.series()
    assert len(series) == 1001  # max_series, and the overflow series
    assert series[0].labels is None and series[0].calls == 19_000
    assert sum(s.calls for s in series) == 20_000
    registry = CollectorRegistry()
    registry.register(InsightCollector(Insight(metrics, None)))
    text = generate_latest(registry).decode()
    assert 'traces_spanmetrics_calls_total{otel_metric_overflow="true"} 19000.0' in text
    assert text.count("traces_spanmetrics_calls_total{") == 1001


def test_forwarded_and_resplit_spans_are_not_counted_twice(compiled: bool) -> None:
    metrics = SpanMetrics()
    core, _ = new_core(metrics)
    core.ingest(request([S(1, 1)]), "peer", 0.0)  # counted by the instance that received it
    assert calls(metrics) == {}
    core.ingest(request([S(2, 1)]), "grpc", 0.0)
    core.set_engine(load_policies(YamlDoc("test.yaml", ERRORS_ONLY, {})).engine())
    core.resummarise(1000)
    core.sweep(100.0)
    assert sum(calls(metrics).values()) == 1


def test_live_graph_counts_every_trace_and_exemplars_name_kept_traces(compiled: bool) -> None:
    metrics = SpanMetrics()
    graph = ServiceGraph()
    core, kept = new_core(metrics, graph)
    for trace in range(10):
        ingest(core, shop(trace, error=trace % 5 == 0))
    core.compress_quiet(5.0)  # dropped traces are decided packed (and compressed), never unpacked for the graph
    core.sweep(100.0)
    assert {k.trace_id for k in kept} == {tid(0), tid(5)}
    doc = graph.to_json()
    edges = {(e["client"], e["server"], e["connection_type"]): (e["requests"], e["failed"]) for e in doc["edges"]}
    assert edges == {
        ("user", "frontend", "virtual_node"): (10, 0),
        ("frontend", "checkout", ""): (10, 0),
        ("checkout", "payments", ""): (10, 2),
        ("checkout", "orders", "messaging_system"): (10, 0),
        ("payments", "postgresql", "database"): (10, 0),
    }
    assert doc["traces_without_root"] == 0 and doc["orphan_spans"] == 0
    exemplars = {e["exemplar_trace_id"] for e in doc["edges"]}
    assert exemplars <= {tid(0).hex(), tid(5).hex()}
    named = {trace_id for s in metrics.series() for trace_id, _ in s.exemplars.values()}
    assert named and named <= {tid(0).hex(), tid(5).hex()}


def test_orphans_are_counted_for_traces_decided_on_quiet_only(compiled: bool) -> None:
    graph = ServiceGraph()
    core, _ = new_core(None, graph, {"policies": [{"name": "all", "type": "always_sample"}]})
    core.ingest(request([S(1, 2, 1, service="lost"), S(1, 3, 2, service="lost")]), "grpc", 0.0)  # no root
    core.sweep(100.0)
    core.ingest(request([S(2, 2, 1, service="early")]), "grpc", 100.0)
    core.decide_all(100.0)  # shutdown: decided early, not counted as broken
    doc = graph.to_json()
    assert doc["traces_without_root"] == 1
    assert {n["id"]: n["orphan_spans"] for n in doc["nodes"]} == {"lost": 1, "early": 0}


def test_log_records_are_not_spans_for_the_graph(compiled: bool) -> None:
    from tests.spans import L, logs_request

    metrics = SpanMetrics()
    graph = ServiceGraph()
    core, _ = new_core(metrics, graph)
    core.ingest(request([S(1, 1, service="a")]), "grpc", 0.0)
    core.ingest_logs(logs_request([L(1, 1)]), "grpc", 0.0)
    core.sweep(100.0)
    assert sum(calls(metrics).values()) == 1
    assert graph.to_json()["traces"] == 1


def test_exposition_has_tempo_names_and_openmetrics_exemplars(compiled: bool) -> None:
    metrics = SpanMetrics()
    graph = ServiceGraph()
    core, _ = new_core(metrics, graph)
    for trace in range(4):
        ingest(core, shop(trace, error=trace == 1))
    core.sweep(100.0)
    registry = CollectorRegistry()
    registry.register(InsightCollector(Insight(metrics, graph)))
    text = generate_latest(registry).decode()
    for name in ("traces_spanmetrics_calls_total", "traces_spanmetrics_latency_bucket",
                 "traces_service_graph_request_total", "traces_service_graph_request_failed_total",
                 "traces_service_graph_request_server_seconds_bucket",
                 "traces_service_graph_request_client_seconds_bucket", "tailsampler_traces_without_root_total"):
        assert name + "{" in text or name + " " in text, name
    assert ('traces_service_graph_request_failed_total{client="checkout",connection_type="",server="payments"} 1.0'
            in text)
    assert "trace_id" not in text  # the Prometheus text format has no exemplars
    om = openmetrics_latest(registry).decode()
    ids = {line.split('trace_id="')[1][:32] for line in om.splitlines() if "trace_id=" in line}
    assert ids == {tid(1).hex()}
