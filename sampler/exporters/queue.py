"""The bounded export queue: kept traces wait here, are batched, sent, and retried with backoff.

The bound is in bytes of memory held (spans and their overhead, as the buffer counts them) and covers
batches in flight, so a slow or dead backend can hold at most `queue_max_bytes` of memory; beyond it
kept traces are dropped and counted, never silently. The
receive path only ever calls `put`, which never waits, so a slow backend cannot slow ingest.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from sampler.config import Retry
from sampler.core import KeptTrace
from sampler.exporters.base import WORKERS, PermanentError, RetryableError, Sender
from sampler.metrics import Metrics

log = logging.getLogger("tailsampler.export")


class ExportQueue:
    def __init__(
        self,
        sender: Sender,
        metrics: Metrics,
        max_bytes: int,
        batch_max_spans: int,
        retry: Retry,
        workers: int = WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sender = sender
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.batch_max_spans = batch_max_spans
        self.retry = retry
        self.clock = clock
        self.pending: deque[tuple[KeptTrace, int]] = deque()
        self.nbytes = 0  # queued plus in flight
        self.in_flight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers = [asyncio.create_task(self._work(), name=f"export-{i}") for i in range(workers)]

    def put(self, trace: KeptTrace) -> bool:
        """Queue a kept trace; False (and counted) when the bound leaves no room for it."""
        size = trace.cost
        if self.nbytes + size > self.max_bytes and self.nbytes > 0:
            self.metrics.spans_dropped.labels("export_queue_full").inc(len(trace.spans))
            return False
        self.pending.append((trace, size))
        self.nbytes += size
        self._idle.clear()
        self._wake.set()
        return True

    def _take(self) -> tuple[list[KeptTrace], int]:
        batch: list[KeptTrace] = []
        spans = 0
        size = 0
        while self.pending and (not batch or spans + len(self.pending[0][0].spans) <= self.batch_max_spans):
            trace, n = self.pending.popleft()
            batch.append(trace)
            spans += len(trace.spans)
            size += n
        return batch, size

    async def _work(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            batch, size = self._take()
            self.in_flight += 1
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                self.metrics.spans_dropped.labels("export_failed").inc(sum(len(t.spans) for t in batch))
                raise
            finally:
                self.in_flight -= 1
                self.nbytes -= size
                if not self.pending and self.in_flight == 0:
                    self._idle.set()

    async def _deliver(self, batch: list[KeptTrace]) -> None:
        spans = sum(len(t.spans) for t in batch)
        deadline = self.clock() + self.retry.max_elapsed_time
        interval = self.retry.initial_interval
        while True:
            try:
                rejected = await self.sender.send(batch)
            except RetryableError as exc:
                self.metrics.export_failures.inc()
                delay = exc.delay if exc.delay is not None else interval * random.uniform(0.5, 1.5)
                interval = min(interval * 2, self.retry.max_interval)
                if self.clock() + delay > deadline:
                    log.warning("export failed, giving up after retries: %s (%d spans dropped)", exc, spans)
                    self.metrics.spans_dropped.labels("export_failed").inc(spans)
                    return
                log.info("export failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            except PermanentError as exc:
                self.metrics.export_failures.inc()
                log.warning("export refused by the backend: %s (%d spans dropped)", exc, spans)
                self.metrics.spans_dropped.labels("export_rejected").inc(spans)
                return
            except Exception:  # a bug or an unexpected client error: count it, keep serving
                self.metrics.export_failures.inc()
                log.exception("export failed unexpectedly (%d spans dropped)", spans)
                self.metrics.spans_dropped.labels("export_failed").inc(spans)
                return
            if rejected:
                self.metrics.spans_dropped.labels("export_rejected").inc(rejected)
            self.metrics.spans_exported.inc(spans - rejected)
            return

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been delivered (or given up); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the workers; whatever is still queued or in flight is counted as dropped."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        lost = sum(len(t.spans) for t, _ in self.pending)
        if lost:
            self.metrics.spans_dropped.labels("export_failed").inc(lost)
        self.pending.clear()
        await self.sender.close()
