"""`tailsampler validate`: check config and policy files without starting anything."""

from __future__ import annotations

from pathlib import Path

from sampler.config.yamlfile import ConfigError, Problem, load_yaml
from sampler.policy.loader import load_policies
from sampler.server.settings import load_config


def validate_file(path: Path) -> list[Problem]:
    """Check a config file or a policies file (told apart by their keys); [] when valid."""
    try:
        doc = load_yaml(path)
        data = doc.data
        is_policies = isinstance(data, dict) and (
            "tail_sampling" in data or "processors" in data or ("policies" in data and len(data) == 1)
        )
        if is_policies:
            load_policies(doc)
        else:
            load_config(path, environ={})
    except ConfigError as exc:
        return exc.problems
    return []
