"""Export latency while the policies are reloaded with a full buffer.

    .venv/bin/python bench/reload.py [--buffer-mib 256] [--one-go] [--json]

One process: the real App (gRPC receiver on loopback, the sweeper, reloads) with a null exporter. The
buffer is filled with realistic traces (bench/hotpath.py's requests) to `--buffer-mib`, nothing
due for minutes; then a client process sends small Export requests (8 spans) back to back while the
policies file is swapped for one that reads other attributes, so every buffered trace must be
re-summarised. Reported: Export latency before the reload (p50, p99, max) and while the buffer was
being re-summarised (p99, max). `--one-go` re-summarises the whole buffer in the reload's
own loop callback, as tailsampler did before the work was spread over steps: the floor to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sampler.pipeline.core import KeptTrace
from sampler.server.app import App
from sampler.server.settings import load_config
from sampler.tools.demo import build_template

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
BEFORE = ("policies: [{name: errors, type: errors}, "
          "{name: base, type: probabilistic, probabilistic: {sampling_percentage: 5}}]\n")
AFTER = ("policies: [{name: errors, type: errors}, {name: route, type: string_attribute, "
         "string_attribute: {key: http.route, values: ['/api/checkout']}}, "
         "{name: base, type: probabilistic, probabilistic: {sampling_percentage: 5}}]\n")


class Null:
    async def send(self, batch: list[KeptTrace]) -> int:
        return 0

    async def close(self) -> None:
        return None


CLIENT = r"""
import json, random, sys, time
import grpc
from sampler.tools.demo import build_template

port, seconds = int(sys.argv[1]), float(sys.argv[2])
rng = random.Random(7)
template = build_template(rng, spans_per_request=8)
out = []
with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
    call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    end = time.time() + seconds
    while time.time() < end:
        body = template.stamp(rng)
        t0 = time.time()
        call(body, timeout=30)
        out.append((t0, time.time() - t0))
print(json.dumps(out))
"""


async def run(buffer_mib: int, one_go: bool) -> dict[str, float | None]:
    work = Path(tempfile.mkdtemp(prefix="tailsampler-reload-"))
    policies = work / "policies.yaml"
    policies.write_text(BEFORE)
    config = work / "config.yaml"
    config.write_text("receivers: {otlp: {grpc: {endpoint: '127.0.0.1:0'}, http: null}}\n"
                      f"buffer: {{decision_wait: 600s, max_trace_age: 600s, max_bytes: {buffer_mib + 64}MiB}}\n"
                      "memory_limit: null\nadmin: {endpoint: null}\npolicies_file: policies.yaml\n")
    app = App(load_config(config), sender=Null())
    await app.start()
    rng = random.Random(1)
    templates = [build_template(rng) for _ in range(8)]
    i = 0
    while app.core.buffer.nbytes < buffer_mib * 2**20:  # the client's traces have room beside these
        app._ingest(templates[i % len(templates)].stamp(rng), "grpc", "traces")
        i += 1
    spans, held = app.core.buffer.spans, app.core.buffer.nbytes
    # Small Export calls back to back from another process (so that it does not share our GIL): each
    # call's start (wall clock) and latency, as one JSON list when it ends.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(app.ports["grpc"]), "5",
                                                stdout=asyncio.subprocess.PIPE)
    await asyncio.sleep(2.5)
    policies.write_text(AFTER)
    started = time.time()
    app.reload(policies)
    if one_go:
        app.core.resummarise(1 << 62)
    newest = next(reversed(app.core.buffer.by_first.values()))
    while newest.generation != app.core.generation:
        await asyncio.sleep(0.001)
    ended = time.time()
    out, _ = await proc.communicate()
    latencies: list[tuple[float, float]] = json.loads(out)
    await app.shutdown()
    before = [lat for t0, lat in latencies if t0 < started]
    during = [lat for t0, lat in latencies if t0 + lat >= started and t0 <= ended]
    q = statistics.quantiles(before, n=100)
    return {
        "buffer_mib": round(held / 2**20),
        "buffered_spans": spans,
        "resummarise_ms": round((ended - started) * 1000, 1),
        "before_p50_ms": round(q[49] * 1000, 2),
        "before_p99_ms": round(q[98] * 1000, 2),
        "before_max_ms": round(max(before) * 1000, 2),
        "during_p99_ms": round(statistics.quantiles(during, n=100)[98] * 1000, 2) if len(during) > 1 else None,
        "during_max_ms": round(max(during) * 1000, 2),
        "calls_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffer-mib", type=int, default=256)
    parser.add_argument("--one-go", action="store_true", help="re-summarise the whole buffer at once (the floor)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.buffer_mib, args.one_go))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
