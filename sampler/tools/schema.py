"""JSON Schemas for the config and policies files, generated from the same pydantic models that
validate them, so an editor (yaml-language-server) can check a ConfigMap as it is typed."""

from __future__ import annotations

import json
from typing import Any

from sampler.config.models import Config
from sampler.policy.loader import COMPOUND, SIMPLE

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_POLICY_REF = {"$ref": "#/$defs/policy"}
# The fields of compound policies that hold sub-policies (typed as free mappings in the models).
_SUB_POLICY_FIELDS = {"and": "and_sub_policy", "drop": "drop_sub_policy", "not": "not_sub_policy",
                      "composite": "composite_sub_policy"}


def _model_schema(model: Any, defs: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    return schema


def _policy_defs() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    variants = []
    for kind, model in [*((k, m) for k, (m, _) in SIMPLE.items()), *COMPOUND.items()]:
        body = _model_schema(model, defs)
        sub_field = _SUB_POLICY_FIELDS.get(kind)
        if sub_field is not None:
            prop = body["properties"][sub_field]
            body["properties"][sub_field] = _POLICY_REF if kind == "not" else {**prop, "items": _POLICY_REF}
        variants.append({
            "type": "object",
            "required": ["name", "type"],
            "properties": {"name": {"type": "string", "minLength": 1}, "type": {"const": kind}, kind: body},
            "additionalProperties": False,
        })
    defs["policy"] = {"oneOf": variants}
    return defs


def policies_schema() -> dict[str, Any]:
    defs = _policy_defs()
    block = {
        "type": "object",
        "required": ["policies"],
        "properties": {
            "policies": {"type": "array", "minItems": 1, "items": _POLICY_REF},
            "sample_on_first_match": {"type": "boolean"},
            "decision_wait": {"type": ["string", "number"]},
            "num_traces": {"type": "integer", "minimum": 1},
        },
    }
    defs["tail_sampling"] = block
    return {
        "$schema": DIALECT,
        "title": "tailsampler policies file",
        "description": "A `policies:` list, a `tail_sampling:` block, or a Collector config with "
                       "processors.tail_sampling (OpenTelemetry Collector tail_sampling schema).",
        "anyOf": [
            {"$ref": "#/$defs/tail_sampling"},
            {"type": "object", "required": ["tail_sampling"],
             "properties": {"tail_sampling": {"$ref": "#/$defs/tail_sampling"}}},
            {"type": "object", "required": ["processors"], "properties": {"processors": {
                "type": "object", "required": ["tail_sampling"],
                "properties": {"tail_sampling": {"$ref": "#/$defs/tail_sampling"}}}}},
        ],
        "$defs": defs,
    }


def config_schema() -> dict[str, Any]:
    defs = _policy_defs()
    schema = _model_schema(Config, defs)
    schema["properties"]["policies"] = {"anyOf": [{"type": "array", "minItems": 1, "items": _POLICY_REF},
                                                  {"type": "null"}]}
    return {"$schema": DIALECT, "title": "tailsampler config file", **schema, "$defs": defs}


def render(which: str) -> str:
    schema = config_schema() if which == "config" else policies_schema()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
