"""`tailsampler run --workers N`: N processes on one host, so that one pod uses every core.

The workers share the receiver ports (SO_REUSEPORT: the kernel spreads connections over them) and
shard traces between them like any peer group, each through a loopback port of its own. This
supervisor starts them, restarts one that exits while the group is not shutting down (after a
backoff that grows while it keeps failing), passes SIGTERM/SIGINT on, and exits 0 once every worker
it was running exited 0.

Liveness. A pod's liveness probe reaches one worker's admin port only (worker 0's; worker i serves on
the admin port + i), so what that worker says must hold for the group. A worker that dies is
restarted here within a second or so, which no probe needs to see; a worker that keeps dying is
another matter (a broken host port, a bad file only it reads...), and restarting the whole pod is the
next thing to try. So the supervisor publishes the group's state in one small in-memory file shared
with every worker (`GroupStatus`), and every worker's /healthz answers 503 while some worker has been
restarted more than CRASH_LOOP_RESTARTS times in a row (a worker that then runs STABLE_SECONDS counts
as recovered).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("tailsampler.workers")
BACKOFF_FIRST = 0.5  # seconds before the first restart of a worker...
BACKOFF_MAX = 30.0  # ...doubling at each restart in a row, up to this
STABLE_SECONDS = 60.0  # a worker that ran this long is healthy: its next restart waits BACKOFF_FIRST again
CRASH_LOOP_RESTARTS = 3  # beyond this many restarts in a row, the group's /healthz answers 503
POLL_SECONDS = 0.1


def free_loopback_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class GroupStatus:
    """The group's health as the supervisor sees it: None when healthy, else what is wrong.

    One fixed-size record in a file that only lives in memory (memfd: no filesystem is needed, and a
    container's root filesystem is read-only), written by the supervisor and read by the workers,
    which inherit its descriptor. The first byte says healthy (0) or not (1); the rest is the reason.
    """

    SIZE = 512

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(cls) -> GroupStatus:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("tailsampler-workers")  # close-on-exec: only pass_fds hands it on
        else:  # no memfd (not Linux): an unlinked temporary file does the same
            with tempfile.TemporaryFile() as file:
                fd = os.dup(file.fileno())
        status = cls(fd)
        status.set(None)
        return status

    def set(self, problem: str | None) -> None:
        record = b"\0" if problem is None else b"\1" + problem.encode()[: self.SIZE - 1]
        os.pwrite(self.fd, record.ljust(self.SIZE, b"\0"), 0)

    def problem(self) -> str | None:
        record = os.pread(self.fd, self.SIZE, 0)
        if not record or record[0] == 0:
            return None
        return record[1:].rstrip(b"\0").decode(errors="replace")


@dataclass
class Restarts:
    """When to restart one worker, and whether it is crash-looping (sans-I/O: times are given)."""

    in_a_row: int = 0  # restarts since the worker last ran STABLE_SECONDS

    def exited(self, ran_for: float) -> float:
        """The worker exited after running `ran_for` seconds: how long to wait before restarting it."""
        if ran_for >= STABLE_SECONDS:
            self.in_a_row = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0**self.in_a_row)
        self.in_a_row += 1
        return delay

    def running(self, ran_for: float) -> None:
        """The worker has been running `ran_for` seconds; long enough, and it has recovered."""
        if ran_for >= STABLE_SECONDS:
            self.in_a_row = 0

    @property
    def crash_looping(self) -> bool:
        return self.in_a_row > CRASH_LOOP_RESTARTS


@dataclass
class Slot:
    """One worker index: its current process (None while waiting to be restarted)."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    last_status: int | None = None
    restarts: Restarts = field(default_factory=Restarts)


class Supervisor:
    def __init__(self, run_args: Sequence[str], n: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.run_args = list(run_args)
        self.peers = ",".join(f"127.0.0.1:{p}" for p in free_loopback_ports(n))
        self.clock = clock
        self.status = GroupStatus.create()
        self.slots = [Slot(i) for i in range(n)]
        self.stopping = False

    def _start(self, slot: Slot) -> None:
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "sampler", "run", *self.run_args, "--worker-of", f"{slot.index}/{self.peers}",
             "--worker-status", str(self.status.fd)],
            pass_fds=(self.status.fd,),
        )
        slot.started = self.clock()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True  # the loop passes it on: a handler must not race the loop's restarts

    def _check(self, slot: Slot, now: float) -> None:
        """One look at one worker: notice an exit, restart when due, notice a recovery."""
        if slot.proc is None:
            if not self.stopping and now >= slot.restart_at:
                self._start(slot)
                log.info("worker %d restarted (restart %d in a row)", slot.index, slot.restarts.in_a_row)
            return
        code = slot.proc.poll()
        if code is None:
            slot.restarts.running(now - slot.started)
            return
        if self.stopping:
            return  # its status is read once every worker has exited
        delay = slot.restarts.exited(now - slot.started)
        slot.proc, slot.last_status, slot.restart_at = None, code, now + delay
        log.warning("worker %d exited unexpectedly with status %d; restarting it in %.1fs", slot.index, code, delay)

    def _publish(self, previous: str | None) -> str | None:
        looping = [s for s in self.slots if s.restarts.crash_looping]
        problem = "; ".join(
            f"worker {s.index} is crash-looping: restarted {s.restarts.in_a_row} times in a row, "
            f"last exit status {s.last_status}" for s in looping
        ) or None
        if problem != previous:
            self.status.set(problem)
            if problem is not None:
                log.error("workers unhealthy (/healthz answers 503): %s", problem)
            else:
                log.info("workers healthy again")
        return problem

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in self.slots:
            self._start(slot)
        problem: str | None = None
        signalled = False
        while True:
            now = self.clock()
            for slot in self.slots:
                self._check(slot, now)
            problem = self._publish(problem)
            if self.stopping and not signalled:
                signalled = True
                for slot in self.slots:
                    if slot.proc is not None and slot.proc.poll() is None:
                        slot.proc.send_signal(signal.SIGTERM)
            if self.stopping and all(s.proc is None or s.proc.poll() is not None for s in self.slots):
                break
            time.sleep(POLL_SECONDS)
        failed = False
        for slot in self.slots:
            # A worker waiting to be restarted was not running: its earlier exit was reported then. One
            # that our SIGTERM ended before it could handle it was still starting, with nothing to lose.
            if slot.proc is not None and slot.proc.returncode not in (0, -signal.SIGTERM):
                failed = True
                log.error("worker %d exited with status %d at shutdown", slot.index, slot.proc.returncode)
        return 1 if failed else 0


def supervise(run_args: Sequence[str], n: int) -> int:
    return Supervisor(run_args, n).run()


def parse_worker_of(text: str) -> tuple[int, tuple[str, ...]]:
    """'INDEX/HOST:PORT,HOST:PORT,...' as passed by the supervisor."""
    index, _, peers = text.partition("/")
    return int(index), tuple(peers.split(","))
