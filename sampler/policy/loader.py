"""Loads a policies file in the OpenTelemetry Collector `tail_sampling` schema.

Accepted shapes: a bare `policies:` list, a `tail_sampling:` block, or a whole Collector config
with `processors: {tail_sampling: ...}`. Every problem is reported with its line, never just the
first one, so that one `validate` run shows everything to fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from sampler.config.units import parse_duration
from sampler.config.yamlfile import ConfigError, Loc, Problem, YamlDoc
from sampler.policy.always_sample import AlwaysSample
from sampler.policy.base import Policy
from sampler.policy.boolean_attribute import BooleanAttribute
from sampler.policy.composite import Composite
from sampler.policy.compound import And, Drop, Not
from sampler.policy.configs import (
    AlwaysSampleConfig,
    AndConfig,
    BooleanAttributeConfig,
    BytesLimitingConfig,
    CompositeConfig,
    DropConfig,
    ErrorsConfig,
    LatencyConfig,
    NotConfig,
    NumericAttributeConfig,
    ProbabilisticConfig,
    RateLimitingConfig,
    RouteConfig,
    SpanCountConfig,
    StatusCodeConfig,
    StringAttributeConfig,
    TraceFlagsConfig,
    TraceStateConfig,
)
from sampler.policy.engine import Engine
from sampler.policy.errors import Errors
from sampler.policy.latency import Latency
from sampler.policy.numeric_attribute import NumericAttribute
from sampler.policy.ottl import OttlCondition, OttlConditionConfig
from sampler.policy.probabilistic import Probabilistic
from sampler.policy.rate_limiting import BytesLimiting, RateLimiting
from sampler.policy.route import Route
from sampler.policy.span_count import SpanCount
from sampler.policy.status_code import StatusCode
from sampler.policy.string_attribute import StringAttribute
from sampler.policy.trace_flags import TraceFlags
from sampler.policy.trace_state import TraceState

Clock = Callable[[], float]
Factory = Callable[[str, Any, Clock], Policy]


def _plain(cls: Callable[[str, Any], Policy]) -> Factory:
    return lambda name, config, clock: cls(name, config)


# Types that need no sub-policies ("shared" types upstream), with their config models.
SIMPLE: dict[str, tuple[type[BaseModel], Factory]] = {
    "always_sample": (AlwaysSampleConfig, _plain(AlwaysSample)),
    "latency": (LatencyConfig, _plain(Latency)),
    "status_code": (StatusCodeConfig, _plain(StatusCode)),
    "probabilistic": (ProbabilisticConfig, _plain(Probabilistic)),
    "string_attribute": (StringAttributeConfig, _plain(StringAttribute)),
    "numeric_attribute": (NumericAttributeConfig, _plain(NumericAttribute)),
    "boolean_attribute": (BooleanAttributeConfig, _plain(BooleanAttribute)),
    "span_count": (SpanCountConfig, _plain(SpanCount)),
    "trace_state": (TraceStateConfig, _plain(TraceState)),
    "trace_flags": (TraceFlagsConfig, _plain(TraceFlags)),
    "ottl_condition": (OttlConditionConfig, _plain(OttlCondition)),
    "rate_limiting": (RateLimitingConfig, RateLimiting),
    "bytes_limiting": (BytesLimitingConfig, BytesLimiting),
    "errors": (ErrorsConfig, _plain(Errors)),
    "route": (RouteConfig, _plain(Route)),
}
COMPOUND: dict[str, type[BaseModel]] = {
    "and": AndConfig, "not": NotConfig, "drop": DropConfig, "composite": CompositeConfig,
}
ALL_TYPES = frozenset(SIMPLE) | frozenset(COMPOUND)
# Where each compound type may appear, as upstream: composite takes `and` sub-policies too.
SUB_TYPES = {"and": frozenset(SIMPLE), "not": frozenset(SIMPLE), "drop": frozenset(SIMPLE),
             "composite": frozenset(SIMPLE) | {"and"}}


@dataclass
class PolicySet:
    policies: list[Policy]
    decision_wait: Any = None  # from a tail_sampling block: maps onto buffer.decision_wait
    num_traces: Any = None  # ...and onto buffer.max_traces
    sample_on_first_match: bool = False

    def engine(self) -> Engine:
        return Engine(self.policies, sample_on_first_match=self.sample_on_first_match)


def _locate(doc: YamlDoc) -> tuple[Any, Loc]:
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([doc.problem((), "expected a mapping with a `policies:` list")])
    if "policies" in data:
        return data, ()
    if "tail_sampling" in data:
        return data["tail_sampling"], ("tail_sampling",)
    processors = data.get("processors")
    if isinstance(processors, dict):
        for key, block in processors.items():
            if key == "tail_sampling" or str(key).startswith("tail_sampling/"):
                return block, ("processors", key)
    raise ConfigError([doc.problem((), "no `policies:` list, `tail_sampling:` block or processors.tail_sampling")])


def load_policies(doc: YamlDoc, base: Loc | None = None, clock: Clock = time.monotonic) -> PolicySet:
    """Build the policies of a YAML document (or of `doc.data` at `base` for inline policies).

    `clock` drives the stateful policies (rate_limiting, bytes_limiting, composite)."""
    if base is None:
        block, base = _locate(doc)
    else:
        block = doc.data
        for part in base:
            block = block[part]
        block = {"policies": block}
        base = base[:-1]
    if not isinstance(block, dict):
        raise ConfigError([doc.problem(base, "expected a mapping")])
    items = block.get("policies")
    if not isinstance(items, list) or not items:
        raise ConfigError([doc.problem((*base, "policies"), "expected a non-empty list of policies")])
    builder = _Builder(doc, clock)
    policies = builder.many((*base, "policies"), items, ALL_TYPES)
    first_match = block.get("sample_on_first_match", False)
    if not isinstance(first_match, bool):
        builder.problems.append(doc.problem((*base, "sample_on_first_match"), "expected true or false"))
    if block.get("decision_wait") is not None:
        try:
            parse_duration(block["decision_wait"])
        except ValueError as exc:
            builder.problems.append(doc.problem((*base, "decision_wait"), str(exc)))
    num_traces = block.get("num_traces")
    if num_traces is not None and (type(num_traces) is not int or num_traces <= 0):
        builder.problems.append(doc.problem((*base, "num_traces"), "expected a positive integer"))
    if builder.problems:
        raise ConfigError(sorted(builder.problems, key=lambda p: p.line))
    return PolicySet(policies, block.get("decision_wait"), block.get("num_traces"), bool(first_match))


class _Builder:
    def __init__(self, doc: YamlDoc, clock: Clock) -> None:
        self.doc = doc
        self.clock = clock
        self.problems: list[Problem] = []

    def many(self, loc: Loc, items: Any, allowed: frozenset[str]) -> list[Policy]:
        if not isinstance(items, list) or not items:
            self.problems.append(self.doc.problem(loc, "expected a non-empty list of policies"))
            return []
        out = [p for i, item in enumerate(items) if (p := self.one((*loc, i), item, allowed))]
        seen: set[str] = set()
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name:
                if name in seen:
                    self.problems.append(self.doc.problem((*loc, i, "name"), f"duplicate policy name {name!r}"))
                seen.add(name)
        return out

    def one(self, loc: Loc, item: Any, allowed: frozenset[str]) -> Policy | None:
        doc = self.doc
        if not isinstance(item, dict):
            self.problems.append(doc.problem(loc, "expected a mapping with name and type"))
            return None
        name = item.get("name")
        named = isinstance(name, str) and bool(name.strip())
        if not named:
            self.problems.append(doc.problem((*loc, "name"), "a policy needs a non-empty name"))
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in ALL_TYPES:
            known = ", ".join(sorted(ALL_TYPES))
            self.problems.append(doc.problem((*loc, "type"), f"unknown policy type {kind!r} (known: {known})"))
            return None
        if kind not in allowed:
            self.problems.append(doc.problem((*loc, "type"), f"a {kind} policy cannot be used here"))
            return None
        for key in item:
            if key not in ("name", "type", kind):
                self.problems.append(doc.problem((*loc, str(key)), f"unexpected key for a {kind} policy"))
        body = item.get(kind)
        if body is None:
            body = {}
        model = SIMPLE[kind][0] if kind in SIMPLE else COMPOUND[kind]
        try:
            config = model.model_validate(body)
        except ValidationError as exc:
            self.problems.extend(doc.problems_from(exc, (*loc, kind)))
            return None
        before = len(self.problems)
        policy = self.build(str(name), kind, config, (*loc, kind))
        if policy is None or not named or len(self.problems) > before:
            return None
        policy.spec = item
        return policy

    def build(self, name: str, kind: str, config: Any, loc: Loc) -> Policy | None:
        if kind in SIMPLE:
            return SIMPLE[kind][1](name, config, self.clock)
        subs = SUB_TYPES[kind]
        if isinstance(config, AndConfig):
            return And(name, self.many((*loc, "and_sub_policy"), config.and_sub_policy, subs))
        if isinstance(config, DropConfig):
            return Drop(name, self.many((*loc, "drop_sub_policy"), config.drop_sub_policy, subs))
        if isinstance(config, NotConfig):
            sub = self.one((*loc, "not_sub_policy"), config.not_sub_policy, subs)
            return Not(name, sub) if sub is not None else None
        assert isinstance(config, CompositeConfig)
        parts = self.many((*loc, "composite_sub_policy"), config.composite_sub_policy, subs)
        if not parts:  # every sub-policy was invalid: already reported
            return None
        return Composite(name, config, parts, self.clock)
