"""Memory under stress: each case runs fresh tailsampler processes with a `memory_limit` against a
load that would exhaust it, and reports their peak resident memory (VmHWM) against the limit, the
traces decided early, the requests refused, the throughput, and whether every span tailsampler
counted as exported reached the sink.

    .venv/bin/python bench/memory.py [--limit 256MiB] [--case NAME ...] [--seconds S] [--json]

Cases (all on 127.0.0.1, every process its own):
- grpc_overload: `decision_wait: 30s`, 16 calls in flight of 512-span gRPC requests: the buffer
  fills within seconds and must decide early and push back.
- http_json: the same over OTLP/HTTP with OTLP/JSON bodies (decoding JSON costs ~8x its size).
- backend_dead: load at a fixed rate with every trace kept while the backend is down for
  `--dead-seconds` (30 by default), then up: the export queue fills, retries wait, nothing grows.
- huge_trace: one trace of 100k spans (1,000-span requests) among normal traffic
  (max_spans_per_trace 5,000).
- sharded_pushback: three sharded instances, one with a tiny buffer that pushes back.
- oversized_buffer: grpc_overload with `buffer.max_bytes` set far above what the limit leaves it:
  only the resident-memory governor (deciding early above 88%, refusing above 93%) keeps the limit.
- capacity (asked for by name: `--case capacity --limit 512MiB --seconds 60 --rate 150000`): the
  default config (decision_wait 5s) at a fixed rate: no trace may be decided early, no request
  refused, and the peak resident memory stays under the limit.

tests/test_memory_limit.py runs the same cases, shorter, and holds their figures to the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # bench/e2e.py: processes, ports, the gRPC load generator

ROOT = e2e.ROOT
HOST = e2e.HOST
CASES = ("grpc_overload", "http_json", "backend_dead", "huge_trace", "sharded_pushback", "oversized_buffer")
# Not in the default set (a minute long): the capacity a memory_limit buys, at full decision quality.
EXTRA_CASES = ("capacity",)
READY_POLL = 0.25


# --- roles run in child processes ----------------------------------------------------------------


async def _sink(port: int, max_seconds: float) -> None:
    """An OTLP/gRPC backend that counts the spans it receives; prints them when stopped."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = [0]
    traces: set[bytes] = set()

    async def export(request: bytes, context: Any) -> bytes:
        msg = ExportTraceServiceRequest.FromString(request)
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                spans[0] += len(ss.spans)
                traces.update(s.trace_id for s in ss.spans)
        return b""

    handler = grpc.unary_unary_rpc_method_handler(export)
    server = grpc.aio.server(options=e2e.GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(e2e.SERVICE, {"Export": handler}),))
    port = server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    await server.stop(0.5)
    print(json.dumps({"spans": spans[0], "traces": len(traces)}), flush=True)


async def _load_json(url: str, spans: int, seconds: float, inflight: int, seed: int) -> dict[str, Any]:
    """POST OTLP/JSON requests with fresh trace ids, `inflight` at a time, for `seconds`."""
    import aiohttp

    templates = e2e.json_templates(spans, seed)
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    ok_spans = 0
    statuses: dict[str, int] = {}

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal ok_spans
        i = n
        while time.monotonic() < deadline:
            i += inflight
            parts, order, count = templates[i % len(templates)]
            fresh = [rng.randbytes(16).hex() for _ in range(max(order) + 1)]
            body = "".join(p + (fresh[order[k]] if k < len(order) else "") for k, p in enumerate(parts))
            try:
                async with session.post(url, data=body.encode(), headers={"Content-Type": "application/json"},
                                        timeout=aiohttp.ClientTimeout(total=e2e.CALL_TIMEOUT)) as resp:
                    await resp.read()
                    statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                    if resp.status == 200:
                        ok_spans += count
                    elif resp.status == 503:
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")) / 10)
            except (aiohttp.ClientError, TimeoutError):
                statuses["error"] = statuses.get("error", 0) + 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session, n) for n in range(inflight)))
    return {"spans_per_s": ok_spans / seconds, "statuses": statuses}


async def _load_huge(target: str, seconds: float, huge_spans: int, seed: int) -> dict[str, Any]:
    """Normal 512-span traffic on a few calls, and one trace of `huge_spans` spans sent as 1,000-span
    requests in between."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    rng = random.Random(seed)
    templates = e2e._templates(512, seed)
    trace_id = rng.randbytes(16)
    channel = grpc.aio.insecure_channel(target, options=e2e.GRPC_OPTIONS)
    export = channel.unary_unary(e2e.METHOD)
    deadline = time.monotonic() + seconds
    counts = {"normal_ok": 0, "huge_ok": 0, "failed": 0}

    async def normal() -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                await export(templates[i % len(templates)].stamp(rng), timeout=e2e.CALL_TIMEOUT)
                counts["normal_ok"] += 1
            except grpc.aio.AioRpcError:
                counts["failed"] += 1
                await asyncio.sleep(0.1)

    async def huge() -> None:
        sent = 0
        while sent < huge_spans and time.monotonic() < deadline:
            msg = ExportTraceServiceRequest()
            rs = msg.resource_spans.add()
            kv = rs.resource.attributes.add()
            kv.key, kv.value.string_value = "service.name", "bulk-loader"
            ss = rs.scope_spans.add()
            for k in range(min(1000, huge_spans - sent)):
                n = sent + k
                ss.spans.add(trace_id=trace_id, span_id=(n + 1).to_bytes(8, "big"),
                             parent_span_id=b"" if n == 0 else (1).to_bytes(8, "big"), name=f"row {n}",
                             kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=10**18 + n,
                             end_time_unix_nano=10**18 + n + 1000)
            try:
                await export(msg.SerializeToString(), timeout=e2e.CALL_TIMEOUT)
                sent += len(ss.spans)
                counts["huge_ok"] += len(ss.spans)
            except grpc.aio.AioRpcError:
                counts["failed"] += 1
                await asyncio.sleep(0.1)

    await asyncio.gather(normal(), normal(), normal(), huge())
    await channel.close()
    return counts


def _child_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    e2e._uvloop()
    if args.role == "sink":
        asyncio.run(_sink(args.port, args.max_seconds))
        return
    if args.role == "json":
        result = asyncio.run(_load_json(args.target, 512, args.seconds, args.inflight, args.seed))
    else:
        result = asyncio.run(_load_huge(args.target, args.seconds, args.huge_spans, args.seed))
    print(json.dumps(result), flush=True)


# --- the orchestrator ----------------------------------------------------------------------------


def _cmd(role: str, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra]


@dataclass
class Instance:
    proc: subprocess.Popen[str]
    grpc_port: int
    http_port: int
    admin_port: int
    log: Path
    hwm_mb: float = 0.0
    ready_always: bool = True
    metrics: str = ""

    @property
    def admin(self) -> str:
        return f"{HOST}:{self.admin_port}"


@dataclass
class Run:
    """The processes of one case and what was observed of them."""

    procs: e2e.Procs
    workdir: Path
    limit: str
    instances: list[Instance] = field(default_factory=list)
    sink: subprocess.Popen[str] | None = None
    sink_port: int = 0

    def start_sink(self, port: int = 0) -> None:
        self.sink = self.procs.start(_cmd("sink", "--port", str(port), "--max-seconds", "900"),
                                     stdout=subprocess.PIPE)
        assert self.sink.stdout is not None
        line = self.sink.stdout.readline()
        if not line:
            raise RuntimeError("the sink did not start")
        self.sink_port = int(json.loads(line)["port"])

    def stop_sink(self) -> dict[str, int]:
        assert self.sink is not None and self.sink.stdout is not None
        self.sink.send_signal(signal.SIGTERM)
        out = self.sink.stdout.read()
        self.sink.wait(30)
        self.procs.procs.remove(self.sink)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {"spans": 0, "traces": 0}

    def start(self, name: str, extra: str, policies: str, peers: str = "",
              ports: tuple[int, int, int] | None = None) -> Instance:
        grpc_port, http_port, admin_port = ports or (e2e.free_port(), e2e.free_port(), e2e.free_port())
        config = self.workdir / f"{name}.yaml"
        limit = f"memory_limit: {self.limit}"
        if self.limit == "none":  # as before memory_limit existed: the buffer bounded by span bytes only
            limit = ""
            if "max_bytes" not in extra:
                extra = extra.replace("buffer: {", "buffer: {max_bytes: 64MiB, ")
        config.write_text(
            f"""# written by bench/memory.py
{limit}
receivers:
  otlp:
    grpc: {{endpoint: "{HOST}:{grpc_port}"}}
    http: {{endpoint: "{HOST}:{http_port}"}}
exporter:
  protocol: grpc
  endpoint: "http://{HOST}:{self.sink_port}"
  retry: {{initial_interval: 200ms, max_interval: 1s, max_elapsed_time: 120s}}
admin: {{endpoint: "{HOST}:{admin_port}"}}
shutdown_timeout: 20s
log_level: warning
policies: {policies}
{peers}
{extra}
"""
        )
        log = self.workdir / f"{name}.log"
        with open(log, "w") as out:
            proc = self.procs.start([sys.executable, "-m", "sampler", "run", "--config", str(config)], cwd=str(ROOT),
                                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        instance = Instance(proc, grpc_port, http_port, admin_port, log)
        try:
            e2e._wait_ready(instance.admin, proc)
        except RuntimeError:
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}") from None
        self.instances.append(instance)
        return instance

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Poll every instance's /readyz while the load runs: readiness must never drop."""
        import threading

        done = threading.Event()

        def watch() -> None:
            while not done.wait(READY_POLL):
                for inst in self.instances:
                    try:
                        e2e._http_get(f"http://{inst.admin}/readyz", timeout=2.0)
                    except OSError:
                        inst.ready_always = False

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(5)

    def finish(self) -> list[dict[str, Any]]:
        """Scrape, read VmHWM, then stop every instance (SIGTERM: they flush) and report each."""
        out = []
        for inst in self.instances:
            inst.metrics = e2e._http_get(f"http://{inst.admin}/metrics")
            inst.hwm_mb = e2e._proc_status(inst.proc.pid, "VmHWM")
        for inst in self.instances:
            self.procs.stop(inst.proc)
            hwm_after = inst.hwm_mb  # the shutdown's own peak is not part of the case
            text = inst.metrics
            refused = sum(float(line.split()[-1]) for line in text.splitlines()
                          if line.startswith("tailsampler_requests_refused_total{"))
            out.append({
                "peak_rss_mb": round(hwm_after, 1),
                "ready_throughout": inst.ready_always,
                "exit_code": inst.proc.returncode,
                "evicted": e2e._metric(text, "tailsampler_traces_evicted_total"),
                "limited": e2e._metric(text, "tailsampler_traces_limited_total"),
                "refused_requests": refused,
                "spans_received": sum(float(line.split()[-1]) for line in text.splitlines()
                                      if line.startswith("tailsampler_spans_received_total{")),
                "kept_traces": sum(float(line.split()[-1]) for line in text.splitlines()
                                   if line.startswith('tailsampler_traces_decided_total{decision="keep"')),
                "buffer_max_bytes": e2e._metric(text, "tailsampler_buffer_max_bytes"),
                "buffer_bound_bytes": e2e._metric(text, "tailsampler_buffer_bound_bytes"),
                "log_tail": inst.log.read_text()[-1500:] if inst.proc.returncode else "",
            })
        return out


def _load_grpc(run: Run, target: str, seconds: float, inflight: int, rate: float = 0.0,
               seed: int = 1) -> dict[str, Any]:
    return e2e._run_load(run.procs, target, 512, seconds, 0.5, rate, inflight, seed)


def _load_child(run: Run, role: str, seconds: float, *extra: str) -> dict[str, Any]:
    proc = run.procs.start(_cmd(role, "--seconds", str(seconds), *extra), stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=seconds + 120)
    finally:
        run.procs.stop(proc)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {role} load failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


ALWAYS = "[{name: all, type: always_sample}]"
DEFAULT = ("[{name: errors, type: errors}, {name: slow, type: latency, latency: {threshold_ms: 1000}}, "
           "{name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 5}}]")


def run_case(name: str, limit: str, seconds: float, dead_seconds: float = 30.0,
             rate: float = 150_000) -> dict[str, Any]:
    """One stress case in a fresh temporary directory; every process stopped at the end."""
    procs = e2e.Procs()
    with e2e._cleanup_on_signals(procs), tempfile.TemporaryDirectory(prefix=f"tailsampler-{name}-") as tmp:
        run = Run(procs, Path(tmp), limit)
        load: dict[str, Any]
        started = time.monotonic()
        if name == "backend_dead":
            sink_port = e2e.free_port()
            run.sink_port = sink_port  # nothing listens there yet
            inst = run.start("ts", "buffer: {decision_wait: 1s}", ALWAYS)
            with run.watching():
                load = _load_grpc(run, f"{HOST}:{inst.grpc_port}", dead_seconds, 4, rate=20)
                run.start_sink(sink_port)
                after = _load_grpc(run, f"{HOST}:{inst.grpc_port}", seconds, 4, rate=20, seed=2)
            load = {"dead": load, "after": after}
        else:
            run.start_sink()
            if name in ("grpc_overload", "oversized_buffer"):
                oversized = ", max_bytes: 1GiB" if name == "oversized_buffer" else ""
                inst = run.start("ts", f"buffer: {{decision_wait: 30s{oversized}}}", DEFAULT)
                with run.watching():
                    load = _load_grpc(run, f"{HOST}:{inst.grpc_port}", seconds, 16)
            elif name == "http_json":
                inst = run.start("ts", "buffer: {decision_wait: 30s}", DEFAULT)
                with run.watching():
                    load = _load_child(run, "json", seconds, "--target", f"http://{HOST}:{inst.http_port}/v1/traces",
                                       "--inflight", "16")
            elif name == "huge_trace":
                # max_spans_per_trace well below 100k, so the trace reaches it within its first requests,
                # before a buffer filled by the normal traffic would evict it (it is the oldest)
                inst = run.start("ts", "buffer: {decision_wait: 2s, max_spans_per_trace: 5000}", DEFAULT)
                with run.watching():
                    load = _load_child(run, "huge", seconds, "--target", f"{HOST}:{inst.grpc_port}",
                                       "--huge-spans", "100000")
            elif name == "capacity":
                inst = run.start("ts", "", DEFAULT)
                with run.watching():
                    load = _load_grpc(run, f"{HOST}:{inst.grpc_port}", seconds, 64, rate=rate / 512)
            elif name == "sharded_pushback":
                ports = [(e2e.free_port(), e2e.free_port(), e2e.free_port()) for _ in range(3)]
                members = ", ".join(f'"{HOST}:{g}"' for g, _, _ in ports)
                for i, p in enumerate(ports):
                    peers = f'peers: {{self: "{HOST}:{p[0]}", static: [{members}]}}'
                    buffer = ("buffer: {decision_wait: 2s, max_bytes: 4MiB, min_eviction_age: 2s, compress_after: 10m}"
                              if i == 0
                              else "buffer: {decision_wait: 2s}")
                    run.start(f"ts{i}", buffer, DEFAULT, peers, p)
                with run.watching(), ThreadPoolExecutor(3) as pool:  # the three loads at once
                    loads = list(pool.map(lambda ip: _load_grpc(run, f"{HOST}:{ip[1][0]}", seconds, 4, seed=ip[0] + 1),
                                          enumerate(ports)))
                load = {"spans_per_s": sum(x["spans_per_s"] for x in loads), "failed": [x["failed"] for x in loads]}
            else:
                raise ValueError(f"unknown case {name!r}")
        elapsed = time.monotonic() - started
        instances = run.finish()
        sink = run.stop_sink()
    exported = [e2e._metric(inst.metrics, "tailsampler_spans_exported_total") for inst in run.instances]
    return {
        "case": name,
        "limit": limit,
        "seconds": round(elapsed, 1),
        "load": load,
        "instances": instances,
        "sink_spans": sink["spans"],
        "exported_spans": sum(exported),
    }


def sizing(limits: list[str], decision_wait: float = 5.0) -> list[dict[str, Any]]:
    """What a pod of each memory_limit holds: its buffer's share (buffer.max_bytes: auto), the
    measured cost of a buffered span (tailsampler_buffer_bytes / tailsampler_buffer_spans, on the
    bench's traffic, with the last compress_after of it not yet compressed as in a running
    buffer), the spans that fit, and the rate whose traces all fit for `decision_wait`."""
    out = []
    for limit in limits:
        procs = e2e.Procs()
        with e2e._cleanup_on_signals(procs), tempfile.TemporaryDirectory(prefix="tailsampler-sizing-") as tmp:
            run = Run(procs, Path(tmp), limit)
            run.start_sink()
            inst = run.start("ts", "buffer: {decision_wait: 10m, max_trace_age: 20m}", DEFAULT)
            # decision_wait's worth of traffic well under the bound: as many traces still hot (not yet
            # compressed) as in a buffer that decides after decision_wait
            _load_grpc(run, f"{HOST}:{inst.grpc_port}", decision_wait, 4, rate=20)
            text = e2e._http_get(f"http://{inst.admin}/metrics")
            run.finish()
            run.stop_sink()
        max_bytes = e2e._metric(text, "tailsampler_buffer_max_bytes")
        per_span = e2e._metric(text, "tailsampler_buffer_bytes") / e2e._metric(text, "tailsampler_buffer_spans")
        spans = max_bytes / per_span
        out.append({"limit": limit, "buffer_max_bytes": max_bytes, "bytes_per_buffered_span": round(per_span, 1),
                    "spans_held": round(spans), "spans_per_s_at_decision_wait": round(spans / decision_wait)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", default="256MiB",
                        help="memory_limit of every instance; none: no memory_limit key and buffer.max_bytes "
                             "64MiB (what a build before memory_limit can run)")
    parser.add_argument("--case", action="append", choices=CASES + EXTRA_CASES,
                        help="run only these cases (repeatable)")
    parser.add_argument("--rate", type=float, default=150_000, help="capacity: spans/s offered")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration of each case")
    parser.add_argument("--dead-seconds", type=float, default=30.0, help="backend_dead: how long the backend is down")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sizing", action="store_true",
                        help="instead of the cases: what pods of 256MiB, 512MiB and 1GiB hold at 5 s decision_wait")
    parser.add_argument("--role", choices=["sink", "json", "huge"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--huge-spans", type=int, default=100_000, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        _child_main(args)
        return
    if args.sizing:
        rows = sizing(["256MiB", "512MiB", "1GiB"])
        if args.json:
            print(json.dumps(rows))
            return
        print(f"  {'memory_limit':14}{'buffer (auto)':>16}{'bytes/span':>12}{'spans held':>12}{'spans/s at 5s':>15}")
        for r in rows:
            print(f"  {r['limit']:14}{r['buffer_max_bytes'] / 2**20:>12,.0f} MiB{r['bytes_per_buffered_span']:>12}"
                  f"{r['spans_held']:>12,}{r['spans_per_s_at_decision_wait']:>15,}")
        return
    results = [run_case(c, args.limit, args.seconds, args.dead_seconds, args.rate) for c in (args.case or CASES)]
    if args.json:
        print(json.dumps(results))
        return
    print(f"memory under stress, memory_limit {args.limit} per instance")
    print(f"  {'case':18}{'peak RSS MB':>14}{'early decided':>15}{'refused':>10}{'spans/s in':>12}"
          f"{'exported':>11}{'at sink':>10}")
    for r in results:
        peak = max(i["peak_rss_mb"] for i in r["instances"])
        early = sum(i["evicted"] + i["limited"] for i in r["instances"])
        refused = sum(i["refused_requests"] for i in r["instances"])
        rate = sum(i["spans_received"] for i in r["instances"]) / max(r["seconds"], 1e-9)
        print(f"  {r['case']:18}{peak:>14,.1f}{early:>15,.0f}{refused:>10,.0f}{rate:>12,.0f}"
              f"{r['exported_spans']:>11,.0f}{r['sink_spans']:>10,}")


if __name__ == "__main__":
    main()
