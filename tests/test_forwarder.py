"""The Forwarder without a network (its calls to owners are scripted, on a clock the test advances)."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sampler.buffer import Buffer
from sampler.core import Core
from sampler.decisions import DecisionCache
from sampler.otlp.splice import encode_request
from sampler.otlp.split import Chunk
from sampler.peers import Call, Forwarder, Membership
from sampler.policy.loader import load_policies
from sampler.yamlfile import parse_yaml
from tests.spans import S, parse, request

ME, PEER = "10.0.0.1:4317", "10.0.0.2:4317"
KIB = 1024


def engine_core() -> Core:
    policies = load_policies(parse_yaml("policies: [{name: all, type: always_sample}]", "p.yaml"))
    return Core(Buffer(10**6, 10**10, 5, 60), policies.engine(), DecisionCache(10, 10), lambda t: None)


def chunks(traces: Iterable[int], spans: int = 2, pad: int = 0) -> list[Chunk]:
    """The chunks a request of these traces splits into (`spans` spans each, `pad` bytes of attribute)."""
    core = engine_core()
    out: list[Chunk] = []
    core.route = lambda trace_id: PEER
    core.forward = lambda owner, c: out.extend(c)
    attrs = {"pad": "x" * pad} if pad else {}
    core.ingest(request([S(n, n * 1000 + i, attrs=attrs) for n in traces for i in range(spans)]), "grpc", 0.0)
    return out


def ids_in(body: bytes) -> list[str]:
    """The span ids in an encoded request, in order."""
    return [s.span_id.hex() for rs in parse(body).resource_spans for ss in rs.scope_spans for s in ss.spans]


def span_ids(batch: Iterable[Chunk]) -> list[str]:
    return [i for c in batch for i in ids_in(encode_request([(c.spans, c.groups, b"")]))]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Owner:
    """A scripted owner: each call takes `seconds` of the clock, then raises the next scripted
    error, or accepts (None, or when the script is over). Bodies of every call are kept."""

    def __init__(self, clock: Clock, answers: Iterable[Exception | None] = (), seconds: float = 0.0) -> None:
        self.clock = clock
        self.answers: deque[Exception | None] = deque(answers)
        self.seconds = seconds
        self.bodies: list[bytes] = []
        self.accepted: list[str] = []

    async def __call__(self, body: bytes, **kwargs: Any) -> bytes:
        self.clock.now += self.seconds
        self.bodies.append(body)
        answer = self.answers.popleft() if self.answers else None
        if answer is not None:
            raise answer
        self.accepted += ids_in(body)
        return b""


class Scripted(Forwarder):
    """A Forwarder whose calls go to `owner`."""

    def __init__(self, owner: Call, clock: Clock | None = None, members: tuple[str, ...] = (ME, PEER),
                 **kwargs: Any) -> None:
        self.fake_clock = clock or Clock()
        self.kept: list[Chunk] = []
        self.owner_call = owner
        membership = Membership(ME, members, clock=self.fake_clock)
        super().__init__(membership, self.kept.extend, clock=self.fake_clock, **kwargs)

    def _open(self, owner: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        async def close() -> None:
            return None

        return self.owner_call, close


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def test_forward_batches_stay_under_the_byte_bound_and_a_bigger_chunk_goes_alone() -> None:
    clock = Clock()
    owner = Owner(clock)
    small = chunks(range(1, 61), spans=3, pad=1000)  # ~3 KB a chunk
    big = chunks([1000], spans=30, pad=1000)  # one chunk of ~30 KB
    batch = small[:20] + big + small[20:]

    async def main() -> None:
        fw = Scripted(owner, clock, batch_max_bytes=16 * KIB)
        fw.forward(PEER, batch)  # one request's chunks for one owner: split across batches
        assert await fw.flush(5)
        oversized = [b for b in owner.bodies if len(b) > 16 * KIB]
        assert len(oversized) == 1 and sorted(ids_in(oversized[0])) == sorted(span_ids(big))
        assert len(owner.bodies) >= 10  # ~180 KB in 16 KiB batches
        assert Counter(owner.accepted) == Counter(span_ids(batch))
        await fw.close()

    run(main)


def test_an_unexpected_forwarding_error_keeps_the_spans_here_and_the_forwarder_alive() -> None:
    calls = 0

    async def flaky(body: bytes, **kwargs: Any) -> bytes:
        """The first call fails as a bug would; later calls succeed."""
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the forwarding path")
        return b""

    first, second = chunks([1]), chunks([2])

    async def main() -> None:
        fw = Scripted(flaky)
        fw.forward(PEER, first)
        assert await fw.flush(5)
        assert fw.kept == first and fw.stats.fallback["error"] == 2
        fw.forward(PEER, second)  # the same drain task sends the next batch
        assert await fw.flush(5)
        assert fw.stats.forwarded == 2 and fw.kept == first
        await fw.close()

    run(main)
