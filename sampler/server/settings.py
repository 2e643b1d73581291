"""The configuration in force: the config file merged with `TAILSAMPLER_*` environment overrides and
validated, with its policies (from a file, inline, or the built-in defaults), and where each came
from, for hot reload."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from sampler.config.models import Config, env_overrides, merge
from sampler.config.units import parse_duration
from sampler.config.yamlfile import ConfigError, YamlDoc, load_yaml, parse_yaml
from sampler.policy.loader import PolicySet, load_policies

DEFAULT_CONFIG_ENV = "TAILSAMPLER_CONFIG"
# Policies inline (YAML: a list, or any form a policies file takes); read by load_config itself, so
# their mistakes are reported against the variable, and an empty value counts as unset.
POLICIES_ENV = "TAILSAMPLER_POLICIES"


class Loaded:
    """A validated config with its policies, and where each came from (for hot reload)."""

    def __init__(self, config: Config, policies: PolicySet, policies_path: Path | None) -> None:
        self.config = config
        self.policies = policies
        self.policies_path = policies_path


def default_policies_doc() -> YamlDoc:
    text = resources.files("sampler.policy").joinpath("default.yaml").read_text(encoding="utf-8")
    return parse_yaml(text, "<built-in default policies>")


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Loaded:
    """Read, merge environment overrides into, and validate a config file and its policies."""
    environ = os.environ if environ is None else environ
    if path is not None:
        doc = load_yaml(path)
        if doc.data is None:
            doc.data = {}
        if not isinstance(doc.data, dict):
            raise ConfigError([doc.problem((), "expected a mapping of config sections")])
        base_dir = path.parent
    else:
        # CONTRACT: with no config, kept traces are written to stdout (the exporter's own default
        # endpoint is this very proxy's receiver port, which would loop).
        doc = YamlDoc("<defaults>", {"exporter": {"protocol": "stdout"}}, {})
        base_dir = Path.cwd()
    raw = merge(doc.data, env_overrides(environ))
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(doc.problems_from(exc)) from None
    policies_path: Path | None = None
    env_policies = environ.get(POLICIES_ENV, "").strip()
    if env_policies:  # the environment wins over the file, as for every key
        env_doc = parse_yaml(env_policies, f"${POLICIES_ENV}")
        policy_set = load_policies(env_doc, () if isinstance(env_doc.data, list) else None)
    elif config.policies is not None:
        policy_set = load_policies(doc, ("policies",))
    elif config.policies_file is not None:
        # Absolute but not resolved: a ConfigMap mount swaps symlinks, and each poll must follow them anew.
        policies_path = Path(os.path.abspath(base_dir / config.policies_file))
        policy_set = load_policies(load_yaml(policies_path))
    else:
        policy_set = load_policies(default_policies_doc())
    _apply_tail_sampling_block(config, policy_set)
    return Loaded(config, policy_set, policies_path)


def _apply_tail_sampling_block(config: Config, policy_set: PolicySet) -> None:
    """A Collector `tail_sampling` block's decision_wait / num_traces fill buffer keys the config left unset."""
    explicit = config.buffer.model_fields_set  # the loader has already checked both values
    if policy_set.decision_wait is not None and "decision_wait" not in explicit:
        config.buffer.decision_wait = parse_duration(policy_set.decision_wait)
    if policy_set.num_traces is not None and "max_traces" not in explicit:
        config.buffer.max_traces = int(policy_set.num_traces)
