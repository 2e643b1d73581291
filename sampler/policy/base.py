"""The one small protocol every policy type implements, and the votes it can cast.

Votes follow the OpenTelemetry Collector's tail_sampling processor: a policy answers Sampled or
NotSampled; an `invert_match` policy answers InvertSampled / InvertNotSampled (and InvertNotSampled
vetoes, as upstream); a `drop` policy answers Dropped (a veto).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

from mypy_extensions import mypyc_attr

from sampler.otlp.wire import AttrValue, SpanFields
from sampler.policy.summary import TraceSummary


class Vote(enum.Enum):
    NOT_SAMPLED = "not_sampled"
    SAMPLED = "sampled"
    INVERT_SAMPLED = "invert_sampled"
    INVERT_NOT_SAMPLED = "invert_not_sampled"
    DROPPED = "dropped"


KEEP_VOTES = (Vote.SAMPLED, Vote.INVERT_SAMPLED)


def match_vote(hit: bool, invert: bool) -> Vote:
    """The vote of an attribute match, as upstream: with invert_match, a match is InvertNotSampled
    (a veto) and its absence InvertSampled."""
    if invert:
        return Vote.INVERT_NOT_SAMPLED if hit else Vote.INVERT_SAMPLED
    return Vote.SAMPLED if hit else Vote.NOT_SAMPLED


@mypyc_attr(allow_interpreted_subclasses=True)  # ottl.py's policy and tests' subclass it
class Policy:
    """A named rule over a trace summary.

    Per-span questions are answered at ingest, not at decision time, and folded into one bit of the
    trace summary (`self.bit`, assigned by the engine):
    - a policy that reads attributes declares the `keys` it reads and implements `matches`, a test
      of one key's value: the engine calls it with one span attribute at a time (the result is
      cached per key and value, so it must depend on nothing else) and once per resource with the
      resource's attributes;
    - a policy that reads other span fields sets `span_level` and implements `matches_span`
      (its `keys`, if any, are still extracted into `span.attrs` and `span.group.attrs`).

    Set `keys`, `span_level` and `predicate` on the instance after `super().__init__()`: this class
    is compiled (mypyc), and a class-level override in a subclass is not seen by compiled readers.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.bit = 0
        self.keys: frozenset[str] = frozenset()
        self.span_level = False
        self.predicate = True  # False: `keys` are only extracted (e.g. route reads them from the root span)
        self.spec: object = None  # the policy's definition as written (set by the loader), for reloads
        # Its keeps are by probability (probabilistic, route), 1/sample_rate: kept traces carry it as the
        # OpenTelemetry consistent-sampling threshold (sampler/otlp/tracestate.py); rule-based keeps do not.
        self.by_probability = False

    def matches(self, attrs: Mapping[str, AttrValue], is_resource: bool) -> bool:
        """Whether one span's (or one resource's) attributes satisfy this policy's predicate."""
        return False

    def matches_span(self, span: SpanFields) -> bool:
        """Whether one span satisfies this policy's predicate (span_level policies)."""
        return False

    def matched(self, trace: TraceSummary) -> bool:
        return bool(self.bit) and bool(trace.matches & self.bit)

    def children(self) -> Sequence[Policy]:
        """Sub-policies (and, not, drop, composite); the engine assigns their bits too."""
        return ()

    def evaluate(self, trace: TraceSummary) -> Vote:
        raise NotImplementedError

    def peek(self, trace: TraceSummary) -> Vote:
        """The vote `evaluate` would cast now, changing nothing: a policy with state (a rate budget)
        overrides it, and so does one with sub-policies (they may have state). For /debug."""
        return self.evaluate(trace)

    def sample_rate(self, trace: TraceSummary) -> float:
        """1 / probability of keeping a trace like this one (1 for rule-based keeps)."""
        return 1.0
