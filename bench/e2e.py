"""End-to-end benchmark: tailsampler as its own process behind real gRPC, beside the floor.

For each request size (512 and 64 spans by default) it runs, all on 127.0.0.1:

1. the floor: a bare grpc.aio server on uvloop (its own process) whose servicer only lets grpc parse
   each request into `ExportTraceServiceRequest`, loaded at full speed by the load generator;
2. tailsampler (`python -m sampler run --config <tmp>`, its own process) exporting over OTLP/gRPC to
   a sink (another process), loaded by the same generator at full speed, then at half that rate
   while the Export latency of every call is recorded;
3. the floor again at that same half rate, so tailsampler's latency stands beside what a bare gRPC
   server shows on the same machine with the same generator.

The load generator is a separate process that stamps fresh trace ids into pre-built realistic
requests (`sampler.tools.demo.build_template` / `Template.stamp`) and sends them over gRPC with a fixed
number of calls in flight (full speed) or on a fixed schedule (half rate, open loop).

    .venv/bin/python bench/e2e.py [--quick] [--json] [--sizes 512,64] [--phase-seconds 10] [--plot DIR]

Keys per request size (`--json` prints {"compiled_walker": ..., "512": {...}, "64": {...}}):
spans_per_s, floor_spans_per_s, ratio, p50_ms, p99_ms (Export latency at half load), floor_p50_ms and
floor_p99_ms (the floor's at the same rate),
decision_lag_p99_ms (from tailsampler_decision_lag_seconds during the half-load phase, estimated
from the histogram buckets), peak_rss_mb (tailsampler's VmHWM), plus cpu_cores (tailsampler's CPU
use at full speed) and cpu_cores_per_100k_spans_s. `--plot DIR` (needs the `bench` extra,
matplotlib) draws spans/s against request size, and adds a memory ramp (512-span requests at full
speed with nothing decided) to draw tailsampler's RSS against buffered traces.
`--logs` sends, after each traces request, a logs request with RECORDS_PER_SPAN records per span of
the same traces (the floor parses both), and adds records_per_s, floor_records_per_s and
cpu_cores_per_100k_items_s (spans and records together).
Every process started here is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METHOD = f"/{SERVICE}/Export"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
LOGS_METHOD = f"/{LOGS_SERVICE}/Export"
RECORDS_PER_SPAN = 3  # --logs: log records sent per span, with the span's trace and span ids
HOST = "127.0.0.1"  # everything stays on loopback
GRPC_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.max_send_message_length", 64 * 2**20),
]
START_TIMEOUT = 30.0
CALL_TIMEOUT = 10.0
MAX_REQUESTS_PER_SECOND = 50_000  # bound on any generator loop, besides its deadline
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- roles run in child processes ----------------------------------------------------------------


def _uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(kind: str, max_seconds: float) -> None:
    """`floor`: grpc parses each request into ExportTraceServiceRequest (or ExportLogsServiceRequest)
    and nothing more. `sink`: an OTLP backend that accepts raw bytes and counts them (tailsampler's
    exporter target)."""
    import grpc
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    received = [0, 0]  # requests, bytes
    handlers = {}
    if kind == "floor":
        kinds = ((SERVICE, ExportTraceServiceRequest, ExportTraceServiceResponse),
                 (LOGS_SERVICE, ExportLogsServiceRequest, ExportLogsServiceResponse))
        for service, request_type, response_type in kinds:
            empty = response_type()

            async def export_parsed(request: Any, context: Any, empty: Any = empty) -> Any:
                return empty

            handlers[service] = grpc.unary_unary_rpc_method_handler(
                export_parsed, request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString)
    else:
        async def export_raw(request: bytes, context: Any) -> bytes:
            received[0] += 1
            received[1] += len(request)
            return b""

        handlers = {service: grpc.unary_unary_rpc_method_handler(export_raw) for service in (SERVICE, LOGS_SERVICE)}
    server = grpc.aio.server(options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(tuple(grpc.method_handlers_generic_handler(service, {"Export": handler})
                                          for service, handler in handlers.items()))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)  # never outlives the benchmark
    await server.stop(0.5)


def _templates(spans: int, seed: int) -> list[Any]:
    from sampler.tools.demo import build_template

    rng = random.Random(seed)
    return [build_template(rng, spans_per_request=spans) for _ in range(8)]


def json_templates(spans: int, seed: int) -> list[tuple[list[str], list[int], int]]:
    """OTLP/JSON requests split around their trace ids: (parts, which trace each gap is, spans);
    joining the parts with fresh hex ids in the gaps gives a request with new trace ids."""
    from sampler.otlp.jsonconv import protobuf_to_dict

    out = []
    for t in _templates(spans, seed):
        text = json.dumps(protobuf_to_dict(t.data), separators=(",", ":"))
        ids = {bytes(t.data[p[0]:p[0] + 16]).hex(): i for i, p in enumerate(t.offsets)}
        parts: list[str] = []
        order: list[int] = []
        rest = text
        while (at := rest.find('"traceId":"')) >= 0:
            at += len('"traceId":"')
            parts.append(rest[:at])
            order.append(ids[rest[at:at + 32]])
            rest = rest[at + 32:]
        parts.append(rest)
        out.append((parts, order, t.spans))
    return out


def logs_offsets(template: Any, rng: random.Random) -> tuple[bytes, list[list[int]]]:
    """A logs request for a traces template: RECORDS_PER_SPAN records per span (bodies of 80-200
    bytes, 4 attributes, the span's trace and span ids, one in 50 at WARN), and where each of the
    template's traces has its id in it, in the template's trace order."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    order = {bytes(template.data[p[0]:p[0] + 16]): i for i, p in enumerate(template.offsets)}
    spans = ExportTraceServiceRequest.FromString(template.data)
    logs = ExportLogsServiceRequest()
    for rs in spans.resource_spans:
        rl = logs.resource_logs.add()
        rl.resource.CopyFrom(rs.resource)
        sl = rl.scope_logs.add()
        sl.scope.name = "bench.logs"
        for ss in rs.scope_spans:
            for span in ss.spans:
                for k in range(RECORDS_PER_SPAN):
                    record = sl.log_records.add()
                    record.time_unix_nano = span.start_time_unix_nano + k * 1000
                    warn = rng.random() < 0.02
                    record.severity_number = 13 if warn else 9  # type: ignore[assignment]
                    record.severity_text = "WARN" if warn else "INFO"
                    record.body.string_value = f"{span.name}: " + "x" * rng.randint(70, 190)
                    record.attributes.extend(KeyValue(key=f"log.attr{a}", value=AnyValue(string_value=f"v{a}"))
                                             for a in range(4))
                    record.trace_id = span.trace_id
                    record.span_id = span.span_id
    data = logs.SerializeToString()
    offsets: list[list[int]] = [[] for _ in template.offsets]
    for trace_id, index in order.items():
        at = data.find(trace_id)
        while at >= 0:
            offsets[index].append(at)
            at = data.find(trace_id, at + 16)
    return data, offsets


class _Export:
    """One way of sending: OTLP/gRPC protobuf, or OTLP/HTTP JSON; `send` raises _Failed(code).
    "logs": OTLP/gRPC protobuf, each traces request followed by a logs request for the same traces."""

    def __init__(self, protocol: str, target: str, spans: int, seed: int) -> None:
        self.protocol = protocol
        self.target = target
        self.rng = random.Random(seed + 1)
        if protocol == "json":
            self.json = json_templates(spans, seed)
        else:
            self.templates = _templates(spans, seed)
        if protocol == "logs":
            self.logs = [logs_offsets(t, random.Random(seed + 2)) for t in self.templates]

    async def open(self) -> None:
        if self.protocol == "json":
            import aiohttp

            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT))
            return
        import grpc

        self.channel = grpc.aio.insecure_channel(self.target, options=GRPC_OPTIONS)
        await asyncio.wait_for(self.channel.channel_ready(), START_TIMEOUT)
        self.call = self.channel.unary_unary(METHOD)  # raw bytes in and out
        self.logs_call = self.channel.unary_unary(LOGS_METHOD)

    def payload(self, i: int) -> tuple[Any, int]:
        if self.protocol == "json":
            parts, order, count = self.json[i % len(self.json)]
            fresh = [self.rng.randbytes(16).hex() for _ in range(max(order) + 1)]
            body = "".join(p + (fresh[order[k]] if k < len(order) else "") for k, p in enumerate(parts))
            return body.encode(), count
        t = self.templates[i % len(self.templates)]
        if self.protocol == "logs":
            ids = [self.rng.randbytes(16) for _ in t.offsets]
            logs, logs_at = self.logs[i % len(self.logs)]
            return (_stamp(t.data, t.offsets, ids), _stamp(logs, logs_at, ids)), t.spans
        return t.stamp(self.rng), t.spans

    async def send(self, data: Any) -> None:
        if self.protocol == "json":
            import aiohttp

            try:
                async with self.session.post(self.target, data=data,
                                             headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise _Failed(f"HTTP {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _Failed(type(exc).__name__) from None
            return
        import grpc

        try:
            if self.protocol == "logs":
                await self.call(data[0], timeout=CALL_TIMEOUT)
                await self.logs_call(data[1], timeout=CALL_TIMEOUT)
            else:
                await self.call(data, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise _Failed(exc.code().name) from None

    async def close(self) -> None:
        if self.protocol == "json":
            await self.session.close()
        else:
            await self.channel.close()


class _Failed(Exception):
    pass


def _protocol(args: argparse.Namespace) -> str:
    return "logs" if args.logs else "grpc"


def _stamp(data: bytes, offsets: list[list[int]], ids: list[bytes]) -> bytes:
    out = bytearray(data)
    for positions, trace_id in zip(offsets, ids, strict=True):
        for pos in positions:
            out[pos:pos + 16] = trace_id
    return bytes(out)


async def _load(target: str, spans: int, seconds: float, warmup: float, rate: float, inflight: int,
                seed: int, protocol: str = "grpc") -> dict[str, Any]:
    """Send fresh-id requests for `warmup` + `seconds`. rate == 0: `inflight` calls always in
    flight (full speed); rate > 0: one call every 1/rate s (open loop, at most `inflight` pending).
    Counts and latencies cover only the `seconds` after the warm-up. protocol "json": OTLP/JSON
    over HTTP to `target` (a URL) instead of OTLP/gRPC protobuf."""
    exporter = _Export(protocol, target, spans, seed)
    await exporter.open()
    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    deadline = measure_from + seconds
    max_requests = int((warmup + seconds) * MAX_REQUESTS_PER_SECOND)
    ok_spans = 0
    ok_calls = 0
    failed: dict[str, int] = {}
    latencies: list[float] = []
    skipped = 0
    sent = 0
    last_done = measure_from

    async def one(data: Any, n: int) -> None:
        nonlocal ok_spans, ok_calls, last_done
        t0 = time.perf_counter()  # uvloop's loop.time() has millisecond resolution
        try:
            await exporter.send(data)
        except _Failed as exc:
            if t0 >= measure_from:
                failed[str(exc)] = failed.get(str(exc), 0) + 1
            return
        t1 = time.perf_counter()
        if t0 >= measure_from and t1 <= deadline + CALL_TIMEOUT:
            ok_spans += n
            ok_calls += 1
            latencies.append(t1 - t0)
            last_done = max(last_done, t1)

    if rate <= 0:
        async def worker() -> None:
            nonlocal sent
            while clock() < deadline and sent < max_requests:
                sent += 1
                await one(*exporter.payload(sent))

        await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed = max(last_done, deadline) - measure_from
    else:
        pending: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        i = 0
        while sent < max_requests:
            at = start + i * interval
            if at >= deadline:
                break
            i += 1
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= inflight:
                skipped += 1  # the server is not keeping up: count it, do not queue without bound
                continue
            sent += 1
            task = asyncio.create_task(one(*exporter.payload(i)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=CALL_TIMEOUT + 1)
        elapsed = seconds
    await exporter.close()
    latencies.sort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "generator_cpu_s": usage.ru_utime + usage.ru_stime,
        "spans_per_s": ok_spans / elapsed if elapsed > 0 else 0.0,
        "calls_per_s": ok_calls / elapsed if elapsed > 0 else 0.0,
        "ok_calls": ok_calls,
        "failed": failed,
        "skipped": skipped,
        "p50_ms": 1000 * _quantile(latencies, 0.50),
        "p99_ms": 1000 * _quantile(latencies, 0.99),
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _child_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    _uvloop()
    if args.role in ("floor", "sink"):
        asyncio.run(_serve(args.role, args.max_seconds))
        return
    result = asyncio.run(_load(args.target, args.spans, args.seconds, args.warmup, args.rate, args.inflight,
                               args.seed, args.protocol))
    print(json.dumps(result), flush=True)


# --- the orchestrator ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark itself dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """Every child process started by the benchmark; all are stopped on exit, error or signal."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, text=True, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, timeout=10.0)


def _child_cmd(role: str, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra]


def _start_server(procs: Procs, role: str, max_seconds: float) -> tuple[subprocess.Popen[str], int]:
    proc = procs.start(_child_cmd(role, "--max-seconds", str(max_seconds)), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the child prints its port once listening (or exits)
    if not line:
        raise RuntimeError(f"the {role} server did not start")
    return proc, int(json.loads(line)["port"])


def _run_load(procs: Procs, target: str, spans: int, seconds: float, warmup: float, rate: float,
              inflight: int, seed: int, protocol: str = "grpc") -> dict[str, Any]:
    cmd = _child_cmd("load", "--target", target, "--spans", str(spans), "--seconds", str(seconds),
                     "--warmup", str(warmup), "--rate", str(rate), "--inflight", str(inflight), "--seed", str(seed),
                     "--protocol", protocol)
    proc = procs.start(cmd, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=warmup + seconds + START_TIMEOUT + CALL_TIMEOUT + 30)
    finally:
        procs.stop(proc)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"the load generator failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _http_get(url: str, timeout: float = 5.0) -> str:
    with _OPENER.open(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


def _wait_ready(admin: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tailsampler exited during start-up (exit {proc.returncode})")
        with contextlib.suppress(OSError):
            _http_get(f"http://{admin}/readyz", timeout=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError("tailsampler did not become ready")


def _proc_status(pid: int, key: str) -> float:
    """A kB figure from /proc/PID/status (VmRSS, VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return float("nan")


def _lag_buckets(text: str) -> dict[float, float]:
    """Cumulative counts of tailsampler_decision_lag_seconds, by upper bound."""
    out: dict[float, float] = {}
    prefix = 'tailsampler_decision_lag_seconds_bucket{le="'
    for line in text.splitlines():
        if line.startswith(prefix):
            le = line[len(prefix):].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return out


def lag_p99_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """p99 of the lags observed between two scrapes, interpolated linearly inside its bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    want = 0.99 * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= want:
            if bound == float("inf"):
                return 1000 * lower  # beyond the last finite bucket: report its bound
            share = (want - below) / (cum - below) if cum > below else 1.0
            return 1000 * (lower + share * (bound - lower))
        lower, below = bound, cum
    return float("nan")


def _write_config(path: Path, grpc_port: int, admin_port: int, sink_port: int, args: argparse.Namespace,
                  decision_wait: str | None = None, max_bytes: str | None = None, http_port: int | None = None) -> None:
    http = f'{{endpoint: "{HOST}:{http_port}"}}' if http_port else "null"
    path.write_text(
        f"""# written by bench/e2e.py
receivers:
  otlp:
    grpc: {{endpoint: "{HOST}:{grpc_port}"}}
    http: {http}
  max_request_bytes: 64MiB
buffer:
  decision_wait: {decision_wait or args.decision_wait}
  max_trace_age: 30m
  max_traces: 1000000
  max_bytes: {max_bytes or args.max_bytes}
exporter:
  protocol: grpc
  endpoint: "http://{HOST}:{sink_port}"
  compression: {args.compression}
admin: {{endpoint: "{HOST}:{admin_port}"}}
peers: {{self: "{HOST}:{grpc_port}"}}
shutdown_timeout: 5s
log_level: warning
span_metrics: {{enabled: {"false" if args.insight == "off" else "true"}}}
service_graph: {{enabled: {"true" if args.insight == "on" else "false"}}}
"""
    )


def bench_size(procs: Procs, spans: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    phase, warmup = args.phase_seconds, args.warmup
    # servers exit on their own after this, whatever happens here; the floor outlives tailsampler's phases
    life = 8 * (phase + warmup) + 4 * args.settle_seconds + 120
    # 1. the floor
    floor_proc, floor_port = _start_server(procs, "floor", life)
    try:
        fcpu0, ft0 = _cpu_seconds(floor_proc.pid), time.monotonic()
        floor = _run_load(procs, f"{HOST}:{floor_port}", spans, phase, warmup, 0, args.inflight, seed=spans,
                          protocol=_protocol(args))
        floor_cores = (_cpu_seconds(floor_proc.pid) - fcpu0) / (time.monotonic() - ft0)
        measured = _measure_tailsampler(procs, spans, args, workdir)
        # 3. the floor at tailsampler's half rate (it sat idle meanwhile)
        floor_half = _run_load(procs, f"{HOST}:{floor_port}", spans, phase, warmup, measured.pop("half_calls_per_s"),
                               max(64, args.inflight * 8), seed=spans + 2, protocol=_protocol(args))
    finally:
        procs.stop(floor_proc)
    floor_sps = floor["spans_per_s"]
    sps = measured["spans_per_s"]
    if args.logs:  # every span came with RECORDS_PER_SPAN records: CPU per item (span or record)
        measured["records_per_s"] = RECORDS_PER_SPAN * sps
        measured["floor_records_per_s"] = round(RECORDS_PER_SPAN * floor_sps)
        items = (1 + RECORDS_PER_SPAN) * sps
        measured["cpu_cores_per_100k_items_s"] = round(measured["cpu_cores"] / (items / 1e5), 3) if items else None
    return {
        "spans_per_s": sps,
        "floor_spans_per_s": round(floor_sps),
        "ratio": round(sps / floor_sps, 3) if floor_sps else float("nan"),
        **measured,
        "floor_p50_ms": round(floor_half["p50_ms"], 2),
        "floor_p99_ms": round(floor_half["p99_ms"], 2),
        "floor_cpu_cores": round(floor_cores, 2),
    }


def _measure_tailsampler(procs: Procs, spans: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """2. tailsampler behind the same generator, exporting to a sink: full speed, then half rate."""
    phase, warmup = args.phase_seconds, args.warmup
    life = 4 * (phase + warmup) + 4 * args.settle_seconds + 120
    sink_proc, sink_port = _start_server(procs, "sink", life)
    grpc_port, admin_port = free_port(), free_port()
    config = workdir / f"tailsampler-{spans}.yaml"
    _write_config(config, grpc_port, admin_port, sink_port, args)
    log_path = workdir / f"tailsampler-{spans}.log"
    samples: list[tuple[float, float]] = []  # (traces in buffer, RSS MB)
    with open(log_path, "w") as log:
        ts = procs.start([sys.executable, "-m", "sampler", "run", "--config", str(config)], cwd=str(ROOT),
                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    admin = f"{HOST}:{admin_port}"
    target = f"{HOST}:{grpc_port}"
    try:
        _wait_ready(admin, ts)
        cpu0 = _cpu_seconds(ts.pid)
        t0 = time.monotonic()
        full = _run_with_sampling(procs, ts.pid, admin, samples, target, spans, phase, warmup, 0, args.inflight,
                                  seed=spans + 1, protocol=_protocol(args))
        cores = (_cpu_seconds(ts.pid) - cpu0) / (time.monotonic() - t0)
        # let the full-speed backlog be decided before measuring at half rate
        _settle(admin, ts.pid, samples, args.settle_seconds)
        before = _lag_buckets(_http_get(f"http://{admin}/metrics"))
        rate = 0.5 * full["calls_per_s"]
        half = _run_with_sampling(procs, ts.pid, admin, samples, target, spans, phase, warmup, rate,
                                  max(64, args.inflight * 8), seed=spans + 2,  # other trace ids than before
                                  protocol=_protocol(args))
        _settle(admin, ts.pid, samples, args.settle_seconds)
        after = _lag_buckets(_http_get(f"http://{admin}/metrics"))
        peak = _proc_status(ts.pid, "VmHWM")
    except BaseException:
        sys.stderr.write(f"tailsampler log ({log_path}):\n" + log_path.read_text()[-4000:])
        raise
    finally:
        procs.stop(ts)
        procs.stop(sink_proc)
    return {
        "spans_per_s": round(full["spans_per_s"]),
        "half_calls_per_s": rate,
        "p50_ms": round(half["p50_ms"], 2),
        "p99_ms": round(half["p99_ms"], 2),
        "decision_lag_p99_ms": round(lag_p99_ms(before, after), 1),
        "peak_rss_mb": round(peak, 1),
        "cpu_cores": round(cores, 2),
        "cpu_cores_per_100k_spans_s": round(cores / (full["spans_per_s"] / 1e5), 3) if full["spans_per_s"] else None,
        "generator_cpu_cores": round(full["generator_cpu_s"] / (phase + warmup), 2),
        "half_rate_spans_per_s": round(half["spans_per_s"]),
        "refused_calls": {**full["failed"], **{f"half_{k}": v for k, v in half["failed"].items()}},
        "half_rate_skipped": half["skipped"],
        "memory_samples": samples,
    }


def measure_defaults(procs: Procs, args: argparse.Namespace, workdir: Path, rates: list[int]) -> dict[str, Any]:
    """tailsampler at its default config (only the endpoints set: decision_wait 5s, buffer.max_bytes
    256MiB without a memory limit, compression on) at fixed rates, each for `--default-seconds`
    after a warm-up as long as decision_wait: what share of its decisions were early (a trace
    decided before it went quiet, for lack of room), and the highest rate with under 0.1% early
    and the rate actually reached ("spans/s at full decision quality")."""
    out: list[dict[str, Any]] = []
    for rate in rates:
        sink_proc, sink_port = _start_server(procs, "sink", 3 * args.default_seconds + 120)
        grpc_port, admin_port = free_port(), free_port()
        config = workdir / f"tailsampler-defaults-{rate}.yaml"
        config.write_text(f"""# written by bench/e2e.py: the defaults, endpoints aside
receivers: {{otlp: {{grpc: {{endpoint: "{HOST}:{grpc_port}"}}, http: null}}}}
exporter: {{protocol: grpc, endpoint: "http://{HOST}:{sink_port}"}}
admin: {{endpoint: "{HOST}:{admin_port}"}}
""")
        with open(workdir / f"tailsampler-defaults-{rate}.log", "w") as log:
            ts = procs.start([sys.executable, "-m", "sampler", "run", "--config", str(config)], cwd=str(ROOT),
                             stdout=log, stderr=subprocess.STDOUT)
        admin = f"{HOST}:{admin_port}"
        try:
            _wait_ready(admin, ts)
            cpu0, t0 = _cpu_seconds(ts.pid), time.monotonic()
            calls = rate / 512
            load = _run_load(procs, f"{HOST}:{grpc_port}", 512, args.default_seconds, 6.0, calls,
                             max(64, args.inflight * 8), seed=rate)
            cores = (_cpu_seconds(ts.pid) - cpu0) / (time.monotonic() - t0)
            text = _http_get(f"http://{admin}/metrics")
            lag = lag_p99_ms({}, _lag_buckets(text))
            peak = _proc_status(ts.pid, "VmHWM")
        finally:
            procs.stop(ts)
            procs.stop(sink_proc)
        decided = sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("tailsampler_traces_decided_total{"))
        early = _metric(text, "tailsampler_traces_evicted_total") + _metric(text, "tailsampler_traces_limited_total")
        packed_in = _metric(text, "tailsampler_compression_input_bytes_total")
        packed_out = _metric(text, "tailsampler_compression_output_bytes_total")
        row = {
            "offered_spans_per_s": rate,
            "spans_per_s": round(load["spans_per_s"]),
            "early_decision_share": round(early / decided, 5) if decided else float("nan"),
            "decided": decided,
            "refused_calls": load["failed"],
            "skipped_calls": load["skipped"],
            "cpu_cores": round(cores, 2),
            "cpu_cores_per_100k_spans_s": round(cores / (load["spans_per_s"] / 1e5), 3) if load["spans_per_s"]
            else None,
            "compression_ratio": round(packed_in / packed_out, 2) if packed_out else None,
            "decision_lag_p99_ms": round(lag, 1),
            "buffer_bytes_per_span": round(_metric(text, "tailsampler_buffer_bytes")
                                           / max(1.0, _metric(text, "tailsampler_buffer_spans")), 1),
            "peak_rss_mb": round(peak, 1),
        }
        out.append(row)
        sustained = row["spans_per_s"] >= 0.98 * rate and not row["skipped_calls"] and not row["refused_calls"]
        if not sustained or row["early_decision_share"] >= 0.001:
            break
    full = [r["offered_spans_per_s"] for r in out if r["early_decision_share"] < 0.001
            and r["spans_per_s"] >= 0.98 * r["offered_spans_per_s"] and not r["refused_calls"]]
    return {"rates": out, "full_decision_quality_spans_per_s": max(full, default=0)}


def measure_json(procs: Procs, args: argparse.Namespace, workdir: Path, spans: int = 512) -> dict[str, Any]:
    """OTLP/JSON over HTTP through tailsampler: full speed, then half that rate for latency."""
    phase, warmup = args.phase_seconds, args.warmup
    sink_proc, sink_port = _start_server(procs, "sink", 4 * (phase + warmup) + 120)
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    config = workdir / "tailsampler-json.yaml"
    _write_config(config, grpc_port, admin_port, sink_port, args, http_port=http_port)
    with open(workdir / "tailsampler-json.log", "w") as log:
        ts = procs.start([sys.executable, "-m", "sampler", "run", "--config", str(config)], cwd=str(ROOT),
                         stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{http_port}/v1/traces"
    try:
        _wait_ready(f"{HOST}:{admin_port}", ts)
        cpu0, t0 = _cpu_seconds(ts.pid), time.monotonic()
        full = _run_load(procs, url, spans, phase, warmup, 0, args.inflight, seed=7, protocol="json")
        cores = (_cpu_seconds(ts.pid) - cpu0) / (time.monotonic() - t0)
        time.sleep(args.settle_seconds)
        half = _run_load(procs, url, spans, phase, warmup, 0.5 * full["calls_per_s"], max(64, args.inflight * 8),
                         seed=8, protocol="json")
    finally:
        procs.stop(ts)
        procs.stop(sink_proc)
    sps = full["spans_per_s"]
    return {
        "spans_per_s": round(sps),
        "p50_ms": round(half["p50_ms"], 2),
        "p99_ms": round(half["p99_ms"], 2),
        "cpu_cores_per_100k_spans_s": round(cores / (sps / 1e5), 3) if sps else None,
        "refused_calls": {**full["failed"], **{f"half_{k}": v for k, v in half["failed"].items()}},
    }


def memory_ramp(procs: Procs, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Memory against buffered traces: nothing is decided (decision_wait 10m) while 512-span
    requests arrive at full speed for one phase; RSS is sampled as the buffer grows."""
    sink_proc, sink_port = _start_server(procs, "sink", 4 * args.phase_seconds + 120)
    grpc_port, admin_port = free_port(), free_port()
    config = workdir / "tailsampler-ramp.yaml"
    _write_config(config, grpc_port, admin_port, sink_port, args, decision_wait="10m", max_bytes="4GiB")
    samples: list[tuple[float, float]] = []
    with open(workdir / "tailsampler-ramp.log", "w") as log:
        ts = procs.start([sys.executable, "-m", "sampler", "run", "--config", str(config)], cwd=str(ROOT),
                         stdout=log, stderr=subprocess.STDOUT)
    admin = f"{HOST}:{admin_port}"
    try:
        _wait_ready(admin, ts)
        _sample(admin, ts.pid, samples)
        _run_with_sampling(procs, ts.pid, admin, samples, f"{HOST}:{grpc_port}", 512, args.phase_seconds, 0.0, 0,
                           args.inflight, seed=99)
        _sample(admin, ts.pid, samples)
        text = _http_get(f"http://{admin}/metrics")
        spans = _metric(text, "tailsampler_spans_received_total")
        if spans != spans:  # older counter name without the _total suffix
            spans = sum(float(line.split()[-1]) for line in text.splitlines()
                        if line.startswith("tailsampler_spans_received{") or
                        line.startswith("tailsampler_spans_received_total{"))
    finally:
        procs.stop(ts)
        procs.stop(sink_proc)
    pts = [(t, m) for t, m in samples if t == t and m == m]
    slope = float("nan")
    if len(pts) >= 3:
        mt = sum(t for t, _ in pts) / len(pts)
        mm = sum(m for _, m in pts) / len(pts)
        var = sum((t - mt) ** 2 for t, _ in pts)
        if var > 0:
            slope = sum((t - mt) * (m - mm) for t, m in pts) / var
    traces = max((t for t, _ in pts), default=0.0)
    return {
        "samples": pts,
        "max_traces": traces,
        "rss_mb_per_1k_traces": round(1000 * slope, 2),
        "rss_bytes_per_span": round(slope * 2**20 * traces / spans, 1) if spans and spans == spans else None,
    }


def _sample(admin: str, pid: int, samples: list[tuple[float, float]]) -> None:
    with contextlib.suppress(OSError, ValueError):
        text = _http_get(f"http://{admin}/metrics", timeout=2.0)
        samples.append((_metric(text, "tailsampler_traces_in_buffer"), _proc_status(pid, "VmRSS")))


def _settle(admin: str, pid: int, samples: list[tuple[float, float]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _sample(admin, pid, samples)
        time.sleep(0.25)


def _run_with_sampling(procs: Procs, pid: int, admin: str, samples: list[tuple[float, float]], target: str,
                       spans: int, seconds: float, warmup: float, rate: float, inflight: int,
                       seed: int, protocol: str = "grpc") -> dict[str, Any]:
    """The load generator in its own process while this one samples memory and buffered traces."""
    import threading

    done = threading.Event()

    def sampler() -> None:
        while not done.wait(0.5):
            _sample(admin, pid, samples)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        return _run_load(procs, target, spans, seconds, warmup, rate, inflight, seed=seed, protocol=protocol)
    finally:
        done.set()
        thread.join(5)


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    out.mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(k) for k in results if k.isdigit())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [results[str(s)]["spans_per_s"] for s in sizes], "o-", label="tailsampler")
    ax.plot(sizes, [results[str(s)]["floor_spans_per_s"] for s in sizes], "s--", label="floor: grpc.aio + upb parse")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("spans per request")
    ax.set_ylabel("spans/s accepted")
    ax.set_title("Throughput vs request size (one process, loopback gRPC)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    p1 = out / "spans_per_s_vs_request_size.png"
    fig.savefig(p1, dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    ramp = results["memory_ramp"]
    pts = ramp["samples"]
    ax.plot([t for t, _ in pts], [m for _, m in pts], "o-", ms=3,
            label=f"512-span requests, nothing decided ({ramp['rss_mb_per_1k_traces']} MB per 1k traces)")
    ax.set_xlabel("traces in buffer (about 14 spans each)")
    ax.set_ylabel("tailsampler RSS (MB)")
    ax.set_title("Memory vs buffered traces")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    p2 = out / "memory_vs_buffered_traces.png"
    fig.savefig(p2, dpi=120)
    return [p1, p2]


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    sizes = [k for k in results if k.isdigit()]
    if "memory_ramp" in results:
        ramp = results["memory_ramp"]
        print(f"memory ramp: {ramp['max_traces']:,.0f} traces buffered; RSS grows {ramp['rss_mb_per_1k_traces']} MB "
              f"per 1k traces ({ramp['rss_bytes_per_span']} bytes per buffered span)")
    rows = [
        ("tailsampler spans/s (full speed)", "spans_per_s", "{:,}"),
        ("floor spans/s (grpc.aio + upb parse)", "floor_spans_per_s", "{:,}"),
        ("ratio", "ratio", "{}"),
        ("Export p50 ms (half load)", "p50_ms", "{}"),
        ("Export p99 ms (half load)", "p99_ms", "{}"),
        ("floor Export p50 ms (same rate)", "floor_p50_ms", "{}"),
        ("floor Export p99 ms (same rate)", "floor_p99_ms", "{}"),
        ("decision lag p99 ms (half load)", "decision_lag_p99_ms", "{}"),
        ("peak RSS MB", "peak_rss_mb", "{}"),
        ("CPU cores used at full speed", "cpu_cores", "{}"),
        ("CPU cores per 100k spans/s", "cpu_cores_per_100k_spans_s", "{}"),
        ("floor server CPU cores", "floor_cpu_cores", "{}"),
        *([("log records/s (full speed)", "records_per_s", "{:,}"),
           ("floor log records/s", "floor_records_per_s", "{:,}"),
           ("CPU cores per 100k items/s (spans+records)", "cpu_cores_per_100k_items_s", "{}")]
          if args.logs else []),
        ("load generator CPU cores (full speed)", "generator_cpu_cores", "{}"),
    ]
    print(f"e2e: {args.phase_seconds:g} s per phase (+{args.warmup:g} s warm-up), {args.inflight} calls in flight, "
          f"compiled walker: {results['compiled_walker']}")
    print(f"  {'':40}" + "".join(f"{s + '-span requests':>20}" for s in sizes))
    for label, key, fmt in rows:
        print(f"  {label:40}" + "".join(f"{fmt.format(results[s][key]):>20}" for s in sizes))
    for s in sizes:
        if results[s]["refused_calls"] or results[s]["half_rate_skipped"]:
            print(f"  note ({s}): refused calls {results[s]['refused_calls']}, "
                  f"half-rate calls skipped {results[s]['half_rate_skipped']}")


def _compiled_walker() -> bool:
    out = subprocess.run([sys.executable, "-c", "import sampler.otlp.split as s; print(s.COMPILED)"],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    return out.stdout.strip() == "True"


@contextlib.contextmanager
def _cleanup_on_signals(procs: Procs) -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        procs.stop_all()
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        procs.stop_all()
        for sig, h in old.items():
            signal.signal(sig, h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="short phases (3 s) for a smoke run")
    parser.add_argument("--insight", choices=["on", "metrics", "off"], default="on",
                        help="span metrics and service graph (on, the default config), span metrics only, neither")
    parser.add_argument("--sizes", default="512,64", help="spans per request, comma-separated")
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--settle-seconds", type=float, default=3.0, help="pause for decisions between phases")
    parser.add_argument("--inflight", type=int, default=8, help="calls in flight at full speed")
    parser.add_argument("--decision-wait", default="1s", help="tailsampler buffer.decision_wait")
    parser.add_argument("--max-bytes", default="512MiB", help="tailsampler buffer.max_bytes")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "none"], help="exporter compression")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots there (needs matplotlib)")
    # child roles (internal)
    parser.add_argument("--role", choices=["floor", "sink", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--spans", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--protocol", choices=["grpc", "json", "logs"], default="grpc", help=argparse.SUPPRESS)
    parser.add_argument("--logs", action="store_true",
                        help=f"send a logs request ({RECORDS_PER_SPAN} records per span, same traces) after each "
                             "traces request; the floor parses both")
    parser.add_argument("--defaults", metavar="RATES",
                        help="also run the default config at these spans/s rates (comma-separated, rising; stops at "
                             "the first with 0.1%% or more traces decided early, or not sustained)")
    parser.add_argument("--default-seconds", type=float, default=20.0, help="--defaults: seconds per rate")
    parser.add_argument("--otlp-json", action="store_true",
                        help="also measure OTLP/JSON over HTTP (512-span requests): spans/s, latency")
    args = parser.parse_args()
    if args.role:
        _child_main(args)
        return
    if args.quick:
        args.phase_seconds, args.warmup, args.settle_seconds = 3.0, 0.5, 1.5
    if args.plot is not None:  # fail before the run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    procs = Procs()
    results: dict[str, Any] = {"compiled_walker": _compiled_walker()}
    with _cleanup_on_signals(procs), tempfile.TemporaryDirectory(prefix="tailsampler-e2e-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            results[str(size)] = bench_size(procs, size, args, Path(tmp))
        if args.otlp_json:
            results["otlp_json"] = measure_json(procs, args, Path(tmp))
        if args.defaults:
            results["defaults"] = measure_defaults(procs, args, Path(tmp), [int(r) for r in args.defaults.split(",")])
        if args.plot is not None:
            results["memory_ramp"] = memory_ramp(procs, args, Path(tmp))
    if args.plot is not None:
        for path in plot(results, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk not in ("memory_samples", "samples")}
                              if isinstance(v, dict) else v) for k, v in results.items()}))
        return
    print_table(results, args)
    if "defaults" in results:
        d = results["defaults"]
        print(f"  default config: spans/s at full decision quality (< 0.1% decided early): "
              f"{d['full_decision_quality_spans_per_s']:,}")
        for r in d["rates"]:
            print(f"    offered {r['offered_spans_per_s']:>8,}  reached {r['spans_per_s']:>8,}  early "
                  f"{100 * r['early_decision_share']:.3f}%  cores/100k {r['cpu_cores_per_100k_spans_s']}  "
                  f"compression {r['compression_ratio']}x  {r['buffer_bytes_per_span']} B/span  "
                  f"lag p99 {r['decision_lag_p99_ms']} ms  "
                  f"peak RSS {r['peak_rss_mb']} MB")
    if "otlp_json" in results:
        j = results["otlp_json"]
        print(f"  OTLP/JSON over HTTP (512-span requests): {j['spans_per_s']:,} spans/s at full speed, "
              f"p50/p99 {j['p50_ms']}/{j['p99_ms']} ms at half load, {j['cpu_cores_per_100k_spans_s']} cores "
              f"per 100k spans/s")


if __name__ == "__main__":
    main()
