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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sampler.policy.base import KEEP_VOTES, Policy, Vote
from sampler.summary import TraceSummary


class RateAllocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str
    percent: int = Field(default=0, ge=0, le=100)


class CompositeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_total_spans_per_second: int = Field(gt=0)
    policy_order: list[str] = Field(default_factory=list)
    composite_sub_policy: list[dict[str, Any]] = Field(min_length=1)
    rate_allocation: list[RateAllocation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _allocations(self) -> CompositeConfig:
        total = sum(r.percent for r in self.rate_allocation)
        if total > 100:
            raise ValueError(f"rate_allocation adds up to {total}%, over 100%")
        names = {s.get("name") for s in self.composite_sub_policy}
        for r in self.rate_allocation:
            if r.policy not in names:
                raise ValueError(f"rate_allocation names {r.policy!r}, which is not a composite_sub_policy")
        for n in self.policy_order:
            if n not in names:
                raise ValueError(f"policy_order names {n!r}, which is not a composite_sub_policy")
        return self


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
        second = int(self.clock())
        if second != self.second:
            self.second = second
            self.used = [0] * len(self.subs)
        for i, sub in enumerate(self.subs):
            if sub.evaluate(trace) in KEEP_VOTES:
                after = self.used[i] + trace.spans
                if after <= self.allocated[i] and after <= self.max_total:
                    self.used[i] = after
                    return Vote.SAMPLED
                return Vote.NOT_SAMPLED
        return Vote.NOT_SAMPLED
