"""`always_sample`: every trace is sampled."""

from __future__ import annotations

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import AlwaysSampleConfig
from sampler.policy.summary import TraceSummary


class AlwaysSample(Policy):
    def __init__(self, name: str, config: AlwaysSampleConfig) -> None:
        super().__init__(name)

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED
