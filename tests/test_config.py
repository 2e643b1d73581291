"""Config parsing: units, defaults, environment overrides, tail_sampling blocks, OTLP/JSON ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sampler.config.models import env_overrides, parse_duration, parse_size
from sampler.config.yamlfile import ConfigError
from sampler.otlp.jsonconv import json_to_protobuf, protobuf_to_dict
from sampler.otlp.wire import WireError
from sampler.server.settings import load_config
from tests.spans import parse

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("5s", 5.0), ("1m", 60.0), (3, 3.0), ("2.5", 2.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("256MiB", 256 * 2**20), ("1GiB", 2**30), (1000, 1000), ("10KB", 10**4)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5 parsecs", "-1s", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("exporter: {protocol: http, endpoint: 'http://a:4318'}\nbuffer: {max_traces: 10}\n")
    env = {"TAILSAMPLER_EXPORTER__ENDPOINT": "http://b:4318", "TAILSAMPLER_BUFFER__DECISION_WAIT": "2s",
           "TAILSAMPLER_RECEIVERS__OTLP__HTTP": "null", "TAILSAMPLER_POLICIES_FILE": "p.yaml",
           "OTHER": "x"}
    (tmp_path / "p.yaml").write_text("policies: [{name: a, type: always_sample}]\n")
    loaded = load_config(cfg, env)
    c = loaded.config
    assert (c.exporter.protocol, c.exporter.endpoint) == ("http", "http://b:4318")
    assert (c.buffer.decision_wait, c.buffer.max_traces) == (2.0, 10)
    assert c.receivers.otlp.http is None and c.receivers.otlp.grpc is not None
    assert loaded.policies_path == tmp_path / "p.yaml"
    assert env_overrides({"TAILSAMPLER_CONFIG": "/x"}) == {}


def test_defaults_without_a_file() -> None:
    loaded = load_config(None, {})
    c = loaded.config
    assert c.receivers.otlp.grpc is not None and c.receivers.otlp.grpc.endpoint == "0.0.0.0:4317"
    assert c.admin.endpoint == "0.0.0.0:8888"
    assert (c.buffer.decision_wait, c.buffer.max_traces, c.buffer.max_bytes) == (5.0, 100_000, "auto")
    assert c.memory_limit == "auto" and c.exporter.queue_max_bytes == "auto"
    assert [p.name for p in loaded.policies.policies] == ["errors", "slow", "baseline"]


def test_shipped_default_policies_are_the_builtin_ones() -> None:
    shipped = (ROOT / "policies" / "default.yaml").read_text()
    assert shipped == (ROOT / "sampler" / "policy" / "default.yaml").read_text()


def test_tail_sampling_block_fills_unset_buffer_keys(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "processors:\n  tail_sampling:\n    decision_wait: 3s\n    num_traces: 77\n"
        "    policies: [{name: a, type: always_sample}]\n")
    (tmp_path / "c.yaml").write_text("policies_file: p.yaml\nbuffer: {max_traces: 5}\n")
    c = load_config(tmp_path / "c.yaml", {}).config
    assert (c.buffer.decision_wait, c.buffer.max_traces) == (3.0, 5)  # the config's own key wins


def test_config_problems_carry_lines(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("buffer:\n  max_traces: 10\n  max_bytes: lots\nexporter: {protocol: smoke}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml", {})
    got = {(p.line, p.field) for p in info.value.problems}
    assert got == {(3, "buffer.max_bytes"), (4, "exporter.protocol")}


SPEC_EXAMPLE = {  # shaped like the OTLP specification's trace example (hex ids, integer enums, string int64)
    "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
            "scope": {"name": "my.library", "version": "1.0.0"},
            "spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                "parentSpanId": "eee19b7ec3c1b173", "name": "I'm a server span",
                "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000,
                "kind": 2, "attributes": [{"key": "my.span.attr", "value": {"intValue": "42"}}],
                "status": {"code": 2}, "unknownField": True,
            }],
        }],
    }],
}


def test_otlp_json_ids_are_hex_both_ways() -> None:
    data = json_to_protobuf(json.dumps(SPEC_EXAMPLE))
    span = parse(data).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.parent_span_id.hex() == "eee19b7ec3c1b173"
    assert (span.kind, span.status.code, span.attributes[0].value.int_value) == (2, 2, 42)
    back = protobuf_to_dict(data)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert (back["traceId"], back["spanId"]) == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    assert back["kind"] == 2


@pytest.mark.parametrize("body", ['{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
                                  "not json", "[1, 2]", '{"resourceSpans": 5}'])
def test_bad_otlp_json_is_a_clear_error(body: str) -> None:
    with pytest.raises(WireError):
        json_to_protobuf(body)


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policy_sets_are_valid(path: Path) -> None:
    from sampler.tools.validate import validate_file

    assert validate_file(path) == []


def test_env_values_stay_strings_unless_null_or_collections() -> None:
    env = {"TAILSAMPLER_EXPORTER__HEADERS": "{x-token: abc}", "TAILSAMPLER_BUFFER__MAX_TRACES": "12",
           "TAILSAMPLER_ADMIN__ENDPOINT": "null"}
    c = load_config(None, env).config
    assert c.exporter.headers == {"x-token": "abc"} and c.buffer.max_traces == 12 and c.admin.endpoint is None
    c = load_config(None, {"TAILSAMPLER_EXPORTER__HEADERS__AUTHORIZATION": "12345"}).config
    assert c.exporter.headers == {"authorization": "12345"}


def test_without_a_config_file_kept_traces_go_to_stdout() -> None:
    # CONTRACT; the exporter's own default endpoint is this proxy's receiver, which would loop.
    assert load_config(None, {}).config.exporter.protocol == "stdout"
    assert load_config(None, {"TAILSAMPLER_EXPORTER__PROTOCOL": "grpc"}).config.exporter.protocol == "grpc"


def test_a_bad_tail_sampling_decision_wait_fails_validate_at_its_line(tmp_path: Path) -> None:
    from sampler.tools.validate import validate_file

    path = tmp_path / "p.yaml"
    path.write_text("tail_sampling:\n  decision_wait: soon\n  num_traces: -3\n"
                    "  policies: [{name: a, type: always_sample}]\n")
    got = {(p.line, p.field) for p in validate_file(path)}
    assert got == {(2, "tail_sampling.decision_wait"), (3, "tail_sampling.num_traces")}


def test_an_inline_policy_list_from_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("policies_file: p.yaml\n")
    (tmp_path / "p.yaml").write_text("policies: [{name: from-file, type: always_sample}]\n")
    env = {"TAILSAMPLER_POLICIES": "[{name: errors-only, type: status_code, status_code: {status_codes: [ERROR]}}]"}
    loaded = load_config(cfg, env)
    assert [p.name for p in loaded.policies.policies] == ["errors-only"]
    assert loaded.policies_path is None  # nothing to watch: the environment does not change under a process
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, {"TAILSAMPLER_POLICIES": "[{name: x, type: nonsense}]"})
    problem = exc.value.problems[0]
    assert problem.path == "$TAILSAMPLER_POLICIES" and "policies[0].type" in str(problem)
    block = "tail_sampling: {policies: [{name: whole-block, type: always_sample}]}"  # a policies file's forms
    assert [p.name for p in load_config(cfg, {"TAILSAMPLER_POLICIES": block}).policies.policies] == ["whole-block"]
    assert load_config(cfg, {"TAILSAMPLER_POLICIES": " "}).policies_path == tmp_path / "p.yaml"  # empty: unset
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, {"TAILSAMPLER_POLICIES": "[{name: x"})
    assert exc.value.problems[0].path == "$TAILSAMPLER_POLICIES"


def test_trusted_networks_must_be_ip_networks(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("peers: {self: '10.0.0.1:4317', static: ['10.0.0.1:4317', '10.0.0.2:4317'], "
                   "trusted_networks: ['127.0.0.6/32', 'fd00::/8']}\n")
    assert load_config(cfg, {}).config.peers.trusted_networks == ["127.0.0.6/32", "fd00::/8"]
    cfg.write_text("peers: {self: '10.0.0.1:4317', trusted_networks: ['mesh']}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, {})
    assert "'mesh' is not an IP network" in str(exc.value.problems[0])


@pytest.mark.parametrize("text, field", [
    ("policies:\n  - name: a\n    type: [errors]\n", "policies[0].type"),  # found by test_fuzz
    ("policies:\n  - name: a\n    type: {errors: 1}\n", "policies[0].type"),
    ('policies: "\\UFFFFFFFF"\n', "(document)"),  # PyYAML raised OverflowError
    ('policies: "\\U00110000"\n', "(document)"),  # ... and ValueError
    ("policies: 2001-13-45\n", "(document)"),  # ... and ValueError from the date
    ('policies: !!int ""\n', "(document)"),  # ... IndexError
    ("policies: !!bool maybe\n", "(document)"),  # ... KeyError
    ("policies: !!timestamp x\n", "(document)"),  # ... AttributeError
])
def test_odd_policy_documents_are_reported_not_raised(text: str, field: str) -> None:
    from sampler.config.yamlfile import parse_yaml
    from sampler.policy.loader import load_policies

    with pytest.raises(ConfigError) as caught:
        load_policies(parse_yaml(text, "p.yaml"))
    assert [p.field for p in caught.value.problems] == [field]


@pytest.mark.parametrize("raw", ["2001-13-45", "!!bool maybe", '!!int ""'])
def test_an_env_value_yaml_cannot_construct_is_taken_as_a_string(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:  # was: ValueError and others out of the environment parsing
        load_config(None, {"TAILSAMPLER_BUFFER__DECISION_WAIT": raw})
    assert [p.field for p in caught.value.problems] == ["buffer.decision_wait"]


def test_an_alias_bomb_in_an_env_value_is_refused_not_expanded() -> None:
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)]) + "]"
    with pytest.raises(ConfigError) as caught:  # taken as a string, which no headers mapping is
        load_config(None, {"TAILSAMPLER_EXPORTER__HEADERS": bomb})
    assert [p.field for p in caught.value.problems] == ["exporter.headers"]
