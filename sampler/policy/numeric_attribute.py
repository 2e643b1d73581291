"""`numeric_attribute`: samples traces where an integer span or resource attribute lies within
[min_value, max_value] (inclusive; a missing bound is open). `invert_match` as in string_attribute."""

from __future__ import annotations

from collections.abc import Mapping

from sampler.otlp.wire import AttrValue
from sampler.policy.base import Policy, Vote, match_vote
from sampler.policy.configs import NumericAttributeConfig
from sampler.policy.summary import TraceSummary

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class NumericAttribute(Policy):
    def __init__(self, name: str, config: NumericAttributeConfig) -> None:
        super().__init__(name)
        self.key = config.key
        self.keys = frozenset({config.key})
        self.low = config.min_value if config.min_value is not None else _INT64_MIN
        self.high = config.max_value if config.max_value is not None else _INT64_MAX
        self.invert = config.invert_match

    def matches(self, attrs: Mapping[str, AttrValue], is_resource: bool) -> bool:
        value = attrs.get(self.key)
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def evaluate(self, trace: TraceSummary) -> Vote:
        return match_vote(self.matched(trace), self.invert)
