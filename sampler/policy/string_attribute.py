"""`string_attribute`: samples traces where a span or resource attribute equals (or, with
`enabled_regex_matching`, contains a match of) one of `values`. Regexes are unanchored, as Go's
`regexp.MatchString` upstream. With `invert_match`, a match votes InvertNotSampled (a veto) and its
absence InvertSampled."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sampler.otlp.wire import AttrValue
from sampler.policy.base import Policy, Vote, match_vote
from sampler.policy.regex import compile_pattern, joined
from sampler.summary import TraceSummary


class StringAttributeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)
    enabled_regex_matching: bool = False
    cache_max_size: int = Field(default=0, ge=0)
    invert_match: bool = False

    @model_validator(mode="after")
    def _regexes(self) -> StringAttributeConfig:
        if self.enabled_regex_matching:
            for v in self.values:
                try:
                    compile_pattern(v)
                except ValueError as exc:
                    raise ValueError(f"invalid regex {v!r}: {exc}") from None
            try:
                compile_pattern(joined(self.values))
            except ValueError as exc:
                raise ValueError(f"invalid regex (all values together): {exc}") from None
        return self


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
