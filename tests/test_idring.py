"""The decision cache's id rings: a bounded, oldest-first memory of trace ids, compiled and
interpreted alike, whose byte count is what tracemalloc sees."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.pipeline import idring
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.engine import NO_KEEP, Verdict

RINGS: list[Callable[[int], idring.Ring]] = [idring._IdRing]
if idring.IdRing is not idring._IdRing:
    RINGS.append(idring.IdRing)


def tid(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()[:16]


def half_zero(n: int) -> bytes:
    """Ids like a 64-bit tracer's, padded with zeros: only one half varies."""
    return bytes(8) + n.to_bytes(8, "big")


class Model:
    """What a ring must behave like: an insertion-ordered dict of bounded size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ids: dict[bytes, int] = {}

    def add(self, key: bytes, value: int) -> None:
        if key not in self.ids and len(self.ids) >= self.capacity:
            del self.ids[next(iter(self.ids))]
        self.ids[key] = value


@pytest.mark.parametrize("make", RINGS)
@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 40), ops=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5)), max_size=300),
       ids=st.sampled_from([tid, half_zero]))
def test_a_ring_behaves_like_a_bounded_insertion_ordered_dict(
    make: Callable[[int], idring.Ring], capacity: int, ops: list[tuple[int, int]], ids: Callable[[int], bytes]
) -> None:
    ring = make(capacity)
    model = Model(capacity)
    for n, value in ops:
        ring.add(ids(n), value)
        model.add(ids(n), value)
        assert len(ring) == len(model.ids) <= capacity
    for n in range(61):
        assert ring.get(ids(n)) == model.ids.get(ids(n), -1)


@pytest.mark.parametrize("make", RINGS)
def test_a_full_ring_keeps_exactly_the_newest_ids(make: Callable[[int], idring.Ring]) -> None:
    ring = make(50_000)
    for n in range(200_000):
        ring.add(tid(n), n & 0xFFFF)
    assert len(ring) == 50_000
    assert all(ring.get(tid(n)) == -1 for n in range(0, 150_000, 7))
    assert all(ring.get(tid(n)) == n & 0xFFFF for n in range(150_000, 200_000))
    ring.clear()
    assert len(ring) == 0 and ring.get(tid(199_999)) == -1
    ring.add(tid(1), 3)
    assert ring.get(tid(1)) == 3


@pytest.mark.parametrize("make", RINGS)
def test_only_16_byte_ids_are_taken(make: Callable[[int], idring.Ring]) -> None:
    ring = make(4)
    with pytest.raises(ValueError):
        ring.add(b"short", 0)
    assert ring.get(b"short") == -1


@pytest.mark.parametrize("make", RINGS)
def test_a_full_ring_holds_the_bytes_it_reports(make: Callable[[int], idring.Ring]) -> None:
    ids = [tid(n) for n in range(300_000)]  # made first: an id's bytes are the trace's, not the ring's
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ring = make(100_000)
        for key in ids:
            ring.add(key, 1)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    if make is idring._IdRing:
        held += 100_000 * (len(ids[0]) + 33)  # the ids it keeps alive that the trace would have freed
    assert abs(ring.nbytes - held) <= 0.2 * held, (ring.nbytes, held)


def test_the_compiled_ring_costs_at_most_32_bytes_an_id() -> None:
    if len(RINGS) == 1:
        pytest.skip("no compiled ring in this build")
    assert idring.IdRing(1_000_000).nbytes <= 32 * 1_000_000


def test_the_decision_cache_remembers_kept_verdicts_and_dropped_ids() -> None:
    cache = DecisionCache(kept_size=3, dropped_size=2)
    slow, base = Verdict(True, "slow", 1.0), Verdict(True, "baseline", 20.0)
    cache.record(tid(1), slow)
    cache.record(tid(2), base)
    cache.record(tid(3), NO_KEEP)
    cache.record(tid(4), Verdict(False, "drop-health", 0.0))
    assert cache.get(tid(1)) == slow and cache.get(tid(2)) == base
    assert cache.get(tid(3)) is NO_KEEP and cache.get(tid(4)) is NO_KEEP
    cache.record(tid(5), NO_KEEP)  # the dropped ring is full: the oldest dropped id is forgotten
    assert cache.get(tid(3)) is None and cache.get(tid(5)) is NO_KEEP
    assert len(cache.verdicts) == 2 and len(cache) == 4


def test_the_verdict_table_is_bounded() -> None:
    cache = DecisionCache(kept_size=10, dropped_size=10)
    for n in range(limit := 4096 + 5):
        cache.record(tid(n), Verdict(True, f"p{n}", 1.0))
    assert len(cache.verdicts) <= 4096
    assert cache.get(tid(limit - 1)) == Verdict(True, f"p{limit - 1}", 1.0)
