"""Hot-path benchmark: realistic OTLP requests through the production code path (receive bytes ->
buffer -> pack and compress quiet traces -> decide -> encode the export request; no sockets),
beside the floor measured in the same run on the same payloads: protobuf's own
ExportTraceServiceRequest.FromString (upb). As in the server, quiet traces are packed and
compressed on a thread of their own while the loop goes on: `spans_per_s` is the loop's rate (the
one that limits a process), and `compress_thread_us_per_span` the thread's CPU per span besides it.
The decision cache starts full (of other ids), as in a server that has been deciding for a while.

    .venv/bin/python bench/hotpath.py [--requests N] [--repeat R] [--json] [--depth D] [--no-compress]
                                      [--insight on|metrics|off] [--insight-compare] [--recent N]

`--insight` sets what is learned from all traffic as the server's defaults do (on: span metrics at
ingest and the service graph and exemplars at decision time; metrics: span metrics only; off: none).
`--insight-compare` runs the three side by side, interleaved run by run, and reports each one's
spans/s and CPU per span (the loop is single-threaded: wall time is its CPU) against off.

As the server by default, every decision is recorded with its votes in a ring of recent decisions
(`debug.recent_decisions`, 100,000); `--recent 0` measures without recording them.

`bytes_per_buffered_span` is measured over a full buffer of other requests (every byte the buffer
holds, overhead included, as tracemalloc sees it, divided by the spans held), once a compression
dictionary has been trained on the traffic as the server does; `serialized_bytes_per_span` beside
it, and their ratio `buffered_to_serialized`.

Each request's traces are decided as soon as the next request has arrived, so the buffer stays
small and warm in the CPU caches. `--depth D` runs the same path a second time with D requests
buffered before their traces are decided (D=500 holds about 256k spans, like bench/e2e.py's buffer
at full speed), on 3*D distinct requests, and adds `depth`, `deep_spans_per_s`,
`deep_floor_spans_per_s` (upb on those same requests) and `deep_ratio`: the cost of a buffer far
larger than the CPU caches.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sampler.exporters.base import encode_batch
from sampler.insight.live import Insight
from sampler.insight.recent import RecentDecisions
from sampler.insight.servicegraph import ServiceGraph
from sampler.insight.spanmetrics import SpanMetrics
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace, PackJob, pack_jobs
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.frames import train
from sampler.policy.engine import NO_KEEP
from sampler.policy.loader import load_policies
from sampler.server.app import tune_gc
from sampler.server.settings import default_policies_doc
from sampler.tools.demo import build_template

COMPRESS = True  # --no-compress: the buffer without packing or compression (spans held as they came)
INSIGHT = "on"  # --insight: on | metrics | off
RECENT = 100_000  # --recent: debug.recent_decisions (0: votes not recorded)


def make_requests(n: int, seed: int = 1) -> tuple[list[bytes], int]:
    """n requests of 512 spans (8-20 spans per trace over 3-5 services, 10-20 attributes per span,
    ~2% error and ~5% slow traces), each with fresh trace ids."""
    rng = random.Random(seed)
    templates = [build_template(rng) for _ in range(8)]
    requests = []
    spans = 0
    for i in range(n):
        t = templates[i % len(templates)]
        requests.append(t.stamp(rng))
        spans += t.spans
    return requests, spans


def full_decision_cache() -> DecisionCache:
    """The default decision cache as a server has it after a while: full of dropped ids, every page
    of its rings in use (a fresh one would charge the run the first touch of each page)."""
    cache = DecisionCache(100_000, 1_000_000)
    for n in range(1_000_000):
        cache.record(n.to_bytes(16, "big"), NO_KEEP)
    return cache


def new_core(kept: list[KeptTrace], depth: int = 1, cache: DecisionCache | None = None) -> Core:
    """A core whose traces are due `depth` requests after they arrive (one request per clock second),
    packed and compressed a quarter of a second after they arrive."""
    engine = load_policies(default_policies_doc()).engine()
    insight = None
    if INSIGHT != "off":
        insight = Insight(SpanMetrics(), ServiceGraph() if INSIGHT == "on" else None)
    core = Core(Buffer(10**7, 2**40, depth - 0.5, 1e9, compress_after=0.25), engine,
                cache or DecisionCache(100_000, 1_000_000), kept.append, insight=insight)
    if RECENT:
        core.recent = RecentDecisions(RECENT)
    return core


COMPRESS_THREAD_SECONDS = [0.0]


def _pack_jobs(core: Core, jobs: list[PackJob]) -> tuple[list[Any], list[bytes]]:
    t0 = time.thread_time()
    out = pack_jobs(core.compression.codec, jobs)
    COMPRESS_THREAD_SECONDS[0] += time.thread_time() - t0
    return out


def run_hotpath(requests: list[bytes], depth: int = 1) -> float:
    """Seconds to ingest every request, decide every trace and encode the kept ones for export,
    quiet traces packed and compressed on a thread as the loop goes on (as the server does)."""
    kept: list[KeptTrace] = []
    core = new_core(kept, depth, full_decision_cache())
    pool = ThreadPoolExecutor(1)
    running: tuple[list[PackJob], Future[tuple[list[Any], list[bytes]]]] | None = None
    waiting: list[PackJob] = []
    start = time.perf_counter()
    now = 0.0
    for data in requests:
        core.ingest(data, "grpc", now)
        now += 1.0
        if COMPRESS:  # as the server's loop does: never waits for the thread, hands it work when it is idle
            waiting.extend(core.detach_quiet(now, 1 << 62))
            if running is not None and running[1].done():
                core.packed(running[0], *running[1].result())
                running = None
            if running is None and waiting:
                running = (waiting, pool.submit(_pack_jobs, core, waiting))
                waiting = []
        core.sweep(now)  # the traces of the request `depth` requests back are now quiet
        if kept:
            encode_batch(kept, annotate=True)
            kept.clear()
    if running is not None:
        core.packed(running[0], *running[1].result())
    core.decide_all(now)
    if kept:
        encode_batch(kept, annotate=True)
    elapsed = time.perf_counter() - start
    pool.shutdown()
    return elapsed


def run_floor(requests: list[bytes]) -> float:
    start = time.perf_counter()
    for data in requests:
        ExportTraceServiceRequest.FromString(data)
    return time.perf_counter() - start


def memory_per_span(warm: list[bytes], requests: list[bytes]) -> tuple[float, float, float]:
    """(bytes the buffer holds per span as tracemalloc sees them, as the buffer counts them,
    serialized bytes per span) with every trace of `requests` buffered, packed and compressed with
    a dictionary trained on `warm` (as the server trains one on the traffic it sees first)."""
    kept: list[KeptTrace] = []
    core = new_core(kept)
    compression = core.compression
    for data in warm:
        core.ingest(data, "grpc", 0.0)
    core.compress_quiet(1.0)
    samples = compression.due(1.0)
    if COMPRESS and samples is not None:
        compression.trained(train(samples), 1.0)
    core.decide_all(1.0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for data in requests:
        core.ingest(data, "grpc", 2.0)
    if COMPRESS:
        core.compress_quiet(3.0)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    spans = core.buffer.spans
    serialized = sum(e.summary.nbytes for e in core.buffer.entries())
    return held / spans, core.buffer.nbytes / spans, serialized / spans


def compare_insight(requests: list[bytes], spans: int, repeat: int, as_json: bool) -> None:
    """The hot path with insight off, span metrics only, and both, interleaved run by run."""
    global INSIGHT
    modes = ("off", "metrics", "on")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeat):
        for mode in modes:
            INSIGHT = mode
            rates[mode].append(spans / run_hotpath(requests))
    result = {}
    for mode in modes:
        rate = statistics.median(rates[mode])
        result[mode] = {"spans_per_s": round(rate), "us_per_span": round(1e6 / rate, 3),
                        "extra_cpu_per_span": round(statistics.median(rates["off"]) / rate - 1, 3)}
    if as_json:
        print(json.dumps(result))
        return
    print(f"hotpath insight: {len(requests)} requests x 512 spans, median of {repeat} interleaved runs")
    for mode in modes:
        r = result[mode]
        print(f"  {mode:<8} {r['spans_per_s']:>12,} spans/s  {r['us_per_span']:>7} us/span  "
              f"{r['extra_cpu_per_span']:+.1%} CPU per span vs off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--depth", type=int, default=0, help="also measure with this many requests buffered")
    parser.add_argument("--no-compress", action="store_true", help="hold spans as they came: no packing, no zstd")
    parser.add_argument("--insight", choices=["on", "metrics", "off"], default="on",
                        help="span metrics and service graph (on), span metrics only, or neither")
    parser.add_argument("--insight-compare", action="store_true", help="on, metrics and off side by side")
    parser.add_argument("--recent", type=int, default=100_000,
                        help="debug.recent_decisions: decisions recorded with their votes (0: none)")
    args = parser.parse_args()
    global COMPRESS, INSIGHT, RECENT
    COMPRESS = not args.no_compress
    INSIGHT = args.insight
    RECENT = args.recent
    requests, spans = make_requests(args.requests)
    tune_gc()  # as `tailsampler run` does
    if args.insight_compare:
        compare_insight(requests, spans, args.repeat, args.json)
        return
    hot = []
    floor = []
    for _ in range(args.repeat):
        floor.append(spans / run_floor(requests))
        hot.append(spans / run_hotpath(requests))
    thread_us = COMPRESS_THREAD_SECONDS[0] / (spans * args.repeat) * 1e6
    warm, _ = make_requests(60, seed=5)
    full, _ = make_requests(max(args.requests, 200), seed=6)
    per_span, counted, serialized = memory_per_span(warm, full)
    result = {
        "spans_per_s": round(statistics.median(hot)),
        "floor_spans_per_s": round(statistics.median(floor)),
        "ratio": round(statistics.median(hot) / statistics.median(floor), 3),
        "compress_thread_us_per_span": round(thread_us, 3),
        "bytes_per_buffered_span": round(per_span, 1),
        "counted_bytes_per_buffered_span": round(counted, 1),
        "serialized_bytes_per_span": round(serialized, 1),
        "buffered_to_serialized": round(per_span / serialized, 3),
    }
    if args.depth > 1:
        deep_requests, deep_spans = make_requests(max(args.requests, 3 * args.depth), seed=2)
        deep = statistics.median(deep_spans / run_hotpath(deep_requests, args.depth) for _ in range(3))
        deep_floor = statistics.median(deep_spans / run_floor(deep_requests) for _ in range(3))
        result.update(depth=args.depth, deep_spans_per_s=round(deep), deep_floor_spans_per_s=round(deep_floor),
                      deep_ratio=round(deep / deep_floor, 3))
    if args.json:
        print(json.dumps(result))
        return
    print(f"hotpath: {args.requests} requests x 512 spans, median of {args.repeat} runs")
    print(f"  tailsampler ingest+decide+encode  {result['spans_per_s']:>12,} spans/s")
    print(f"  floor: upb FromString             {result['floor_spans_per_s']:>12,} spans/s")
    print(f"  ratio                             {result['ratio']:>12}")
    print(f"  buffered bytes per span           {result['bytes_per_buffered_span']:>12} "
          f"(counted {result['counted_bytes_per_buffered_span']})")
    print(f"  serialized bytes per span         {result['serialized_bytes_per_span']:>12}")
    print(f"  buffered / serialized             {result['buffered_to_serialized']:>12}")
    if "depth" in result:
        print(f"  with {result['depth']} requests buffered     {result['deep_spans_per_s']:>12,} spans/s, floor "
              f"{result['deep_floor_spans_per_s']:,} on the same requests, ratio {result['deep_ratio']}")


if __name__ == "__main__":
    main()
