"""The bounded export queue: kept traces wait here, are batched, sent, and retried with backoff.
Their log records wait alike, in batches of their own (a logs request); OTLP metrics passed through
wait here too, one request each, as they came.

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
from collections.abc import Awaitable, Callable, Iterable

from sampler.config.models import DEFAULT_BATCH_MAX_BYTES, Retry
from sampler.exporters.base import (
    WORKERS,
    ExportMetrics,
    PermanentError,
    RawRequest,
    RetryableError,
    Sender,
    TooLargeError,
    signal_of,
    suffix,
)
from sampler.otlp.splice import group_size, span_size, spans_size
from sampler.otlp.tracestate import ALLOWANCE as TRACESTATE_ALLOWANCE
from sampler.otlp.transport import LOGS, TRACES
from sampler.otlp.wire import Group
from sampler.pipeline.buffer import spans_cost
from sampler.pipeline.core import KeptTrace

log = logging.getLogger("tailsampler.export")


class Queued:
    """A kept trace (or a request passed through) waiting for export: the memory it holds (`cost`),
    and what its spans add to an export request (`body`, annotation included) besides their
    resources and scopes (`groups`)."""

    __slots__ = ("body", "cost", "groups", "trace")

    def __init__(self, trace: KeptTrace | RawRequest, cost: int, body: int, groups: list[Group]) -> None:
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
        # reports what it could and could not send. Log records and data points passed through the
        # same (the metrics read these at scrape time).
        self.exported = 0
        self.dropped: Counter[str] = Counter()
        self.records_exported = 0
        self.records_dropped: Counter[str] = Counter()
        self.points_forwarded = 0
        self.points_dropped: Counter[str] = Counter()
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
        self._queue(Queued(trace, size, spans_size(trace.spans, self._suffix(trace)), distinct))
        return True

    def put_raw(self, request: RawRequest) -> bool:
        """Queue a request passed through; False (and counted) when the bound leaves no room for it."""
        if not self.fits(request.cost):
            self._dropped(request.signal, "export_queue_full", request.count)
            return False
        self._queue(Queued(request, request.cost, len(request.body), []))
        return True

    def _queue(self, item: Queued) -> None:
        self.pending.append(item)
        self.nbytes += item.cost
        self._idle.clear()
        self._wake.set()

    def drop(self, reason: str, traces: Iterable[KeptTrace | RawRequest]) -> None:
        """Count the spans (log records, data points) of what will not be sent."""
        for t in traces:
            if isinstance(t, RawRequest):
                self._dropped(t.signal, reason, t.count)
            else:
                self._dropped(LOGS if t.logs else TRACES, reason, len(t.spans))

    def _dropped(self, signal: str, reason: str, n: int) -> None:
        if not n:
            return
        if signal == TRACES:
            self.metrics.spans_dropped.labels(reason).inc(n)
            self.dropped[reason] += n
        elif signal == LOGS:
            self.records_dropped[reason] += n
        else:
            self.points_dropped[reason] += n

    def _exported(self, signal: str, n: int) -> None:
        if signal == TRACES:
            self.metrics.spans_exported.inc(n)
            self.exported += n
        elif signal == LOGS:
            self.records_exported += n
        else:
            self.points_forwarded += n

    def _suffix(self, trace: KeptTrace) -> int:
        """The annotation bytes each span of `trace` gets in an export request (and, kept by a
        probability, what its threshold may add to the span)."""
        return len(suffix(trace, self.annotate)) + (TRACESTATE_ALLOWANCE if trace.probability > 0 else 0)

    def _take(self) -> tuple[list[KeptTrace] | RawRequest, int]:
        """The next batch, of one signal, within batch_max_spans and batch_max_bytes, and the memory
        it holds. A trace that alone exceeds either is sent in parts: its first part now, the rest
        next. A request passed through goes alone."""
        head = self.pending[0].trace
        if isinstance(head, RawRequest):
            return head, self.pending.popleft().cost
        logs = head.logs
        batch: list[KeptTrace] = []
        spans = 0
        size = 0
        body = 0  # at most the batch's export request size
        groups: set[int] = set()
        while self.pending:
            item = self.pending[0]
            trace = item.trace
            if isinstance(trace, RawRequest) or trace.logs is not logs:
                break
            n = len(trace.spans)
            new = [g for g in item.groups if id(g) not in groups]
            extra = item.body + sum(group_size(g) for g in new)
            if batch and (spans + n > self.batch_max_spans or body + extra > self.batch_max_bytes):
                break
            if not batch and n > 1 and (n > self.batch_max_spans or extra > self.batch_max_bytes):
                part, cost = self._first_part(item, extra - item.body)
                return [part], cost
            self.pending.popleft()
            batch.append(trace)
            spans += n
            size += item.cost
            body += extra
            groups.update(id(g) for g in new)
        return batch, size

    def _first_part(self, item: Queued, headers: int) -> tuple[KeptTrace, int]:
        """Cut from a queued trace the longest first part that fits one request (one span at least);
        the rest stays first in line. Returns the part and the memory it holds."""
        trace = item.trace
        assert isinstance(trace, KeptTrace)
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

    async def _deliver(self, batch: list[KeptTrace] | RawRequest) -> None:
        """Send a batch, retrying within retry.max_elapsed_time; a batch refused as too large is
        sent as two halves instead (each in turn, within the same time)."""
        deadline = self.clock() + self.retry.max_elapsed_time
        if isinstance(batch, RawRequest):
            try:
                await self._send_raw(batch, deadline)
            except asyncio.CancelledError:
                self.drop("export_failed", (batch,))
                raise
            return
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
        signal = signal_of(batch)
        spans = sum(len(t.spans) for t in batch)
        try:
            await self._retrying(lambda: self.sender.send(batch), signal, spans, deadline)
        except TooLargeError as exc:
            if spans == 1:
                log.warning("export refused a single %s item as too large: %s (dropped)", signal, exc)
                self._dropped(signal, "export_rejected", 1)
                return None
            level = logging.DEBUG if self._too_large_logged else logging.WARNING
            self._too_large_logged = True
            log.log(level, "export request of %d %s items refused as too large: %s; sending it in halves (set "
                    "exporter.batch_max_bytes below the backend's limit to avoid this)", spans, signal, exc)
            return halve(batch)
        return None

    async def _send_raw(self, request: RawRequest, deadline: float) -> None:
        """Send a request passed through, with retries; one refused as too large is dropped (it is
        passed on as it came, never cut)."""
        try:
            await self._retrying(lambda: self.sender.send_raw(request), request.signal, request.count, deadline)
        except TooLargeError as exc:
            log.warning("export refused a %s request as too large: %s (%d items dropped)", request.signal, exc,
                        request.count)
            self._dropped(request.signal, "export_rejected", request.count)

    async def _retrying(self, send: Callable[[], Awaitable[int]], signal: str, n: int, deadline: float) -> None:
        """Call `send` until it delivers, retrying within `deadline`; what is not delivered is counted.
        Raises TooLargeError (counted as a failure) for the caller to split or drop."""
        interval = self.retry.initial_interval
        while True:
            try:
                rejected = await send()
            except TooLargeError:
                self.metrics.export_failures.inc()
                raise
            except RetryableError as exc:
                self.metrics.export_failures.inc()
                delay = exc.delay if exc.delay is not None else interval * random.uniform(0.5, 1.5)
                interval = min(interval * 2, self.retry.max_interval)
                if self.clock() + delay > deadline:
                    log.warning("export failed, giving up after retries: %s (%d %s items dropped)", exc, n, signal)
                    self._dropped(signal, "export_failed", n)
                    return
                log.info("export failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            except PermanentError as exc:
                self.metrics.export_failures.inc()
                log.warning("export refused by the backend: %s (%d %s items dropped)", exc, n, signal)
                self._dropped(signal, "export_rejected", n)
                return
            except Exception:  # a bug or an unexpected client error: count it, keep serving
                self.metrics.export_failures.inc()
                log.exception("export failed unexpectedly (%d %s items dropped)", n, signal)
                self._dropped(signal, "export_failed", n)
                return
            self._dropped(signal, "export_rejected", rejected)
            self._exported(signal, n - rejected)
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
        self.drop("export_failed", [q.trace for q in self.pending])
        self.pending.clear()
        await self.sender.close()
