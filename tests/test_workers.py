"""`run --workers N` supervision: a worker that dies is restarted (with a backoff that grows while it
keeps failing), /healthz of every worker answers for the whole group, and SIGTERM still ends the group
with status 0. The backoff and the shared status are tested alone; the rest with real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc

from sampler.server.workers import CRASH_LOOP_RESTARTS, STABLE_SECONDS, GroupStatus, Restarts
from tests.otlp_backend import (
    EXPORT_METHOD,
    GRPC_OPTIONS,
    OtlpBackend,
    Tailsampler,
    clean_env,
    free_port,
    http_request,
    wait_until,
)
from tests.spans import S, request, tid
from tests.test_sharding_procs import check_exactly_once, free_port_pair, worker_metric, write


def test_restart_backoff_doubles_up_to_a_cap_and_starts_over_after_a_stable_run() -> None:
    r = Restarts()
    assert [r.exited(ran_for=1.0) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert r.crash_looping
    r.running(STABLE_SECONDS - 1)
    assert r.crash_looping  # not yet recovered
    r.running(STABLE_SECONDS)
    assert not r.crash_looping
    assert r.exited(ran_for=1.0) == 0.5
    r.exited(ran_for=1.0)
    assert r.exited(ran_for=STABLE_SECONDS) == 0.5  # an exit after a long run is a first exit


def test_crash_looping_means_more_restarts_in_a_row_than_the_limit() -> None:
    r = Restarts()
    for _ in range(CRASH_LOOP_RESTARTS):
        r.exited(ran_for=0.1)
    assert not r.crash_looping
    r.exited(ran_for=0.1)
    assert r.crash_looping


def test_group_status_reaches_a_process_that_inherits_it() -> None:
    status = GroupStatus.create()
    probe = f"from sampler.server.workers import GroupStatus; print(repr(GroupStatus({status.fd}).problem()))"

    def seen() -> str:
        return subprocess.run([sys.executable, "-c", probe], pass_fds=(status.fd,), capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        assert seen() == "None"
        status.set("worker 1 is crash-looping")
        assert seen() == repr("worker 1 is crash-looping")
        status.set("x" * 2000)  # bounded: the record has a fixed size
        assert status.problem() == "x" * (GroupStatus.SIZE - 1)
        status.set(None)
        assert seen() == "None"
    finally:
        os.close(status.fd)


# --- real processes ---------------------------------------------------------------------------------


def worker_pids(supervisor: int) -> dict[int, str]:
    """The supervisor's live workers, from /proc: index -> the `--worker-of` argument it was given,
    prefixed by its pid ("PID INDEX/PEERS")."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == supervisor and b"--worker-of" in argv:  # a zombie's cmdline is empty
            spec = argv[argv.index(b"--worker-of") + 1].decode()
            found[int(spec.split("/")[0])] = f"{entry.name} {spec}"
    return found


def pid_of(worker: str) -> int:
    return int(worker.split()[0])


def peer_port_of(worker: str, index: int) -> int:
    peers = worker.split()[1].split("/")[1].split(",")
    return int(peers[index].rsplit(":", 1)[1])


def status(url: str) -> int | None:
    try:
        return http_request(url, timeout=2.0).status
    except OSError:  # nobody listening (yet)
        return None


def start_workers(tmp_path: Path, backend: OtlpBackend) -> tuple[Tailsampler, int]:
    port, admin = free_port(), free_port_pair()  # worker 1 serves its admin endpoints on admin + 1
    path = write(tmp_path, backend, port, admin, None)
    ts = Tailsampler([sys.executable, "-m", "sampler", "run", "--config", str(path), "--workers", "2"], tmp_path,
                     clean_env(), admin_port=admin, grpc_port=port, http_port=0).start()
    assert wait_until(lambda: status(f"http://127.0.0.1:{admin + 1}/readyz") == 200, 20)
    return ts, admin


def send_traces(port: int, first: int, count: int) -> tuple[dict[str, set[str]], set[str]]:
    """`count` traces of 4 single-span requests each over 16 connections, so that the kernel spreads
    them over both workers and most traces need forwarding; every third trace has an error."""
    options = [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(16)]
    errors: dict[str, set[str]] = {}
    normal: set[str] = set()
    try:
        for n in range(first, first + count):
            failing = n % 3 == 0
            spans = [S(n, n * 10 + i, parent=None if i == 0 else n * 10, status=2 if failing and i == 3 else 0)
                     for i in range(4)]
            for i, s in enumerate(spans):
                channels[(n + i) % 16].unary_unary(EXPORT_METHOD)(request([s]), timeout=10)
            ids = {(n * 10 + i + 1).to_bytes(8, "big").hex() for i in range(4)}
            if failing:
                errors[tid(n).hex()] = ids
            else:
                normal.add(tid(n).hex())
    finally:
        for c in channels:
            c.close()
    return errors, normal


def test_a_killed_worker_is_replaced_and_sigterm_still_exits_0(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    ts, admin = start_workers(tmp_path, otlp_backend)
    try:
        assert ts.proc is not None and ts.grpc_port is not None
        supervisor = ts.proc.pid
        before = worker_pids(supervisor)
        assert set(before) == {0, 1}
        os.kill(pid_of(before[0]), signal.SIGKILL)  # worker 0: the one whose admin port the pod probes

        def replaced() -> bool:
            now = worker_pids(supervisor).get(0)
            return now is not None and pid_of(now) != pid_of(before[0]) \
                and status(f"http://127.0.0.1:{admin}/readyz") == 200

        assert wait_until(replaced, 30), ts.stderr()[-3000:]
        assert "worker 0 exited unexpectedly with status -9; restarting it in 0.5s" in ts.stderr()
        assert pid_of(worker_pids(supervisor)[1]) == pid_of(before[1])  # its sibling served on
        for index in (0, 1):  # one restart is no crash loop: the group stays live
            assert status(f"http://127.0.0.1:{admin + index}/healthz") == 200
        errors, normal = send_traces(ts.grpc_port, 1, 24)
        check_exactly_once([admin, admin + 1], otlp_backend, errors, normal)
        # the replacement took its share: spans forwarded to it by its sibling, through its peer port
        assert worker_metric(admin, 0, "tailsampler_spans_received_total", {"protocol": "peer"}) > 0
    finally:
        stopped = ts.stop()
    assert stopped.code == 0, stopped.stderr[-3000:]


def test_a_worker_that_keeps_failing_fails_every_workers_healthz(tmp_path: Path, otlp_backend: OtlpBackend) -> None:
    ts, admin = start_workers(tmp_path, otlp_backend)
    blocker = socket.socket()
    try:
        assert ts.proc is not None
        supervisor = ts.proc.pid
        victim = worker_pids(supervisor)[1]
        # Worker 1 dies, and its peer port is taken before it comes back: every restart fails at start.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(pid_of(victim), signal.SIGKILL)

        def bound() -> bool:
            try:
                blocker.bind(("127.0.0.1", peer_port_of(victim, 1)))
            except OSError:  # the killed worker's socket is not closed yet
                return False
            blocker.listen()
            return True

        assert wait_until(bound, 5, interval=0.01)
        # worker 0's /healthz (the pod's liveness probe) answers for the group
        assert wait_until(lambda: status(f"http://127.0.0.1:{admin}/healthz") == 503, 60), ts.stderr()[-3000:]
        body = http_request(f"http://127.0.0.1:{admin}/healthz").body.decode()
        assert "worker 1 is crash-looping" in body, body
        assert status(f"http://127.0.0.1:{admin}/readyz") == 200  # it still serves meanwhile
        delays = [f"worker 1 exited unexpectedly with status 1; restarting it in {d}s" for d in ("1.0", "2.0", "4.0")]
        assert all(line in ts.stderr() for line in delays), ts.stderr()[-3000:]
        # The port is free again: the next restart succeeds; /healthz waits for a stable run to recover.
        blocker.close()
        assert wait_until(lambda: status(f"http://127.0.0.1:{admin + 1}/readyz") == 200, 40), ts.stderr()[-3000:]
        assert status(f"http://127.0.0.1:{admin + 1}/healthz") == 503
    finally:
        blocker.close()
        stopped = ts.stop()
    assert stopped.code == 0, stopped.stderr[-3000:]
