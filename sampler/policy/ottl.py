"""`ottl_condition`: OTTL boolean conditions on spans and span events, for the subset people write.

Supported: paths `name`, `kind`, `status.code`, `duration` (ns), `start_time_unix_nano`,
`end_time_unix_nano`, `attributes["k"]`, `resource.attributes["k"]` (span context); in span-event
conditions `name` and `attributes["k"]` are the event's, and `span.<path>` and
`resource.attributes["k"]` reach its span; operators `==`, `!=`, `<`, `<=`, `>`, `>=`; `and`, `or`,
`not`, parentheses; `IsMatch(value, "regex")`; string, integer, float, `true`/`false`, `nil` and
enum (`SPAN_KIND_*`, `STATUS_CODE_*`) literals. Anything else is refused when the policy is loaded,
naming the unsupported part. The trace is sampled when any condition holds for any span (or event).

Comparisons follow OTTL: values of different types are never equal, ordering compares numbers with
numbers and strings with strings (otherwise false), a missing attribute is nil. Within this subset a
condition cannot fail at run time, so `error_mode` (propagate | ignore | silent) is accepted and has
nothing to act on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from sampler.otlp.wire import AttrValue, SpanFields
from sampler.policy.base import Policy, Vote
from sampler.policy.regex import compile_pattern
from sampler.policy.summary import TraceSummary

ENUMS = {
    "SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5,
    "STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2,
}
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>-?\d+\.\d+|-?\d+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],.])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
)""", re.VERBOSE)
_SPAN_FIELDS = ("name", "kind", "status.code", "duration", "start_time_unix_nano", "end_time_unix_nano")


class OttlError(ValueError):
    """A condition outside the supported subset, or malformed; the message names the part."""


class Event:
    """One span event as span-event conditions see it."""

    def __init__(self, name: str, attrs: dict[str, AttrValue]) -> None:
        self.name = name
        self.attrs = attrs


Getter = Callable[[SpanFields, Event | None], Any]


def _span_field(field: str) -> Getter:
    if field == "name":
        return lambda s, e: s.name
    if field == "kind":
        return lambda s, e: s.kind
    if field == "status.code":
        return lambda s, e: s.status
    if field == "duration":
        return lambda s, e: s.end - s.start
    if field == "start_time_unix_nano":
        return lambda s, e: s.start
    return lambda s, e: s.end


class _Parser:
    def __init__(self, text: str, events: bool) -> None:
        self.text = text
        self.events = events
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                rest = text[pos:].strip()
                if not rest:
                    break
                raise OttlError(f"unsupported OTTL syntax at {rest[:20]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0
        self.span_keys: set[str] = set()
        self.resource_keys: set[str] = set()
        self.event_keys: set[str] = set()

    def peek(self) -> tuple[str, str]:
        if self.i < len(self.tokens):
            kind, value, _ = self.tokens[self.i]
            return kind, value
        return "end", ""

    def take(self, value: str | None = None) -> str:
        kind, got = self.peek()
        if kind == "end" or (value is not None and got != value):
            raise OttlError(f"expected {value or 'more'} but found {got or 'the end'!r} in {self.text!r}")
        self.i += 1
        return got

    def parse(self) -> Callable[[SpanFields, Event | None], bool]:
        expr = self.expr()
        if self.peek()[0] != "end":
            raise OttlError(f"unsupported OTTL syntax at {self.peek()[1]!r} in {self.text!r}")
        return lambda s, e: expr(s, e) is True

    def expr(self) -> Getter:
        left = self.conj()
        while self.peek() == ("ident", "or"):
            self.take()
            right = self.conj()
            left = (lambda a, b: lambda s, e: a(s, e) is True or b(s, e) is True)(left, right)
        return left

    def conj(self) -> Getter:
        left = self.neg()
        while self.peek() == ("ident", "and"):
            self.take()
            right = self.neg()
            left = (lambda a, b: lambda s, e: a(s, e) is True and b(s, e) is True)(left, right)
        return left

    def neg(self) -> Getter:
        if self.peek() == ("ident", "not"):
            self.take()
            inner = self.neg()
            return lambda s, e: inner(s, e) is not True
        return self.comparison()

    def comparison(self) -> Getter:
        left = self.value()
        kind, op = self.peek()
        if kind != "op":
            return left
        self.take()
        right = self.value()
        return _compare(op, left, right)

    def value(self) -> Getter:
        kind, tok = self.peek()
        if tok == "(":
            self.take("(")
            inner = self.expr()
            self.take(")")
            return inner
        if kind == "str":
            literal = _unquote(self.take())
            return lambda s, e: literal
        if kind == "num":
            text = self.take()
            number: int | float = float(text) if "." in text else int(text)
            return lambda s, e: number
        if kind != "ident":
            raise OttlError(f"unsupported OTTL syntax at {tok!r} in {self.text!r}")
        if tok in ("true", "false"):
            self.take()
            flag = tok == "true"
            return lambda s, e: flag
        if tok == "nil":
            self.take()
            return lambda s, e: None
        if tok in ENUMS:
            self.take()
            enum = ENUMS[tok]
            return lambda s, e: enum
        if tok == "IsMatch":
            return self.is_match()
        if self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "(":
            raise OttlError(f"unsupported OTTL function {tok!r} (supported: IsMatch)")
        return self.path()

    def is_match(self) -> Getter:
        self.take("IsMatch")
        self.take("(")
        target = self.value()
        self.take(",")
        kind, tok = self.peek()
        if kind != "str":
            raise OttlError(f"IsMatch needs a string literal pattern, found {tok!r}")
        pattern_text = _unquote(self.take())
        try:
            pattern = compile_pattern(pattern_text)
        except ValueError as exc:
            raise OttlError(f"invalid regex {pattern_text!r} in IsMatch: {exc}") from None
        self.take(")")

        def match(s: SpanFields, e: Event | None) -> bool:
            value = target(s, e)
            if value is None:
                return False
            if isinstance(value, bool):
                value = "true" if value else "false"
            return pattern.search(str(value)) is not None

        return match

    def path(self) -> Getter:
        parts = [self.take()]
        while self.peek()[1] == ".":
            self.take(".")
            parts.append(self.take())
        dotted = ".".join(parts)
        key: str | None = None
        if self.peek()[1] == "[":
            self.take("[")
            kind, tok = self.peek()
            if kind != "str":
                raise OttlError(f"unsupported OTTL key {tok!r} in {dotted}[...]: use a string literal")
            key = _unquote(self.take())
            self.take("]")
            if self.peek()[1] == "[":
                raise OttlError(f"unsupported OTTL syntax: nested keys in {dotted}[{key!r}][...]")
        return self.resolve(dotted, key)

    def resolve(self, dotted: str, key: str | None) -> Getter:
        shown = dotted + (f'["{key}"]' if key is not None else "")
        if key is not None and dotted == "resource.attributes":
            self.resource_keys.add(key)
            return lambda s, e: s.group.attrs.get(key)
        span_path = dotted
        if self.events:
            if key is not None and dotted == "attributes":
                self.event_keys.add(key)
                return lambda s, e: e.attrs.get(key) if e is not None else None
            if key is None and dotted == "name":
                return lambda s, e: e.name if e is not None else None
            if not dotted.startswith("span."):
                raise OttlError(f"unsupported OTTL path {shown!r} in a span event condition")
            span_path = dotted[len("span."):]
        if key is not None and span_path == "attributes":
            self.span_keys.add(key)
            return lambda s, e: (s.attrs or {}).get(key)
        if key is None and span_path in _SPAN_FIELDS:
            return _span_field(span_path)
        raise OttlError(f"unsupported OTTL path {shown!r}")


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _compare(op: str, left: Getter, right: Getter) -> Getter:
    def equal(a: Any, b: Any) -> bool:
        if _number(a) and _number(b):
            return bool(a == b)
        return type(a) is type(b) and bool(a == b)

    def ordered(a: Any, b: Any) -> bool:
        if not ((_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))):
            return False
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)

    if op == "==":
        return lambda s, e: equal(left(s, e), right(s, e))
    if op == "!=":
        return lambda s, e: not equal(left(s, e), right(s, e))
    return lambda s, e: ordered(left(s, e), right(s, e))


Condition = Callable[[SpanFields, Event | None], bool]


def compile_condition(text: str, events: bool) -> tuple[Condition, set[str], set[str]]:
    """(condition, span-or-resource attribute keys it reads, event attribute keys it reads)."""
    parser = _Parser(text, events)
    condition = parser.parse()
    return condition, parser.span_keys | parser.resource_keys, parser.event_keys


def _span_condition(text: str) -> str:
    compile_condition(text, events=False)
    return text


def _event_condition(text: str) -> str:
    compile_condition(text, events=True)
    return text


class OttlConditionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error_mode: Literal["propagate", "ignore", "silent"] = "propagate"
    span: list[Annotated[str, AfterValidator(_span_condition)]] = Field(default_factory=list)
    spanevent: list[Annotated[str, AfterValidator(_event_condition)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _conditions(self) -> OttlConditionConfig:
        if not self.span and not self.spanevent:
            raise ValueError("at least one span or spanevent condition is required")
        return self


def _primitive(value: AnyValue) -> AttrValue | None:
    which = value.WhichOneof("value")
    if which in ("string_value", "bool_value", "int_value", "double_value"):
        got: AttrValue = getattr(value, which)
        return got
    return None


class OttlCondition(Policy):
    def __init__(self, name: str, config: OttlConditionConfig) -> None:
        super().__init__(name)
        self.span_level = True
        keys: set[str] = set()
        self.span_conditions: list[Condition] = []
        self.event_conditions: list[Condition] = []
        self.event_keys: set[str] = set()
        for text in config.span:
            cond, k, _ = compile_condition(text, events=False)
            self.span_conditions.append(cond)
            keys |= k
        for text in config.spanevent:
            cond, k, ek = compile_condition(text, events=True)
            self.event_conditions.append(cond)
            keys |= k
            self.event_keys |= ek
        self.keys = frozenset(keys)

    def _events(self, span: SpanFields) -> list[Event]:
        """Span events are read only when a spanevent condition exists: rare enough to parse."""
        out = []
        for ev in Span.FromString(span.data).events:
            attrs: dict[str, AttrValue] = {}
            for kv in ev.attributes:
                if kv.key in self.event_keys:
                    value = _primitive(kv.value)
                    if value is not None:
                        attrs[kv.key] = value
            out.append(Event(ev.name, attrs))
        return out

    def matches_span(self, span: SpanFields) -> bool:
        for cond in self.span_conditions:
            if cond(span, None):
                return True
        if self.event_conditions:
            for event in self._events(span):
                for cond in self.event_conditions:
                    if cond(span, event):
                        return True
        return False

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if self.matched(trace) else Vote.NOT_SAMPLED

