"""`string_attribute`: samples traces where a span or resource attribute equals (or, with
`enabled_regex_matching`, contains a match of) one of `values`. Regexes are unanchored, as Go's
`regexp.MatchString` upstream. With `invert_match`, a match votes InvertNotSampled (a veto) and its
absence InvertSampled."""

from __future__ import annotations

from collections.abc import Mapping

from sampler.otlp.wire import AttrValue
from sampler.policy.base import Policy, Vote, match_vote
from sampler.policy.configs import StringAttributeConfig
from sampler.policy.regex import compile_pattern, joined
from sampler.policy.summary import TraceSummary


class StringAttribute(Policy):
    def __init__(self, name: str, config: StringAttributeConfig) -> None:
        super().__init__(name)
        self.key = config.key
        self.keys = frozenset({config.key})
        self.invert = config.invert_match
        self.values = frozenset(config.values)
        self.pattern = (
            compile_pattern(joined(config.values)) if config.enabled_regex_matching else None
        )

    def matches(self, attrs: Mapping[str, AttrValue], is_resource: bool) -> bool:
        value = attrs.get(self.key)
        if not isinstance(value, str):
            return False
        if self.pattern is not None:
            return self.pattern.search(value) is not None
        return value in self.values

    def evaluate(self, trace: TraceSummary) -> Vote:
        return match_vote(self.matched(trace), self.invert)
