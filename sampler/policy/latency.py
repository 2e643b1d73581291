"""`latency`: samples traces whose whole duration (latest end - earliest start) is long.

As upstream (since opentelemetry-collector-contrib #49595, which made the lower bound agree in both
modes): with only `threshold_ms`, duration > threshold samples; with `upper_threshold_ms` too,
threshold < duration <= upper samples. Durations are truncated to whole milliseconds first, so a
trace of threshold + 0.9 ms is not sampled either.
"""

from __future__ import annotations

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import LatencyConfig
from sampler.policy.summary import TraceSummary


class Latency(Policy):
    def __init__(self, name: str, config: LatencyConfig) -> None:
        super().__init__(name)
        self.lower = config.threshold_ms
        self.upper = config.upper_threshold_ms

    def evaluate(self, trace: TraceSummary) -> Vote:
        ms = trace.duration_ns // 1_000_000
        hit = self.lower < ms and (self.upper == 0 or ms <= self.upper)
        return Vote.SAMPLED if hit else Vote.NOT_SAMPLED
