"""`tailsampler run --workers N`: N processes on one host, so that one pod uses every core.

The workers share the receiver ports (SO_REUSEPORT: the kernel spreads connections over them) and
shard traces between them like any peer group, each through a loopback port of its own. This
supervisor only starts them, passes SIGTERM/SIGINT on, and exits 0 once every worker exited 0; a
worker that dies leaves the others serving.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType


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


def supervise(run_args: Sequence[str], n: int) -> int:
    peers = ",".join(f"127.0.0.1:{p}" for p in free_loopback_ports(n))
    children = [
        subprocess.Popen([sys.executable, "-m", "sampler", "run", *run_args, "--worker-of", f"{i}/{peers}"])
        for i in range(n)
    ]

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while any(child.poll() is None for child in children):
        time.sleep(0.2)
    for i, child in enumerate(children):
        if child.returncode != 0:
            print(f"tailsampler: worker {i} exited with status {child.returncode}", file=sys.stderr)
    return 0 if all(child.returncode == 0 for child in children) else 1


def parse_worker_of(text: str) -> tuple[int, tuple[str, ...]]:
    """'INDEX/HOST:PORT,HOST:PORT,...' as passed by the supervisor."""
    index, _, peers = text.partition("/")
    return int(index), tuple(peers.split(","))
