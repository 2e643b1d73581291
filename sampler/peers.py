"""Sharding by trace id: membership, owner hashing, and forwarding spans to their owner.

Every instance computes the same owner for a trace id from the same member list by rendezvous
hashing (the member with the highest hash of member + trace id wins), so when a member joins or
leaves only its own share of traces moves. Spans owned elsewhere are forwarded once, batched, over
OTLP/gRPC to the owner's receiver with a `tailsampler-forwarded` header; an instance never forwards
what it received that way, so two instances that briefly disagree on membership cannot loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import grpc

from sampler.buffer import spans_cost
from sampler.config import split_host_port
from sampler.exporters.otlp_grpc import channel_options
from sampler.otlp.splice import encode_request
from sampler.otlp.split import Chunk
from sampler.receivers.grpc import EXPORT_METHOD, FORWARDED_HEADER

log = logging.getLogger("tailsampler.peers")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Call = Callable[..., Awaitable[object]]  # an Export call on a peer's channel: call(body, timeout=, metadata=)

FORWARD_BATCH_SPANS = 4096  # spans in one forward request, whatever their size
_FIELD = 6  # bytes a length-delimited field adds to its value at most: its tag and a varint length


class Membership:
    """The member list (host:port strings, self included) and the owner of each trace id.

    A member that could not be reached within the forwarding bounds is taken out of the hashing
    for a cooldown: every survivor notices the same failure, so they agree again on one owner per
    trace instead of each keeping its own part of the dead member's traces.
    """

    def __init__(self, self_addr: str, members: Sequence[str], trusted_networks: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.self_addr = self_addr
        self.clock = clock
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_networks)
        self.members: tuple[str, ...] = ()
        self.down: dict[str, float] = {}  # member -> until when (clock time) it is left out
        self._keys: list[tuple[bytes, str]] = []
        self.changes = 0
        self.resolved: dict[str, frozenset[str]] = {}  # member host name -> its addresses
        self.addresses: frozenset[IP] = frozenset()  # every member's IP address: whom to trust
        self.set(members)

    @property
    def alive(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m not in self.down)

    def _rehash(self, reason: str, before: tuple[str, ...]) -> None:
        after = self.alive
        if before:
            self.changes += 1
            log.info("peer membership changed (%s): %s -> %s", reason, ",".join(before), ",".join(after))
        self._keys = [(m.encode(), m) for m in after]

    def set(self, members: Sequence[str]) -> bool:
        """Replace the member list (from configuration or discovery); True when it changed."""
        new = tuple(sorted(set(members) | {self.self_addr}))
        if new == self.members:
            return False
        before = self.alive
        self.members = new
        self.down = {m: t for m, t in self.down.items() if m in new}
        self._rehash("discovery", before)
        self.update_addresses()
        return True

    @property
    def host_names(self) -> list[str]:
        """Members given by name rather than IP address; their addresses come from `resolve_names`."""
        return sorted({h for h in map(_host, self.members) if _ip(h) is None})

    def update_addresses(self) -> None:
        hosts = set(map(_host, self.members))
        addresses = {_ip(h) for h in hosts} | {_ip(a) for h in hosts for a in self.resolved.get(h, ())}
        self.addresses = frozenset(a for a in addresses if a is not None)

    def trusts(self, peer: str) -> bool:
        """Whether a gRPC caller (`context.peer()`, e.g. `ipv4:10.0.0.2:51234`) is a member, whose
        `tailsampler-forwarded` header may be honoured. Any client can send that header; honouring
        it from one would let its spans skip their owner and split its traces."""
        scheme, _, rest = peer.partition(":")
        if scheme not in ("ipv4", "ipv6"):
            return False
        try:
            address = _ip(_host(urllib.parse.unquote(rest)))
        except ValueError:
            return False
        if address is None:
            return False
        return address in self.addresses or any(address in network for network in self.networks)

    def mark_down(self, member: str, cooldown: float) -> None:
        """Leave `member` out of the hashing for `cooldown` seconds (never self)."""
        if member == self.self_addr or member in self.down:
            return
        before = self.alive
        self.down[member] = self.clock() + cooldown
        self._rehash(f"{member} unreachable", before)

    def revive(self) -> None:
        """Give members whose cooldown is over another chance."""
        now = self.clock()
        back = [m for m, until in self.down.items() if until <= now]
        if back:
            before = self.alive
            for m in back:
                del self.down[m]
            self._rehash("cooldown over", before)

    def owner(self, trace_id: bytes) -> str:
        best = ""
        best_hash = -1
        for key, member in self._keys:
            h = int.from_bytes(hashlib.blake2b(key + trace_id, digest_size=8).digest(), "big")
            if h > best_hash:
                best, best_hash = member, h
        return best

    def route(self, trace_id: bytes) -> str | None:
        """The owner's address, or None when this instance owns the trace."""
        if len(self._keys) <= 1:
            return None
        owner = self.owner(trace_id)
        return None if owner == self.self_addr else owner


class PeerStats:
    def __init__(self) -> None:
        self.forwarded = 0  # spans delivered to their owner
        self.failures = 0  # forward attempts that failed
        self.fallback: dict[str, int] = {"owner_left": 0, "owner_unreachable": 0, "queue_full": 0, "error": 0}


class Forwarder:
    """Per-peer bounded queues of trace chunks to forward, drained by one sender task per peer.

    Forwarding is retried for up to `max_elapsed` seconds; after that, or at once when the owner has
    left the membership or the queues are full, the spans are handed to `local` (ingested here): a
    trace may then be decided in two places, but no span is lost. Every such case is counted. The
    queues of all peers together hold at most `max_bytes` of memory (spans as the buffer counts them).
    Batches are cut at FORWARD_BATCH_SPANS spans and `batch_max_bytes` encoded bytes, so that they
    stay within the owner's limit on request size whatever the size of the spans.
    """

    def __init__(
        self,
        membership: Membership,
        local: Callable[[list[Chunk]], None],
        max_bytes: int = 32 * 2**20,
        max_elapsed: float = 5.0,
        timeout: float = 5.0,
        down_cooldown: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        authorization: Callable[[], str] | None = None,
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
        self.batch_max_bytes = batch_max_bytes
        self.clock = clock
        self.stats = PeerStats()
        self.queues: dict[str, deque[Chunk]] = {}
        self.sizes: dict[str, int] = {}
        self.nbytes = 0  # all queues together, batches in flight included
        self.wakes: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closers: dict[str, Callable[[], Awaitable[None]]] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.in_flight = 0

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What a forward carries: the forwarded mark and, with receiver auth, the current token."""
        if self.authorization is None:
            return ((FORWARDED_HEADER, "1"),)
        return ((FORWARDED_HEADER, "1"), ("authorization", self.authorization()))

    def forward(self, owner: str, chunks: list[Chunk]) -> None:
        """Queue trace chunks for `owner` (called by the core for every owner of a request's traces)."""
        size = _cost(chunks)
        if self.nbytes + size > self.max_bytes:
            self.stats.fallback["queue_full"] += _spans(chunks)
            self.local(chunks)
            return
        if owner not in self.tasks:
            self.queues[owner] = deque()
            self.sizes[owner] = 0
            self.wakes[owner] = asyncio.Event()
            call, self.closers[owner] = self._open(owner)
            self.tasks[owner] = asyncio.create_task(self._drain(owner, call), name=f"forward-{owner}")
        self.queues[owner].extend(chunks)
        self.sizes[owner] += size
        self.nbytes += size
        self.idle.clear()
        self.wakes[owner].set()

    def _open(self, owner: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        """The Export call on a new channel to `owner`, and how to close that channel."""
        options = [("grpc.enable_http_proxy", 0), *channel_options(1000)]  # peers are always direct
        channel = (grpc.aio.secure_channel(owner, self.credentials, options=options) if self.credentials is not None
                   else grpc.aio.insecure_channel(owner, options=options))
        call = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        return call, channel.close

    def _pending(self) -> bool:
        return self.in_flight > 0 or any(self.queues.values())

    async def _drain(self, owner: str, call: Call) -> None:
        queue = self.queues[owner]
        while True:
            while not queue:
                if not self._pending():
                    self.idle.set()
                self.wakes[owner].clear()
                await self.wakes[owner].wait()
            batch = self._take(queue)
            self.in_flight += 1
            try:
                await self._send(owner, call, batch)
            except Exception:  # _send hands its spans back on any failure it can see; this keeps the drain alive
                log.exception("forwarding to %s failed unexpectedly", owner)
            finally:
                self.in_flight -= 1
                size = _cost(batch)
                self.sizes[owner] -= size
                self.nbytes -= size

    def _take(self, queue: deque[Chunk]) -> list[Chunk]:
        """The next batch from the head of the queue: up to FORWARD_BATCH_SPANS spans and
        batch_max_bytes encoded bytes, and at least one chunk however big it is."""
        first = queue.popleft()
        batch = [first]
        spans = len(first.spans)
        size = _encoded(first)
        while queue:
            chunk = queue[0]
            n, nbytes = len(chunk.spans), _encoded(chunk)
            if spans + n > FORWARD_BATCH_SPANS or size + nbytes > self.batch_max_bytes:
                break
            batch.append(queue.popleft())
            spans += n
            size += nbytes
        return batch

    async def _send(self, owner: str, call: Call, batch: list[Chunk]) -> None:
        spans = _spans(batch)
        try:
            body = encode_request((c.spans, c.groups, b"") for c in batch)
        except Exception:
            self._failed_unexpectedly(owner, batch, spans)
            return
        deadline = self.clock() + self.max_elapsed
        delay = 0.05
        while True:
            if owner not in self.membership.alive:
                self.stats.fallback["owner_left"] += spans
                self.local(batch)
                return
            try:
                await call(body, timeout=self.timeout, metadata=self.metadata())
            except grpc.aio.AioRpcError as exc:
                self.stats.failures += 1
                if self.clock() + delay > deadline:
                    log.warning("forwarding %d spans to %s failed (%s); handling them here",
                                spans, owner, exc.code().name)
                    self.membership.mark_down(owner, self.down_cooldown)
                    self.stats.fallback["owner_unreachable"] += spans
                    self.local(batch)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except Exception:  # not a network failure (a bug, a closed channel)
                self._failed_unexpectedly(owner, batch, spans)
                return
            self.stats.forwarded += spans
            return

    def _failed_unexpectedly(self, owner: str, batch: list[Chunk], spans: int) -> None:
        """Called from an except block: log the traceback, count it, keep the spans here."""
        log.exception("forwarding %d spans to %s failed unexpectedly; handling them here", spans, owner)
        self.stats.fallback["error"] += spans
        self.local(batch)

    async def flush(self, timeout: float) -> bool:
        if not self._pending():
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for owner, queue in self.queues.items():  # what could not be sent is kept here
            if queue:
                chunks = list(queue)
                queue.clear()
                self.stats.fallback["owner_unreachable"] += _spans(chunks)
                self.local(chunks)
            await self.closers[owner]()


def _host(host_port: str) -> str:
    return split_host_port(host_port)[0]


def _ip(host: str) -> IP | None:
    """The address a host string spells, in one form whatever the spelling (`FD00::2`, `fd00::2`;
    an IPv4-mapped IPv6 address as its IPv4 address, the way gRPC reports such a peer); None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def resolve_names(membership: Membership, interval: float) -> None:
    """Keep the addresses of members given by name current, so their forwarded spans are trusted;
    a failed lookup keeps the addresses last seen."""
    loop = asyncio.get_running_loop()
    while True:
        for name in membership.host_names:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("peer %s: cannot resolve its address (%s); its forwarded spans are routed anew", name, exc)
                continue
            membership.resolved[name] = frozenset(str(info[4][0]) for info in infos)
        membership.update_addresses()
        await asyncio.sleep(interval)


def _spans(chunks: list[Chunk]) -> int:
    return sum(len(c.spans) for c in chunks)


def _cost(chunks: list[Chunk]) -> int:
    return sum(spans_cost(c.nbytes, len(c.spans)) for c in chunks)


def _encoded(chunk: Chunk) -> int:
    """At most what `chunk` adds to an encoded request: its spans with their field headers, and its
    resource and scope groups with theirs (a group shared by several chunks is counted in each)."""
    groups = sum(len(g.resource) + len(g.scope) + 2 * _FIELD for g in set(chunk.groups))
    return chunk.nbytes + _FIELD * len(chunk.spans) + groups


async def resolve(name: str, port: int) -> list[str]:
    """host:port of every address a (headless Service) DNS name resolves to."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    hosts = sorted({str(info[4][0]) for info in infos})
    return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]


async def watch_dns(membership: Membership, name: str, port: int, interval: float) -> None:
    """Re-resolve the member list every `interval`; a failed lookup keeps the last known members."""
    while True:
        try:
            members = await resolve(name, port)
        except OSError as exc:
            log.warning("peer discovery: cannot resolve %s (%s); keeping %d members", name, exc,
                        len(membership.members))
        else:
            if members:
                membership.set(members)
        await asyncio.sleep(interval)
