"""The bounded export queue: kept traces wait here, are batched, sent, and retried with backoff.

The bound is in bytes of memory held (spans and their overhead, as the buffer counts them) and covers
batches in flight, so a slow or dead backend can hold at most `queue_max_bytes` of memory; beyond it
kept traces are dropped and counted, never silently. The
receive path only ever calls `put`, which never waits, so a slow backend cannot slow ingest.

A batch is bounded by spans (`batch_max_spans`) and by the size of its export request
(`batch_max_bytes`, annotation included): many receivers refuse requests over 4 MiB. A trace larger
than that is sent in parts. A request the backend still refuses as too large is split in two and
the halves are sent instead, down to single spans.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

from sampler.config.models import DEFAULT_BATCH_MAX_BYTES, Retry
from sampler.exporters.base import WORKERS, ExportMetrics, PermanentError, RetryableError, Sender, TooLargeError
from sampler.otlp.splice import annotation, group_size, span_size, spans_size
from sampler.otlp.wire import Group
from sampler.pipeline.buffer import spans_cost
from sampler.pipeline.core import KeptTrace

log = logging.getLogger("tailsampler.export")


class Queued:
    """A kept trace waiting for export: the memory it holds (`cost`), and what its spans add to an
    export request (`body`, annotation included) besides their resources and scopes (`groups`)."""

    __slots__ = ("body", "cost", "groups", "trace")

    def __init__(self, trace: KeptTrace, cost: int, body: int, groups: list[Group]) -> None:
        self.trace = trace
        self.cost = cost
        self.body = body
        self.groups = groups


def halve(batch: list[KeptTrace]) -> tuple[list[KeptTrace], list[KeptTrace]]:
    """A batch as two, about half its spans each: between traces when it holds several, else its one
    trace's spans in two parts. It must hold two spans at least."""
    if len(batch) > 1:
        total = sum(len(t.spans) for t in batch)
        cut = 1
        seen = len(batch[0].spans)
        while cut < len(batch) - 1 and seen * 2 < total:
            seen += len(batch[cut].spans)
            cut += 1
        return batch[:cut], batch[cut:]
    trace = batch[0]
    n = len(trace.spans)
    return [trace.part(0, n // 2)], [trace.part(n // 2, n)]


class ExportQueue:
    def __init__(
        self,
        sender: Sender,
        metrics: ExportMetrics,
        max_bytes: int,
        batch_max_spans: int,
        retry: Retry,
        workers: int = WORKERS,
        clock: Callable[[], float] = time.monotonic,
        batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES,
        annotate: bool = True,
    ) -> None:
        self.sender = sender
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.batch_max_spans = batch_max_spans
        self.batch_max_bytes = batch_max_bytes
        self.annotate = annotate  # as the sender does: the annotation counts in the request's size
        self.retry = retry
        self.clock = clock
        self.pending: deque[Queued] = deque()
        self._too_large_logged = False
        self.nbytes = 0  # queued plus in flight
        self.in_flight = 0
        # Spans exported and dropped (by reason) since the start, as the metrics count them: shutdown
        # reports what it could and could not send.
        self.exported = 0
        self.dropped: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._freed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers = [asyncio.create_task(self._work(), name=f"export-{i}") for i in range(workers)]

    def fits(self, size: int) -> bool:
        """Whether a trace holding `size` bytes would be queued now (one larger than the whole bound
        is, once the queue is empty)."""
        return self.nbytes + size <= self.max_bytes or self.nbytes == 0

    async def room(self, size: int, timeout: float) -> bool:
        """Wait until a trace holding `size` bytes fits; False if it does not within `timeout`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self.fits(size):
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), end - loop.time())
            except TimeoutError:
                return self.fits(size)
        return True

    def put(self, trace: KeptTrace) -> bool:
        """Queue a kept trace; False (and counted) when the bound leaves no room for it."""
        size = trace.cost
        if not self.fits(size):
            self.drop("export_queue_full", (trace,))
            return False
        distinct = list({id(g): g for g in trace.groups}.values())
        self.pending.append(Queued(trace, size, spans_size(trace.spans, self._suffix(trace)), distinct))
        self.nbytes += size
        self._idle.clear()
        self._wake.set()
        return True

    def drop(self, reason: str, traces: Iterable[KeptTrace]) -> None:
        """Count the spans of kept traces that will not be sent."""
        self._dropped(reason, sum(len(t.spans) for t in traces))

    def _dropped(self, reason: str, spans: int) -> None:
        if spans:
            self.metrics.spans_dropped.labels(reason).inc(spans)
            self.dropped[reason] += spans

    def _suffix(self, trace: KeptTrace) -> int:
        """The annotation bytes each span of `trace` gets in an export request."""
        return len(annotation(trace.policy, trace.sample_rate)) if self.annotate else 0

    def _take(self) -> tuple[list[KeptTrace], int]:
        """The next batch, within batch_max_spans and batch_max_bytes, and the memory it holds. A
        trace that alone exceeds either is sent in parts: its first part now, the rest next."""
        batch: list[KeptTrace] = []
        spans = 0
        size = 0
        body = 0  # at most the batch's export request size
        groups: set[int] = set()
        while self.pending:
            item = self.pending[0]
            n = len(item.trace.spans)
            new = [g for g in item.groups if id(g) not in groups]
            extra = item.body + sum(group_size(g) for g in new)
            if batch and (spans + n > self.batch_max_spans or body + extra > self.batch_max_bytes):
                break
            if not batch and n > 1 and (n > self.batch_max_spans or extra > self.batch_max_bytes):
                part, cost = self._first_part(item, extra - item.body)
                return [part], cost
            self.pending.popleft()
            batch.append(item.trace)
            spans += n
            size += item.cost
            body += extra
            groups.update(id(g) for g in new)
        return batch, size

    def _first_part(self, item: Queued, headers: int) -> tuple[KeptTrace, int]:
        """Cut from a queued trace the longest first part that fits one request (one span at least);
        the rest stays first in line. Returns the part and the memory it holds."""
        trace = item.trace
        suffix = self._suffix(trace)
        room = self.batch_max_bytes - headers
        k = 0
        nbytes = 0
        body = 0
        limit = min(len(trace.spans) - 1, self.batch_max_spans)
        while k < limit:
            size = span_size(trace.spans[k], suffix)
            if k > 0 and body + size > room:
                break
            body += size
            nbytes += len(trace.spans[k])
            k += 1
        cost = min(item.cost, spans_cost(nbytes, k))
        self.pending[0] = Queued(trace.part(k, len(trace.spans)), item.cost - cost, item.body - body, item.groups)
        return trace.part(0, k), cost

    async def _work(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            batch, size = self._take()
            self.in_flight += 1
            try:
                await self._deliver(batch)
            finally:
                self.in_flight -= 1
                self.nbytes -= size
                self._freed.set()
                if not self.pending and self.in_flight == 0:
                    self._idle.set()

    async def _deliver(self, batch: list[KeptTrace]) -> None:
        """Send a batch, retrying within retry.max_elapsed_time; a batch refused as too large is
        sent as two halves instead (each in turn, within the same time)."""
        deadline = self.clock() + self.retry.max_elapsed_time
        requests = [batch]  # the one being sent last; halves already delivered are gone
        try:
            while requests:
                halves = await self._send(requests[-1], deadline)
                requests.pop()
                if halves is not None:
                    requests += reversed(halves)
        except asyncio.CancelledError:  # stopped (shutdown): what was not delivered is counted
            self.drop("export_failed", (t for r in requests for t in r))
            raise

    async def _send(
        self, batch: list[KeptTrace], deadline: float,
    ) -> tuple[list[KeptTrace], list[KeptTrace]] | None:
        """Send one request with retries; returns its halves when the backend refused it as too large."""
        spans = sum(len(t.spans) for t in batch)
        interval = self.retry.initial_interval
        while True:
            try:
                rejected = await self.sender.send(batch)
            except TooLargeError as exc:
                self.metrics.export_failures.inc()
                if spans == 1:
                    log.warning("export refused a single span as too large: %s (1 span dropped)", exc)
                    self._dropped("export_rejected", 1)
                    return None
                level = logging.DEBUG if self._too_large_logged else logging.WARNING
                self._too_large_logged = True
                log.log(level, "export request of %d spans refused as too large: %s; sending it in halves (set "
                        "exporter.batch_max_bytes below the backend's limit to avoid this)", spans, exc)
                return halve(batch)
            except RetryableError as exc:
                self.metrics.export_failures.inc()
                delay = exc.delay if exc.delay is not None else interval * random.uniform(0.5, 1.5)
                interval = min(interval * 2, self.retry.max_interval)
                if self.clock() + delay > deadline:
                    log.warning("export failed, giving up after retries: %s (%d spans dropped)", exc, spans)
                    self._dropped("export_failed", spans)
                    return None
                log.info("export failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            except PermanentError as exc:
                self.metrics.export_failures.inc()
                log.warning("export refused by the backend: %s (%d spans dropped)", exc, spans)
                self._dropped("export_rejected", spans)
                return None
            except Exception:  # a bug or an unexpected client error: count it, keep serving
                self.metrics.export_failures.inc()
                log.exception("export failed unexpectedly (%d spans dropped)", spans)
                self._dropped("export_failed", spans)
                return None
            self._dropped("export_rejected", rejected)
            self.metrics.spans_exported.inc(spans - rejected)
            self.exported += spans - rejected
            return None

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
        self.drop("export_failed", (q.trace for q in self.pending))
        self.pending.clear()
        await self.sender.close()
