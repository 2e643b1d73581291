"""`tailsampler demo`: the proxy, a traffic generator imitating several services, and an OTLP sink,
all in one process, with live progress and a summary of what was kept and why.

The generator pre-builds request templates once and stamps fresh trace ids into copies at known
byte offsets, so generating load costs far less than the proxy spends handling it.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from sampler.otlp.splice import POLICY_KEY
from sampler.otlp.split import Splitter, split_request
from sampler.otlp.transport import EXPORT_METHOD, SERVICE
from sampler.otlp.wire import AttrValue
from sampler.server.app import App
from sampler.server.settings import load_config

SERVICES = ("frontend", "checkout", "payments", "inventory", "users")
ROUTES = ("/", "/checkout/pay", "/cart", "/products/{id}", "/users/{id}", "/search")


def _kv(key: str, value: str | int | bool | float) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


class Template:
    """A serialized request plus where each of its traces' ids sits, so copies get fresh ids."""

    def __init__(self, data: bytes, offsets: list[list[int]], spans: int) -> None:
        self.data = data
        self.offsets = offsets  # per trace: byte offsets of its 16-byte trace id
        self.spans = spans

    def stamp(self, rng: random.Random) -> bytes:
        out = bytearray(self.data)
        for positions in self.offsets:
            tid = rng.randbytes(16)
            for pos in positions:
                out[pos : pos + 16] = tid
        return bytes(out)


def build_template(
    rng: random.Random, spans_per_request: int = 512, error_rate: float = 0.02, slow_rate: float = 0.05
) -> Template:
    """A realistic request: 8-20 spans per trace across 3-5 services, 10-20 attributes per span,
    about `error_rate` error traces and `slow_rate` slow (> 1 s) ones."""
    by_service: dict[str, list[Span]] = {s: [] for s in SERVICES}
    trace_ids: list[bytes] = []
    total = 0
    base = time.time_ns() - 10 * 10**9
    while total < spans_per_request:
        n = min(rng.randint(8, 20), spans_per_request - total)
        tid = rng.randbytes(16)
        trace_ids.append(tid)
        kind = rng.random()
        is_error = kind < error_rate
        is_slow = error_rate <= kind < error_rate + slow_rate
        duration = rng.randint(1200, 3000) * 10**6 if is_slow else rng.randint(5, 300) * 10**6
        services = rng.sample(SERVICES, rng.randint(3, 5))
        root_id = rng.randbytes(8)
        route = rng.choice(ROUTES)
        for i in range(n):
            service = services[0] if i == 0 else rng.choice(services[1:])
            span_id = root_id if i == 0 else rng.randbytes(8)
            start = base + (0 if i == 0 else rng.randint(0, duration // 2))
            end = base + duration if i == 0 else start + rng.randint(1, duration // 2)
            attrs = [
                _kv("http.request.method", rng.choice(("GET", "POST"))),
                _kv("http.route", route),
                _kv("url.path", route.replace("{id}", str(rng.randint(1, 9999)))),
                _kv("server.address", f"{service}.shop.svc.cluster.local"),
                _kv("network.protocol.version", "1.1"),
                _kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) demo"),
                _kv("thread.id", rng.randint(1, 64)),
                _kv("code.function", f"handle_{rng.choice(('get', 'post', 'list'))}"),
                _kv("app.cache_hit", rng.random() < 0.5),
                _kv("app.items", rng.randint(0, 20)),
            ]
            attrs += [_kv(f"app.attr{j}", rng.randbytes(6).hex()) for j in range(rng.randint(0, 10))]
            status = Status()
            http_status = 200
            if is_error and i == n - 1:
                status = Status(code=Status.STATUS_CODE_ERROR, message="upstream failed")
                http_status = 500
            attrs.append(_kv("http.response.status_code", http_status))
            by_service[service].append(Span(
                trace_id=tid, span_id=span_id, parent_span_id=b"" if i == 0 else root_id,
                name=f"{'GET' if i == 0 else 'call'} {route}",
                kind=Span.SPAN_KIND_SERVER if i == 0 else Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start, end_time_unix_nano=end, attributes=attrs, status=status,
            ))
        total += n
    request = ExportTraceServiceRequest()
    for service, spans in by_service.items():
        if not spans:
            continue
        rs = ResourceSpans()
        rs.resource.attributes.extend([
            _kv("service.name", service), _kv("service.version", "1.4.2"),
            _kv("telemetry.sdk.language", "python"), _kv("k8s.namespace.name", "shop"),
        ])
        ss = rs.scope_spans.add()
        ss.scope.name = "demo"
        ss.spans.extend(spans)
        request.resource_spans.append(rs)
    data = request.SerializeToString()
    offsets = []
    for tid in trace_ids:
        positions = []
        start = data.find(tid)
        while start >= 0:
            positions.append(start)
            start = data.find(tid, start + 1)
        offsets.append(positions)
    return Template(data, offsets, total)


class Sink:
    """An in-process OTLP/gRPC backend that counts what arrives, by deciding policy."""

    def __init__(self) -> None:
        self.spans = 0
        self.traces: dict[str, set[bytes]] = {}
        self.policies: list[str] = []  # bit i of a chunk's bits: its spans carry policy i's annotation
        self.splitter = Splitter(frozenset({POLICY_KEY}), self._policy_bit, lambda attrs: 0)
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._export, request_deserializer=None,
                                                      response_serializer=None)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))

    async def _export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        for chunk in split_request(request, self.splitter, True):
            self.spans += len(chunk.spans)
            for i, policy in enumerate(self.policies):
                if chunk.bits >> i & 1:
                    self.traces.setdefault(policy, set()).add(chunk.trace_id)
        return b""

    def _policy_bit(self, key: str, value: AttrValue) -> int:
        policy = str(value)
        if policy not in self.policies:
            self.policies.append(policy)
        return 1 << self.policies.index(policy)

    async def start(self) -> int:
        port: int = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def _generate(port: int, templates: list[Template], seconds: float, sent: list[int]) -> None:
    rng = random.Random(7)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < deadline:
                template = rng.choice(templates)
                try:
                    await call(template.stamp(rng), timeout=10)
                except grpc.aio.AioRpcError as exc:  # pushback (UNAVAILABLE): back off as an SDK would
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.5)
                    continue
                sent[0] += template.spans

        await asyncio.gather(*(worker() for _ in range(3)))


async def run_demo(seconds: float) -> int:
    rng = random.Random(42)
    print("tailsampler demo: building traffic (5 services, 2% error traces, 5% slow ones)...", file=sys.stderr)
    templates = [build_template(rng) for _ in range(16)]
    sink = Sink()
    sink_port = await sink.start()
    with TemporaryDirectory() as tmp:
        config = Path(tmp) / "demo.yaml"
        config.write_text(
            "receivers: {otlp: {grpc: {endpoint: '127.0.0.1:0'}, http: null}}\n"
            "admin: {endpoint: null}\n"
            "buffer: {decision_wait: 1s, max_trace_age: 10s}\n"
            f"exporter: {{protocol: grpc, endpoint: 'http://127.0.0.1:{sink_port}'}}\n"
        )
        loaded = load_config(config, environ={})
    app = App(loaded)
    await app.start()
    sent = [0]
    started = time.monotonic()
    gen = asyncio.create_task(_generate(app.ports["grpc"], templates, seconds, sent))
    stats = app.core.stats
    while not gen.done():
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
        received = sum(stats.spans_received.values())
        kept = sum(n for (d, _), n in stats.decided.items() if d == "keep")
        decided = sum(stats.decided.values())
        print(f"\r  {elapsed:5.1f}s  spans in {received:>9,}  ({received / elapsed:>8,.0f}/s)  "
              f"traces decided {decided:>7,}  kept {kept:>6,}  buffered {len(app.core.buffer):>6,}",
              end="", file=sys.stderr, flush=True)
    await gen
    elapsed = time.monotonic() - started
    received = sum(stats.spans_received.values())
    await app.shutdown()
    print(file=sys.stderr)
    outcomes = Counter[str]()
    for (decision, policy), n in stats.decided.items():
        outcomes[policy if decision == "keep" else "(dropped)"] += n
    total = sum(outcomes.values())
    print("\ntailsampler demo summary")
    print(f"  spans in              {received:>12,}")
    print(f"  throughput            {received / elapsed:>12,.0f} spans/s  (one process, {os.cpu_count()} cores)")
    print(f"  traces decided        {total:>12,}")
    for policy in [p.name for p in app.core.engine.policies]:
        arrived = len(sink.traces.get(policy, ()))
        print(f"    kept by {policy:<13} {outcomes[policy]:>12,}  (arrived at the sink: {arrived:,})")
    print(f"    dropped             {outcomes['(dropped)']:>12,}")
    print(f"  spans at the sink     {sink.spans:>12,}")
    print(f"  peak memory (RSS)     {_peak_rss_mb():>12,.0f} MiB")
    await sink.server.stop(None)
    return 0
