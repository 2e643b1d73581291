"""The one small protocol every policy type implements, and the votes it can cast.

Votes follow the OpenTelemetry Collector's tail_sampling processor: a policy answers Sampled or
NotSampled; an `invert_match` policy answers InvertSampled / InvertNotSampled (and InvertNotSampled
vetoes, as upstream); a `drop` policy answers Dropped (a veto).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from sampler.otlp.wire import AttrValue
from sampler.summary import TraceSummary


class Vote(enum.Enum):
    NOT_SAMPLED = "not_sampled"
    SAMPLED = "sampled"
    INVERT_SAMPLED = "invert_sampled"
    INVERT_NOT_SAMPLED = "invert_not_sampled"
    DROPPED = "dropped"


class Policy:
    """A named rule over a trace summary.

    A policy that looks at attributes declares the `keys` it reads and implements `matches`; the
    engine then evaluates `matches` once per span (and once per resource) at ingest and folds the
    answer into one bit of the trace summary, `self.bit`.
    """

    keys: frozenset[str] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name
        self.bit = 0

    def matches(self, attrs: Mapping[str, AttrValue], is_resource: bool) -> bool:
        """Whether one span's (or one resource's) attributes satisfy this policy's predicate."""
        return False

    def matched(self, trace: TraceSummary) -> bool:
        return bool(self.bit) and bool(trace.matches & self.bit)

    def evaluate(self, trace: TraceSummary) -> Vote:
        raise NotImplementedError

    def sample_rate(self, trace: TraceSummary) -> float:
        """1 / probability of keeping a trace like this one (1 for rule-based keeps)."""
        return 1.0
