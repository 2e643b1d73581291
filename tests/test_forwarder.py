"""The Forwarder without a network: what each kind of answer from an owner leads to (on a clock the
test advances), how batches are cut, how much the queues take, and what closing does with what is on
its way."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import pytest

from sampler.config.yamlfile import parse_yaml
from sampler.otlp.splice import encode_request
from sampler.otlp.split import Chunk
from sampler.otlp.transport import retry_details as _retry_details
from sampler.otlp.transport import retry_hint
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core
from sampler.pipeline.decisions import DecisionCache
from sampler.pipeline.pushback import Backpressure
from sampler.policy.loader import load_policies
from sampler.sharding.forwarder import Call, Forwarder
from sampler.sharding.membership import Membership
from tests.spans import S, parse, request

ME, PEER, OTHER = "10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"
UNAVAILABLE, EXHAUSTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
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


def pushback(code: grpc.StatusCode = UNAVAILABLE, trailer: str = "both") -> grpc.aio.AioRpcError:
    """An answer as tailsampler's receivers push back (RetryInfo of 1 s), or with one trailer of the two."""
    trailers = [(k, v) for k, v in _retry_details("busy") if trailer in ("both", k)]
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "busy")


def error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


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
    """A Forwarder whose calls go to `owner`, and whose waits between attempts take no real time:
    they advance the clock (and are recorded)."""

    def __init__(self, owner: Call, clock: Clock | None = None, members: tuple[str, ...] = (ME, PEER),
                 **kwargs: Any) -> None:
        self.fake_clock = clock or Clock()
        self.kept: list[Chunk] = []
        self.pauses: list[float] = []
        self.owner_call = owner
        membership = Membership(ME, members, clock=self.fake_clock)
        super().__init__(membership, self.kept.extend, clock=self.fake_clock, **kwargs)

    def _open(self, owner: str) -> tuple[tuple[Call, Call], Callable[[], Awaitable[None]]]:
        async def close() -> None:
            return None

        return (self.owner_call, self.owner_call), close

    async def _pause(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        self.fake_clock.now += seconds
        await asyncio.sleep(0)
        return not self.closing.is_set()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize(("code", "trailer"), [(UNAVAILABLE, "both"), (UNAVAILABLE, "grpc-status-details-bin"),
                                               (UNAVAILABLE, "google.rpc.retryinfo-bin"), (EXHAUSTED, "both")])
def test_an_owner_that_pushes_back_is_retried_after_its_delay_and_stays_a_member(code: grpc.StatusCode,
                                                                                 trailer: str) -> None:
    clock = Clock()
    owner = Owner(clock, [pushback(code, trailer)] * 12)
    batch = chunks(range(1, 11))

    async def main() -> None:
        fw = Scripted(owner, clock, max_elapsed=1.0)
        fw.forward(PEER, batch)
        assert await fw.flush(5)
        assert fw.pauses == [1.0] * 12  # the owner's hint, every time
        assert sorted(owner.accepted) == sorted(span_ids(batch))
        assert fw.membership.alive == (ME, PEER) and fw.membership.changes == 0
        assert (fw.stats.pushbacks, fw.stats.failures, fw.stats.forwarded) == (12, 12, 20)
        assert not any(fw.stats.fallback.values()) and fw.kept == [] and fw.nbytes == 0
        await fw.close()

    run(main)


def test_batches_shrink_while_the_owner_pushes_back_and_grow_again_once_it_accepts() -> None:
    clock = Clock()
    owner = Owner(clock, [pushback()] * 4)
    batch = chunks(range(1, 1201), pad=600)  # about 1.5 MB in all

    async def main() -> None:
        fw = Scripted(owner, clock, batch_max_bytes=512 * KIB)
        fw.forward(PEER, batch)
        assert await fw.flush(5)
        sizes = [len(b) for b in owner.bodies]
        # refused four times: 512, 256, 128, 64 KiB (the floor), then 64 KiB accepted; then 128, 256...
        assert sizes[0] > sizes[1] > sizes[2] > sizes[3] and 32 * KIB < sizes[4] <= 64 * KIB
        assert 64 * KIB < sizes[5] <= 128 * KIB < sizes[6] and max(sizes) <= 512 * KIB
        assert Counter(owner.accepted) == Counter(span_ids(batch))  # each span once
        await fw.close()

    run(main)


def test_an_owner_that_does_not_answer_is_marked_down_after_max_elapsed() -> None:
    """Connection refused at once, every time: retried with backoff (50 ms doubling to 1 s), marked
    down at the first failure at least max_elapsed after the first one, its spans kept here."""
    clock = Clock()
    owner = Owner(clock, [error(UNAVAILABLE, "failed to connect to all addresses")] * 100)
    batch = chunks(range(1, 11))

    async def main() -> None:
        fw = Scripted(owner, clock, max_elapsed=5.0, down_cooldown=30.0)
        fw.forward(PEER, batch)
        assert await fw.flush(5)
        assert fw.pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]  # 5.55 s after the first failure
        assert len(owner.bodies) == 10 and fw.stats.failures == 10 and fw.stats.pushbacks == 0
        assert fw.membership.alive == (ME,) and fw.membership.changes == 1
        assert fw.stats.fallback["owner_unreachable"] == 20 and fw.kept == batch
        clock.now += 30.0
        fw.membership.revive()
        assert PEER in fw.membership.alive
        await fw.close()

    run(main)


def test_calls_that_time_out_mark_the_owner_down_only_when_repeated() -> None:
    """Each call takes its whole 5 s timeout: two in a row span more than max_elapsed, but only the
    third unanswered call marks the owner down."""
    clock = Clock()
    owner = Owner(clock, [error(grpc.StatusCode.DEADLINE_EXCEEDED)] * 3, seconds=5.0)

    async def main() -> None:
        fw = Scripted(owner, clock, max_elapsed=1.0)
        fw.forward(PEER, chunks([1]))
        assert await fw.flush(5)
        assert len(owner.bodies) == 3 and fw.membership.changes == 1
        assert fw.stats.fallback["owner_unreachable"] == 2

    run(main)


def test_any_answer_from_the_owner_restarts_the_count_of_unanswered_calls() -> None:
    clock = Clock()
    refused = error(UNAVAILABLE, "connection refused")
    owner = Owner(clock, [refused, refused, pushback(), refused, refused, pushback(), refused, refused], seconds=2.0)

    async def main() -> None:
        fw = Scripted(owner, clock, max_elapsed=1.0)
        fw.forward(PEER, chunks([1]))
        assert await fw.flush(5)
        assert len(owner.accepted) == 2 and fw.membership.changes == 0 and not any(fw.stats.fallback.values())
        await fw.close()

    run(main)


@pytest.mark.parametrize("code", [EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED])
def test_a_rejected_batch_is_kept_here_at_once_and_the_owner_stays_a_member(code: grpc.StatusCode) -> None:
    """RESOURCE_EXHAUSTED without RetryInfo is how gRPC refuses a message over the owner's size limit:
    retrying cannot help."""
    clock = Clock()
    owner = Owner(clock, [error(code, "Received message larger than max")])
    first, second = chunks([1]), chunks([2])

    async def main() -> None:
        fw = Scripted(owner, clock)
        fw.forward(PEER, first)
        assert await fw.flush(5)
        assert fw.kept == first and fw.stats.fallback["rejected"] == 2 and fw.pauses == []
        fw.forward(PEER, second)
        assert await fw.flush(5)
        assert owner.accepted == span_ids(second) and fw.membership.changes == 0
        await fw.close()

    run(main)


def test_an_owner_that_accepts_nothing_for_busy_max_elapsed_gets_its_spans_kept_here() -> None:
    clock = Clock()
    owner = Owner(clock, [pushback()] * 20)
    first, second, third = chunks([1]), chunks([2]), chunks([3])

    async def main() -> None:
        fw = Scripted(owner, clock, busy_max_elapsed=10.0)
        fw.forward(PEER, first)
        assert await fw.flush(5)
        assert fw.pauses == [1.0] * 10 and fw.kept == first and fw.stats.fallback["owner_busy"] == 2
        fw.forward(PEER, second)  # still refusing: one more try, then kept here
        assert await fw.flush(5)
        assert fw.kept == first + second and len(owner.bodies) == 12
        owner.answers.clear()  # it accepts again
        fw.forward(PEER, third)
        assert await fw.flush(5)
        assert owner.accepted == span_ids(third)
        assert fw.membership.changes == 0 and fw.membership.alive == (ME, PEER)
        await fw.close()

    run(main)


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


def test_each_owner_queue_takes_its_share_and_an_empty_one_takes_anything() -> None:
    async def main() -> None:
        fw = Scripted(Owner(Clock()), members=(ME, PEER, OTHER), max_bytes=100_000)  # a share: 50 kB
        one = chunks([1], spans=4, pad=9000)  # ~36 kB
        assert fw.room({PEER: one + one + one})  # an empty queue: more than a share
        fw.forward(PEER, one)  # (nothing is sent until the test awaits)
        assert not fw.room({PEER: one})  # 72 kB > its share
        assert fw.room({OTHER: one}) and fw.room({PEER: chunks([2], spans=1)})
        fw.forward(OTHER, one + one)
        assert not fw.room({OTHER: chunks([2], spans=1)})  # over its share already
        assert not fw.room({PEER: chunks([2], spans=3, pad=9000)})  # within PEER's share, over the whole bound
        await fw.close()

    run(main)


def test_the_core_refuses_a_request_whose_spans_the_forward_queues_cannot_take() -> None:
    core = engine_core()
    forwarded: list[Chunk] = []
    membership = Membership(ME, [ME, PEER])
    core.route = membership.route
    core.forward = lambda owner, c: forwarded.extend(c)
    core.pushback.forward_room = lambda remote: False
    body = request([S(n, n) for n in range(1, 41)])
    with pytest.raises(Backpressure) as refused:
        core.ingest(body, "grpc", 0.0)
    assert refused.value.reason == "forward_queue_full"
    assert len(core.buffer) == 0 and forwarded == [] and core.stats.spans_received["grpc"] == 0  # nothing taken
    core.pushback.forward_room = lambda remote: True
    assert core.ingest(body, "grpc", 0.0) == 40 and forwarded and len(core.buffer) == 40 - len(forwarded)


def test_close_waits_for_a_call_in_flight_and_keeps_the_queue_here() -> None:
    accepted: list[str] = []

    async def main() -> None:
        release = asyncio.Event()
        started = asyncio.Event()

        async def slow(body: bytes, **kwargs: Any) -> bytes:
            started.set()
            await release.wait()
            accepted.extend(ids_in(body))
            return b""

        first, rest = chunks([1]), chunks(range(2, 6))
        fw = Scripted(slow, batch_max_bytes=1)  # one chunk a batch
        fw.forward(PEER, first)
        await started.wait()
        fw.forward(PEER, rest)
        closing = asyncio.create_task(fw.close())
        await fw.closing.wait()
        release.set()
        await closing
        assert accepted == span_ids(first) and fw.stats.forwarded == 2
        assert fw.kept == rest and fw.stats.fallback["shutdown"] == 8 and fw.nbytes == 0

    run(main)


def test_close_hands_back_a_batch_waiting_to_be_retried_at_once() -> None:
    async def main() -> None:
        refused = asyncio.Event()

        async def busy(body: bytes, **kwargs: Any) -> bytes:
            refused.set()
            raise grpc.aio.AioRpcError(UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(*_retry_details("x")),
                                       "busy")

        batch = chunks(range(1, 4))
        kept: list[Chunk] = []

        class Busy(Forwarder):
            def _open(self, owner: str) -> tuple[tuple[Call, Call], Callable[[], Awaitable[None]]]:
                async def close() -> None:
                    return None

                return (busy, busy), close

            def _failed(self, peer: Any, batch: list[Chunk], exc: grpc.aio.AioRpcError) -> float | None:
                super()._failed(peer, batch, exc)
                return 3600.0  # a retry an hour away: close() must not wait for it

        fw = Busy(Membership(ME, [ME, PEER]), kept.extend)
        fw.forward(PEER, batch)
        await refused.wait()
        await asyncio.wait_for(fw.close(), 10)
        assert kept == batch and fw.stats.fallback["shutdown"] == 6

    run(main)


def test_a_call_that_outlives_its_timeout_at_close_is_cancelled_and_its_batch_kept_here() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def hung(body: bytes, **kwargs: Any) -> bytes:
            started.set()
            await asyncio.Event().wait()  # a call that ignores its deadline
            return b""

        batch = chunks(range(1, 4))
        fw = Scripted(hung, timeout=0.1)
        fw.forward(PEER, batch)
        await started.wait()
        await fw.close()
        assert fw.kept == batch and fw.stats.fallback["shutdown"] == 6 and fw.nbytes == 0

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


def test_retry_hints_are_read_from_either_trailer() -> None:
    status, alone = _retry_details("busy")
    assert retry_hint([status]) == 1.0 and retry_hint([alone]) == 1.0
    assert retry_hint([]) is None and retry_hint(None) is None
    assert retry_hint([("grpc-status-details-bin", b"\xff\xff")]) is None  # not a Status: no hint
    assert retry_hint([("google.rpc.retryinfo-bin", "text")]) is None
