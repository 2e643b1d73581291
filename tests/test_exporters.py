"""The export queue and OTLP exporters against real gRPC and HTTP servers on loopback: retries on
retryable codes (honouring RetryInfo / Retry-After), no retry on bad data, bounded queue, every
drop counted."""

from __future__ import annotations

import asyncio
import os
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
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sampler.config.models import Retry
from sampler.exporters.base import RetryableError, encode_batch, rejected_spans
from sampler.exporters.otlp_grpc import GrpcSender
from sampler.exporters.otlp_http import HttpSender, http_url
from sampler.exporters.queue import ExportQueue
from sampler.otlp.transport import EXPORT_METHOD
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.always_sample import AlwaysSample
from sampler.policy.configs import AlwaysSampleConfig
from sampler.policy.engine import Engine
from sampler.server.metrics import Metrics
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

    def __init__(self, failures: list[tuple[grpc.StatusCode, float | None]], max_receive: int | None = None) -> None:
        self.failures = list(failures)
        self.requests: list[ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        # A receive limit as the Collector's max_recv_msg_size_mib sets one (gRPC's default is 4 MiB too).
        options = [("grpc.max_receive_message_length", max_receive)] if max_receive is not None else []
        self.server = grpc.aio.server(options=options)
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
                               (grpc.StatusCode.PERMISSION_DENIED, None)])
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
    call = sender.channel.call(EXPORT_METHOD)
    sender.channel.channel.close()  # what a certificate rotation does to the channel of a queued call
    with pytest.raises(RetryableError):
        sender._export(call, b"", rejected_spans)
    asyncio.run(sender.close())


MIB = 2**20


def big_traces(traces: int, spans: int, span_bytes: int) -> tuple[list[KeptTrace], Core]:
    """Kept traces of `spans` spans of about `span_bytes` bytes each (random, so gzip cannot shrink them)."""
    out: list[KeptTrace] = []
    core = Core(Buffer(10**6, 10**10, 1, 60), Engine([AlwaysSample("all", AlwaysSampleConfig())]),
                DecisionCache(10, 10), out.append)
    pad = os.urandom(span_bytes // 2).hex()
    for t in range(1, traces + 1):
        core.ingest(request([S(t, t * 100_000 + i, parent=None if i == 0 else t * 100_000,
                               attrs={"pad": pad[i % 64:] + pad[:i % 64]}) for i in range(spans)]), "grpc", 0.0)
    core.decide_all(1.0)
    return out, core


def unique_spans(requests: list[ExportTraceServiceRequest]) -> set[tuple[bytes, bytes]]:
    return {(s.trace_id, s.span_id) for r in requests for rs in r.resource_spans for ss in rs.scope_spans
            for s in ss.spans}


def test_traces_larger_than_the_backends_4mib_limit_arrive_whole_split_across_requests() -> None:
    """Spans of 8 KB in traces of 1,000 (8 MB a trace, twice the limit the Collector's receiver has by
    default): every span arrives, each request within the limit, the annotation included."""
    async def main() -> None:
        backend = GrpcBackend([], max_receive=4 * MIB)
        port = await backend.start()
        traces, core = big_traces(20, 1000, 8000)
        metrics = Metrics(core)
        queue = ExportQueue(GrpcSender(f"http://127.0.0.1:{port}", {}, "none", 10, True), metrics, 10**10, 4096,
                            FAST)
        try:
            for t in traces:
                assert queue.put(t)
            assert await queue.flush(60)
            got = unique_spans(backend.requests)
            assert len(got) == spans_in(backend.requests) == 20_000
            assert value(metrics, "tailsampler_spans_exported_total") == 20_000
            assert max(r.ByteSize() for r in backend.requests) <= 4 * MIB
            span = backend.requests[-1].resource_spans[0].scope_spans[0].spans[0]
            assert [a.key for a in span.attributes].count("tailsampling.policy") == 1
        finally:
            await queue.close()
            await backend.server.stop(None)

    asyncio.run(main())


def test_a_request_refused_as_too_large_is_split_and_the_halves_retried() -> None:
    """A backend whose limit (1 MiB) is below exporter.batch_max_bytes answers RESOURCE_EXHAUSTED without
    RetryInfo: the batch is split and the halves sent, down to single spans; a single span that is itself
    too large is dropped and counted as rejected."""
    async def main() -> None:
        backend = GrpcBackend([], max_receive=1 * MIB)
        port = await backend.start()
        traces, core = big_traces(6, 300, 2000)  # 600 KB a trace: a 4 MiB batch holds six
        huge, _ = big_traces(1, 1, 4 * MIB)  # too large even gzipped
        metrics = Metrics(core)
        queue = ExportQueue(GrpcSender(f"http://127.0.0.1:{port}", {}, "gzip", 10, True), metrics, 10**10, 4096,
                            FAST)
        try:
            for t in [*traces[:3], huge[0], *traces[3:]]:
                assert queue.put(t)
            assert await queue.flush(60)
            assert len(unique_spans(backend.requests)) == spans_in(backend.requests) == 1800
            assert value(metrics, "tailsampler_spans_exported_total") == 1800
            assert value(metrics, "tailsampler_spans_dropped_total", reason="export_rejected") == 1
            assert value(metrics, "tailsampler_spans_dropped_total", reason="export_failed") == 0
        finally:
            await queue.close()
            await backend.server.stop(None)

    asyncio.run(main())


def test_http_413_splits_the_batch_and_retries_the_halves() -> None:
    async def main() -> None:
        seen: list[ExportTraceServiceRequest] = []
        limit = 1 * MIB

        async def handler(req: web.Request) -> web.Response:
            body = await req.read()  # inflated by aiohttp: the limit is on the request as decoded
            if len(body) > limit:
                return web.Response(status=413, text="request body too large")
            seen.append(ExportTraceServiceRequest.FromString(body))
            return web.Response(body=b"", content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 * MIB)
        app.router.add_post("/v1/traces", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        traces, core = big_traces(6, 300, 2000)
        metrics = Metrics(core)
        queue = ExportQueue(HttpSender(f"http://127.0.0.1:{port}", {}, "gzip", 10, True), metrics, 10**10, 4096,
                            FAST)
        try:
            for t in traces:
                assert queue.put(t)
            assert await queue.flush(60)
            assert len(unique_spans(seen)) == spans_in(seen) == 1800
            assert value(metrics, "tailsampler_spans_dropped_total", reason="export_rejected") == 0
        finally:
            await queue.close()
            await runner.cleanup()

    asyncio.run(main())


@pytest.mark.parametrize("annotate", [True, False])
def test_every_request_stays_within_batch_max_bytes_and_spans(annotate: bool) -> None:
    """Traces of all sizes (one span to many requests' worth, over two services): every request, as
    encoded, is within both bounds, every span is sent once, in order within its trace, and
    requests are not much smaller than the bounds allow."""
    limit, max_spans = 64 * 1024, 100

    class Record:
        def __init__(self) -> None:
            self.sizes: list[int] = []
            self.spans: list[bytes] = []

        async def send(self, batch: list[KeptTrace]) -> int:
            body = encode_batch(batch, annotate)
            self.sizes.append(len(body))
            msg = ExportTraceServiceRequest.FromString(body)
            assert spans_in([msg]) <= max_spans
            self.spans += [s.span_id for t in batch for s in (Span.FromString(d) for d in t.spans)]
            return 0

        async def close(self) -> None:
            return None

    async def main() -> None:
        out: list[KeptTrace] = []
        core = Core(Buffer(10**6, 10**10, 1, 60), Engine([AlwaysSample("all", AlwaysSampleConfig())]),
                    DecisionCache(10, 10), out.append)
        sizes = [1, 3, 250, 1, 40, 7, 500, 2, 90, 1]  # spans per trace
        span_id = 0
        for t, n in enumerate(sizes, 1):
            spans = []
            for i in range(n):
                span_id += 1
                spans.append(S(t, span_id, parent=None if i == 0 else t * 1000, service=("a", "b")[i % 2],
                               attrs={"pad": "x" * (50 + (span_id * 37) % 900)}))
            core.ingest(request(spans), "grpc", 0.0)
        core.decide_all(1.0)
        expected = [Span.FromString(d).span_id for t in out for d in t.spans]
        assert len(expected) == span_id
        record = Record()
        queue = ExportQueue(record, Metrics(core), 10**10, max_spans, FAST, workers=1, batch_max_bytes=limit,
                            annotate=annotate)
        try:
            for t in out:
                assert queue.put(t)
            assert await queue.flush(30)
        finally:
            await queue.close()
        assert max(record.sizes) <= limit
        assert record.spans == expected  # each once, in the queue's order (one worker)
        assert len(record.sizes) <= 1.3 * max(sum(record.sizes) / limit, span_id / max_spans) + 1

    asyncio.run(main())
