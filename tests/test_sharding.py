"""Owner hashing and routing without I/O: every instance agrees, members share the traces evenly,
a leaving member moves only its own share, and forwarded spans are never forwarded again."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

from sampler.config.yamlfile import parse_yaml
from sampler.otlp.split import Chunk
from sampler.otlp.transport import EXPORT_METHOD, FORWARDED_HEADER
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.loader import load_policies
from sampler.receivers.grpc import GrpcReceiver
from sampler.sharding.discovery import resolve_names
from sampler.sharding.membership import Membership
from tests.spans import S, request, tid

MEMBERS = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"]
IDS = [random.Random(n).randbytes(16) for n in range(3000)]


def test_every_instance_computes_the_same_owner() -> None:
    views = [Membership(me, MEMBERS) for me in MEMBERS]
    for trace_id in IDS[:500]:
        owners = {v.owner(trace_id) for v in views}
        assert len(owners) == 1
        owner = owners.pop()
        for v in views:
            assert v.route(trace_id) == (None if v.self_addr == owner else owner)


def test_traces_are_spread_evenly() -> None:
    m = Membership(MEMBERS[0], MEMBERS)
    shares = Counter(m.owner(t) for t in IDS)
    assert set(shares) == set(MEMBERS)
    assert all(abs(n / len(IDS) - 1 / 3) < 0.04 for n in shares.values()), shares


def test_a_leaving_member_moves_only_its_own_share() -> None:
    m = Membership(MEMBERS[0], MEMBERS)
    before = {t: m.owner(t) for t in IDS}
    assert m.set(MEMBERS[:2])
    after = {t: m.owner(t) for t in IDS}
    moved = [t for t in IDS if before[t] != after[t]]
    assert moved and all(before[t] == MEMBERS[2] for t in moved)
    assert m.changes == 1
    assert not m.set(MEMBERS[:2])  # no change, no count


def test_an_unreachable_member_is_left_out_for_its_cooldown() -> None:
    now = [0.0]
    m = Membership(MEMBERS[0], MEMBERS, clock=lambda: now[0])
    m.mark_down(MEMBERS[2], cooldown=100.0)
    assert MEMBERS[2] not in {m.owner(t) for t in IDS[:300]}
    now[0] = 99.0
    m.revive()
    assert m.alive == tuple(MEMBERS[:2])
    now[0] = 100.0
    m.revive()
    assert m.alive == tuple(MEMBERS) and m.changes == 2
    m.mark_down(MEMBERS[0], cooldown=1e9)  # never self
    assert MEMBERS[0] in m.alive


def test_a_single_member_owns_everything() -> None:
    m = Membership("127.0.0.1:4317", [])
    assert all(m.route(t) is None for t in IDS[:50])


def make_core() -> tuple[Core, dict[str, list[Chunk]]]:
    forwarded: dict[str, list[Chunk]] = {}
    policies = load_policies(parse_yaml("policies: [{name: all, type: always_sample}]", "p.yaml"))
    core = Core(Buffer(100, 10**9, 5, 60), policies.engine(), DecisionCache(10, 10), lambda t: None)
    m = Membership(MEMBERS[0], MEMBERS)
    core.route = m.route
    core.forward = lambda owner, chunks: forwarded.setdefault(owner, []).extend(chunks)
    return core, forwarded


def test_the_core_keeps_its_own_traces_and_forwards_the_rest_once() -> None:
    core, forwarded = make_core()
    m = Membership(MEMBERS[0], MEMBERS)
    data = request([S(n, n * 10 + i) for n in range(1, 31) for i in range(2)])
    core.ingest(data, "grpc", 0.0)
    mine = {tid(n) for n in range(1, 31) if m.owner(tid(n)) == MEMBERS[0]}
    assert set(core.buffer.by_first) == mine
    for owner, chunks in forwarded.items():
        assert owner != MEMBERS[0]
        assert {c.trace_id for c in chunks} == {tid(n) for n in range(1, 31) if m.owner(tid(n)) == owner}
    assert sum(len(c.spans) for v in forwarded.values() for c in v) + 2 * len(mine) == 60


def test_spans_that_were_forwarded_here_are_never_forwarded_again() -> None:
    core, forwarded = make_core()
    core.ingest(request([S(n, n) for n in range(1, 31)]), "peer", 0.0)
    assert forwarded == {} and len(core.buffer) == 30
    assert core.stats.spans_received["peer"] == 30


def test_dns_discovery_resolves_the_name_and_updates_membership() -> None:
    import asyncio
    import contextlib

    from sampler.sharding.discovery import resolve, watch_dns

    async def main() -> Membership:
        assert "127.0.0.1:4317" in await resolve("localhost", 4317)
        m = Membership("10.9.9.9:4317", [])
        task = asyncio.create_task(watch_dns(m, "localhost", 4317, 0.05))
        for _ in range(100):
            if len(m.members) > 1:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return m

    m = asyncio.run(main())
    assert "127.0.0.1:4317" in m.members and "10.9.9.9:4317" in m.members  # self is always a member
    assert m.changes == 1


def test_only_members_are_trusted_with_the_forwarded_header() -> None:
    m = Membership("10.0.0.1:4317", ["10.0.0.1:4317", "[FD00:0::2]:4317", "tailsampler-2.example:4317",
                                     "[::ffff:10.0.0.4]:4317"])
    assert m.trusts("ipv4:10.0.0.1:50000")
    assert m.trusts("ipv4:10.0.0.4:50000")  # an IPv4-mapped member, reported by gRPC as IPv4
    assert m.trusts("ipv6:[fd00::2]:50000") and m.trusts("ipv6:%5Bfd00::2%5D:50000")  # both spellings grpc uses
    assert not m.trusts("ipv4:10.0.0.9:50000")
    assert not m.trusts("unix:/tmp/socket") and not m.trusts("ipv4:10.0.0.11:1")
    assert m.host_names == ["tailsampler-2.example"]
    assert not m.trusts("ipv4:10.0.0.3:50000")  # a member by name: trusted once resolved
    m.resolved["tailsampler-2.example"] = frozenset({"10.0.0.3"})
    m.update_addresses()
    assert m.trusts("ipv4:10.0.0.3:50000")
    m.set(["10.0.0.1:4317"])  # members that leave are no longer trusted
    assert not m.trusts("ipv4:10.0.0.3:50000") and not m.trusts("ipv6:[fd00::2]:1")


def test_member_names_are_resolved_to_the_addresses_to_trust() -> None:
    m = Membership("10.0.0.1:4317", ["10.0.0.1:4317", "localhost:4318"])
    assert not m.trusts("ipv4:127.0.0.1:1234")

    async def main() -> None:
        task = asyncio.create_task(resolve_names(m, 60))
        for _ in range(500):
            if "localhost" in m.resolved:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(main())
    assert "127.0.0.1" in m.resolved["localhost"] or "::1" in m.resolved["localhost"]
    assert m.trusts("ipv4:127.0.0.1:1234")


def test_the_grpc_receiver_honours_the_forwarded_header_only_from_members(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def ingest(data: bytes, protocol: str, signal: str) -> int:
        seen.append(protocol)
        return 0

    async def send(trusted: Callable[[str], bool] | None) -> str:
        rx = GrpcReceiver("127.0.0.1", 0, ingest, 2**20, lambda reason: None, trusted=trusted)
        port = await rx.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await channel.unary_unary(EXPORT_METHOD)(request([S(1, 1)]), metadata=((FORWARDED_HEADER, "1"),),
                                                         timeout=5)
        finally:
            await rx.stop(None)
        return seen[-1]

    async def main() -> None:
        assert await send(None) == "grpc"  # no sharding: nobody forwards here
        assert await send(Membership("10.0.0.1:4317", ["10.0.0.1:4317", "10.0.0.2:4317"]).trusts) == "grpc"
        assert await send(Membership("10.0.0.1:4317", ["10.0.0.1:4317", "127.0.0.1:4317"]).trusts) == "peer"

    with caplog.at_level(logging.WARNING, logger="tailsampler"):
        asyncio.run(main())
    ignored = [r for r in caplog.records if "forwarded header from ipv4:127.0.0.1" in r.getMessage()]
    assert len(ignored) == 2  # one per receiver that did not trust the caller


def test_trusted_networks_extend_trust_to_callers_a_mesh_puts_in_front() -> None:
    m = Membership("10.0.0.1:4317", ["10.0.0.1:4317", "10.0.0.2:4317"], ["127.0.0.6/32", "fd00::/8"])
    assert m.trusts("ipv4:127.0.0.6:40000") and m.trusts("ipv6:[fd12::3]:40000")
    assert not m.trusts("ipv4:127.0.0.7:40000") and not m.trusts("ipv6:[::1]:40000")
    assert m.trusts("ipv4:10.0.0.2:1")  # members still are
