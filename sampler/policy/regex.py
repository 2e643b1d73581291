"""Regexes from policy files, compiled with RE2: linear-time matching, bounded cost.

Policies name regexes (`string_attribute` with `enabled_regex_matching`, `route` rules with
`regex: true`, OTTL `IsMatch`). Python's `re` backtracks, so a pattern such as `(a+)+$` against
`"a" * 50 + "!"` would hang the decision path. The OpenTelemetry Collector evaluates the same
patterns with Go's `regexp`, which is RE2 syntax with linear-time matching; this module uses RE2
itself (PyPI `google-re2`, import `re2`, Google's own bindings shipped as wheels), so:

- matching time is linear in the input whatever the pattern, and each compiled program is bounded
  in memory (RE2's `max_mem`, 8 MiB by default): there is nothing to time-box;
- the accepted syntax is the Collector's: what RE2 cannot run in linear time (backreferences such
  as `\\1`, lookaround such as `(?=x)` / `(?<!x)`) is refused when the policy file loads, with RE2's
  reason and a hint, and `tailsampler validate` reports it at the field's place;
- matching is unanchored (`search`), as Go's `MatchString`; as in Go, `$` matches only at the very
  end of the text (Python's `re` also matches before a final newline) and `\\d`, `\\w`, `\\s` are ASCII.

Matching goes through an `RE2::Set` holding the one pattern: it answers "does it match anywhere"
without computing capture positions, many times faster per call than `re2.compile(...).search`
(whose pure-Python wrapper maps UTF-8 offsets back to `str` indices; docs/performance.md).

Considered and not chosen: the `regex` module's `timeout=` (bounds each call, but a pathological
pattern still burns its full timeout on every span it sees and turns a decision into an exception),
and refusing "dangerous" patterns heuristically with Python's `re` (no complete test exists).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol, cast

import re2  # type: ignore[import-untyped,unused-ignore]  # google-re2 ships no type information


class _Set(Protocol):
    def Add(self, pattern: str) -> int: ...

    def Compile(self) -> None: ...

    def Match(self, text: bytes) -> list[int] | None: ...


class RegexError(ValueError):
    """A pattern RE2 refuses; the message is the reason (callers prefix `invalid regex '...'`)."""


_HINTS = (
    ("invalid perl operator: (?=", "lookahead is not supported"),
    ("invalid perl operator: (?!", "lookahead is not supported"),
    ("invalid perl operator: (?<=", "lookbehind is not supported"),
    ("invalid perl operator: (?<!", "lookbehind is not supported"),
    ("invalid escape sequence: \\Z", "use \\z for end of text"),
    ("pattern too large", "the compiled pattern exceeds RE2's memory bound"),
    ("invalid repetition size", "repetition counts are limited to 1000"),
)


def _options() -> object:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    return cast(object, options)


_OPTIONS = _options()


def _reason(pattern: str, message: str) -> str:
    hint = next((h for prefix, h in _HINTS if message.startswith(prefix)), None)
    if hint is None and (
        (message.startswith("invalid escape sequence: \\") and message[-1:].isdigit())
        or (message == "invalid perl operator: (?P" and "(?P=" in pattern)
    ):
        hint = "backreferences are not supported"
    syntax = "RE2 syntax, as the OpenTelemetry Collector"
    return f"{message} ({hint}; {syntax})" if hint else f"{message} ({syntax})"


class Pattern:
    """A compiled policy regex. As with `re.Pattern`, `search(text) is not None` when the pattern matches
    anywhere in `text`; there is no match object (nothing here needs the positions)."""

    __slots__ = ("_set", "pattern")

    def __init__(self, pattern: str, matcher: _Set) -> None:
        self.pattern = pattern
        self._set = matcher

    def search(self, text: str) -> Literal[True] | None:
        # surrogatepass: a lone surrogate can never fail the decision path (RE2 sees bytes that are not UTF-8)
        return True if self._set.Match(text.encode("utf-8", "surrogatepass")) else None

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"


def joined(patterns: Iterable[str]) -> str:
    """One pattern matching where any of `patterns` matches."""
    return "|".join(f"(?:{p})" for p in patterns)


def compile_pattern(text: str) -> Pattern:
    """Compile `text` with RE2 for unanchored matching; raises RegexError (a ValueError) with the reason."""
    try:
        re2.compile(text, _OPTIONS)  # for its error message: RE2::Set.Add only says "failed"
        matcher = cast(_Set, re2.Set.SearchSet(_OPTIONS))
        matcher.Add(text)
        matcher.Compile()
    except re2.error as exc:
        message = exc.args[0] if exc.args else str(exc)
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        raise RegexError(_reason(text, str(message))) from None
    except (TypeError, UnicodeError) as exc:  # e.g. a lone surrogate in the pattern
        raise RegexError(str(exc)) from None
    return Pattern(text, matcher)
