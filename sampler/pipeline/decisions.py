"""The decision cache that late spans consult, so a trace's stragglers follow its decision.

Decided trace ids live in two rings of fixed capacity (sampler/pipeline/idring.py), oldest forgotten first:
one for kept traces, whose late spans are forwarded with the same annotation (the ring holds an
index into a small table of distinct verdicts), and one for dropped traces, which need no payload
and are far more numerous. Both are allocated up front, so the cache's memory is known at start and
counted against the memory limit before the first span arrives.
"""

from __future__ import annotations

import sys

from sampler.pipeline.idring import IdRing
from sampler.policy.engine import NO_KEEP, Verdict

# Distinct kept verdicts (deciding policy and sample rate) a policy set can produce are few; reloads
# add new ones. Past this many, the kept ring is forgotten and the table started again.
MAX_VERDICTS = 4096
_VERDICT_BYTES = 200  # one Verdict tuple, its table entries and its policy name


class DecisionCache:
    def __init__(self, kept_size: int, dropped_size: int) -> None:
        self.kept = IdRing(kept_size)
        self.dropped = IdRing(dropped_size)
        self.verdicts: list[Verdict] = []
        self.index: dict[Verdict, int] = {}

    def record(self, trace_id: bytes, verdict: Verdict) -> None:
        if not verdict.keep:
            self.dropped.add(trace_id, 0)
            return
        i = self.index.get(verdict)
        if i is None:
            if len(self.verdicts) >= MAX_VERDICTS:
                self.kept.clear()
                self.verdicts.clear()
                self.index.clear()
            i = self.index[verdict] = len(self.verdicts)
            self.verdicts.append(verdict)
        self.kept.add(trace_id, i)

    def get(self, trace_id: bytes) -> Verdict | None:
        i = self.kept.get(trace_id)
        if i >= 0:
            return self.verdicts[i]
        if self.dropped.get(trace_id) >= 0:
            return NO_KEEP
        return None

    @property
    def nbytes(self) -> int:
        """Memory held: both rings (allocated up front) and the verdict table."""
        return self.kept.nbytes + self.dropped.nbytes + sys.getsizeof(self.index) + len(self.verdicts) * _VERDICT_BYTES

    def __len__(self) -> int:
        return len(self.kept) + len(self.dropped)
