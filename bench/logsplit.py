"""Logs split benchmark: realistic OTLP logs requests split into per-trace chunks (the step the
receive path runs per logs request, `sampler.otlp.logs.split_logs`), by the compiled splitter
(`_split.split_logs`) and the interpreted one (`logs._split_logs`), beside the floor measured in the
same run on the same payloads: protobuf's own ExportLogsServiceRequest.FromString (upb).

    .venv/bin/python bench/logsplit.py [--requests N] [--records R] [--repeat K] [--json]

Each request holds R records over 2 resources of 2 scopes each; a record has a body of 80-200
bytes, 3-6 attributes, a severity, timestamps and (80% of them) a trace id and span id, about 5
records per trace. One splitter serves every request of a run, as one engine's does in the server
(its groups are interned after the first request). Figures are records per second, the median of K
runs; the ratios are to the floor (above 1: faster than upb's parse) and compiled to interpreted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sampler.otlp import logs
from sampler.otlp.logs import LogChunk
from sampler.otlp.split import Splitter
from sampler.server.app import tune_gc

_WORDS = ["user", "request", "completed", "failed", "cache", "miss", "order", "id=", "took", "ms", "retry",
          "upstream", "timeout", "status", "ok", "GET", "POST", "/api/v1/orders", "payment", "accepted"]


def _attr(rng: random.Random, key: str) -> KeyValue:
    kind = rng.randrange(4)
    if kind == 0:
        return KeyValue(key=key, value=AnyValue(string_value=rng.choice(_WORDS) + str(rng.randrange(1000))))
    if kind == 1:
        return KeyValue(key=key, value=AnyValue(int_value=rng.randrange(10**6)))
    if kind == 2:
        return KeyValue(key=key, value=AnyValue(bool_value=rng.random() < 0.5))
    return KeyValue(key=key, value=AnyValue(double_value=rng.random() * 100))


def make_requests(n: int, records: int, seed: int = 1) -> tuple[list[bytes], int]:
    """n requests of `records` log records each, with fresh trace ids."""
    rng = random.Random(seed)
    keys = ["http.route", "http.response.status_code", "thread.name", "code.function", "user.id", "db.system",
            "peer.service", "exception.type"]
    out = []
    for _ in range(n):
        req = ExportLogsServiceRequest()
        traces = [rng.randbytes(16) for _ in range(max(1, records // 5))]
        per_scope = records // 4
        for s in range(2):
            rl = req.resource_logs.add()
            rl.resource.attributes.extend([KeyValue(key="service.name", value=AnyValue(string_value=f"svc-{s}")),
                                           KeyValue(key="host.name", value=AnyValue(string_value=f"node-{s}")),
                                           KeyValue(key="k8s.pod.name", value=AnyValue(string_value=f"pod-{s}-x7"))])
            rl.schema_url = "https://opentelemetry.io/schemas/1.26.0"
            for c in range(2):
                sl = rl.scope_logs.add()
                sl.scope.name = f"com.example.module{c}"
                sl.scope.version = "2.1.0"
                for _ in range(per_scope if (s, c) != (1, 1) else records - 3 * per_scope):
                    r = sl.log_records.add()
                    r.time_unix_nano = r.observed_time_unix_nano = 1_700_000_000_000_000_000 + rng.randrange(10**9)
                    r.severity_number = rng.choice([5, 9, 9, 9, 9, 13, 17])  # type: ignore[assignment]
                    r.severity_text = {5: "DEBUG", 9: "INFO", 13: "WARN", 17: "ERROR"}[r.severity_number]
                    body = ""
                    target = rng.randint(80, 200)
                    while len(body) < target:
                        body += rng.choice(_WORDS) + " "
                    r.body.string_value = body[:target]
                    r.attributes.extend(_attr(rng, k) for k in rng.sample(keys, rng.randint(3, 6)))
                    if rng.random() < 0.8:
                        r.trace_id = rng.choice(traces)
                        r.span_id = rng.randbytes(8)
                        r.flags = 1
        out.append(req.SerializeToString())
    return out, n * records


def _splitter() -> Splitter:
    return Splitter(frozenset(), lambda key, value: 0, lambda attrs: 0)


def run_split(split_logs: Callable[[bytes, Splitter], list[LogChunk]], requests: list[bytes]) -> float:
    splitter = _splitter()
    start = time.perf_counter()
    for data in requests:
        split_logs(data, splitter)
    return time.perf_counter() - start


def run_floor(requests: list[bytes]) -> float:
    start = time.perf_counter()
    for data in requests:
        ExportLogsServiceRequest.FromString(data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--records", type=int, default=512, help="log records per request")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    requests, records = make_requests(args.requests, args.records)
    compiled = logs.split_logs if logs.COMPILED else None
    # the same chunks from both, or the comparison means nothing
    if compiled is not None:
        for data in requests[:3]:
            a, b = compiled(data, _splitter()), logs._split_logs(data, _splitter())
            assert [(c.trace_id, c.records, c.severity_max) for c in a] == [
                (c.trace_id, c.records, c.severity_max) for c in b]
    tune_gc()  # as `tailsampler run` does
    floor, interp, comp = [], [], []
    for _ in range(args.repeat):
        floor.append(records / run_floor(requests))
        interp.append(records / run_split(logs._split_logs, requests))
        if compiled is not None:
            comp.append(records / run_split(compiled, requests))
    f = statistics.median(floor)
    i = statistics.median(interp)
    c = statistics.median(comp) if comp else None
    result = {
        "requests": args.requests,
        "records_per_request": args.records,
        "bytes_per_record": round(sum(map(len, requests)) / records, 1),
        "compiled": logs.COMPILED,
        "compiled_records_per_s": None if c is None else round(c),
        "interpreted_records_per_s": round(i),
        "floor_records_per_s": round(f),
        "compiled_ratio": None if c is None else round(c / f, 3),
        "interpreted_ratio": round(i / f, 3),
        "compiled_speedup": None if c is None else round(c / i, 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"logs split: {args.requests} requests x {args.records} records "
          f"({result['bytes_per_record']} bytes a record), median of {args.repeat} runs")
    if c is not None:
        print(f"  compiled (_split.split_logs)   {round(c):>12,} records/s, to floor {result['compiled_ratio']}")
    else:
        print("  compiled                       not built (the interpreted splitter is the one loaded)")
    print(f"  interpreted (logs._split_logs) {round(i):>12,} records/s, to floor {result['interpreted_ratio']}")
    print(f"  floor: upb FromString          {round(f):>12,} records/s")
    if c is not None:
        print(f"  compiled / interpreted         {result['compiled_speedup']:>12}")


if __name__ == "__main__":
    main()
