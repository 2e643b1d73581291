"""End to end: the real OpenTelemetry Python SDK sends traces spread over several services through a
real `tailsampler run` subprocess to a real OTLP/gRPC backend; only error and slow traces arrive,
complete, annotated, exactly once."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from otlp_backend import (
    EXPORT_METHOD,
    GRPC_OPTIONS,
    OtlpBackend,
    ReceivedSpan,
    StartTailsampler,
    Tailsampler,
    metric_value,
    wait_until,
)

from tests.spans import S, request, tid

POLICIES = """\
policies:
  - {name: errors, type: errors, errors: {}}
  - {name: slow, type: latency, latency: {threshold_ms: 500}}
"""
SERVICES = ("frontend", "checkout", "payment")
N_ERROR, N_SLOW, N_NORMAL = 6, 5, 40
MS = 1_000_000


@dataclass
class SentTrace:
    kind: str  # "error" | "slow" | "normal"
    trace_id: str
    spans: dict[str, str] = field(default_factory=dict)  # span id hex -> service name


def _exporter(protocol: str, ts: Tailsampler) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=ts.grpc_target, insecure=True, timeout=10)
    import requests
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    session = requests.Session()
    session.trust_env = False  # loopback only: no proxy from the environment
    return HttpExporter(endpoint=ts.http_url, timeout=10, session=session)


def _providers(protocol: str, ts: Tailsampler) -> dict[str, TracerProvider]:
    """One TracerProvider per service (never the global one), each exporting to tailsampler."""
    providers = {}
    for service in SERVICES:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(_exporter(protocol, ts), schedule_delay_millis=200))
        providers[service] = provider
    return providers


def _send_trace(tracers: dict[str, trace.Tracer], kind: str, t0: int, index: int) -> SentTrace:
    """frontend GET /checkout -> checkout POST /orders -> payment charge, plus a frontend render span.
    An error trace fails its payment span; a slow trace lasts 800 ms, a normal one 20-40 ms."""
    total = 800 * MS if kind == "slow" else (20 + index % 20) * MS
    root = tracers["frontend"].start_span("GET /checkout", context=Context(), kind=SpanKind.SERVER, start_time=t0,
                                          attributes={"http.route": "/checkout", "trace.index": index})
    sent = SentTrace(kind, format(root.get_span_context().trace_id, "032x"))

    def child(service: str, name: str, parent: trace.Span, start: int, end: int, error: bool = False) -> trace.Span:
        span = tracers[service].start_span(name, context=trace.set_span_in_context(parent), kind=SpanKind.INTERNAL,
                                           start_time=start, attributes={"http.response.status_code": 200})
        if error:
            span.set_status(StatusCode.ERROR, "card declined")
        span.end(end_time=end)
        sent.spans[format(span.get_span_context().span_id, "016x")] = service
        return span

    orders = tracers["checkout"].start_span("POST /orders", context=trace.set_span_in_context(root),
                                            kind=SpanKind.SERVER, start_time=t0 + MS)
    child("payment", "charge", orders, t0 + 2 * MS, t0 + total - 3 * MS, error=kind == "error")
    orders.end(end_time=t0 + total - 2 * MS)
    sent.spans[format(orders.get_span_context().span_id, "016x")] = "checkout"
    child("frontend", "render", root, t0 + total - 2 * MS, t0 + total - MS)
    root.end(end_time=t0 + total)
    sent.spans[format(root.get_span_context().span_id, "016x")] = "frontend"
    return sent


def _send_mix(providers: dict[str, TracerProvider]) -> list[SentTrace]:
    tracers = {service: p.get_tracer("tests.e2e") for service, p in providers.items()}
    kinds = ["error"] * N_ERROR + ["slow"] * N_SLOW + ["normal"] * N_NORMAL
    # Interleave kinds so kept and dropped traces share export batches.
    kinds = [kinds[(i * 7) % len(kinds)] for i in range(len(kinds))]
    assert Counter(kinds) == {"error": N_ERROR, "slow": N_SLOW, "normal": N_NORMAL}
    base = time.time_ns() - 60_000 * MS
    return [_send_trace(tracers, kind, base + i * 1000 * MS, i) for i, kind in enumerate(kinds)]


def _flush_and_shutdown(providers: dict[str, TracerProvider]) -> None:
    try:
        for service, provider in providers.items():
            assert provider.force_flush(timeout_millis=15_000), f"{service}: spans not exported to tailsampler"
    finally:
        for provider in providers.values():
            provider.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_only_error_and_slow_traces_arrive_complete_and_annotated(
    protocol: str, otlp_backend: OtlpBackend, tailsampler_factory: StartTailsampler
) -> None:
    ts = tailsampler_factory(otlp_backend.endpoint, POLICIES, decision_wait="1s")
    providers = _providers(protocol, ts)
    try:
        sent = _send_mix(providers)
    finally:
        _flush_and_shutdown(providers)

    n_spans = sum(len(t.spans) for t in sent)
    assert ts.metric("tailsampler_spans_received_total", {"protocol": protocol}) == n_spans
    other = "http" if protocol == "grpc" else "grpc"
    assert ts.metric("tailsampler_spans_received_total", {"protocol": other}) == 0

    kept = {t.trace_id: t for t in sent if t.kind != "normal"}
    normal = {t.trace_id for t in sent if t.kind == "normal"}
    want = {(tid, sid) for tid, t in kept.items() for sid in t.spans}

    def all_kept_arrived(spans: list[ReceivedSpan]) -> bool:
        return want <= {(s.trace_id, s.span_id) for s in spans}

    assert otlp_backend.wait_for(all_kept_arrived, timeout=15), (
        f"missing spans: {sorted(want - {(s.trace_id, s.span_id) for s in otlp_backend.spans})[:10]}"
    )
    # Wait until every trace is decided and every kept span exported, so a stray normal span would show.
    def all_decided() -> bool:
        text = ts.metrics()
        return (metric_value(text, "tailsampler_traces_decided_total", {"decision": "drop", "policy": ""}) == N_NORMAL
                and metric_value(text, "tailsampler_spans_exported_total") == len(want))

    assert wait_until(all_decided, timeout=10), ts.metrics()

    received = otlp_backend.spans
    dupes = [k for k, n in Counter((s.trace_id, s.span_id) for s in received).items() if n > 1]
    assert not dupes, f"spans delivered more than once: {dupes[:5]}"
    assert not [s for s in received if s.trace_id in normal], "a span of a normal trace was forwarded"
    assert {(s.trace_id, s.span_id) for s in received} == want
    for span in received:
        sent_trace = kept[span.trace_id]
        assert span.service == sent_trace.spans[span.span_id], span
        expected_policy = "errors" if sent_trace.kind == "error" else "slow"
        assert span.attributes.get("tailsampling.policy") == expected_policy, span
        assert span.attributes.get("tailsampling.sample_rate") == 1, span

    text = ts.metrics()
    assert metric_value(text, "tailsampler_traces_decided_total", {"decision": "keep", "policy": "errors"}) == N_ERROR
    assert metric_value(text, "tailsampler_traces_decided_total", {"decision": "keep", "policy": "slow"}) == N_SLOW

    stopped = ts.stop()
    assert stopped.code == 0, stopped.stderr
    after = otlp_backend.spans
    assert len(after) == len(want), "spans were sent again at shutdown"


def test_two_tiers_in_a_row_leave_one_annotation_per_span_the_last_tiers(
    otlp_backend: OtlpBackend, tailsampler_factory: StartTailsampler
) -> None:
    """Spans arrive at the first tier already annotated by some tier before it (half the traces), pass
    the first tier (which keeps everything) and a second one (which keeps about half, at rate 2): the
    backend sees exactly one `tailsampling.policy` and one `tailsampling.sample_rate` per span, the
    second tier's, never a stale one beside it."""
    second = tailsampler_factory(otlp_backend.endpoint, "policies: [{name: tier2, type: probabilistic, "
                                 "probabilistic: {sampling_percentage: 50}}]\n", decision_wait="500ms")
    first = tailsampler_factory(f"http://{second.grpc_target}", "policies: [{name: tier1, type: always_sample}]\n",
                                decision_wait="500ms")
    n_traces = 40
    upstream = {"tailsampling.policy": "upstream", "tailsampling.sample_rate": 7, "other": "x"}
    with grpc.insecure_channel(first.grpc_target, options=GRPC_OPTIONS) as channel:
        export = channel.unary_unary(EXPORT_METHOD)
        for n in range(n_traces):
            export(request([S(n, n * 10 + i, parent=None if i == 0 else n * 10, attrs=upstream if n % 2 else {})
                            for i in range(3)]), timeout=10)

    def settled() -> bool:
        text = second.metrics()
        decided = sum(metric_value(text, "tailsampler_traces_decided_total", labels) or 0.0
                      for labels in ({"decision": "keep", "policy": "tier2"}, {"decision": "drop", "policy": ""}))
        exported = metric_value(text, "tailsampler_spans_exported_total") or 0.0
        return decided == n_traces and exported > 0 and len(otlp_backend.spans) == exported

    assert wait_until(settled, timeout=20), second.metrics()
    received = otlp_backend.spans
    assert {s.trace_id for s in received} < {tid(n).hex() for n in range(n_traces)}
    assert any(s.attributes.get("other") == "x" for s in received)  # pre-annotated traces among those kept
    for span in received:
        assert span.attribute_keys.count("tailsampling.policy") == 1, span.attribute_keys
        assert span.attribute_keys.count("tailsampling.sample_rate") == 1, span.attribute_keys
        assert span.attributes["tailsampling.policy"] == "tier2"
        assert span.attributes["tailsampling.sample_rate"] == 2
