"""`probabilistic`: samples a percentage of traces by trace-id hash, exactly as the Collector does,
so tailsampler and a Collector with the same salt keep the same traces."""

from __future__ import annotations

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import ProbabilisticConfig
from sampler.policy.hashing import DEFAULT_SALT, SaltedHash, rate_for, threshold
from sampler.policy.summary import TraceSummary


class Probabilistic(Policy):
    def __init__(self, name: str, config: ProbabilisticConfig) -> None:
        super().__init__(name)
        self.by_probability = True
        self.hash = SaltedHash((config.hash_salt or DEFAULT_SALT).encode())
        self.percentage = config.sampling_percentage
        self.threshold = threshold(config.sampling_percentage)

    def evaluate(self, trace: TraceSummary) -> Vote:
        hit = self.percentage > 0 and self.hash(trace.trace_id) <= self.threshold
        return Vote.SAMPLED if hit else Vote.NOT_SAMPLED

    def sample_rate(self, trace: TraceSummary) -> float:
        return rate_for(self.percentage)
