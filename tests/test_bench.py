"""The benchmarks keep running: a tiny hotpath run prints every key the README quotes (their
values are measured in bench/, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hotpath_prints_its_keys() -> None:
    out = subprocess.run(
        [sys.executable, "bench/hotpath.py", "--requests", "3", "--repeat", "1", "--depth", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    keys = ("spans_per_s", "floor_spans_per_s", "ratio", "bytes_per_buffered_span", "serialized_bytes_per_span",
            "buffered_to_serialized", "deep_spans_per_s", "deep_floor_spans_per_s", "deep_ratio")
    assert all(result[k] > 0 for k in keys), result
    assert result["depth"] == 2


def test_logsplit_prints_its_keys() -> None:
    out = subprocess.run(
        [sys.executable, "bench/logsplit.py", "--requests", "2", "--records", "40", "--repeat", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    keys = ["interpreted_records_per_s", "floor_records_per_s", "interpreted_ratio", "bytes_per_record"]
    if result["compiled"]:
        keys += ["compiled_records_per_s", "compiled_ratio", "compiled_speedup"]
    assert all(result[k] > 0 for k in keys), result
    assert (result["requests"], result["records_per_request"]) == (2, 40)
