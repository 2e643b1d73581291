"""End to end: traces of a known shape sent by the real OpenTelemetry SDK through a running
`tailsampler run` that keeps only errors: /metrics counts every span and every edge of ALL traces
(not just the kept ones), failed edges equal the error edges, and exemplars name kept traces only."""

from __future__ import annotations

import json
import time

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from otlp_backend import OtlpBackend, StartTailsampler, http_request, metric_value, wait_until

from tests.test_e2e import _exporter, _flush_and_shutdown

POLICIES = """\
policies:
  - {name: errors, type: errors, errors: {}}
"""
SERVICES = ("frontend", "checkout", "payments", "orders")
N_TRACES, ERROR_EVERY = 30, 5  # traces 0, 5, 10...: payments fails
MS = 1_000_000


def send(tracers: dict[str, trace.Tracer], t0: int, index: int) -> tuple[str, bool]:
    """frontend SERVER -> frontend CLIENT -> checkout SERVER -> checkout CLIENT -> payments SERVER
    (-> payments CLIENT to postgresql, db.system); checkout PRODUCER -> orders CONSUMER."""
    error = index % ERROR_EVERY == 0

    def span(service: str, name: str, parent: trace.Span | None, kind: SpanKind, start: int, end: int,
             attrs: dict[str, str] | None = None, failed: bool = False) -> trace.Span:
        context = Context() if parent is None else trace.set_span_in_context(parent)
        s = tracers[service].start_span(name, context=context, kind=kind, start_time=t0 + start * MS,
                                        attributes=attrs or {})
        if failed:
            s.set_status(StatusCode.ERROR, "declined")
        return s

    root = span("frontend", "GET /cart", None, SpanKind.SERVER, 0, 60)
    call = span("frontend", "POST /checkout", root, SpanKind.CLIENT, 1, 50)
    checkout = span("checkout", "POST /checkout", call, SpanKind.SERVER, 2, 49)
    charge = span("checkout", "charge", checkout, SpanKind.CLIENT, 3, 30, failed=error)
    payments = span("payments", "charge", charge, SpanKind.SERVER, 4, 29, failed=error)
    db = span("payments", "SELECT accounts", payments, SpanKind.CLIENT, 5, 9, {"db.system": "postgresql"})
    publish = span("checkout", "orders publish", checkout, SpanKind.PRODUCER, 31, 32)
    consume = span("orders", "orders process", publish, SpanKind.CONSUMER, 40, 55)
    for s, end in ((db, 9), (payments, 29), (charge, 30), (publish, 32), (consume, 55), (checkout, 49),
                   (call, 50), (root, 60)):
        s.end(end_time=t0 + end * MS)
    return format(root.get_span_context().trace_id, "032x"), error


def test_red_metrics_and_service_graph_count_all_traces_exemplars_name_kept_ones(
    otlp_backend: OtlpBackend, tailsampler_factory: StartTailsampler
) -> None:
    ts = tailsampler_factory(otlp_backend.endpoint, POLICIES, decision_wait="1s",
                             extra="service_graph: {enabled: true}\n")
    providers = {}
    for service in SERVICES:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(_exporter("grpc", ts), schedule_delay_millis=200))
        providers[service] = provider
    tracers = {service: p.get_tracer("tests.e2e_insight") for service, p in providers.items()}
    try:
        base = time.time_ns() - 60_000 * MS
        sent = [send(tracers, base + i * 100 * MS, i) for i in range(N_TRACES)]
    finally:
        _flush_and_shutdown(providers)
    kept = {trace_id for trace_id, error in sent if error}
    n_errors = len(kept)

    def all_decided() -> bool:
        text = ts.metrics()
        decided = sum(metric_value(text, "tailsampler_traces_decided_total", labels) or 0
                      for labels in ({"decision": "keep", "policy": "errors"}, {"decision": "drop", "policy": ""}))
        return decided == N_TRACES

    assert wait_until(all_decided, timeout=20), ts.metrics()
    text = ts.metrics()

    def calls(service: str, name: str, kind: str, status: str = "STATUS_CODE_UNSET") -> float | None:
        return metric_value(text, "traces_spanmetrics_calls_total",
                            {"service": service, "span_name": name, "span_kind": kind, "status_code": status})

    assert calls("frontend", "GET /cart", "SPAN_KIND_SERVER") == N_TRACES
    assert calls("payments", "charge", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR") == n_errors
    assert calls("payments", "charge", "SPAN_KIND_SERVER") == N_TRACES - n_errors
    assert calls("orders", "orders process", "SPAN_KIND_CONSUMER") == N_TRACES
    assert calls("payments", "SELECT accounts", "SPAN_KIND_CLIENT") == N_TRACES

    def edge(name: str, client: str, server: str, connection: str) -> float | None:
        return metric_value(text, name, {"client": client, "server": server, "connection_type": connection})

    expected = {("user", "frontend", "virtual_node"): 0, ("frontend", "checkout", ""): 0,
                ("checkout", "payments", ""): n_errors, ("checkout", "orders", "messaging_system"): 0,
                ("payments", "postgresql", "database"): 0}
    for (client, server, connection), failed in expected.items():
        assert edge("traces_service_graph_request_total", client, server, connection) == N_TRACES, (client, server)
        assert edge("traces_service_graph_request_failed_total", client, server, connection) == failed
    assert metric_value(text, "tailsampler_traces_without_root_total") == 0

    om = http_request(f"{ts.admin_url}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.status == 200 and "openmetrics" in om.headers.get("Content-Type", "")
    named = {line.split('trace_id="')[1][:32] for line in om.body.decode().splitlines() if 'trace_id="' in line}
    assert named and named <= kept

    doc = json.loads(http_request(f"{ts.admin_url}/graph.json").body)
    assert {n["id"] for n in doc["nodes"]} >= set(SERVICES)
    assert {(e["client"], e["server"]): e["requests"] for e in doc["edges"]} == {
        (client, server): N_TRACES for client, server, _ in expected}
