"""Loads a policies file in the OpenTelemetry Collector `tail_sampling` schema.

Accepted shapes: a bare `policies:` list, a `tail_sampling:` block, or a whole Collector config
with `processors: {tail_sampling: ...}`. Every problem is reported with its line, never just the
first one, so that one `validate` run shows everything to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from sampler.policy.always_sample import AlwaysSample, AlwaysSampleConfig
from sampler.policy.base import Policy
from sampler.policy.errors import Errors, ErrorsConfig
from sampler.policy.latency import Latency, LatencyConfig
from sampler.policy.numeric_attribute import NumericAttribute, NumericAttributeConfig
from sampler.policy.probabilistic import Probabilistic, ProbabilisticConfig
from sampler.policy.route import Route, RouteConfig
from sampler.policy.status_code import StatusCode, StatusCodeConfig
from sampler.policy.string_attribute import StringAttribute, StringAttributeConfig
from sampler.yamlfile import ConfigError, Loc, Problem, YamlDoc

PolicyFactory = Callable[[str, Any], Policy]

TYPES: dict[str, tuple[type[BaseModel], PolicyFactory]] = {
    "always_sample": (AlwaysSampleConfig, AlwaysSample),
    "latency": (LatencyConfig, Latency),
    "status_code": (StatusCodeConfig, StatusCode),
    "probabilistic": (ProbabilisticConfig, Probabilistic),
    "string_attribute": (StringAttributeConfig, StringAttribute),
    "numeric_attribute": (NumericAttributeConfig, NumericAttribute),
    "errors": (ErrorsConfig, Errors),
    "route": (RouteConfig, Route),
}

# Collector policy types that are recognised but not implemented yet: refused by name, so a
# migrated config fails loudly instead of silently deciding differently.
NOT_YET = frozenset({
    "rate_limiting", "bytes_limiting", "span_count", "trace_state", "boolean_attribute", "trace_flags",
    "and", "not", "drop", "composite", "ottl_condition",
})


@dataclass
class PolicySet:
    policies: list[Policy]
    decision_wait: Any = None  # from a tail_sampling block: maps onto buffer.decision_wait
    num_traces: Any = None  # ...and onto buffer.max_traces


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


def load_policies(doc: YamlDoc, base: Loc | None = None) -> PolicySet:
    """Build the policies of a YAML document (or of `doc.data` at `base` for inline policies)."""
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
    problems: list[Problem] = []
    policies = [p for i, item in enumerate(items) if (p := _policy(doc, (*base, "policies", i), item, problems))]
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name:
            if name in seen:
                problems.append(doc.problem((*base, "policies", i, "name"), f"duplicate policy name {name!r}"))
            seen.setdefault(name, i)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line))
    return PolicySet(policies, block.get("decision_wait"), block.get("num_traces"))


def _policy(doc: YamlDoc, loc: Loc, item: Any, problems: list[Problem]) -> Policy | None:
    if not isinstance(item, dict):
        problems.append(doc.problem(loc, "expected a mapping with name and type"))
        return None
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(doc.problem((*loc, "name"), "a policy needs a non-empty name"))
    kind = item.get("type")
    if kind in NOT_YET:
        problems.append(doc.problem((*loc, "type"), f"policy type {kind!r} is not supported by this version"))
        return None
    if kind not in TYPES:
        known = ", ".join(sorted(TYPES))
        problems.append(doc.problem((*loc, "type"), f"unknown policy type {kind!r} (known: {known})"))
        return None
    for key in item:
        if key not in ("name", "type", kind):
            problems.append(doc.problem((*loc, str(key)), f"unexpected key for a {kind} policy"))
    model, factory = TYPES[kind]
    body = item.get(kind)
    if body is None:
        body = {}
    try:
        config = model.model_validate(body)
    except ValidationError as exc:
        problems.extend(doc.problems_from(exc, (*loc, kind)))
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    return factory(name, config)
