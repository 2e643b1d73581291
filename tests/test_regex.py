"""Policy regexes have bounded cost: RE2 (linear time, the Collector's syntax), refused at load when
RE2 cannot run them, unanchored as Go's MatchString. Through string_attribute, route and IsMatch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sampler.config.yamlfile import ConfigError, parse_yaml
from sampler.pipeline.buffer import Buffer
from sampler.pipeline.core import Core
from sampler.pipeline.decisions import DecisionCache
from sampler.policy.engine import Verdict
from sampler.policy.loader import load_policies
from sampler.policy.ottl import OttlError, compile_condition
from sampler.policy.regex import RegexError, compile_pattern
from sampler.policy.summary import TraceSummary
from sampler.tools.validate import validate_file
from tests.spans import S, request

EVIL = "(a+)+$"
EVIL_INPUT = "a" * 50 + "!"  # Python's re: ~2**50 steps


def decide(policies: str, spans: list[S]) -> Verdict:
    out: list[Verdict] = []

    def record(summary: TraceSummary, v: Verdict, reason: str) -> None:
        out.append(v)

    core = Core(Buffer(100, 10**9, 5, 60), load_policies(parse_yaml(policies, "p.yaml")).engine(),
                DecisionCache(10, 10), lambda t: None, on_decision=record)
    core.ingest(request(spans), "grpc", 0.0)
    core.decide_all(1.0)
    assert len(out) == 1
    return out[0]


def string_attribute(values: list[str]) -> str:
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return (f"policies: [{{name: p, type: string_attribute, string_attribute: "
            f"{{key: k, values: [{quoted}], enabled_regex_matching: true}}}}]")


def route(pattern: str) -> str:
    quoted = "'" + pattern.replace("'", "''") + "'"
    return (f"policies: [{{name: p, type: route, route: {{default_percentage: 0, rules: "
            f"[{{match: {quoted}, regex: true, sample_percentage: 100}}]}}}}]")


def ottl(pattern: str) -> str:
    condition = f'IsMatch(attributes["k"], "{pattern}")'
    return f"policies: [{{name: p, type: ottl_condition, ottl_condition: {{span: ['{condition}']}}}}]"


def timed(policies: str, value: str) -> tuple[bool, float]:
    t0 = time.perf_counter()
    keep = decide(policies, [S(1, 1, attrs={"k": value, "http.route": value})]).keep
    return keep, time.perf_counter() - t0


# --- catastrophic backtracking is not possible --------------------------------------------------

@pytest.mark.parametrize("build", [string_attribute, route, ottl], ids=["string_attribute", "route", "IsMatch"])
@pytest.mark.parametrize("pattern", [EVIL, "(a|aa)+$", "(a*)*b", "(.*a){12}$"])
def test_catastrophic_patterns_finish_fast(build: object, pattern: str) -> None:
    policies = build([pattern]) if build is string_attribute else build(pattern)  # type: ignore[operator]
    keep, elapsed = timed(policies, EVIL_INPUT)
    assert not keep
    assert elapsed < 0.5, elapsed
    keep, _ = timed(policies, "a" * 50 + "b" * ("b" in pattern))
    assert keep  # and they still match what they should


def test_long_input_is_linear() -> None:
    pattern = compile_pattern(EVIL)
    t0 = time.perf_counter()
    assert pattern.search("a" * 200_000 + "!") is None
    assert time.perf_counter() - t0 < 0.5


def test_route_globs_stay_fast() -> None:
    glob = "policies: [{name: p, type: route, route: {rules: [{match: '*a*a*a*a*a*a*a*b', sample_percentage: 100}]}}]"
    keep, elapsed = timed(glob, "a" * 2000)
    assert not keep and elapsed < 0.5


# --- what RE2 cannot run is refused at load, with a reason ---------------------------------------

REFUSED = [
    (r"(a)\1", "backreferences are not supported"),
    ("(?=x)", "lookahead is not supported"),
    ("a(?!x)", "lookahead is not supported"),
    ("(?<=x)y", "lookbehind is not supported"),
    ("(?<!x)y", "lookbehind is not supported"),
    ("(?P<n>a)(?P=n)", "backreferences are not supported"),
    (r"a\Z", r"use \z"),
    ("a{1001}", "limited to 1000"),
    ("(", "missing )"),
]


@pytest.mark.parametrize(("pattern", "reason"), REFUSED)
def test_compile_pattern_refuses_with_reason(pattern: str, reason: str) -> None:
    with pytest.raises(RegexError) as info:
        compile_pattern(pattern)
    assert isinstance(info.value, ValueError)
    assert reason in str(info.value)
    assert "RE2 syntax" in str(info.value)


@pytest.mark.parametrize(("pattern", "reason"), REFUSED[:2])
@pytest.mark.parametrize(("build", "field"), [
    (string_attribute, "policies[0].string_attribute"),
    (route, "policies[0].route.rules[0]"),
])
def test_refused_at_load_naming_the_field(pattern: str, reason: str, build: object, field: str) -> None:
    policies = build([pattern]) if build is string_attribute else build(pattern)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        load_policies(parse_yaml(policies, "p.yaml"))
    (problem,) = info.value.problems
    assert problem.field == field
    assert problem.reason.startswith(f"invalid regex {pattern!r}: ")
    assert reason in problem.reason


@pytest.mark.parametrize(("pattern", "reason"), REFUSED[:2])
def test_ismatch_refused_at_compile(pattern: str, reason: str) -> None:
    quoted = pattern.replace("\\", "\\\\")  # an OTTL string literal escapes its backslashes
    with pytest.raises(OttlError) as info:
        compile_condition(f'IsMatch(name, "{quoted}")', events=False)
    assert f"invalid regex {pattern!r} in IsMatch: " in str(info.value)
    assert reason in str(info.value)


def test_validate_reports_place_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("policies:\n  - name: p\n    type: string_attribute\n"
                    "    string_attribute: {key: k, values: ['(a)\\1'], enabled_regex_matching: true}\n")
    (problem,) = validate_file(path)
    text = str(problem)
    assert text.startswith(f"{path}:4: policies[0].string_attribute: invalid regex '(a)\\\\1': ")
    assert "backreferences are not supported" in text


# --- ordinary patterns behave as before: unanchored search ----------------------------------------

@pytest.mark.parametrize(("pattern", "value", "hit"), [
    ("b.d", "abcde", True),  # unanchored
    ("^bcd$", "abcde", False),
    ("^abc", "abcde", True),
    ("cde$", "abcde", True),
    ("(?i)ABC", "xabcx", True),
    ("[0-9]{3}", "ab12c", False),
    (r"^/api/v\d+/", "/api/v2/x", True),
    ("é+", "café", True),  # UTF-8 text matches as characters
    ("^.{4}$", "café", True),
    ("(?P<v>x)|y", "y", True),
    ("", "anything", True),
])
def test_ordinary_patterns_match_as_before(pattern: str, value: str, hit: bool) -> None:
    assert (compile_pattern(pattern).search(value) is not None) is hit
    assert decide(string_attribute([pattern]), [S(1, 1, attrs={"k": value})]).keep is hit
    if pattern:  # a route rule's match is never empty
        assert decide(route(pattern), [S(1, 1, attrs={"http.route": value})]).keep is hit


def test_several_values_match_any() -> None:
    policies = string_attribute(["^foo$", "ba+r", "(x|y)z"])
    for value, hit in [("foo", True), ("xbaaar", True), ("yz", True), ("food", False), ("z", False)]:
        assert decide(policies, [S(1, 1, attrs={"k": value})]).keep is hit


def test_ismatch_through_ottl_is_unanchored() -> None:
    assert decide(ottl("b.d"), [S(1, 1, attrs={"k": "abcde"})]).keep
    assert not decide(ottl("^b"), [S(1, 1, attrs={"k": "abcde"})]).keep


def test_lone_surrogate_never_raises() -> None:
    assert compile_pattern("a").search("\ud800a") is not None
    assert compile_pattern("^b").search("\ud800") is None
