"""memory_limit holds for real processes under stress: bench/memory.py's cases, shorter, with every
instance's peak resident memory (VmHWM) held to the limit itself. Each case also checks that the
process stayed ready, that early decisions and refusals were counted, and that kept traces arrived.
(The backend down for 30 s under load, a slow backend and 5x overload, with exact accounting of
every span, run under a memory_limit in tests/test_faults.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sampler.server.system import CONTAINER_LIMIT_ENV
from tests.otlp_backend import clean_env, http_request, metric_value, wait_until, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from memory import run_case  # bench/memory.py

LIMIT_MIB = 256
LIMIT = f"{LIMIT_MIB}MiB"
pytestmark = pytest.mark.timeout(300)


def check_bounded(result: dict[str, Any]) -> None:
    for inst in result["instances"]:
        assert inst["peak_rss_mb"] <= LIMIT_MIB, inst
        assert inst["ready_throughout"], inst
        assert inst["exit_code"] == 0, inst["log_tail"]
    assert result["sink_spans"] > 0  # kept traces arrived (those decided at shutdown included)
    assert result["sink_spans"] >= result["exported_spans"]  # counted as exported: arrived


def refused_by_clients(failed: dict[str, int]) -> int:
    return sum(n for code, n in failed.items() if code == "UNAVAILABLE")


def test_grpc_overload_stays_under_the_limit() -> None:
    result = run_case("grpc_overload", LIMIT, seconds=10)
    check_bounded(result)
    (inst,) = result["instances"]
    assert inst["evicted"] > 0  # the buffer filled: the oldest traces were decided early, counted
    assert inst["refused_requests"] >= refused_by_clients(result["load"]["failed"])


def test_otlp_json_flood_stays_under_the_limit() -> None:
    result = run_case("http_json", LIMIT, seconds=10)
    check_bounded(result)
    (inst,) = result["instances"]
    statuses = result["load"]["statuses"]
    assert statuses.get("200", 0) > 0 and set(statuses) <= {"200", "503"}
    assert inst["refused_requests"] == statuses.get("503", 0)


def test_one_huge_trace_among_normal_traffic_stays_under_the_limit() -> None:
    result = run_case("huge_trace", LIMIT, seconds=10)
    check_bounded(result)
    (inst,) = result["instances"]
    assert result["load"]["huge_ok"] == 100_000  # every span of it accepted
    assert inst["limited"] >= 1  # ...and the trace decided early at max_spans_per_trace, counted


def test_three_sharded_instances_with_one_pushing_back_stay_under_the_limit() -> None:
    result = run_case("sharded_pushback", LIMIT, seconds=10)
    check_bounded(result)
    assert len(result["instances"]) == 3
    assert result["instances"][0]["refused_requests"] > 0  # the tiny one pushed back


def _memory_cgroup(limit: int) -> Path | None:
    """A fresh cgroup (v1 or v2) with a memory limit, where this machine lets us make one (root)."""
    name = f"tailsampler-test-{os.getpid()}"
    for base, limit_file in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
                             (Path("/sys/fs/cgroup"), "memory.max")):
        if not (base / limit_file).exists() and not (base / "cgroup.controllers").exists():
            continue
        try:
            group = base / name
            group.mkdir(exist_ok=True)
            (group / limit_file).write_text(str(limit))
            return group
        except OSError:
            continue
    return None


def test_memory_limit_auto_takes_80_percent_of_the_cgroup_limit(tmp_path: Path) -> None:
    """A real process in a cgroup limited to 400 MiB: `memory_limit: auto` (the default) is 320 MiB."""
    group = _memory_cgroup(400 * 2**20)
    if group is None:
        pytest.skip("cannot create a memory cgroup here (needs root and a writable cgroup filesystem)")
    path, ports = write_config(tmp_path, None)
    env = clean_env()
    env.pop(CONTAINER_LIMIT_ENV, None)
    with open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sampler", "run", "--config", str(path)], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
        )
    try:
        admin = f"http://127.0.0.1:{ports['admin']}"

        def limit() -> float | None:
            try:
                return metric_value(http_request(f"{admin}/metrics").body.decode(), "tailsampler_memory_limit_bytes")
            except OSError:
                return None

        assert wait_until(lambda: limit() is not None, 20), (tmp_path / "out").read_text()
        assert limit() == int(400 * 2**20 * 0.8)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        group.rmdir()


def test_the_resident_memory_governor_holds_the_limit_the_accounting_would_miss() -> None:
    """buffer.max_bytes far above what memory_limit leaves it: only reading the resident memory
    (deciding early above 88% of the limit, refusing above 93%) keeps the process under it."""
    result = run_case("oversized_buffer", LIMIT, seconds=10)
    check_bounded(result)
    (inst,) = result["instances"]
    assert inst["buffer_max_bytes"] == 2**30
    assert inst["buffer_bound_bytes"] < LIMIT_MIB * 2**20 / 2  # lowered by the governor
    assert inst["evicted"] > 0
