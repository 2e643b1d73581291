"""The YAML settings of each policy type (pydantic models), kept apart from the policies themselves.

The policy modules are compiled with mypyc (setup.py), which cannot compile pydantic models: their
fields and validators are built by pydantic's metaclass at import. So the models live here,
interpreted, one section per policy module, and each policy takes its validated model. (ottl.py
keeps its own, since that module stays interpreted.)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sampler.policy.hashing import DEFAULT_SALT
from sampler.policy.regex import compile_pattern, joined


# always_sample
class AlwaysSampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


# boolean_attribute
class BooleanAttributeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1)
    value: bool
    invert_match: bool = False


# composite
class RateAllocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str
    percent: int = Field(default=0, ge=0, le=100)


class CompositeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_total_spans_per_second: int = Field(gt=0)
    policy_order: list[str] = Field(default_factory=list)
    composite_sub_policy: list[dict[str, Any]] = Field(min_length=1)
    rate_allocation: list[RateAllocation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _allocations(self) -> CompositeConfig:
        total = sum(r.percent for r in self.rate_allocation)
        if total > 100:
            raise ValueError(f"rate_allocation adds up to {total}%, over 100%")
        names = {s.get("name") for s in self.composite_sub_policy}
        for r in self.rate_allocation:
            if r.policy not in names:
                raise ValueError(f"rate_allocation names {r.policy!r}, which is not a composite_sub_policy")
        for n in self.policy_order:
            if n not in names:
                raise ValueError(f"policy_order names {n!r}, which is not a composite_sub_policy")
        return self


# compound
class AndConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    and_sub_policy: list[dict[str, Any]] = Field(min_length=1)


class NotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    not_sub_policy: dict[str, Any]


class DropConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drop_sub_policy: list[dict[str, Any]] = Field(min_length=1)


# errors
class ErrorsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    http_status_min: int = Field(default=500, ge=100, le=999)
    # a log record of the trace at or above this severity_number is an error (17: ERROR); null: logs ignored
    log_severity_min: int | None = Field(default=17, ge=1, le=24)


# latency
class LatencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold_ms: int = 0
    upper_threshold_ms: int = 0

    @model_validator(mode="after")
    def _bounds(self) -> LatencyConfig:
        if self.upper_threshold_ms and self.upper_threshold_ms < self.threshold_ms:
            raise ValueError("upper_threshold_ms must be at least threshold_ms")
        return self


# numeric_attribute
class NumericAttributeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1)
    min_value: int | None = None
    max_value: int | None = None
    invert_match: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> NumericAttributeConfig:
        if self.min_value is None and self.max_value is None:
            raise ValueError("at least one of min_value or max_value must be set")
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value} is greater than max_value {self.max_value}")
        return self


# probabilistic
class ProbabilisticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hash_salt: str = DEFAULT_SALT
    sampling_percentage: float = Field(ge=0, le=100)


# rate_limiting
class RateLimitingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spans_per_second: int = Field(gt=0)
    burst_capacity: int | None = Field(default=None, gt=0)


class BytesLimitingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes_per_second: int = Field(gt=0)
    burst_capacity: int | None = Field(default=None, gt=0)


# route
class RouteRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    match: str = Field(min_length=1)
    sample_percentage: float = Field(ge=0, le=100)
    regex: bool = False

    @model_validator(mode="after")
    def _regex(self) -> RouteRule:
        if self.regex:
            try:
                compile_pattern(self.match)
            except ValueError as exc:
                raise ValueError(f"invalid regex {self.match!r}: {exc}") from None
        return self


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attribute: str = "http.route"
    rules: list[RouteRule] = Field(default_factory=list)
    default_percentage: float = Field(default=0, ge=0, le=100)
    hash_salt: str = DEFAULT_SALT


# span_count
class SpanCountConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_spans: int = Field(default=0, ge=0)
    max_spans: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> SpanCountConfig:
        if self.max_spans and self.max_spans < self.min_spans:
            raise ValueError(f"max_spans {self.max_spans} is less than min_spans {self.min_spans}")
        return self


# status_code
class StatusCodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status_codes: list[Literal["OK", "ERROR", "UNSET"]] = Field(min_length=1)


# string_attribute
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


# trace_flags
class TraceFlagsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


# trace_state
class TraceStateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)
