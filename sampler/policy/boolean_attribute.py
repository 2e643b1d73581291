"""`boolean_attribute`: samples traces where a boolean span or resource attribute equals `value`.
`invert_match` as in string_attribute."""

from __future__ import annotations

from collections.abc import Mapping

from sampler.otlp.wire import AttrValue
from sampler.policy.base import Policy, Vote, match_vote
from sampler.policy.configs import BooleanAttributeConfig
from sampler.policy.summary import TraceSummary


class BooleanAttribute(Policy):
    def __init__(self, name: str, config: BooleanAttributeConfig) -> None:
        super().__init__(name)
        self.key = config.key
        self.keys = frozenset({config.key})
        self.value = config.value
        self.invert = config.invert_match

    def matches(self, attrs: Mapping[str, AttrValue], is_resource: bool) -> bool:
        value = attrs.get(self.key)
        return isinstance(value, bool) and value == self.value

    def evaluate(self, trace: TraceSummary) -> Vote:
        return match_vote(self.matched(trace), self.invert)
