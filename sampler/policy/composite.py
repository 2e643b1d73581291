"""`composite`: sub-policies sharing a spans-per-second budget, as upstream.

Each second, the sub-policies are asked in `composite_sub_policy` order; the first that votes to
sample admits the trace if its own allocation (`rate_allocation` percent of
`max_total_spans_per_second`; a listed policy with no percent gets an equal share, an unlisted one
nothing) and the total still have room for the trace's spans; otherwise the trace is not sampled.
Counters restart every second. `policy_order` must name the sub-policies (it is checked, and as
upstream does not change the evaluation order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sampler.policy.base import KEEP_VOTES, Policy, Vote
from sampler.policy.configs import CompositeConfig
from sampler.policy.summary import TraceSummary


class Composite(Policy):
    def __init__(self, name: str, config: CompositeConfig, subs: Sequence[Policy],
                 clock: Callable[[], float]) -> None:
        super().__init__(name)
        self.subs = list(subs)
        self.max_total = config.max_total_spans_per_second
        equal_share = self.max_total / len(self.subs)
        allocation: dict[str, float] = {}
        for r in config.rate_allocation:
            allocation[r.policy] = r.percent / 100 * self.max_total if r.percent > 0 else equal_share
        self.allocated = [int(allocation.get(s.name, 0.0)) for s in self.subs]
        self.used = [0] * len(self.subs)
        self.clock = clock
        self.second = -1

    def children(self) -> Sequence[Policy]:
        return self.subs

    def evaluate(self, trace: TraceSummary) -> Vote:
        return self._vote(trace, False)

    def peek(self, trace: TraceSummary) -> Vote:
        return self._vote(trace, True)

    def _vote(self, trace: TraceSummary, peek: bool) -> Vote:
        """With `peek`, the sub-policies are peeked and no budget is spent (nor the second rolled)."""
        second = int(self.clock())
        used = self.used
        if second != self.second:
            used = [0] * len(self.subs)
            if not peek:
                self.second = second
                self.used = used
        for i, sub in enumerate(self.subs):
            if (sub.peek(trace) if peek else sub.evaluate(trace)) in KEEP_VOTES:
                after = used[i] + trace.spans
                if after <= self.allocated[i] and after <= self.max_total:
                    if not peek:
                        used[i] = after
                    return Vote.SAMPLED
                return Vote.NOT_SAMPLED
        return Vote.NOT_SAMPLED
