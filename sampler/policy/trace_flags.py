"""`trace_flags`: samples traces where any span has the W3C `sampled` flag set in its flags."""

from __future__ import annotations

from sampler.otlp.wire import SpanFields
from sampler.policy.base import Policy, Vote
from sampler.policy.configs import TraceFlagsConfig
from sampler.policy.summary import TraceSummary

SAMPLED_FLAG = 0x01


class TraceFlags(Policy):
    def __init__(self, name: str, config: TraceFlagsConfig) -> None:
        super().__init__(name)
        self.span_level = True

    def matches_span(self, span: SpanFields) -> bool:
        return bool(span.flags & SAMPLED_FLAG)

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if self.matched(trace) else Vote.NOT_SAMPLED
