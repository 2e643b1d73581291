"""`trace_state`: samples traces where a span's W3C tracestate has `key` set to one of `values`."""

from __future__ import annotations

from sampler.otlp.wire import SpanFields
from sampler.policy.base import Policy, Vote
from sampler.policy.configs import TraceStateConfig
from sampler.policy.summary import TraceSummary


def tracestate_get(raw: str, key: str) -> str | None:
    """The value of `key` in a W3C tracestate header value (list members `key=value`, comma-separated)."""
    for member in raw.split(","):
        k, sep, v = member.strip().partition("=")
        if sep and k == key:
            return v
    return None


class TraceState(Policy):
    def __init__(self, name: str, config: TraceStateConfig) -> None:
        super().__init__(name)
        self.span_level = True
        self.key = config.key
        # As upstream: empty values and pairs over the 256-character member limit never match.
        self.values = frozenset(v for v in config.values if v and len(config.key) + len(v) < 256)

    def matches_span(self, span: SpanFields) -> bool:
        if not span.trace_state:
            return False
        return tracestate_get(span.trace_state, self.key) in self.values

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if self.matched(trace) else Vote.NOT_SAMPLED
