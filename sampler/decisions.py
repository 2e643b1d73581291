"""The decision cache that late spans consult, so a trace's stragglers follow its decision.

Kept ids live in an LRU (cachetools) with their deciding policy, since a late kept span is
forwarded with the same annotation. Dropped ids are far more numerous and need no payload: two
generations of plain sets, the older discarded when the newer fills, bound the memory with no
per-entry bookkeeping.
"""

from __future__ import annotations

from cachetools import LRUCache

from sampler.policy.engine import NO_KEEP, Verdict


class DecisionCache:
    def __init__(self, kept_size: int, dropped_size: int) -> None:
        self.kept: LRUCache[bytes, Verdict] = LRUCache(maxsize=kept_size)
        self.generation = max(1, dropped_size // 2)
        self.dropped: set[bytes] = set()
        self.dropped_old: set[bytes] = set()

    def record(self, trace_id: bytes, verdict: Verdict) -> None:
        if verdict.keep:
            self.kept[trace_id] = verdict
            return
        if len(self.dropped) >= self.generation:
            self.dropped_old = self.dropped
            self.dropped = set()
        self.dropped.add(trace_id)

    def get(self, trace_id: bytes) -> Verdict | None:
        verdict: Verdict | None = self.kept.get(trace_id)
        if verdict is not None:
            return verdict
        if trace_id in self.dropped or trace_id in self.dropped_old:
            return NO_KEEP
        return None

    def __len__(self) -> int:
        return len(self.kept) + len(self.dropped) + len(self.dropped_old)
