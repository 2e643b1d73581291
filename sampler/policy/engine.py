"""Combines the votes of the loaded policies into one decision, as the Collector's processor does:
a Dropped or InvertNotSampled vote vetoes; otherwise any Sampled or InvertSampled vote keeps;
otherwise the trace is dropped. A policy that raises abstains (and is reported). With
`sample_on_first_match`, evaluation stops at the first Sampled vote, as upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, NamedTuple

from sampler.otlp.wire import AttrValue, SpanFields
from sampler.policy.base import Policy, Vote
from sampler.policy.summary import TraceSummary

ALWAYS_KEYS = frozenset({"service.name"})
# The votes as module constants: compiled, these are static loads, not attribute lookups on the Enum.
DROPPED: Final = Vote.DROPPED
INVERT_NOT_SAMPLED: Final = Vote.INVERT_NOT_SAMPLED
SAMPLED: Final = Vote.SAMPLED
INVERT_SAMPLED: Final = Vote.INVERT_SAMPLED
NOT_SAMPLED: Final = Vote.NOT_SAMPLED

# Each policy's vote, as one byte, when the caller asks for them (the recent-decisions ring, /debug):
# CONTRACT's names, by code. An invert_sampled vote keeps the trace as a sampled one does, and is
# reported as one; ERROR is a policy that raised (and so abstained).
VOTE_NOT_SAMPLED: Final = 0
VOTE_SAMPLED: Final = 1
VOTE_INVERTED_NOT_SAMPLED: Final = 2
VOTE_DROPPED: Final = 3
VOTE_ERROR: Final = 4
VOTE_NAMES: Final = ("not_sampled", "sampled", "inverted_not_sampled", "dropped", "error")


class Verdict(NamedTuple):
    keep: bool
    policy: str | None  # the deciding policy: first keep vote in file order, or the vetoing drop
    sample_rate: float


# What most traces get: made once, since building a NamedTuple per decision shows in profiles.
NO_KEEP: Final = Verdict(False, None, 0.0)


def walk(policies: Sequence[Policy]) -> Iterator[Policy]:
    for p in policies:
        yield p
        yield from walk(p.children())


class Engine:
    def __init__(
        self,
        policies: Sequence[Policy],
        on_error: Callable[[Policy, Exception], None] | None = None,
        sample_on_first_match: bool = False,
    ) -> None:
        self.policies = list(policies)
        self.names = tuple(p.name for p in self.policies)  # whose votes decide() reports, in order
        # Top-level policies whose keeps are by probability: their kept traces carry a threshold.
        self.by_probability = frozenset(p.name for p in self.policies if p.by_probability)
        self.on_error = on_error
        self.sample_on_first_match = sample_on_first_match
        self.predicates: list[Policy] = []  # attribute predicates
        self.span_predicates: list[Policy] = []
        keys: set[str] = set(ALWAYS_KEYS)
        bit = 1
        for p in walk(self.policies):
            keys |= p.keys
            if p.predicate and (p.keys or p.span_level):
                p.bit = bit
                bit <<= 1
                (self.span_predicates if p.span_level else self.predicates).append(p)
        self.keys = frozenset(keys)
        # Policies that read attributes but test no span (route) read the root span's from the summary.
        self.reads_root_attrs = any(p.keys and not p.predicate for p in walk(self.policies))

    def bits(self, attrs: Mapping[str, AttrValue], is_resource: bool) -> int:
        """The predicate bits that one span's (or resource's) extracted attributes satisfy."""
        out = 0
        for p in self.predicates:
            if p.matches(attrs, is_resource):
                out |= p.bit
        return out

    def value_bits(self, key: str, value: AttrValue) -> int:
        """The predicate bits that one span attribute satisfies. Every attribute predicate is a test
        of one key's value, so a span's bits are the union over its attributes: the splitter caches
        this per (key, value), and most spans cost a dictionary lookup, not a policy call."""
        out = 0
        one = {key: value}
        for p in self.predicates:
            if key in p.keys and p.matches(one, False):
                out |= p.bit
        return out

    def resource_bits(self, attrs: Mapping[str, AttrValue]) -> int:
        return self.bits(attrs, True) if self.predicates else 0

    def span_bits(self, span: SpanFields) -> int:
        out = 0
        for p in self.span_predicates:
            if p.matches_span(span):
                out |= p.bit
        return out

    def decide(self, trace: TraceSummary, votes: bytearray | None = None, peek: bool = False) -> Verdict:
        """The decision on a trace. With `votes`, each top-level policy's vote code (VOTE_*) is
        appended to it as it is cast, in file order: the votes that made this decision, not a
        recomputation (policies not asked, after a veto or the first match, have none). With `peek`,
        the policies answer without spending anything (rate and composite budgets stay as they are)
        and errors are not reported: what they would say now (/debug)."""
        sampled: Policy | None = None
        invert_sampled: Policy | None = None
        for p in self.policies:
            try:
                vote = p.peek(trace) if peek else p.evaluate(trace)
            except Exception as exc:  # an evaluation error abstains, as upstream
                if votes is not None:
                    votes.append(VOTE_ERROR)
                if self.on_error is not None and not peek:
                    self.on_error(p, exc)
                continue
            if votes is not None:
                votes.append(_code(vote))
            if vote is DROPPED or vote is INVERT_NOT_SAMPLED:
                return Verdict(False, p.name if vote is DROPPED else None, 0.0)
            if vote is SAMPLED and sampled is None:
                sampled = p
                if self.sample_on_first_match:
                    break
            elif vote is INVERT_SAMPLED and invert_sampled is None:
                invert_sampled = p
        keeper = _first(self.policies, sampled, invert_sampled)
        if keeper is None:
            return NO_KEEP
        return Verdict(True, keeper.name, keeper.sample_rate(trace))


def _code(vote: Vote) -> int:
    if vote is SAMPLED or vote is INVERT_SAMPLED:
        return VOTE_SAMPLED
    if vote is NOT_SAMPLED:
        return VOTE_NOT_SAMPLED
    if vote is DROPPED:
        return VOTE_DROPPED
    return VOTE_INVERTED_NOT_SAMPLED


def _first(order: Sequence[Policy], a: Policy | None, b: Policy | None) -> Policy | None:
    if a is None or b is None:
        return a or b
    return a if order.index(a) < order.index(b) else b
