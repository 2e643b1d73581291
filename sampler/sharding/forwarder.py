"""Forwarding spans and log records to the instance that owns their trace (sampler/sharding/membership.py
decides which), over OTLP/gRPC (TraceService, LogsService) with a `tailsampler-forwarded` header; an
instance never forwards what it received that way, so two instances that briefly disagree on
membership cannot loop. A batch holds one signal; "spans" below means log records too.

What an owner answers decides what happens to a forward (`Forwarder._failed`):
- accepted: delivered.
- pushback, i.e. RetryInfo in the trailers with UNAVAILABLE, RESOURCE_EXHAUSTED or another
  retryable code: the owner is alive and busy. The batch is retried after the owner's delay, in
  smaller batches each time, for as long as the owner accepts something at least every
  `busy_max_elapsed`; meanwhile the owner's queue fills and this instance refuses requests with spans
  for it, so the pushback reaches the senders instead of splitting traces.
- no answer: a retryable code without RetryInfo (UNAVAILABLE: connection refused or reset, no route,
  the owner going away; DEADLINE_EXCEEDED: no answer within `timeout`; CANCELLED, ABORTED,
  OUT_OF_RANGE, DATA_LOSS). Retried with backoff; once attempts have failed this way at least
  DOWN_AFTER_FAILURES times in a row over at least `max_elapsed`, the owner is marked down. Any
  answer from it (accepted, pushback, rejected) starts the count again.
- rejected, any other code (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED without RetryInfo,
  which is also how gRPC refuses a message over the owner's size limit...): retrying cannot help,
  and the owner is alive; the batch is kept here.
Spans kept here instead of at their owner are counted by reason (`PeerStats.fallback`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

import grpc

from sampler.otlp.logs import LogChunk
from sampler.otlp.splice import encode_request
from sampler.otlp.split import Chunk
from sampler.otlp.transport import EXPORT_METHOD, FORWARDED_HEADER, LOGS_EXPORT_METHOD, channel_options, retry_hint
from sampler.pipeline.buffer import spans_cost
from sampler.sharding.membership import Membership

log = logging.getLogger("tailsampler.peers")

Call = Callable[..., Awaitable[object]]  # an Export call on a peer's channel: call(body, timeout=, metadata=)
Forwardable = Chunk | LogChunk

FORWARD_BATCH_SPANS = 4096  # spans in one forward request, whatever their size
MIN_BATCH_BYTES = 64 * 2**10  # halving batches at each pushback stops here (a batch still takes one chunk)
DOWN_AFTER_FAILURES = 3  # unanswered attempts in a row (over forward_max_elapsed) before an owner is marked down
MIN_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 30.0  # an owner's retry hint is honoured up to this
CLOSE_GRACE = 1.0  # what close() waits for calls in flight beyond their own timeout
_FIELD = 6  # bytes a length-delimited field adds to its value at most: its tag and a varint length
# Retryable codes (as OTLP defines them) that, without RetryInfo, mean the owner gave no answer.
NO_ANSWER = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DATA_LOSS,
})
PUSHBACK = NO_ANSWER | {grpc.StatusCode.RESOURCE_EXHAUSTED}  # ...that, with RetryInfo, mean "busy, retry later"


class PeerStats:
    def __init__(self) -> None:
        self.forwarded = 0  # spans delivered to their owner
        self.forwarded_records = 0  # log records delivered to their owner
        self.failures = 0  # forward attempts that failed, pushbacks included
        self.pushbacks = 0  # forward attempts the owner answered by pushing back
        # Spans and log records kept here instead of at their owner, by why: the owner left the membership, was
        # marked down, pushed back for busy_max_elapsed without accepting anything, or rejected them
        # for good; the forwarder was closing (shutdown); or an unexpected error (logged).
        self.fallback: dict[str, int] = dict.fromkeys(
            ("owner_left", "owner_unreachable", "owner_busy", "rejected", "shutdown", "error"), 0)


class _Peer:
    """One owner: the chunks queued for it, the task that sends them, and what its answers said."""

    def __init__(self, owner: str, batch_bytes: int, close_channel: Callable[[], Awaitable[None]]) -> None:
        self.owner = owner
        self.close_channel = close_channel
        self.queue: deque[Forwardable] = deque()
        self.nbytes = 0  # memory of its chunks, queued or in flight (buffer.spans_cost)
        self.sending = False  # a batch is out of the queue, in a call
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.batch_max_bytes = batch_bytes
        self.reset()

    def reset(self) -> None:
        """Forget what earlier answers said (the owner accepted a batch, or was marked down)."""
        self.batch_bytes = self.batch_max_bytes  # what batches are cut to now: halved at each pushback
        self.failing_since: float | None = None  # the first of the unanswered attempts in a row
        self.failures = 0  # ...and how many
        self.refusing_since: float | None = None  # the first pushback since the owner last accepted a batch
        self.gave_up = False  # batches are kept here for lack of progress (logged once, until it accepts)
        self.rejecting = False  # a rejection was logged (once, until it accepts)


class Forwarder:
    """Per-peer queues of trace chunks to forward, each drained by one sender task.

    Every queue may hold its share of `max_bytes` (memory of the spans, as the buffer counts it);
    `room` says whether a request's chunks fit, and the core refuses requests that do not with a
    retryable error, so a slow owner slows the senders rather than making this instance keep its
    traces. Batches are cut at FORWARD_BATCH_SPANS spans and `batch_max_bytes` encoded bytes. What
    the owner answers decides between retrying and keeping spans here (see the module docstring);
    every span kept here is counted by reason, and `close` (shutdown) hands back what is left.
    """

    def __init__(
        self,
        membership: Membership,
        local: Callable[[list[Forwardable]], None],
        max_bytes: int = 32 * 2**20,
        max_elapsed: float = 5.0,
        timeout: float = 5.0,
        down_cooldown: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        authorization: Callable[[], str] | None = None,
        busy_max_elapsed: float = 60.0,
        batch_max_bytes: int = 8 * 2**20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        # Peers share the receivers' bearer tokens, which may be rotated at any time: the header is
        # asked for at every send (retries included), never kept.
        self.authorization = authorization
        self.membership = membership
        self.local = local
        self.max_bytes = max_bytes
        self.max_elapsed = max_elapsed
        self.timeout = timeout
        self.down_cooldown = down_cooldown
        self.busy_max_elapsed = busy_max_elapsed
        self.batch_max_bytes = batch_max_bytes
        self.clock = clock
        self.stats = PeerStats()
        self.peers: dict[str, _Peer] = {}
        self.nbytes = 0  # all queues together, batches in flight included
        self.idle = asyncio.Event()
        self.idle.set()
        self.closing = asyncio.Event()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What a forward carries: the forwarded mark and, with receiver auth, the current token."""
        if self.authorization is None:
            return ((FORWARDED_HEADER, "1"),)
        return ((FORWARDED_HEADER, "1"), ("authorization", self.authorization()))

    def room(self, remote: Mapping[str, list[Forwardable]]) -> bool:
        """Whether the queues can take a request's chunks for these owners now (the core asks before
        it takes the request, and refuses it otherwise). Each owner's queue may hold its share of
        max_bytes, so an owner slow to accept holds up only requests with spans for it. An empty
        queue takes any amount, and empty queues any request: one bigger than a share, or than the
        whole bound, would otherwise never be taken."""
        share = self.max_bytes // max(1, len(self.membership.members) - 1)
        total = 0
        for owner, chunks in remote.items():
            size = _cost(chunks)
            peer = self.peers.get(owner)
            if peer is not None and peer.nbytes and peer.nbytes + size > share:
                return False
            total += size
        return self.nbytes == 0 or self.nbytes + total <= self.max_bytes

    def forward(self, owner: str, chunks: list[Forwardable]) -> None:
        """Queue trace chunks for `owner` (called by the core, once `room` said they fit)."""
        peer = self.peers.get(owner)
        if peer is None:
            calls, close_channel = self._open(owner)
            peer = self.peers[owner] = _Peer(owner, self.batch_max_bytes, close_channel)
            peer.task = asyncio.create_task(self._drain(peer, calls), name=f"forward-{owner}")
        peer.queue.extend(chunks)
        size = _cost(chunks)
        peer.nbytes += size
        self.nbytes += size
        self.idle.clear()
        peer.wake.set()

    def _open(self, owner: str) -> tuple[tuple[Call, Call], Callable[[], Awaitable[None]]]:
        """The Export calls (traces, logs) on a new channel to `owner`, and how to close that channel."""
        options = [("grpc.enable_http_proxy", 0), *channel_options(1000)]  # peers are always direct
        channel = (grpc.aio.secure_channel(owner, self.credentials, options=options) if self.credentials is not None
                   else grpc.aio.insecure_channel(owner, options=options))
        calls = (channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None),
                 channel.unary_unary(LOGS_EXPORT_METHOD, request_serializer=None, response_deserializer=None))
        return calls, channel.close

    def _pending(self) -> bool:
        return any(peer.queue or peer.sending for peer in self.peers.values())

    async def _drain(self, peer: _Peer, calls: tuple[Call, Call]) -> None:
        batch: list[Forwardable] = []
        try:
            while True:
                while not peer.queue:
                    if self.closing.is_set():
                        return
                    if not self._pending():
                        self.idle.set()
                    peer.wake.clear()
                    await peer.wake.wait()
                if self.closing.is_set():
                    return  # close() hands back what is queued
                if peer.owner not in self.membership.alive:
                    self._hand_back(peer, self._take_all(peer), "owner_left")
                    continue
                batch = self._take(peer)
                peer.sending = True
                try:
                    delay = await self._attempt(peer, calls[isinstance(batch[0], LogChunk)], batch)
                finally:
                    peer.sending = False
                if delay is not None:  # to be retried: back at the head of the queue meanwhile
                    peer.queue.extendleft(reversed(batch))
                batch = []
                if delay is not None and not await self._pause(delay):
                    return
        except asyncio.CancelledError:  # only when a call outlives its own deadline at close()
            self._hand_back(peer, batch, "shutdown")
            raise

    def _take(self, peer: _Peer) -> list[Forwardable]:
        """The next batch from the head of the queue: chunks of one signal, up to FORWARD_BATCH_SPANS
        spans and peer.batch_bytes encoded bytes, and at least one chunk however big it is."""
        queue = peer.queue
        first = queue.popleft()
        logs = isinstance(first, LogChunk)
        batch = [first]
        spans = len(_items(first))
        size = _encoded(first)
        while queue:
            chunk = queue[0]
            n, nbytes = len(_items(chunk)), _encoded(chunk)
            if (isinstance(chunk, LogChunk) is not logs or spans + n > FORWARD_BATCH_SPANS
                    or size + nbytes > peer.batch_bytes):
                break
            batch.append(queue.popleft())
            spans += n
            size += nbytes
        return batch

    def _take_all(self, peer: _Peer) -> list[Forwardable]:
        chunks = list(peer.queue)
        peer.queue.clear()
        return chunks

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds` before a retry; False at once when the forwarder is closing."""
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _attempt(self, peer: _Peer, call: Call, batch: list[Forwardable]) -> float | None:
        """Send one batch once. None when it is done with (delivered, or handed back here);
        otherwise the delay after which to send it again."""
        spans = _spans(batch)
        try:
            body = encode_request((_items(c), c.groups, b"") for c in batch)
            await call(body, timeout=self.timeout, metadata=self.metadata())
        except grpc.aio.AioRpcError as exc:
            self.stats.failures += 1
            return self._failed(peer, batch, exc)
        except Exception:  # not an answer from the owner (a bug, a closed channel)
            log.exception("forwarding %d spans to %s failed unexpectedly; handling them here", spans, peer.owner)
            self._hand_back(peer, batch, "error")
            return None
        if isinstance(batch[0], LogChunk):
            self.stats.forwarded_records += spans
        else:
            self.stats.forwarded += spans
        self._release(peer, batch)
        if peer.refusing_since is not None:
            log.debug("peer %s accepts forwarded spans again after pushing back for %.1fs", peer.owner,
                      self.clock() - peer.refusing_since)
        batch_bytes = peer.batch_bytes
        peer.reset()
        peer.batch_bytes = min(peer.batch_max_bytes, batch_bytes * 2)  # regrown step by step
        return None

    def _failed(self, peer: _Peer, batch: list[Forwardable], exc: grpc.aio.AioRpcError) -> float | None:
        """What a failed attempt means (module docstring): the delay before retrying the batch, or
        None once it has been handed back here."""
        code = exc.code()
        hint = retry_hint(exc.trailing_metadata())
        now = self.clock()
        owner = peer.owner
        if hint is not None and code in PUSHBACK:
            self.stats.pushbacks += 1
            peer.failing_since, peer.failures = None, 0  # it answered: alive
            if peer.refusing_since is None:  # (the log says so when this instance's queue for it fills)
                peer.refusing_since = now
                log.debug("peer %s is pushing back (%s); forwards to it wait for it", owner, code.name)
            elif now - peer.refusing_since >= self.busy_max_elapsed:
                if not peer.gave_up:
                    peer.gave_up = True
                    log.warning("peer %s has accepted nothing for %.0fs; its spans are handled here until it "
                                "accepts again", owner, now - peer.refusing_since)
                self._hand_back(peer, batch, "owner_busy")
                return None
            peer.batch_bytes = max(MIN_BATCH_BYTES, peer.batch_bytes // 2)  # smaller requests fit into less room
            return min(max(hint, MIN_RETRY_DELAY), MAX_RETRY_DELAY)
        if code in NO_ANSWER:
            if peer.failing_since is None:
                peer.failing_since = now
            peer.failures += 1
            if peer.failures >= DOWN_AFTER_FAILURES and now - peer.failing_since >= self.max_elapsed:
                log.warning("forwarding to %s failed %d times in a row over %.1fs (%s); leaving it out for %.0fs "
                            "and handling its spans here", owner, peer.failures, now - peer.failing_since,
                            code.name, self.down_cooldown)
                peer.reset()
                self.membership.mark_down(owner, self.down_cooldown)
                self._hand_back(peer, batch + self._take_all(peer), "owner_unreachable")
                return None
            return float(min(MIN_RETRY_DELAY * 2 ** (peer.failures - 1), 1.0))
        peer.failing_since, peer.failures = None, 0
        if not peer.rejecting:
            peer.rejecting = True
            log.warning("peer %s rejected %d forwarded spans (%s: %s); handling them here", owner, _spans(batch),
                        code.name, exc.details())
        self._hand_back(peer, batch, "rejected")
        return None

    def _release(self, peer: _Peer, chunks: list[Forwardable]) -> None:
        size = _cost(chunks)
        peer.nbytes -= size
        self.nbytes -= size

    def _hand_back(self, peer: _Peer, chunks: list[Forwardable], reason: str) -> None:
        """Keep chunks here instead of at their owner, counted by reason."""
        if not chunks:
            return
        self._release(peer, chunks)
        self.stats.fallback[reason] += _spans(chunks)
        self.local(chunks)

    async def flush(self, timeout: float) -> bool:
        if not self._pending():
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop forwarding (shutdown). A call in flight is waited for: it ends within its timeout,
        delivered or not. Everything else (queued, or waiting to be retried) is handed back here,
        counted as `shutdown`."""
        self.closing.set()
        tasks = []
        for peer in self.peers.values():
            peer.wake.set()
            if peer.task is not None:
                tasks.append(peer.task)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.timeout + CLOSE_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for peer in self.peers.values():
            self._hand_back(peer, self._take_all(peer), "shutdown")
            await peer.close_channel()
        stats = self.stats
        log.info("forwarding stopped: %d spans delivered to their owners, %d kept here (%s)", stats.forwarded,
                 sum(stats.fallback.values()),
                 ", ".join(f"{reason} {n}" for reason, n in stats.fallback.items() if n) or "none")


def _items(chunk: Forwardable) -> list[bytes]:
    """A chunk's spans, or its log records."""
    return chunk.records if isinstance(chunk, LogChunk) else chunk.spans


def _spans(chunks: list[Forwardable]) -> int:
    return sum(len(_items(c)) for c in chunks)


def _cost(chunks: list[Forwardable]) -> int:
    return sum(spans_cost(c.nbytes, len(_items(c))) for c in chunks)


def _encoded(chunk: Forwardable) -> int:
    """At most what `chunk` adds to an encoded request: its spans with their field headers, and its
    resource and scope groups with theirs (a group shared by several chunks is counted in each)."""
    groups = sum(len(g.resource) + len(g.scope) + 2 * _FIELD for g in set(chunk.groups))
    return chunk.nbytes + _FIELD * len(_items(chunk)) + groups
