"""Kept log records and passed-through metrics leaving through the exporters, against real HTTP and
gRPC servers on loopback and real files: each signal to its own path or service, records annotated
like spans (untraced ones not), metrics unchanged, every item counted."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sampler.exporters.base import RawRequest, signal_endpoint
from sampler.exporters.file import FileSender
from sampler.exporters.otlp_grpc import GrpcSender
from sampler.exporters.otlp_http import HttpSender
from sampler.exporters.queue import ExportQueue
from sampler.exporters.stdout import StdoutSender
from sampler.otlp.metrics import count_points
from sampler.otlp.transport import LOGS_SERVICE, METRICS, METRICS_SERVICE, SERVICES
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.always_sample import AlwaysSample
from sampler.policy.configs import AlwaysSampleConfig
from sampler.policy.engine import Engine
from sampler.server.metrics import Metrics
from tests.spans import L, S, logs_request, request, tid
from tests.test_exporters import FAST, value


def metrics_body() -> bytes:
    from opentelemetry.proto.metrics.v1.metrics_pb2 import NumberDataPoint

    msg = ExportMetricsServiceRequest()
    metric = msg.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "orders"
    metric.sum.data_points.extend([NumberDataPoint(as_int=3), NumberDataPoint(as_int=4)])
    return msg.SerializeToString()


def kept(untraced: bool = True) -> tuple[list[KeptTrace], Core]:
    """A kept trace's spans and records (two KeptTraces), and an untraced record passed on."""
    out: list[KeptTrace] = []
    core = Core(Buffer(1000, 10**9, 1, 60), Engine([AlwaysSample("all", AlwaysSampleConfig())]),
                DecisionCache(10, 10), out.append)
    core.ingest(request([S(1, 1), S(1, 2, parent=1)]), "grpc", 0.0)
    core.ingest_logs(logs_request([L(1, 10), L(1, 11, span=1)] + ([L(None, 12)] if untraced else [])), "grpc", 0.0)
    core.decide_all(1.0)
    return out, core


@pytest.mark.parametrize(("endpoint", "signal", "want"), [
    ("http://collector:4318/v1/traces", "logs", "http://collector:4318/v1/logs"),
    ("https://x.example/otlp/v1/traces", "metrics", "https://x.example/otlp/v1/metrics"),
    ("http://collector:4318", "logs", "http://collector:4318/v1/logs"),
    ("http://collector:4318/otlp/", "metrics", "http://collector:4318/otlp/v1/metrics"),
    ("collector:4318", "logs", "http://collector:4318/v1/logs"),
])
def test_signal_endpoint(endpoint: str, signal: str, want: str) -> None:
    assert signal_endpoint(endpoint, signal) == want


def test_http_exporter_sends_each_signal_to_its_path_annotated_and_counted() -> None:
    async def main() -> None:
        seen: dict[str, list[bytes]] = {"traces": [], "logs": [], "metrics": []}

        def handler(signal: str) -> Callable[[web.Request], Awaitable[web.Response]]:
            async def handle(req: web.Request) -> web.Response:
                assert req.content_type == "application/x-protobuf"
                seen[signal].append(await req.read())
                return web.Response(body=b"", content_type="application/x-protobuf")
            return handle

        app = web.Application()
        for signal in seen:
            app.router.add_post(f"/otlp/v1/{signal}", handler(signal))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        traces, core = kept()
        metrics = Metrics(core)
        queue = ExportQueue(HttpSender(f"http://127.0.0.1:{port}/otlp/v1/traces", {}, "gzip", 5, True), metrics,
                            10**8, 1000, FAST)
        try:
            for t in traces:
                assert queue.put(t)
            body = metrics_body()
            assert queue.put_raw(RawRequest(METRICS, body, count_points(body)))
            assert await queue.flush(10)
        finally:
            await queue.close()
            await runner.cleanup()

        spans = [s for b in seen["traces"] for rs in ExportTraceServiceRequest.FromString(b).resource_spans
                 for ss in rs.scope_spans for s in ss.spans]
        assert len(spans) == 2
        records = [r for b in seen["logs"] for rl in ExportLogsServiceRequest.FromString(b).resource_logs
                   for sl in rl.scope_logs for r in sl.log_records]
        assert sorted(r.body.string_value for r in records) == ["record 10", "record 11", "record 12"]
        for r in records:
            keys = {a.key: a.value for a in r.attributes}
            if r.trace_id:
                assert keys["tailsampling.policy"].string_value == "all"
                assert keys["tailsampling.sample_rate"].int_value == 1
            else:
                assert "tailsampling.policy" not in keys
        assert seen["metrics"] == [body]  # passed through byte for byte
        assert queue.records_exported == 3
        assert queue.points_forwarded == 2
        assert value(metrics, "tailsampler_spans_exported_total") == 2

    asyncio.run(main())


class SignalBackend:
    """A gRPC server taking raw requests on the three OTLP services, recording them by service."""

    def __init__(self) -> None:
        self.received: dict[str, list[bytes]] = {service: [] for service in SERVICES.values()}
        self.server = grpc.aio.server()
        for service in self.received:
            async def export(request: bytes, context: object, service: str = service) -> bytes:
                self.received[service].append(request)
                return b""
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                service, {"Export": grpc.unary_unary_rpc_method_handler(export)}),))

    async def start(self) -> int:
        port: int = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port


def test_grpc_exporter_sends_logs_to_logs_endpoint_and_metrics_to_endpoint() -> None:
    async def main() -> None:
        main_backend, logs_backend = SignalBackend(), SignalBackend()
        main_port, logs_port = await main_backend.start(), await logs_backend.start()
        traces, core = kept(untraced=False)
        metrics = Metrics(core)
        sender = GrpcSender(f"http://127.0.0.1:{main_port}", {}, "none", 5, True,
                            logs_endpoint=f"http://127.0.0.1:{logs_port}")
        queue = ExportQueue(sender, metrics, 10**8, 1000, FAST)
        try:
            for t in traces:
                assert queue.put(t)
            body = metrics_body()
            assert queue.put_raw(RawRequest(METRICS, body, 2))
            assert await queue.flush(10)
        finally:
            await queue.close()
            await main_backend.server.stop(None)
            await logs_backend.server.stop(None)
        assert len(main_backend.received[SERVICES["traces"]]) == 1
        assert main_backend.received[METRICS_SERVICE] == [body]
        assert main_backend.received[LOGS_SERVICE] == []
        (logs,) = logs_backend.received[LOGS_SERVICE]
        records = ExportLogsServiceRequest.FromString(logs).resource_logs[0].scope_logs[0].log_records
        assert [r.body.string_value for r in records] == ["record 10", "record 11"]
        assert queue.records_exported == 2 and queue.points_forwarded == 2

    asyncio.run(main())


def test_file_and_stdout_exporters_write_records_and_points(tmp_path: Path) -> None:
    async def main() -> None:
        traces, _ = kept()
        path = tmp_path / "out.jsonl"
        file_sender = FileSender(str(path), annotate=True)
        stream = io.StringIO()
        stdout_sender = StdoutSender(stream)
        body = metrics_body()
        for sender in (file_sender, stdout_sender):
            for t in traces:
                assert await sender.send([t]) == 0
            assert await sender.send_raw(RawRequest(METRICS, body, 2)) == 0
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        logs = [d for d in lines if "resourceLogs" in d]
        assert len(logs) == 2  # the kept trace's records, the untraced one
        bodies = sorted(r["body"]["stringValue"] for d in logs for rl in d["resourceLogs"]
                        for sl in rl["scopeLogs"] for r in sl["logRecords"])
        assert bodies == ["record 10", "record 11", "record 12"]
        (points,) = [d for d in lines if "resourceMetrics" in d]
        assert points["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["name"] == "orders"
        text = stream.getvalue().splitlines()
        assert f"{tid(1).hex()} logs records=2 policy=all" in text, text
        assert "(no trace) logs records=1 policy=-" in text, text
        assert "metrics passed through: 2 data points" in text, text

    asyncio.run(main())
