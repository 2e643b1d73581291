"""The export queue and OTLP exporters against real gRPC and HTTP servers on loopback: retries on
retryable codes (honouring RetryInfo / Retry-After), no retry on bad data, bounded queue, every
drop counted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from aiohttp import web
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sampler.buffer import Buffer
from sampler.config import Retry
from sampler.core import Core, KeptTrace
from sampler.decisions import DecisionCache
from sampler.exporters.base import RetryableError
from sampler.exporters.otlp_grpc import GrpcSender
from sampler.exporters.otlp_http import HttpSender, http_url
from sampler.exporters.queue import ExportQueue
from sampler.metrics import Metrics
from sampler.policy.always_sample import AlwaysSample
from sampler.policy.configs import AlwaysSampleConfig
from sampler.policy.engine import Engine
from tests.spans import S, request

FAST = Retry(initial_interval=0.01, max_interval=0.05, max_elapsed_time=5.0)


def kept_traces(n: int) -> tuple[list[KeptTrace], Core]:
    out: list[KeptTrace] = []
    core = Core(Buffer(1000, 10**9, 1, 60), Engine([AlwaysSample("all", AlwaysSampleConfig())]),
                DecisionCache(10, 10), out.append)
    core.ingest(request([S(t, t * 10 + i, parent=None if i == 0 else t * 10) for t in range(1, n + 1)
                         for i in range(3)]), "grpc", 0.0)
    core.decide_all(1.0)
    return out, core


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels or None)
    return got or 0.0


class GrpcBackend:
    """A real OTLP/gRPC server whose first answers are scripted failures."""

    def __init__(self, failures: list[tuple[grpc.StatusCode, float | None]]) -> None:
        self.failures = list(failures)
        self.requests: list[ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self.export, request_deserializer=ExportTraceServiceRequest.FromString,
            response_serializer=ExportTraceServiceResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}),))

    async def export(self, req: ExportTraceServiceRequest, ctx: grpc.aio.ServicerContext) -> ExportTraceServiceResponse:
        self.metadata.append(dict(ctx.invocation_metadata() or ()))
        if self.failures:
            code, delay = self.failures.pop(0)
            if delay is not None:
                info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=int(delay * 1e9)))
                status = status_pb2.Status(code=code.value[0], message="busy")
                status.details.add().Pack(info)
                ctx.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            await ctx.abort(code, "scripted failure")
        self.requests.append(req)
        return ExportTraceServiceResponse()

    async def start(self) -> int:
        port: int = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port


def spans_in(requests: list[ExportTraceServiceRequest]) -> int:
    return sum(len(ss.spans) for r in requests for rs in r.resource_spans for ss in rs.scope_spans)


async def _with_queue(sender_factory: Callable[[], object], body: Callable[[ExportQueue, Metrics], Awaitable[None]],
                      max_bytes: int = 10**8) -> None:
    _, core = kept_traces(1)
    metrics = Metrics(core)
    queue = ExportQueue(sender_factory(), metrics, max_bytes, 1000, FAST)  # type: ignore[arg-type]
    try:
        await body(queue, metrics)
    finally:
        await queue.close()


def test_grpc_export_retries_retryable_codes_then_delivers_annotated_spans() -> None:
    async def main() -> None:
        backend = GrpcBackend([(grpc.StatusCode.UNAVAILABLE, None),
                               (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.02)])  # with RetryInfo: retryable
        port = await backend.start()
        traces, _ = kept_traces(4)

        async def body(queue: ExportQueue, metrics: Metrics) -> None:
            for t in traces:
                assert queue.put(t)
            assert await queue.flush(10)
            assert spans_in(backend.requests) == 12
            span = backend.requests[0].resource_spans[0].scope_spans[0].spans[0]
            assert {a.key: a.value.string_value for a in span.attributes}["tailsampling.policy"] == "all"
            assert backend.metadata[-1]["authorization"] == "Bearer t0ken"
            assert value(metrics, "tailsampler_export_failures_total") == 2
            assert value(metrics, "tailsampler_spans_exported_total") == 12

        await _with_queue(lambda: GrpcSender(f"http://127.0.0.1:{port}", {"Authorization": "Bearer t0ken"},
                                             "gzip", 5, True), body)
        await backend.server.stop(None)

    asyncio.run(main())


def test_grpc_export_does_not_retry_bad_data_and_counts_the_drop() -> None:
    async def main() -> None:
        backend = GrpcBackend([(grpc.StatusCode.INVALID_ARGUMENT, None),
                               (grpc.StatusCode.RESOURCE_EXHAUSTED, None)])  # no RetryInfo: permanent
        port = await backend.start()
        traces, _ = kept_traces(2)

        async def body(queue: ExportQueue, metrics: Metrics) -> None:
            assert queue.put(traces[0])
            assert await queue.flush(5)
            assert queue.put(traces[1])
            assert await queue.flush(5)
            assert backend.requests == []
            assert value(metrics, "tailsampler_spans_dropped_total", reason="export_rejected") == 6
            assert value(metrics, "tailsampler_export_failures_total") == 2

        await _with_queue(lambda: GrpcSender(f"127.0.0.1:{port}", {}, "none", 5, True), body)
        await backend.server.stop(None)

    asyncio.run(main())


def test_unreachable_backend_is_retried_within_max_elapsed_time_then_counted() -> None:
    async def main() -> None:
        traces, core = kept_traces(1)
        metrics = Metrics(core)
        retry = Retry(initial_interval=0.01, max_interval=0.02, max_elapsed_time=0.3)
        queue = ExportQueue(GrpcSender("127.0.0.1:9", {}, "none", 0.2, True), metrics, 10**8, 100, retry)
        assert queue.put(traces[0])
        assert await queue.flush(5)
        assert value(metrics, "tailsampler_spans_dropped_total", reason="export_failed") == 3
        assert value(metrics, "tailsampler_export_failures_total") >= 2
        await queue.close()

    asyncio.run(main())


def test_queue_bound_refuses_and_counts_beyond_max_bytes() -> None:
    async def main() -> None:
        traces, core = kept_traces(3)
        size = traces[0].cost  # memory held, as the buffer counts it
        assert size > sum(len(s) for s in traces[0].spans)
        metrics = Metrics(core)

        class Stuck:
            async def send(self, batch: list[KeptTrace]) -> int:
                await asyncio.sleep(30)
                return 0

            async def close(self) -> None:
                return None

        queue = ExportQueue(Stuck(), metrics, size * 2, 1, FAST, workers=1)
        assert queue.put(traces[0]) and queue.put(traces[1])
        assert not queue.put(traces[2])
        assert queue.nbytes <= size * 2
        assert value(metrics, "tailsampler_spans_dropped_total", reason="export_queue_full") == 3
        assert not await queue.flush(0.05)
        await queue.close()  # what was still queued or in flight is counted too
        assert value(metrics, "tailsampler_spans_dropped_total", reason="export_failed") == 6

    asyncio.run(main())


def test_http_export_honours_retry_after_and_sends_gzip_protobuf() -> None:
    async def main() -> None:
        seen: list[ExportTraceServiceRequest] = []
        answers = [503, 429, 200]

        async def handler(req: web.Request) -> web.Response:
            assert req.content_type == "application/x-protobuf"
            assert req.headers["Content-Encoding"] == "gzip"
            status = answers.pop(0)
            if status != 200:
                return web.Response(status=status, headers={"Retry-After": "0"})
            # aiohttp's server inflates gzip bodies itself; the header says the client compressed.
            seen.append(ExportTraceServiceRequest.FromString(await req.read()))
            return web.Response(body=b"", content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        traces, _ = kept_traces(2)

        async def body(queue: ExportQueue, metrics: Metrics) -> None:
            for t in traces:
                assert queue.put(t)
            assert await queue.flush(10)
            assert spans_in(seen) == 6
            assert value(metrics, "tailsampler_export_failures_total") == 2

        await _with_queue(lambda: HttpSender(f"http://127.0.0.1:{port}", {}, "gzip", 5, True), body)
        await runner.cleanup()

    asyncio.run(main())


def test_http_url_appends_the_default_path_only_when_missing() -> None:
    assert http_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert http_url("https://x.example/otlp/v1/traces") == "https://x.example/otlp/v1/traces"
    assert http_url("collector:4318") == "http://collector:4318/v1/traces"


def test_grpc_status_codes_module_is_consistent() -> None:
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == code_pb2.RESOURCE_EXHAUSTED


def test_a_call_on_a_channel_closed_by_a_reconnect_is_retried() -> None:
    sender = GrpcSender("127.0.0.1:9", {}, "none", 1, True)
    call = sender.call
    sender.channel.close()  # what a certificate rotation does to the channel of a queued call
    with pytest.raises(RetryableError):
        sender._export(call, b"")
    asyncio.run(sender.close())
