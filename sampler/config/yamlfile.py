"""YAML loading that remembers line numbers, so every problem can be reported as
`PATH:LINE: field.path: reason` (the format `tailsampler validate` promises)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]


class Problem(NamedTuple):
    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"


class ConfigError(Exception):
    """One or more problems in a config or policies file."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = list(problems)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_./@-]+$")


def format_loc(loc: Iterable[str | int]) -> str:
    """`policies[2].latency.threshold_ms`; keys that are not plain words are quoted, so a problem
    always stays on one line."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += ("." if out else "") + part
        else:
            out += f"[{part!r}]"
    return out or "(document)"


class YamlDoc:
    """A parsed YAML document plus the line of every mapping key and sequence item in it."""

    def __init__(self, path: str, data: Any, lines: dict[Loc, int]) -> None:
        self.path = path
        self.data = data
        self._lines = lines

    def line(self, loc: Loc) -> int:
        """The line of the deepest node along `loc` that exists in the document."""
        for n in range(len(loc), 0, -1):
            found = self._lines.get(tuple(loc[:n]))
            if found is not None:
                return found
        return 1

    def problem(self, loc: Loc, reason: str) -> Problem:
        return Problem(self.path, self.line(loc), format_loc(loc), reason)

    def problems_from(self, exc: ValidationError, prefix: Loc = ()) -> list[Problem]:
        out = []
        for err in exc.errors():
            loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            out.append(self.problem(loc, msg))
        return out


MAX_NODES = 200_000  # far beyond any real config; aliases can make a few lines name billions


class _TooLarge(Exception):
    pass


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    if len(lines) > MAX_NODES:
        raise _TooLarge
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, str(key.value))
            lines[child] = key.start_mark.line + 1
            _index(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*loc, i)
            lines[child] = item.start_mark.line + 1
            _index(item, child, lines)


def parse_yaml(text: str, path: str) -> YamlDoc:
    """Parse one YAML document; a syntax error becomes a ConfigError with its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines: dict[Loc, int] = {}
        if node is not None:
            _index(node, (), lines)  # before constructing: it refuses alias bombs cheaply
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([Problem(path, line, "(document)", f"invalid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError([Problem(path, 1, "(document)", f"invalid YAML: {first}")]) from None
    except RecursionError:
        raise ConfigError([Problem(path, 1, "(document)", "invalid YAML: nested too deeply")]) from None
    # PyYAML's scanner and constructors let these out too: a "\U" escape beyond Unicode, a 13th month,
    # `!!int ""` (IndexError), `!!bool maybe` (KeyError), `!!timestamp x` (AttributeError)
    except (ValueError, OverflowError, LookupError, AttributeError, TypeError) as exc:
        raise ConfigError([Problem(path, 1, "(document)", f"invalid YAML: cannot read a value: {exc}")]) from None
    except _TooLarge:
        reason = f"document too large: more than {MAX_NODES} values (aliases expanded)"
        raise ConfigError([Problem(path, 1, "(document)", reason)]) from None
    return YamlDoc(path, data, lines)


def load_yaml(path: Path) -> YamlDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), 1, "(document)", f"cannot read: {exc}")]) from None
    return parse_yaml(text, str(path))
