"""The `tailsampler` command line as users run it: validate, --version, run on built-in defaults with
environment overrides, demo and simulate, each as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from otlp_backend import EXPORT_METHOD, GRPC_OPTIONS, ROOT, Tailsampler, clean_env, free_port, wait_until

import sampler

CLI_TIMEOUT = 30.0


def tailsampler(*args: str, cwd: Path, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sampler", *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# --- validate ------------------------------------------------------------------------------------

GOOD_POLICIES = """\
policies:
  - name: errors
    type: errors
    errors: {http_status_min: 500}
  - name: slow
    type: latency
    latency: {threshold_ms: 1000}
"""

GOOD_CONFIG = """\
receivers:
  otlp:
    grpc: {endpoint: "127.0.0.1:4317"}
    http: null
buffer: {decision_wait: 2s, max_bytes: 64MiB}
exporter: {protocol: stdout}
policies_file: good-policies.yaml
"""

# Line numbers matter: the expected problems below name them.
BAD_POLICIES = """\
policies:
  - name: ok-errors
    type: errors
    errors: {}
  - name: mystery
    type: frobnicate
  - name: ok-errors
    type: latency
    latency: {threshold_ms: 100}
  - name: bounds
    type: numeric_attribute
    numeric_attribute:
      key: http.response.status_code
      min_value: 10
      max_value: 5
  - name: bad-regex
    type: string_attribute
    string_attribute:
      key: http.route
      values: ["("]
      enabled_regex_matching: true
"""

BAD_DURATION_CONFIG = """\
receivers:
  otlp:
    grpc: {endpoint: "127.0.0.1:4317"}
buffer: {decision_wait: 5 parsecs}
exporter: {protocol: stdout}
"""

PROBLEM = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<field>\S+): (?P<reason>.+)$")


def test_validate_good_files(tmp_path: Path) -> None:
    policies = tmp_path / "good-policies.yaml"
    policies.write_text(GOOD_POLICIES)
    config = tmp_path / "config.yaml"
    config.write_text(GOOD_CONFIG)
    result = tailsampler("validate", str(config), str(policies), cwd=tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [f"{config}: ok", f"{policies}: ok"]


def test_validate_bad_policies_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad-policies.yaml"
    path.write_text(BAD_POLICIES)
    result = tailsampler("validate", str(path), cwd=tmp_path)
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    problems = []
    for line in lines:
        m = PROBLEM.match(line)
        assert m, f"not PATH:LINE: field.path: reason: {line!r}"
        assert m["path"] == str(path)
        problems.append((int(m["line"]), m["field"], m["reason"]))
    by_field = {field: (line, reason) for line, field, reason in problems}
    assert len(problems) == 4 == len(by_field), lines
    assert by_field["policies[1].type"][0] == 6
    assert "frobnicate" in by_field["policies[1].type"][1]
    assert by_field["policies[2].name"][0] == 7
    assert "duplicate" in by_field["policies[2].name"][1] and "ok-errors" in by_field["policies[2].name"][1]
    assert by_field["policies[3].numeric_attribute"][0] == 12
    assert "min_value 10 is greater than max_value 5" in by_field["policies[3].numeric_attribute"][1]
    assert by_field["policies[4].string_attribute"][0] == 18
    assert "invalid regex '('" in by_field["policies[4].string_attribute"][1]


def test_validate_bad_duration_in_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BAD_DURATION_CONFIG)
    result = tailsampler("validate", str(path), cwd=tmp_path)
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"{re.escape(str(path))}:4: buffer\.decision_wait: .*parsecs.*", lines[0]), lines


def test_version(tmp_path: Path) -> None:
    result = tailsampler("--version", cwd=tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"tailsampler {sampler.__version__}"


# --- run on built-in defaults, configured only by environment ------------------------------------


def error_trace(trace_id: bytes) -> bytes:
    spans = [
        Span(trace_id=trace_id, span_id=bytes.fromhex("1111111111111111"), name="GET /pay",
             kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=1_700_000_000_000_000_000,
             end_time_unix_nano=1_700_000_000_030_000_000),
        Span(trace_id=trace_id, span_id=bytes.fromhex("2222222222222222"),
             parent_span_id=bytes.fromhex("1111111111111111"), name="charge",
             start_time_unix_nano=1_700_000_000_005_000_000, end_time_unix_nano=1_700_000_000_025_000_000,
             status=Status(code=Status.STATUS_CODE_ERROR, message="declined")),
    ]
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="shop"))])
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )
    data: bytes = request.SerializeToString()
    return data


def test_run_without_config_uses_defaults_and_env_overrides(tmp_path: Path) -> None:
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    env = clean_env({
        "TAILSAMPLER_RECEIVERS__OTLP__GRPC__ENDPOINT": f"127.0.0.1:{grpc_port}",
        "TAILSAMPLER_RECEIVERS__OTLP__HTTP__ENDPOINT": f"127.0.0.1:{http_port}",
        "TAILSAMPLER_ADMIN__ENDPOINT": f"127.0.0.1:{admin_port}",
        "TAILSAMPLER_EXPORTER__PROTOCOL": "stdout",
        "TAILSAMPLER_BUFFER__DECISION_WAIT": "0.5s",
    })
    ts = Tailsampler([sys.executable, "-m", "sampler", "run"], tmp_path, env, admin_port=admin_port,
                     grpc_port=grpc_port, http_port=http_port)
    try:
        ts.start()
        trace_id = os.urandom(16)
        with grpc.insecure_channel(ts.grpc_target, options=GRPC_OPTIONS) as channel:
            export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
            assert export(error_trace(trace_id), timeout=5) == b""

        def summary_lines() -> list[str]:
            return [line for line in ts.stdout().splitlines() if trace_id.hex() in line]

        assert wait_until(lambda: bool(summary_lines()), timeout=10), (ts.stdout(), ts.stderr())
        lines = summary_lines()
        assert len(lines) == 1, lines
        assert "policy=errors" in lines[0]
        assert "spans=2" in lines[0]
    finally:
        stopped = ts.stop()
    assert stopped.code == 0, stopped.stderr
    # Nothing was printed twice on the way out.
    assert sum(trace_id.hex() in line for line in stopped.stdout.splitlines()) == 1


# --- demo ----------------------------------------------------------------------------------------


def test_demo(tmp_path: Path) -> None:
    result = tailsampler("demo", "--seconds", "2", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "summary" in result.stdout
    assert "throughput" in result.stdout
    spans_in = re.search(r"spans in\s+([\d,]+)", result.stdout)
    assert spans_in and int(spans_in[1].replace(",", "")) > 0, result.stdout


# --- simulate ------------------------------------------------------------------------------------

ERROR_TRACE = "d4735e3a265e16eee03f59718b9b5d03"
# Under the default policies' `baseline` (probabilistic 5%, salt "default-hash-seed"), this id hashes
# far outside 5%, and the next one inside it (checked by _in_baseline below).
NORMAL_TRACE_DROPPED = "6b86b273ff34fce19d6b804eff5a3f57"
NORMAL_TRACE_IN_BASELINE = "9400f1b21cb527d7fa3d3eabba93557a"


def _in_baseline(trace_id_hex: str, percentage: float = 5) -> bool:
    """The OpenTelemetry Collector's probabilistic hash: FNV-1a 64 over salt + trace id bytes."""
    h = 0xCBF29CE484222325
    for b in b"default-hash-seed" + bytes.fromhex(trace_id_hex):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h <= int(0xFFFFFFFFFFFFFFFF * percentage / 100)


def _span(trace_id: str, span_id: str, name: str, parent: str = "", error: bool = False) -> dict[str, object]:
    span: dict[str, object] = {
        "traceId": trace_id, "spanId": span_id, "name": name, "kind": 2,
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1_700_000_000_040_000_000,
        "status": {"code": 2 if error else 1},
    }
    if parent:
        span["parentSpanId"] = parent
    return span


def _write_recording(path: Path, normal_trace: str) -> None:
    """Two documents (JSON Lines): the normal trace first, then the error trace, whose third span
    comes in the second document together with a late span of the normal trace."""
    doc1 = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
        "scopeSpans": [{"spans": [
            _span(normal_trace, "a000000000000001", "GET /"),
            _span(normal_trace, "a000000000000002", "render", parent="a000000000000001"),
            _span(ERROR_TRACE, "b000000000000001", "GET /pay"),
            _span(ERROR_TRACE, "b000000000000002", "charge", parent="b000000000000001", error=True),
        ]}],
    }]}
    doc2 = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "db"}}]},
        "scopeSpans": [{"spans": [
            _span(ERROR_TRACE, "b000000000000003", "SELECT", parent="b000000000000002"),
            _span(normal_trace, "a000000000000003", "SELECT", parent="a000000000000002"),
        ]}],
    }]}
    path.write_text(json.dumps(doc1) + "\n" + json.dumps(doc2) + "\n")


def _simulate(tmp_path: Path, policies: Path, normal_trace: str) -> list[dict[str, object]]:
    recording = tmp_path / f"traces-{normal_trace[:6]}.jsonl"
    _write_recording(recording, normal_trace)
    result = tailsampler("simulate", "--policies", str(policies), "--format", "jsonl", str(recording), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    records = [json.loads(line) for line in lines]
    for record in records:
        assert list(record) == ["trace_id", "decision", "policy", "spans"], record
    return records


def test_simulate_jsonl_errors_only(tmp_path: Path) -> None:
    policies = tmp_path / "errors.yaml"
    policies.write_text("policies:\n  - {name: errors, type: errors, errors: {}}\n")
    records = _simulate(tmp_path, policies, NORMAL_TRACE_IN_BASELINE)
    assert records == [
        {"trace_id": NORMAL_TRACE_IN_BASELINE, "decision": "drop", "policy": None, "spans": 3},
        {"trace_id": ERROR_TRACE, "decision": "keep", "policy": "errors", "spans": 3},
    ]


@pytest.mark.parametrize(
    ("normal_trace", "decision", "policy"),
    [(NORMAL_TRACE_DROPPED, "drop", None), (NORMAL_TRACE_IN_BASELINE, "keep", "baseline")],
)
def test_simulate_jsonl_default_policies(tmp_path: Path, normal_trace: str, decision: str, policy: str | None) -> None:
    assert _in_baseline(normal_trace) == (decision == "keep")  # the fixture ids are what they claim
    records = _simulate(tmp_path, ROOT / "policies" / "default.yaml", normal_trace)
    assert records == [
        {"trace_id": normal_trace, "decision": decision, "policy": policy, "spans": 3},
        {"trace_id": ERROR_TRACE, "decision": "keep", "policy": "errors", "spans": 3},
    ]
