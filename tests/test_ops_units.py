"""Operations behaviour at unit level: per-trace limits, buffer backpressure, stateful policies kept
across reloads, JSON log lines, and a dashboard that only queries metrics we export."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from sampler.config.yamlfile import parse_yaml
from sampler.exporters.queue import ExportQueue
from sampler.insight.live import Insight
from sampler.insight.servicegraph import ServiceGraph
from sampler.insight.spanmetrics import SpanMetrics
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.pushback import Backpressure
from sampler.policy.loader import load_policies
from sampler.policy.rate_limiting import RateLimiting
from sampler.server.app import App, keep_unchanged
from sampler.server.log_setup import JsonFormatter
from sampler.server.metrics import InsightCollector, MemoryCollector, Metrics, SignalsCollector
from sampler.server.settings import load_config
from tests.spans import S, request, tid
from tests.test_exporters import FAST, value

ROOT = Path(__file__).resolve().parent.parent
ALWAYS = "policies: [{name: all, type: always_sample}]"


def core_with(buffer: Buffer, kept: list[KeptTrace] | None = None) -> Core:
    out = kept if kept is not None else []
    return Core(buffer, load_policies(parse_yaml(ALWAYS, "p.yaml")).engine(), DecisionCache(100, 100), out.append)


def test_a_trace_beyond_max_spans_per_trace_is_decided_early_and_the_rest_follows() -> None:
    kept: list[KeptTrace] = []
    core = core_with(Buffer(100, 10**9, 5, 60, max_spans_per_trace=3), kept)
    core.ingest(request([S(1, i) for i in range(2)] + [S(2, 100)]), "grpc", 0.0)
    assert core.stats.limited == 0
    core.ingest(request([S(1, i) for i in range(2, 5)]), "grpc", 1.0)
    assert core.stats.limited == 1 and len(kept) == 1 and len(kept[0].spans) == 5
    core.ingest(request([S(1, 9)]), "grpc", 2.0)  # a straggler follows the decision
    assert core.stats.late_spans["keep"] == 1 and len(core.buffer) == 1  # only trace 2 is still held


def test_a_trace_beyond_max_bytes_per_trace_is_decided_early() -> None:
    core = core_with(Buffer(100, 10**9, 5, 60, max_bytes_per_trace=200))
    core.ingest(request([S(1, i, attrs={"pad": "x" * 50}) for i in range(5)]), "grpc", 0.0)
    assert core.stats.limited == 1 and len(core.buffer) == 0


def test_buffer_pushes_back_instead_of_deciding_young_traces() -> None:
    core = core_with(Buffer(2, 10**9, 5, 60, min_eviction_age=1.0))
    core.ingest(request([S(1, 1), S(2, 2)]), "grpc", 0.0)
    with pytest.raises(Backpressure):
        core.ingest(request([S(3, 3)]), "grpc", 0.5)
    assert len(core.buffer) == 2 and core.stats.spans_received["grpc"] == 2  # nothing changed
    core.ingest(request([S(1, 5)]), "grpc", 0.6)  # spans of a held trace still fit
    core.ingest(request([S(3, 3)]), "grpc", 1.5)  # trace 1 is old enough to be decided early now
    assert core.stats.evicted == 1 and tid(3) in core.buffer.by_first


def test_pushback_looks_at_every_trace_a_request_would_evict_not_only_the_oldest() -> None:
    core = core_with(Buffer(2, 10**9, 5, 60, min_eviction_age=1.0))
    core.ingest(request([S(1, 1)]), "grpc", 0.0)  # old enough to decide early from t=1.0
    core.ingest(request([S(2, 2)]), "grpc", 1.8)  # young until t=2.8
    with pytest.raises(Backpressure):  # two new traces would evict both: trace 2 is too young
        core.ingest(request([S(3, 3), S(4, 4)]), "grpc", 2.0)
    assert len(core.buffer) == 2 and core.stats.evicted == 0
    core.ingest(request([S(3, 3)]), "grpc", 2.0)  # one new trace evicts only the old one
    assert core.stats.evicted == 1 and set(core.buffer.by_first) == {tid(2), tid(3)}


def test_unchanged_stateful_policies_keep_their_state_across_a_reload() -> None:
    text = ("policies: [{name: rl, type: rate_limiting, rate_limiting: {spans_per_second: 5}},"
            " {name: all, type: always_sample}]")
    old = load_policies(parse_yaml(text, "p.yaml")).policies
    bucket = old[0]
    assert isinstance(bucket, RateLimiting)
    bucket.bucket.tokens = 1.0  # spent
    same = keep_unchanged(old, load_policies(parse_yaml(text, "p.yaml")).policies)
    assert same[0] is old[0] and same[1] is old[1]
    changed = keep_unchanged(old, load_policies(parse_yaml(text.replace(": 5}", ": 6}"), "p.yaml")).policies)
    assert changed[0] is not old[0] and changed[1] is old[1]


def test_json_log_lines() -> None:
    record = logging.LogRecord("tailsampler", logging.WARNING, __file__, 1, "pushing back (%s)", ("buffer_full",),
                               None)
    record.reason = "buffer_full"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["message"] == "pushing back (buffer_full)"
    assert line["logger"] == "tailsampler" and line["reason"] == "buffer_full"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "dashboards" / "tailsampler.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"(?:tailsampler|traces)_[a-z_]+", e)}
    core = core_with(Buffer(10, 10**6, 5, 60))
    core.insight = Insight(SpanMetrics(), ServiceGraph())
    core.set_engine(core.engine)  # a splitter that counts into the insight's tally
    core.ingest(request([S(1, 1, kind=2), S(1, 2, 1, kind=3, status=2), S(1, 3, 2, service="b", kind=2),
                         S(2, 5, 4)]), "grpc", 0.0)
    core.sweep(100.0)  # on quiet: the orphan of trace 2 counts
    metrics = Metrics(core)
    metrics.registry.register(MemoryCollector(lambda: ({"buffer": 1}, 2), lambda: 0, 3))
    metrics.registry.register(InsightCollector(core.insight))

    async def names_with_queue() -> set[str]:
        queue = ExportQueue(_Collect(), metrics, 10**6, 10, FAST)  # type: ignore[arg-type]
        metrics.registry.register(SignalsCollector(core, queue, dict))
        try:
            return {s.name for family in metrics.registry.collect() for s in family.samples}
        finally:
            await queue.close()

    names = asyncio.run(names_with_queue())
    assert used and used <= names, used - names
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("ingest", "policy", "buffer", "early", "late", "export", "lag", "reload", "memory", "pressure",
                  "log records", "metric points", "rate", "errors", "p95", "service graph", "orphan"):
        assert topic in titles


def test_decision_lag_histogram_counts_how_late_the_sweep_decided() -> None:
    core = core_with(Buffer(100, 10**6, 5, 60))
    core.ingest(request([S(1, 1)]), "grpc", 0.0)
    core.ingest(request([S(2, 1)]), "grpc", 1.0)
    core.ingest(request([S(3, 1)]), "grpc", 2.0)
    core.sweep(6.003)  # due at 5, 6, 7: lags 1.003 and 0.003; the third is not due yet
    core.sweep(8.0)  # lag 1.0: on a bucket bound, counted in it (le)
    core.ingest(request([S(4, 1)]), "grpc", 9.0)
    core.decide_all(9.5)  # shutdown decisions are not late: not counted
    samples = {(s.name, s.labels.get("le")): s.value for f in Metrics(core).registry.collect() for s in f.samples
               if s.name.startswith("tailsampler_decision_lag_seconds")}
    bucket = "tailsampler_decision_lag_seconds_bucket"
    assert samples[bucket, "0.005"] == 1
    assert samples[bucket, "0.5"] == 1
    assert samples[bucket, "1.0"] == 2
    assert samples[bucket, "2.5"] == samples[bucket, "+Inf"] == 3
    assert samples["tailsampler_decision_lag_seconds_count", None] == 3
    assert samples["tailsampler_decision_lag_seconds_sum", None] == pytest.approx(2.006)


class _Collect:
    """An exporter that keeps what it is given."""

    def __init__(self) -> None:
        self.traces: list[bytes] = []

    async def send(self, batch: list[KeptTrace]) -> int:
        self.traces.extend(t.trace_id for t in batch)
        return 0

    async def close(self) -> None:
        pass


def test_a_failing_sweeper_is_logged_counted_and_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "tailsampler.yaml"
    config.write_text("""
receivers: {otlp: {grpc: {endpoint: "127.0.0.1:0"}, http: null}}
buffer: {decision_wait: 50ms, sweep_interval: 20ms}
admin: {endpoint: null}
policies: [{name: all, type: always_sample}]
""")
    sender = _Collect()

    async def wait_for(condition: Callable[[], bool]) -> None:
        for _ in range(500):  # at most 5 s
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached within 5 s")

    async def main() -> None:
        app = App(load_config(config), sender=sender)
        await app.start()
        failures = 0

        def fail_once(summary: object, verdict: object, reason: str) -> None:
            nonlocal failures
            failures += 1
            if failures == 1:
                raise RuntimeError("a bug in the decision path")

        app.core.on_decision = fail_once
        try:
            app._ingest(request([S(1, 1)]), "grpc", "traces")
            await wait_for(lambda: value(app.metrics, "tailsampler_background_task_failures_total",
                                         task="sweeper") == 1)
            app._ingest(request([S(2, 1)]), "grpc", "traces")  # decided by the restarted sweeper
            await wait_for(lambda: tid(2) in sender.traces)
        finally:
            await app.shutdown()

    with caplog.at_level(logging.ERROR, logger="tailsampler"):
        asyncio.run(main())
    failed = [r for r in caplog.records if "background task sweeper failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert "a bug in the decision path" in str(failed[0].exc_info[1])
