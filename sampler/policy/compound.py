"""`and`, `not` and `drop`: policies made of sub-policies, with upstream's vote rules.

- and: Sampled when every sub-policy samples; NotSampled as soon as one says NotSampled or
  InvertNotSampled.
- not: the opposite of its one sub-policy's Sampled/NotSampled (other votes pass through).
- drop: Dropped (a veto over every other policy) when every sub-policy samples.
A sub-policy's evaluation error propagates, so the compound policy abstains.
"""

from __future__ import annotations

from collections.abc import Sequence

from sampler.policy.base import Policy, Vote
from sampler.policy.summary import TraceSummary


class And(Policy):
    def __init__(self, name: str, subs: Sequence[Policy]) -> None:
        super().__init__(name)
        self.subs = list(subs)

    def children(self) -> Sequence[Policy]:
        return self.subs

    def evaluate(self, trace: TraceSummary) -> Vote:
        return self._all(trace, False)

    def peek(self, trace: TraceSummary) -> Vote:
        return self._all(trace, True)

    def _all(self, trace: TraceSummary, peek: bool) -> Vote:
        for sub in self.subs:
            if (sub.peek(trace) if peek else sub.evaluate(trace)) in (Vote.NOT_SAMPLED, Vote.INVERT_NOT_SAMPLED):
                return Vote.NOT_SAMPLED
        return Vote.SAMPLED


class Drop(And):
    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.DROPPED if self._all(trace, False) is Vote.SAMPLED else Vote.NOT_SAMPLED

    def peek(self, trace: TraceSummary) -> Vote:
        return Vote.DROPPED if self._all(trace, True) is Vote.SAMPLED else Vote.NOT_SAMPLED


class Not(Policy):
    def __init__(self, name: str, sub: Policy) -> None:
        super().__init__(name)
        self.sub = sub

    def children(self) -> Sequence[Policy]:
        return (self.sub,)

    def evaluate(self, trace: TraceSummary) -> Vote:
        return _negate(self.sub.evaluate(trace))

    def peek(self, trace: TraceSummary) -> Vote:
        return _negate(self.sub.peek(trace))


def _negate(vote: Vote) -> Vote:
    if vote is Vote.SAMPLED:
        return Vote.NOT_SAMPLED
    if vote is Vote.NOT_SAMPLED:
        return Vote.SAMPLED
    return vote
