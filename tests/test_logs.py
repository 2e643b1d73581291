"""Logs that follow their trace, and metrics passed through, with real parts: the OpenTelemetry SDK's
log, span and metric exporters (gRPC and HTTP) send to a `tailsampler run` subprocess, which forwards
to a real OTLP/gRPC backend; sharded instances meet a trace's spans and records at its owner."""

from __future__ import annotations

import gzip
import logging
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import StatusCode
from otlp_backend import (
    GRPC_OPTIONS,
    OtlpBackend,
    ReceivedRecord,
    StartTailsampler,
    Tailsampler,
    clean_env,
    free_port,
    http_request,
    metric_value,
    wait_until,
)

from tests.spans import L, logs_request

POLICIES = "policies: [{name: errors, type: errors}]\n"
LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _session() -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # loopback only: no proxy from the environment
    return session


def span_exporter(protocol: str, target: str, http_url: str = "") -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=target, insecure=True, timeout=10)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter(endpoint=http_url, timeout=10, session=_session())


def log_exporter(protocol: str, target: str, http_url: str = "") -> LogRecordExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(endpoint=target, insecure=True, timeout=10)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

    return HttpLogExporter(endpoint=http_url.replace("/v1/traces", "/v1/logs"), timeout=10, session=_session())


def metric_exporter(protocol: str, target: str, http_url: str = "") -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=target, insecure=True, timeout=10)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter(endpoint=http_url.replace("/v1/traces", "/v1/metrics"), timeout=10, session=_session())


@dataclass
class App:
    """One service instrumented with the SDK: spans, and logs through Python's `logging` with the
SDK's LoggingHandler, which gives each record the trace and span ids of the current span."""

    name: str
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    logger: logging.Logger
    handler: LoggingHandler

    def info(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        self.logger.warning(message)

    def error(self, message: str) -> None:
        self.logger.error(message)

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer("tests.logs")

    def flush(self) -> None:
        assert self.tracer_provider.force_flush(timeout_millis=15_000), f"{self.name}: spans not exported"
        assert self.logger_provider.force_flush(timeout_millis=15_000), f"{self.name}: logs not exported"

    def shutdown(self) -> None:
        self.logger.removeHandler(self.handler)
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()


def make_app(name: str, spans: SpanExporter, logs: LogRecordExporter, simple: bool = False) -> App:
    resource = Resource.create({"service.name": name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans) if simple
                                       else BatchSpanProcessor(spans, schedule_delay_millis=200))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs, schedule_delay_millis=200))
    with warnings.catch_warnings():  # deprecated for the instrumentation package's handler; the same records
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
    logger = logging.getLogger(f"tests.logs.{name}.{id(logger_provider)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return App(name, tracer_provider, logger_provider, logger, handler)


@dataclass
class Sent:
    kind: str  # error (a span fails) | logged_error (only a log record says so) | normal
    trace_id: str
    span_ids: set[str] = field(default_factory=set)
    messages: set[str] = field(default_factory=set)


def send_trace(app: App, kind: str, index: int) -> Sent:
    """A root span with a child, two INFO records inside them; an `error` trace fails its child span,
    a `logged_error` one logs at ERROR instead, with every span fine."""
    tracer = app.tracer
    with tracer.start_as_current_span(f"GET /item/{index}", context=Context()) as root:
        sent = Sent(kind, format(root.get_span_context().trace_id, "032x"))
        sent.span_ids.add(format(root.get_span_context().span_id, "016x"))
        message = f"{kind} {index} start"
        app.info(message)
        sent.messages.add(message)
        with tracer.start_as_current_span("load") as child:
            sent.span_ids.add(format(child.get_span_context().span_id, "016x"))
            message = f"{kind} {index} loaded"
            app.info(message)
            sent.messages.add(message)
            if kind == "error":
                child.set_status(StatusCode.ERROR, "boom")
            elif kind == "logged_error":
                message = f"{kind} {index} failed"
                app.error(message)
                sent.messages.add(message)
    return sent


@pytest.fixture
def apps() -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        app.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_records_follow_their_traces_decision(protocol: str, otlp_backend: OtlpBackend,
                                              tailsampler_factory: StartTailsampler, apps: list[App]) -> None:
    ts = tailsampler_factory(otlp_backend.endpoint, POLICIES, decision_wait="1s")
    app = make_app("shop", span_exporter(protocol, ts.grpc_target, ts.http_url),
                   log_exporter(protocol, ts.grpc_target, ts.http_url))
    apps.append(app)
    kinds = ["error", "logged_error", "normal", "normal", "normal"] * 4
    sent = [send_trace(app, kind, i) for i, kind in enumerate(kinds)]
    untraced = [f"untraced {i}" for i in range(5)]
    for message in untraced:
        app.warning(message)
    app.flush()

    kept = [s for s in sent if s.kind != "normal"]
    want_records = {(s.trace_id, m) for s in kept for m in s.messages}
    want_spans = {(s.trace_id, span) for s in kept for span in s.span_ids}
    n_records = sum(len(s.messages) for s in sent) + len(untraced)

    def arrived(records: list[ReceivedRecord]) -> bool:
        got = {(r.trace_id, r.body) for r in records}
        return want_records <= got and all(("", m) in got for m in untraced)

    assert otlp_backend.wait_for_records(arrived, timeout=20), otlp_backend.records
    assert otlp_backend.wait_for(lambda spans: want_spans <= {(s.trace_id, s.span_id) for s in spans}, timeout=10)

    def settled() -> bool:
        text = ts.metrics()
        return (metric_value(text, "tailsampler_traces_decided_total", {"decision": "drop", "policy": ""})
                == kinds.count("normal")
                and metric_value(text, "tailsampler_log_records_exported_total") == len(want_records) + len(untraced))

    assert wait_until(settled, timeout=10), ts.metrics()
    records = otlp_backend.records
    assert not [k for k, n in Counter((r.trace_id, r.body) for r in records).items() if n > 1], "a record twice"
    assert {(r.trace_id, r.body) for r in records} == want_records | {("", m) for m in untraced}
    for record in records:
        assert record.service == "shop"
        if record.trace_id:
            assert record.attributes["tailsampling.policy"] == "errors", record
            assert record.attributes["tailsampling.sample_rate"] == 1, record
            assert record.span_id, record
        else:
            assert "tailsampling.policy" not in record.attributes, record
    assert {(s.trace_id, s.span_id) for s in otlp_backend.spans} == want_spans

    text = ts.metrics()
    other = "http" if protocol == "grpc" else "grpc"
    assert metric_value(text, "tailsampler_log_records_received_total", {"protocol": protocol}) == n_records
    assert metric_value(text, "tailsampler_log_records_received_total", {"protocol": other}) == 0
    dropped = sum(len(s.messages) for s in sent if s.kind == "normal")
    assert metric_value(text, "tailsampler_log_records_dropped_total", {"reason": "trace_dropped"}) == dropped
    assert metric_value(text, "tailsampler_traces_decided_total", {"decision": "keep", "policy": "errors"}) == len(kept)


def test_untraced_records_are_dropped_when_configured(otlp_backend: OtlpBackend,
                                                      tailsampler_factory: StartTailsampler) -> None:
    ts = tailsampler_factory(otlp_backend.endpoint, POLICIES, extra="logs: {untraced: drop}\n")
    with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel:
        export = channel.unary_unary(LOGS_METHOD)
        export(logs_request([L(None, 1), L(None, 2), L(1, 3, severity=17)]), timeout=10)
    assert otlp_backend.wait_for_records(lambda records: len(records) >= 1, timeout=15)
    assert wait_until(lambda: ts.metric("tailsampler_log_records_dropped_total", {"reason": "untraced"}) == 2, 5)
    assert [r.body for r in otlp_backend.records] == ["record 3"]


def test_malformed_logs_and_metrics_requests_are_refused_and_the_next_ones_served(
    otlp_backend: OtlpBackend, tailsampler_factory: StartTailsampler
) -> None:
    ts = tailsampler_factory(otlp_backend.endpoint, "policies: [{name: all, type: always_sample}]\n",
                             decision_wait="200ms")
    bad = [b"\x0a\x05\x12\x03\x12\x01", b"\x0a\x07\x12\x05\x12\x03\x4a\x01\x00", b"\xff\xff\xff"]
    with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel:
        for method in (LOGS_METHOD, METRICS_METHOD):
            export = channel.unary_unary(method)
            for body in bad[::2] if method == METRICS_METHOD else bad:
                with pytest.raises(grpc.RpcError) as failure:
                    export(body, timeout=10)
                assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        channel.unary_unary(LOGS_METHOD)(logs_request([L(1, 1)]), timeout=10)
    for path, field_name in (("/v1/logs", "resourceLogs"), ("/v1/metrics", "resourceMetrics")):
        url = ts.http_url.replace("/v1/traces", path)
        result = http_request(url, bad[0], {"Content-Type": "application/x-protobuf"})
        assert result.status == 400, (path, result.status)
        result = http_request(url, b'{"%s": 7}' % field_name.encode(), {"Content-Type": "application/json"})
        assert result.status == 400, (path, result.status)
    good = logs_request([L(2, 2)])
    result = http_request(ts.http_url.replace("/v1/traces", "/v1/logs"), gzip.compress(good),
                          {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert result.status == 200
    assert otlp_backend.wait_for_records(lambda records: len(records) == 2, timeout=15)
    assert sorted(r.body for r in otlp_backend.records) == ["record 1", "record 2"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_metrics_pass_through_to_the_backend(protocol: str, otlp_backend: OtlpBackend,
                                             tailsampler_factory: StartTailsampler) -> None:
    ts = tailsampler_factory(otlp_backend.endpoint, POLICIES)
    reader = PeriodicExportingMetricReader(metric_exporter(protocol, ts.grpc_target, ts.http_url),
                                           export_interval_millis=60_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "shop"}), metric_readers=[reader])
    try:
        meter = provider.get_meter("tests.logs")
        orders = meter.create_counter("orders")
        latency = meter.create_histogram("latency_ms")
        for i in range(10):
            orders.add(1, {"region": "eu" if i % 2 else "us"})
            latency.record(5.0 * i)
    finally:
        provider.shutdown()  # collects and exports once
    assert otlp_backend.wait_for_points(lambda points: {p.metric for p in points} >= {"orders", "latency_ms"}, 15)
    points = otlp_backend.points
    assert sorted(p.value for p in points if p.metric == "orders") == [5.0, 5.0]
    assert all(p.service == "shop" for p in points)
    text = ts.metrics()
    assert metric_value(text, "tailsampler_metric_points_received_total", {"protocol": protocol}) == len(points)
    assert wait_until(lambda: ts.metric("tailsampler_metric_points_forwarded_total") == len(points), timeout=5)


# --- sharding -----------------------------------------------------------------------------------------


def sharded_config(workdir: Path, backend: OtlpBackend, grpc_port: int, admin_port: int, peers: list[str]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policies.yaml").write_text(POLICIES)
    path = workdir / "config.yaml"
    path.write_text(
        f"receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{grpc_port}'}}, http: null}}}}\n"
        "buffer: {decision_wait: 1s, max_trace_age: 30s}\n"
        f"exporter: {{protocol: grpc, endpoint: '{backend.endpoint}', compression: none,"
        " retry: {initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 10s}}\n"
        f"admin: {{endpoint: '127.0.0.1:{admin_port}'}}\n"
        "policies_file: policies.yaml\nshutdown_timeout: 10s\n"
        f"peers: {{self: '127.0.0.1:{grpc_port}', static: {peers}}}\n"
    )
    return path


def test_sharded_instances_bring_a_traces_spans_and_records_together_at_its_owner(
    tmp_path: Path, otlp_backend: OtlpBackend, apps: list[App]
) -> None:
    """Each service's spans go to one instance and its logs to the next: every trace's spans and
    records meet at one owner, which decides them together; error-log traces arrive whole."""
    ports = [free_port() for _ in range(3)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    instances: list[Tailsampler] = []
    try:
        for i, port in enumerate(ports):
            admin = free_port()
            path = sharded_config(tmp_path / f"i{i}", otlp_backend, port, admin, peers)
            instances.append(Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path)],
                                         path.parent, clean_env(), admin_port=admin, grpc_port=port,
                                         http_port=0).start())
        for i in range(3):
            apps.append(make_app(f"svc{i}", span_exporter("grpc", peers[i]), log_exporter("grpc", peers[(i + 1) % 3]),
                                 simple=True))
        kinds = ["logged_error", "normal", "error", "normal"] * 6
        sent = [send_trace(apps[i % 3], kind, i) for i, kind in enumerate(kinds)]
        for app in apps:
            app.flush()

        kept = [s for s in sent if s.kind != "normal"]
        want_records = {(s.trace_id, m) for s in kept for m in s.messages}
        want_spans = {(s.trace_id, span) for s in kept for span in s.span_ids}
        assert otlp_backend.wait_for_records(lambda rs: want_records <= {(r.trace_id, r.body) for r in rs}, 30)
        assert otlp_backend.wait_for(lambda ss: want_spans <= {(s.trace_id, s.span_id) for s in ss}, 10)

        def total(name: str, labels: dict[str, str] | None = None) -> float:
            return sum(ts.metric(name, labels) or 0 for ts in instances)

        normal_records = sum(len(s.messages) for s in sent if s.kind == "normal")

        def all_accounted() -> bool:  # every record exported or dropped with its trace, at its owner
            return (total("tailsampler_traces_decided_total", {"decision": "drop", "policy": ""})
                    == kinds.count("normal")
                    and total("tailsampler_log_records_dropped_total", {"reason": "trace_dropped"}) == normal_records
                    and total("tailsampler_log_records_exported_total") == len(want_records))

        assert wait_until(all_accounted, timeout=15), [ts.metrics() for ts in instances]
        records = otlp_backend.records
        assert Counter((r.trace_id, r.body) for r in records) == Counter(want_records)
        assert {(s.trace_id, s.span_id) for s in otlp_backend.spans} == want_spans
        # kept by its owner alone: each trace decided once, across the three instances
        assert total("tailsampler_traces_decided_total", {"decision": "keep", "policy": "errors"}) == len(kept)
        assert total("tailsampler_log_records_forwarded_total") > 0
    finally:
        for ts in instances:
            ts.stop()
