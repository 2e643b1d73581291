"""Capacity: how small the buffer holds spans, on three traffics, and what that costs.

    .venv/bin/python bench/capacity.py [--traces N] [--json]

Traffics:
- `bench`: the requests bench/hotpath.py and bench/e2e.py send (sampler.tools.demo's templates: 8-20 spans
  a trace over 3-5 services, 10-20 attributes a span), with fresh trace ids in each copy;
- `demo`: what `tailsampler demo` sends: the same generator, with the demo's seed and its 16
  templates (the benches use 8);
- `sdk`: spans made by the real OpenTelemetry Python SDK (a tracer, nested spans with the
  attributes HTTP, database and messaging instrumentations set, varied values: user ids in URLs,
  durations, row counts, exceptions), encoded by the SDK's own OTLP encoder.

For each: a dictionary is trained on a first part of the traffic as the server does (frames
sampled as they are packed), then the rest is ingested into a buffer, packed and compressed, and
reported: the compression ratio (packed bytes / compressed bytes), the bytes per buffered span as
tracemalloc sees them against the serialized bytes per span, and the CPU per span of packing and
compressing (single thread, inline; the server compresses on a thread of its own).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc
from typing import Any

from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.frames import Compression, train
from sampler.policy.loader import load_policies
from sampler.server.settings import default_policies_doc


def bench_traffic(requests: int, seed: int, templates: int = 8) -> list[bytes]:
    from sampler.tools.demo import build_template

    rng = random.Random(seed)
    made = [build_template(rng) for _ in range(templates)]
    return [made[i % len(made)].stamp(rng) for i in range(requests)]


def sdk_traffic(traces: int, seed: int) -> list[bytes]:
    """Requests of spans made by the OpenTelemetry SDK, 512 spans each, as its batch processor sends."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind, Status, StatusCode

    class Keep(SpanExporter):
        def __init__(self) -> None:
            self.spans: list[ReadableSpan] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

    rng = random.Random(seed)
    services = ["frontend", "checkout", "payments", "inventory", "users"]
    keeps: dict[str, Keep] = {}
    tracers = {}
    for name in services:
        keeps[name] = Keep()
        provider = TracerProvider(resource=Resource.create({
            "service.name": name, "service.version": f"1.{rng.randint(0, 9)}.{rng.randint(0, 20)}",
            "k8s.pod.name": f"{name}-{rng.randbytes(4).hex()}", "k8s.namespace.name": "shop",
            "host.name": f"node-{rng.randint(1, 12)}"}))
        provider.add_span_processor(SimpleSpanProcessor(keeps[name]))
        tracers[name] = provider.get_tracer(f"opentelemetry.instrumentation.{name}", "0.48b0")
    routes = ["/api/cart/{id}", "/api/products/{id}", "/api/users/{id}/orders", "/api/checkout", "/api/search"]
    from opentelemetry import context, trace

    for _ in range(traces):
        root_service = rng.choice(services)
        route = rng.choice(routes)
        user = rng.randint(1, 10**6)
        with tracers[root_service].start_as_current_span(
            f"GET {route}", kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": route,
                        "url.path": route.replace("{id}", str(user)), "url.scheme": "https",
                        "server.address": "shop.example.com",
                        "client.address": f"10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
                        "user_agent.original": rng.choice(["Mozilla/5.0 (X11; Linux x86_64)", "okhttp/4.12.0"]),
                        "http.response.status_code": 200},
        ) as root:
            for _ in range(rng.randint(2, 6)):
                callee = rng.choice(services)
                with tracers[root_service].start_as_current_span(
                    f"POST /internal/{callee}", kind=SpanKind.CLIENT,
                    attributes={"http.request.method": "POST", "server.address": f"{callee}.shop.svc",
                                "server.port": 8080, "http.response.status_code": 200},
                ) as client:
                    token = context.attach(trace.set_span_in_context(client))
                    with tracers[callee].start_as_current_span(
                        f"POST /internal/{callee}", kind=SpanKind.SERVER,
                        attributes={"http.request.method": "POST", "http.route": f"/internal/{callee}",
                                    "http.response.status_code": 200},
                    ) as server:
                        for _ in range(rng.randint(0, 3)):
                            with tracers[callee].start_as_current_span(
                                "SELECT shop.items", kind=SpanKind.CLIENT,
                                attributes={"db.system": "postgresql", "db.name": "shop",
                                            "db.statement": f"SELECT * FROM items WHERE id = ${rng.randint(1, 9)}",
                                            "db.rows_affected": rng.randint(0, 500), "server.address": "pg.shop.svc"},
                            ):
                                pass
                        if rng.random() < 0.03:
                            late = rng.randint(1, 30)
                            server.record_exception(RuntimeError(f"timeout talking to {callee} after {late}s"))
                            server.set_status(Status(StatusCode.ERROR, "upstream timeout"))
                    context.detach(token)
            root.set_attribute("app.items", rng.randint(0, 40))
    spans = [s for k in keeps.values() for s in k.spans]
    rng.shuffle(spans)  # the services' batches interleave
    return [encode_spans(spans[i:i + 512]).SerializeToString() for i in range(0, len(spans), 512)]


def measure(requests: list[bytes], warm: list[bytes]) -> dict[str, Any]:
    kept: list[KeptTrace] = []
    compression = Compression()
    core = Core(Buffer(10**9, 2**40, 1e9, 1e9, compress_after=0.0), load_policies(default_policies_doc()).engine(),
                DecisionCache(10, 10), kept.append, compression=compression)
    for data in warm:
        core.ingest(data, "grpc", 0.0)
    core.compress_quiet(1.0)
    samples = compression.due(1.0)
    if samples is not None:
        compression.trained(train(samples), 1.0)
    core.decide_all(1.0)
    stats = core.stats
    packed0, in0, out0 = stats.packed_bytes, stats.compressed_in, stats.compressed_out
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for data in requests:
        core.ingest(data, "grpc", 2.0)
    t0 = time.process_time()
    core.compress_quiet(3.0)
    cpu = time.process_time() - t0
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    spans = core.buffer.spans
    serialized = stats.packed_bytes - packed0
    return {
        "spans": spans,
        "traces": len(core.buffer),
        "serialized_bytes_per_span": round(serialized / spans, 1),
        "bytes_per_buffered_span": round(held / spans, 1),
        "buffered_to_serialized": round(held / serialized, 3),
        "compression_ratio": round((stats.compressed_in - in0) / max(1, stats.compressed_out - out0), 2),
        "pack_and_compress_us_per_span": round(cpu / spans * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=3000,
                        help="SDK traces to make (the other traffics: as many requests)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sdk = sdk_traffic(args.traces, seed=1)
    sdk_warm = sdk_traffic(args.traces, seed=2)  # enough frames to sample a dictionary from, as the server waits for
    n = max(4, len(sdk))
    results = {
        "bench": measure(bench_traffic(n, 3), bench_traffic(max(4, n // 3), 4)),
        "demo": measure(bench_traffic(n, 42, templates=16), bench_traffic(max(4, n // 3), 43, templates=16)),
        "sdk": measure(sdk, sdk_warm),
    }
    if args.json:
        print(json.dumps(results))
        return
    keys = list(next(iter(results.values())))
    print(f"  {'':34}" + "".join(f"{name:>12}" for name in results))
    for key in keys:
        print(f"  {key:34}" + "".join(f"{r[key]:>12}" for r in results.values()))


if __name__ == "__main__":
    main()
