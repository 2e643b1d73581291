"""`route` (tailsampler's own): a keep percentage per route.

The trace's route is `attribute` on its root span (falling back to `url.path`, then `http.target`,
then the same keys on the root's resource). The first rule whose `match` fits applies (a glob where
`*` matches anything, or with `regex: true` an unanchored regex); otherwise `default_percentage`.
The keep decision is by trace-id hash (the probabilistic policy's), so every instance agrees.
"""

from __future__ import annotations

import fnmatch
import re

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import RouteConfig
from sampler.policy.hashing import SaltedHash, rate_for, threshold
from sampler.policy.regex import compile_pattern
from sampler.policy.summary import TraceSummary

FALLBACK_KEYS = ("url.path", "http.target")


class Route(Policy):
    def __init__(self, name: str, config: RouteConfig) -> None:
        super().__init__(name)
        self.by_probability = True
        self.predicate = False  # reads the root span's attributes from the summary, per trace
        self.lookup = (config.attribute, *(k for k in FALLBACK_KEYS if k != config.attribute))
        self.keys = frozenset(self.lookup)
        # a glob is anchored (fnmatch's translation, kept on `re`: it is linear); a regex is RE2, unanchored
        self.rules = [
            (
                compile_pattern(r.match).search if r.regex else re.compile(fnmatch.translate(r.match)).match,
                r.sample_percentage,
            )
            for r in config.rules
        ]
        self.default = config.default_percentage
        self.hash = SaltedHash(config.hash_salt.encode())
        self.thresholds = {pct: threshold(pct) for pct in (self.default, *(r.sample_percentage for r in config.rules))}

    def route_of(self, trace: TraceSummary) -> str | None:
        for attrs in (trace.root_attrs, trace.root_resource_attrs):
            for key in self.lookup:
                value = attrs.get(key)
                if isinstance(value, str):
                    return value
        return None

    def percentage(self, trace: TraceSummary) -> float:
        route = self.route_of(trace)
        if route is not None:
            for matches, pct in self.rules:
                if matches(route) is not None:
                    return pct
        return self.default

    def evaluate(self, trace: TraceSummary) -> Vote:
        pct = self.percentage(trace)
        hit = pct > 0 and self.hash(trace.trace_id) <= self.thresholds[pct]
        return Vote.SAMPLED if hit else Vote.NOT_SAMPLED

    def sample_rate(self, trace: TraceSummary) -> float:
        return rate_for(self.percentage(trace))
