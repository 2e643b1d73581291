"""Wiring and lifecycle: start the receivers, admin server, sweeper and policy watcher around one
Core; reload policies when their file changes; drain everything on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sampler.config.models import split_host_port
from sampler.config.yamlfile import ConfigError, load_yaml
from sampler.exporters import build_sender
from sampler.exporters.base import RawRequest, Sender
from sampler.exporters.queue import ExportQueue
from sampler.insight.live import Insight
from sampler.insight.recent import RecentDecisions
from sampler.insight.servicegraph import ServiceGraph
from sampler.insight.spanmetrics import SpanMetrics
from sampler.otlp.metrics import count_points
from sampler.otlp.transport import LOGS, METRICS
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core, KeptTrace, PackJob, pack_jobs
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.frames import Compression, Frame, train
from sampler.pipeline.memory import (
    COMPRESSION_BOUND,
    MIN_BUFFER,
    NO_LIMIT_BUFFER,
    RECENT_SHARE,
    Governor,
    InFlight,
    Plan,
    bounds,
    effective_limit,
    recent_capacity,
)
from sampler.pipeline.pushback import Backpressure
from sampler.policy.base import Policy
from sampler.policy.engine import Verdict
from sampler.policy.loader import load_policies
from sampler.policy.summary import TraceSummary
from sampler.receivers.grpc import GrpcReceiver
from sampler.receivers.http import HttpReceiver
from sampler.security.auth import Authenticator
from sampler.security.tls import Files, grpc_channel_credentials, reload_server_context, server_context
from sampler.server.admin import AdminServer
from sampler.server.debug import Debug
from sampler.server.metrics import InsightCollector, MemoryCollector, Metrics, PeerCollector, SignalsCollector
from sampler.server.settings import Loaded
from sampler.server.system import container_limit, malloc_trim, read_rss, tune_malloc
from sampler.sharding.discovery import resolve_names, watch_dns
from sampler.sharding.forwarder import Forwardable, Forwarder
from sampler.sharding.membership import Membership

log = logging.getLogger("tailsampler")
RELOAD_POLL_SECONDS = 1.0
TASK_RESTART_SECONDS = 1.0
PEER_NAMES_SECONDS = 30.0  # how often static members given by name are resolved again
SWEEP_CHUNK = 256  # traces decided between two chances for the receivers to run
PACK_BATCH = 256  # quiet traces packed and compressed per job on the compression thread
RESUMMARY_CHUNK = 2048  # spans re-split after a policy reload between two such chances...
# ...and the pause between two such steps. A real pause, not one bare loop turn: an Export call needs
# several turns, and gRPC's poller thread the GIL in between, so with bare turns calls crawled while
# the buffer was re-summarised (bench/reload.py; docs/performance.md).
RESUMMARY_PAUSE = 0.001
GC_THRESHOLDS = (50_000, 20, 20)  # a full collection every ~20M allocations


class StartupError(Exception):
    """The configuration is valid but something it names cannot be used (a missing certificate...)."""


def keep_unchanged(old: list[Policy], new: list[Policy]) -> list[Policy]:
    """The new policy list, reusing each old policy object whose name and definition are unchanged,
    so that stateful policies (rate limits, composite budgets) keep their state across a reload."""
    previous = {p.name: p for p in old}
    out = []
    for p in new:
        o = previous.get(p.name)
        out.append(o if o is not None and o.spec == p.spec else p)
    return out


@dataclass(frozen=True)
class Worker:
    """This process's place among `run --workers N` siblings on one host: they share the receiver
    ports and shard traces between them through their own loopback peer ports."""

    index: int
    peers: tuple[str, ...]
    group_problem: Callable[[], str | None] | None = None  # the supervisor's view (workers.GroupStatus)


def tune_gc() -> None:
    """The buffer's own objects are hidden from the cycle collector (sampler/pipeline/untrack.py); what it
    still sees is per-request garbage (grpc.aio leaves a few cycles per call) and whatever else lives
    long. Collect the young generation rarely, the old one rarer: each collection stalls requests."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])


class App:
    def __init__(self, loaded: Loaded, sender: Sender | None = None, worker: Worker | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self._sender = sender
        self.worker = worker
        self.ready = False
        self.ports: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._pushing_back: str | None = None  # the reason while receivers refuse, for one log line each way
        # At shutdown, kept traces the export queue has no room for yet wait here (in order) for it.
        self._held: deque[KeptTrace] | None = None

    def _log_decision(self, summary: TraceSummary, verdict: Verdict, reason: str) -> None:
        log.debug("decided trace %s: %s by %s (%s, %d spans)", summary.trace_id.hex(),
                  "keep" if verdict.keep else "drop", verdict.policy, reason, summary.spans)

    async def start(self) -> None:
        cfg = self.config
        tune_gc()
        tune_malloc()
        self.loop = asyncio.get_running_loop()
        buf = cfg.buffer
        self.limit = effective_limit(cfg, container_limit())
        if self.limit is not None and self.worker is not None:  # --workers N share one container
            self.limit //= len(self.worker.peers)
        decisions = DecisionCache(buf.decision_cache_kept, buf.decision_cache_dropped)
        self.bounds = bounds(cfg, self.limit, decisions.nbytes, cfg.peers.enabled or self.worker is not None)
        auto_buffer = not isinstance(buf.max_bytes, int)
        max_bytes = buf.max_bytes if isinstance(buf.max_bytes, int) else NO_LIMIT_BUFFER
        if auto_buffer and self.limit is not None:
            max_bytes = MIN_BUFFER  # until the plan below sizes it
        self.core = Core(
            Buffer(buf.max_traces, max_bytes, buf.decision_wait, buf.max_trace_age,
                   buf.max_spans_per_trace, buf.max_bytes_per_trace, buf.min_eviction_age, buf.compress_after),
            self.loaded.policies.engine(),
            decisions,
            self._emit,
            on_decision=self._log_decision if log.isEnabledFor(logging.DEBUG) else None,
            compression=Compression(enabled=buf.compression == "zstd"),
            insight=self._insight(),
        )
        recent = recent_capacity(cfg, self.limit)
        if recent:
            if recent < cfg.debug.recent_decisions:
                log.info("debug.recent_decisions: %d, not %d: the ring takes at most %.0f%% of memory_limit",
                         recent, cfg.debug.recent_decisions, 100 * RECENT_SHARE)
            self.core.recent = RecentDecisions(recent)
            self.core.recent.epoch = time.time() - self.loop.time()
        self._compressor = ThreadPoolExecutor(1, thread_name_prefix="compress")
        self._packing = False
        self.metrics = Metrics(self.core)
        if self.core.insight is not None:
            self.metrics.registry.register(InsightCollector(self.core.insight))
        sender = self._sender or build_sender(cfg.exporter)
        self.queue = ExportQueue(sender, self.metrics, self.bounds["export_queue"] or 0,
                                 cfg.exporter.batch_max_spans, cfg.exporter.retry,
                                 batch_max_bytes=cfg.exporter.batch_max_bytes, annotate=cfg.exporter.annotate)
        queue = self.queue
        self.metrics.export_queue_bytes.set_function(lambda: queue.nbytes)
        self.core.untraced_pass = cfg.logs.untraced == "pass"
        self.core.dry_run = cfg.dry_run
        if cfg.dry_run:
            log.warning("dry_run: every trace is forwarded, its decision in tailsampling.decision; nothing is dropped")
        self.points_received: dict[str, int] = {}
        self.metrics.registry.register(SignalsCollector(self.core, queue, lambda: self.points_received))
        self.inflight = InFlight(self.bounds["requests"])
        self.core.pushback.inflight = self.inflight
        self.core.pushback.export_fill = self._export_fill
        self.baseline = read_rss()
        self.governor: Governor | None = None
        self._trimming = False
        self.pressure = 0
        self._pressure_seen = 0  # the highest pressure acted on since the last sweep
        self._evicted_seen = 0
        self._secure()
        self._start_peers()
        if self.limit is not None:
            self._plan(auto_buffer)  # before the receivers open: a plan that cannot work stops the start
        self.receivers: list[GrpcReceiver | HttpReceiver] = []
        otlp = cfg.receivers.otlp
        limit = cfg.receivers.max_request_bytes
        shared = self.worker is not None
        trusted = self.membership.trusts if self.forwarder is not None else None
        if otlp.grpc is not None:
            host, port = split_host_port(otlp.grpc.endpoint)
            grpc_rx = GrpcReceiver(host, port, self._ingest, limit, self._refused("grpc"), reuse_port=shared,
                                   tls=otlp.grpc.tls, auth=self.auth, trusted=trusted)
            self.ports["grpc"] = await grpc_rx.start()
            self.receivers.append(grpc_rx)
        if otlp.http is not None:
            host, port = split_host_port(otlp.http.endpoint)
            http_rx = HttpReceiver(host, port, self._ingest, limit, self._refused("http"), reuse_port=shared,
                                   tls=self.http_tls, auth=self.auth, admit=self._admit, release=self.inflight.release)
            self.ports["http"] = await http_rx.start()
            self.receivers.append(http_rx)
        if self.worker is not None:
            host, port = split_host_port(self.worker.peers[self.worker.index])
            peer_rx = GrpcReceiver(host, port, self._ingest, limit, self._refused("peer"), auth=self.auth,
                                   trusted=trusted)
            self.ports["peer"] = await peer_rx.start()
            self.receivers.append(peer_rx)
        if self.governor is not None and auto_buffer:
            self._plan(auto_buffer, final=True)  # again, with what the servers themselves took
        self.metrics.registry.register(MemoryCollector(self.memory_report, lambda: self.pressure,
                                                       self.limit or 0))
        self.admin: AdminServer | None = None
        if cfg.admin.endpoint is not None:
            host, port = split_host_port(cfg.admin.endpoint)
            if self.worker is not None and self.worker.index > 0 and port:
                port += self.worker.index  # each worker's metrics on its own port: admin port + index
            graph = self.core.insight.graph if self.core.insight is not None else None
            debug = Debug(lambda: self.core, self.auth, cfg.receivers.max_request_bytes)
            self.admin = AdminServer(host, port, self.metrics.registry, lambda: self.ready,
                                     self.worker.group_problem if self.worker is not None else None,
                                     graph=graph.to_json if graph is not None else None, debug=debug)
            self.ports["admin"] = await self.admin.start()
        self._spawn("sweeper", self._sweeper)
        if self.loaded.policies_path is not None:
            self._spawn("policy-watch", functools.partial(self._watch, self.loaded.policies_path))
        self.ready = True
        log.info("tailsampler ready: %d policies, exporter %s", len(self.core.engine.policies), cfg.exporter.protocol)

    def _insight(self) -> Insight | None:
        """Span metrics and the service graph, as configured (None when both are off)."""
        cfg = self.config
        spans = cfg.span_metrics
        metrics = SpanMetrics(spans.dimensions, spans.max_series) if spans.enabled else None
        graph = ServiceGraph() if cfg.service_graph.enabled else None
        if metrics is None and graph is None:
            return None
        return Insight(metrics, graph)

    def _plan(self, auto_buffer: bool, final: bool = False) -> None:
        """Share memory_limit out (sampler/pipeline/memory.py): the process as it stands now, every
        component's bound, and what is left for the buffer when its max_bytes is auto. The first
        plan, before the receivers open, stops a start that cannot work; the final one only refines."""
        assert self.limit is not None
        plan = Plan(self.limit, read_rss(), self.bounds)
        buffer = self.core.buffer
        if auto_buffer:
            try:
                plan.check()
            except ValueError as exc:
                if not final:
                    raise StartupError(str(exc)) from None
            buffer.max_bytes = buffer.bound = max(MIN_BUFFER, plan.buffer)
        elif plan.buffer < buffer.max_bytes:
            log.warning("buffer.max_bytes (%d) is more than memory_limit leaves it (%d): it may grow past that "
                        "only as far as the resident memory leaves room", buffer.max_bytes, max(0, plan.buffer))
            buffer.bound = max(MIN_BUFFER, plan.buffer)  # the governor raises it as it measures room
        self.baseline = plan.baseline
        self.governor = Governor(self.limit, buffer.max_bytes)
        self.core.pushback.governor = self.governor
        self.governor.bound = buffer.bound

    def memory_report(self) -> tuple[dict[str, int], int]:
        """What each component holds now, in bytes, and the resident memory: `baseline` is the
        process as it started, `other` what the resident memory holds beyond everything counted."""
        core = self.core
        report = {
            "buffer": core.buffer.nbytes + core.compression.nbytes,
            "decision_cache": core.decisions.nbytes,
            "recent_decisions": core.recent.nbytes if core.recent is not None else 0,
            "export_queue": self.queue.nbytes,
            "forward_queues": self.forwarder.nbytes if self.forwarder is not None else 0,
            "requests": self.inflight.nbytes,
            "splitter": core.splitter.nbytes,
            "insight": core.insight.nbytes if core.insight is not None else 0,
            "baseline": self.baseline,
        }
        rss = read_rss()
        report["other"] = max(0, rss - sum(report.values()))
        return report, rss

    def _secure(self) -> None:
        """Bearer tokens and receiver TLS; bad files stop the start with a clear StartupError."""
        cfg = self.config.receivers
        try:
            self.auth = Authenticator(cfg.auth) if cfg.auth is not None else None
            http = cfg.otlp.http
            self.http_tls = server_context(http.tls) if http is not None and http.tls is not None else None
            grpc_tls = cfg.otlp.grpc.tls if cfg.otlp.grpc is not None else None
            if grpc_tls is not None:
                server_context(grpc_tls)  # fail now, not at the first handshake
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise StartupError(f"receivers: {exc}") from None
        self.http_tls_files = Files(http.tls.cert_file, http.tls.key_file, http.tls.client_ca_file) \
            if self.http_tls is not None and http is not None and http.tls is not None else None
        if self.auth is not None or self.http_tls_files is not None:
            self._spawn("secrets", self._refresh_secrets)

    def _spawn(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._tasks.append(asyncio.create_task(self._supervised(name, body), name=name))

    async def _supervised(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background loop for the life of the process. A task that dies leaves no trace by
        itself (its exception waits, unlogged, for a reader that never comes) and a dead sweeper
        would stop every decision; so an unexpected error is logged with its traceback, counted,
        and the loop started again after a pause."""
        while True:
            try:
                await body()
                return
            except Exception:
                log.exception("background task %s failed; restarting it in %.0fs", name, TASK_RESTART_SECONDS)
                self.metrics.task_failures.labels(name).inc()
                await asyncio.sleep(TASK_RESTART_SECONDS)

    async def _refresh_secrets(self) -> None:
        """Token files and the HTTP receiver's certificate are re-read when they change (the gRPC
        receiver re-reads its own at the next handshake)."""
        http = self.config.receivers.otlp.http
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            if self.auth is not None:
                self.auth.refresh()
            if self.http_tls is not None and self.http_tls_files is not None and self.http_tls_files.changed():
                assert http is not None and http.tls is not None
                try:
                    reload_server_context(self.http_tls, http.tls)
                    log.info("OTLP/HTTP receiver certificate reloaded")
                except (OSError, ssl.SSLError) as exc:
                    log.error("OTLP/HTTP receiver certificate not reloaded, keeping the previous one: %s", exc)

    def _start_peers(self) -> None:
        """Shard traces with the configured peers (or the sibling workers), if there are any."""
        peers = self.config.peers
        self.forwarder: Forwarder | None = None
        if self.worker is not None:
            membership = Membership(self.worker.peers[self.worker.index], self.worker.peers)
        elif peers.enabled:
            membership = Membership(peers.self_, peers.static, peers.trusted_networks)
        else:
            return
        self.membership = membership
        self.forwarder = Forwarder(
            membership, self._keep_here, max_bytes=self.bounds["forward_queues"] or 0,
            max_elapsed=peers.forward_max_elapsed, down_cooldown=peers.down_cooldown,
            credentials=grpc_channel_credentials(peers.tls) if peers.tls is not None else None,
            authorization=self.auth.header if self.auth is not None else None,
            busy_max_elapsed=peers.forward_busy_max_elapsed,
            batch_max_bytes=min(peers.forward_batch_max_bytes, self.config.receivers.max_request_bytes),
        )
        self.core.route = membership.route
        self.core.pushback.forward_room = self.forwarder.room
        self.core.forward = self.forwarder.forward
        self.metrics.registry.register(PeerCollector(membership, self.forwarder))
        if peers.dns is not None and self.worker is None:
            dns = peers.dns
            self._spawn("peer-dns", functools.partial(watch_dns, membership, dns.name, dns.port, dns.interval))
        if membership.host_names:  # static members given by name: trust their forwards by address
            self._spawn("peer-names", functools.partial(resolve_names, membership, PEER_NAMES_SECONDS))
        log.info("sharding traces among %d members (self %s)", len(membership.members), membership.self_addr)

    def _keep_here(self, chunks: list[Forwardable]) -> None:
        self.core.keep_here(chunks, self.loop.time())

    def _refused(self, protocol: str) -> Callable[[str], None]:
        return functools.partial(self._count_refused, protocol)

    def _count_refused(self, protocol: str, reason: str) -> None:
        self.metrics.requests_refused.labels(protocol, reason).inc()

    def _ingest(self, data: bytes, protocol: str, signal: str) -> int:
        """A request of any signal from a receiver: traces and logs to the core, metrics passed
        through to the export queue (as they came, under the same pushback rules)."""
        try:
            if signal == LOGS:
                return self.core.ingest_logs(data, protocol, self.loop.time())
            if signal == METRICS:
                return self._pass_metrics(data, protocol)
            return self.core.ingest(data, protocol, self.loop.time())
        except Backpressure as exc:
            self._pushed_back(exc.reason)
            raise

    def _pass_metrics(self, data: bytes, protocol: str) -> int:
        self.core.pushback.check()
        points = count_points(data)
        self.points_received[protocol] = self.points_received.get(protocol, 0) + points
        self.queue.put_raw(RawRequest(METRICS, data, points))
        return points

    def _export_fill(self) -> float:
        return self.queue.nbytes / self.queue.max_bytes if self.queue.max_bytes else 0.0

    def _pushed_back(self, reason: str) -> None:
        """A request was refused for lack of room: logged when pushback starts (the sweep logs its
        end), and raised to the pressure the next sweep reports."""
        self._pressure_seen = 2
        if self._pushing_back is None:
            log.warning("pushing back on senders (%s): answering with retryable errors", reason)
        self._pushing_back = reason

    def _admit(self, cost: int) -> str | None:
        """Room for a request body costing `cost` bytes to receive and decode (HTTP, before reading
        it): None, or the reason for refusing it (release the cost afterwards when admitted)."""
        reason = self.core.pushback.admit(cost)
        if reason == "memory":
            self._pushed_back(reason)
        return reason

    def _emit(self, trace: KeptTrace) -> None:
        held = self._held
        if held is not None and (held or not self.queue.fits(trace.cost)):
            held.append(trace)
            return
        self.queue.put(trace)

    async def _sweeper(self) -> None:
        interval = self.config.buffer.sweep_interval
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            # Decide in chunks, letting receivers run in between: a large batch of due traces must
            # not hold the event loop (and every Export call waiting on it) for its whole duration.
            while self.core.sweep(now, SWEEP_CHUNK) == SWEEP_CHUNK:
                await asyncio.sleep(0)
            # After a policy reload, buffered traces are re-summarised the same way, a step at a time.
            while self.core.resummarise(RESUMMARY_CHUNK):
                await asyncio.sleep(RESUMMARY_PAUSE)
            # Quiet traces are packed and compressed on a thread of their own, a batch at a time.
            self._pack_next()
            self._train(now)
            self._govern(now)
            if self.forwarder is not None:
                self.membership.revive()

    def _pack_next(self) -> None:
        """Hand the next batch of quiet traces' spans to the compression thread, if it is idle. The
        rest stay hot (and counted so) until it is: spans handed over stay alive until their batch
        is done, even if their trace is decided meanwhile, so only one batch is ever handed over."""
        if self._packing:
            return
        now = self.loop.time()
        self.core._now = now
        batch = self.core.detach_quiet(now, PACK_BATCH)
        if not batch:
            return
        self._packing = True
        codec = self.core.compression.codec
        future = self.loop.run_in_executor(self._compressor, pack_jobs, codec, batch)
        future.add_done_callback(functools.partial(self._packed, batch))

    def _packed(self, batch: list[PackJob], future: asyncio.Future[tuple[list[Frame], list[bytes]]]) -> None:
        self._packing = False
        if future.cancelled():
            return
        try:
            frames, raw = future.result()
            self.core.packed(batch, frames, raw)
        except Exception:  # a bug: the spans stay pending (held and exported as they are); count it
            log.exception("packing %d traces failed; their spans stay as they are", len(batch))
            self.metrics.task_failures.labels("compress").inc()
        self._pack_next()

    def _train(self, now: float) -> None:
        """Train a compression dictionary on sampled frames when it is time (off the loop), and not
        while memory is short: training takes working memory of its own (COMPRESSION_BOUND)."""
        if self.governor is not None and self.governor.rss + COMPRESSION_BOUND >= self.governor.soft:
            return
        samples = self.core.compression.due(now)
        if samples is None:
            return
        compression = self.core.compression
        future = self.loop.run_in_executor(None, train, samples)

        def done(f: asyncio.Future[Any]) -> None:
            dictionary = None if f.cancelled() or f.exception() is not None else f.result()
            compression.trained(dictionary, self.loop.time())

        future.add_done_callback(done)

    def _hold_limit(self, now: float) -> None:
        """Read the resident memory and act on it (sampler/pipeline/memory.py): lower or raise the buffer's
        bound, decide what no longer fits, and hand freed memory back to the system."""
        governor = self.governor
        assert governor is not None
        report, rss = self.memory_report()
        buffer = self.core.buffer
        trim = governor.update(rss, buffer.nbytes, report["other"], now, self._trimming)
        buffer.bound = governor.bound
        self.core.make_room(now)
        if trim:
            self._trimming = True  # off the loop: trimming a large heap takes tens of milliseconds
            self.loop.run_in_executor(None, malloc_trim).add_done_callback(self._trimmed)
        self._pressure_seen = max(self._pressure_seen, governor.pressure)

    def _govern(self, now: float) -> None:
        """Hold the resident memory under memory_limit, and report the pressure acted on since the
        last sweep: 2 if any request was refused for lack of room, 1 if traces were decided early by
        a bound on bytes, else 0."""
        if self.governor is not None:
            self._hold_limit(now)
        if self.core.stats.evicted > self._evicted_seen:
            self._pressure_seen = max(self._pressure_seen, 1)
        self._evicted_seen = self.core.stats.evicted
        self.pressure, self._pressure_seen = self._pressure_seen, 0
        if self.pressure < 2 and self._pushing_back is not None:
            log.info("accepting spans again after pushing back (%s)", self._pushing_back)
            self._pushing_back = None

    def _trimmed(self, future: asyncio.Future[bool]) -> None:
        self._trimming = False

    async def _watch(self, path: Path) -> None:
        files = Files(str(path))  # stat follows the kubelet's `..data` symlink anew each time
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            if files.changed() and path.exists():
                self.reload(path)

    def reload(self, path: Path) -> bool:
        """Swap in the policies at `path`; a broken file keeps the last good policies."""
        try:
            policy_set = load_policies(load_yaml(path))
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("policy reload failed, keeping the last good policies: %s", problem)
            self.metrics.policy_reloads.labels("failure").inc()
            return False
        kept = keep_unchanged(self.core.engine.policies, policy_set.policies)
        policy_set.policies = kept
        self.core.set_engine(policy_set.engine())
        self.metrics.policy_reloads.labels("success").inc()
        log.info("policies reloaded from %s: %d policies", path, len(policy_set.policies))
        return True

    async def shutdown(self) -> None:
        """Stop accepting, decide every buffered trace and flush the export queue, all within
        shutdown_timeout; log what was exported and, with numbers, anything that could not be."""
        self.ready = False
        timeout = self.config.shutdown_timeout
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for rx in self.receivers:
            if isinstance(rx, GrpcReceiver):
                await rx.stop(grace=1.0)
            else:
                await rx.stop()
        if self.forwarder is not None:  # what is still on its way to an owner comes back here if it must
            await self.forwarder.flush(min(timeout, 10.0))
            await self.forwarder.close()  # waits for calls in flight (the forward timeout), keeps the rest here
        queue = self.queue
        started = self.loop.time()
        deadline = started + timeout
        exported, dropped = queue.exported, queue.dropped.copy()
        log.info("shutdown: deciding %d buffered traces and exporting the kept ones (up to %.0fs)",
                 len(self.core.buffer), timeout)
        decided = await self._drain(deadline)
        if not await queue.flush(max(0.0, deadline - self.loop.time())):
            log.warning("shutdown: exports not done within shutdown_timeout (%.0fs)", timeout)
        await queue.close()
        self._compressor.shutdown(wait=False, cancel_futures=True)
        log.info("shutdown: decided %d buffered traces, exported %d spans in %.1fs", decided,
                 queue.exported - exported, self.loop.time() - started)
        lost = queue.dropped - dropped
        if lost:
            log.warning("shutdown: %d spans of kept traces could not be exported (%s)", lost.total(),
                        ", ".join(f"{reason}: {n}" for reason, n in sorted(lost.items())))
        if self.admin is not None:
            await self.admin.stop()

    async def _drain(self, deadline: float) -> int:
        """Decide every buffered trace, a step at a time, feeding the export queue as it drains: a
        kept trace the queue has no room for waits (and deciding with it) until there is room, so
        more kept data than the queue holds is still all sent. At the deadline whatever is left is
        decided at once and what is kept but not queued is counted as not sent. Returns the traces
        decided."""
        core, queue = self.core, self.queue
        held: deque[KeptTrace] = deque()
        self._held = held
        decided = 0
        try:
            while held or len(core.buffer) > 0:
                while held:
                    if not queue.fits(held[0].cost) and not await queue.room(held[0].cost,
                                                                             deadline - self.loop.time()):
                        break  # no room before the deadline
                    queue.put(held.popleft())
                if held or self.loop.time() >= deadline:
                    decided += core.decide_all(self.loop.time())
                    queue.drop("export_failed", held)
                    return decided
                decided += core.decide_oldest(self.loop.time(), SWEEP_CHUNK)
                await asyncio.sleep(0)
            return decided
        finally:
            self._held = None

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            log.info("stopping")
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

