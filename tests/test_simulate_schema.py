"""`simulate` end to end on recorded files (table, progress), and the shipped JSON Schemas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from sampler.otlp.jsonconv import protobuf_to_dict
from sampler.tools.schema import render
from tests.spans import S, request, tid

ROOT = Path(__file__).resolve().parent.parent
POLICIES = """policies:
  - {name: errors, type: errors}
  - {name: busy, type: span_count, span_count: {min_spans: 3}}
"""


def record(path: Path, traces: list[list[S]]) -> None:
    """JSON Lines of OTLP/JSON, one request per trace (as the file exporter writes them)."""
    path.write_text("".join(json.dumps(protobuf_to_dict(request(t))) + "\n" for t in traces))


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sampler", "simulate", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_simulate_table_and_jsonl_on_a_recorded_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    traces = [[S(1, 1, status=2)], [S(2, 2), S(2, 3, parent=2), S(2, 4, parent=2)], [S(3, 5)],
              [S(4, 6, status=2), S(4, 7, parent=6), S(4, 8, parent=6)]]
    record(tmp_path / "t.jsonl", traces)
    table = simulate("--policies", str(tmp_path / "p.yaml"), str(tmp_path / "t.jsonl"))
    assert table.returncode == 0, table.stderr
    assert "traces  4" in table.stdout and "spans   8" in table.stdout and "kept    3 (75.0%)" in table.stdout
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[5:]}
    assert rows["errors"] == ["2", "50.0%", "2", "50.0%"]
    assert rows["busy"] == ["1", "25.0%", "2", "50.0%"]  # trace 4 is decided by errors, first in order
    lines = simulate("--policies", str(tmp_path / "p.yaml"), "--format", "jsonl", str(tmp_path / "t.jsonl"))
    got = [json.loads(x) for x in lines.stdout.splitlines()]
    assert [g["trace_id"] for g in got] == [tid(n).hex() for n in (1, 2, 3, 4)]
    assert [(g["decision"], g["policy"], g["spans"]) for g in got] == [
        ("keep", "errors", 1), ("keep", "busy", 3), ("drop", None, 1), ("keep", "errors", 3)]


def test_simulate_shows_progress_for_large_inputs(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    one = json.dumps(protobuf_to_dict(request([S(n, n) for n in range(1, 200)])))
    (tmp_path / "big.jsonl").write_text((one + "\n") * 80)
    assert (tmp_path / "big.jsonl").stat().st_size > 2 * 2**20
    result = simulate("--policies", str(tmp_path / "p.yaml"), str(tmp_path / "big.jsonl"))
    assert result.returncode == 0 and "100.0% of" in result.stderr


def test_simulate_refuses_unreadable_input(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    (tmp_path / "bad.jsonl").write_text('{"resourceSpans": []}\nnot json\n')
    result = simulate("--policies", str(tmp_path / "p.yaml"), str(tmp_path / "bad.jsonl"))
    assert result.returncode == 1 and "line 2: invalid JSON" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("which", ["config", "policies"])
def test_shipped_schemas_are_generated_from_the_models(which: str) -> None:
    assert (ROOT / "schemas" / f"{which}.schema.json").read_text() == render(which)


def test_policies_schema_accepts_shipped_sets_and_rejects_mistakes() -> None:
    schema = json.loads((ROOT / "schemas" / "policies.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in (ROOT / "policies").glob("*.yaml"):
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    nested = {"policies": [{"name": "c", "type": "composite", "composite": {
        "max_total_spans_per_second": 10, "composite_sub_policy": [
            {"name": "a", "type": "and", "and": {"and_sub_policy": [{"name": "x", "type": "always_sample"}]}}]}}]}
    assert list(validator.iter_errors(nested)) == []
    for bad in ({"policies": [{"name": "a", "type": "latency", "latency": {"threshold": 5}}]},
                {"policies": [{"name": "a", "type": "nope"}]},
                {"policies": [{"name": "c", "type": "and", "and": {"and_sub_policy": [{"type": "latency"}]}}]}):
        assert list(validator.iter_errors(bad)), bad


def test_config_schema_accepts_units_and_rejects_bad_values() -> None:
    validator = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "config.schema.json").read_text()))
    good = {"buffer": {"decision_wait": "500ms", "max_bytes": "256MiB"}, "exporter": {"protocol": "http"},
            "policies": [{"name": "a", "type": "always_sample"}]}
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({"buffer": {"decision_wait": "5 parsecs"}}))
    assert list(validator.iter_errors({"exporter": {"protocol": "smoke"}}))


def test_simulate_spends_a_rate_limit_once_per_trace(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("policies: [{name: rl, type: rate_limiting, "
                                     "rate_limiting: {spans_per_second: 10, burst_capacity: 20}}]\n")
    record(tmp_path / "t.jsonl", [[S(n, n)] for n in range(1, 21)])  # 20 one-span traces: the burst
    for fmt in ("jsonl", "table"):
        result = simulate("--policies", str(tmp_path / "p.yaml"), "--format", fmt, str(tmp_path / "t.jsonl"))
        assert result.returncode == 0
        if fmt == "jsonl":
            assert sum(json.loads(x)["decision"] == "keep" for x in result.stdout.splitlines()) == 20
        else:
            assert "kept    20 (100.0%)" in result.stdout


def test_simulate_rate_limits_follow_the_recorded_time(tmp_path: Path) -> None:
    """Rate limits spend their budget on the traces' recorded times, not the simulator's own speed:
    the same 40 two-span traces at 10 spans/s (burst 10) keep all when recorded 1 s apart, and the
    burst's 5 when recorded within 50 ms; the same on every run."""
    (tmp_path / "p.yaml").write_text("policies: [{name: rl, type: rate_limiting, "
                                     "rate_limiting: {spans_per_second: 10, burst_capacity: 10}}]\n")
    spread = [[S(n, 2 * n, start_ms=1000 * n, end_ms=1000 * n + 5),
               S(n, 2 * n + 1, parent=2 * n, start_ms=1000 * n + 1, end_ms=1000 * n + 4)] for n in range(1, 41)]
    packed = [[S(n, 2 * n, start_ms=n, end_ms=n + 5),
               S(n, 2 * n + 1, parent=2 * n, start_ms=n + 1, end_ms=n + 4)] for n in range(1, 41)]
    for traces, kept in ((spread, 40), (packed, 5)):
        record(tmp_path / "t.jsonl", traces)
        for _ in range(2):
            result = simulate("--policies", str(tmp_path / "p.yaml"), "--format", "jsonl", str(tmp_path / "t.jsonl"))
            assert result.returncode == 0, result.stderr
            assert sum(json.loads(x)["decision"] == "keep" for x in result.stdout.splitlines()) == kept
