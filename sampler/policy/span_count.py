"""`span_count`: samples traces with at least `min_spans` spans and, when `max_spans` is not 0,
at most `max_spans` (both inclusive, as upstream)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sampler.policy.base import Policy, Vote
from sampler.summary import TraceSummary


class SpanCountConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_spans: int = Field(default=0, ge=0)
    max_spans: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> SpanCountConfig:
        if self.max_spans and self.max_spans < self.min_spans:
            raise ValueError(f"max_spans {self.max_spans} is less than min_spans {self.min_spans}")
        return self


class SpanCount(Policy):
    def __init__(self, name: str, config: SpanCountConfig) -> None:
        super().__init__(name)
        self.low = config.min_spans
        self.high = config.max_spans

    def evaluate(self, trace: TraceSummary) -> Vote:
        n = trace.spans
        hit = n >= self.low and (self.high == 0 or n <= self.high)
        return Vote.SAMPLED if hit else Vote.NOT_SAMPLED
