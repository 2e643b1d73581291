"""What the process reads from, and asks of, the system it runs on: its resident memory, the memory
limit of its container, and the C allocator's handing back of freed memory. Small functions that
take their paths, so tests drive them with fakes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping
from pathlib import Path

UNLIMITED = 1 << 62  # cgroup v1 reports "no limit" as a huge number near 2**63
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss(statm: Path = Path("/proc/self/statm")) -> int:
    """The resident set size in bytes (one short read of /proc/self/statm); 0 where there is none."""
    try:
        return int(statm.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


CONTAINER_LIMIT_ENV = "TAILSAMPLER_CONTAINER_MEMORY_LIMIT"  # bytes, e.g. from the downward API


def container_limit(root: Path = Path("/"), environ: Mapping[str, str] = os.environ) -> int | None:
    """The container's memory limit, or None when there is none: the downward API's value if the
    Helm chart passed it (CONTAINER_LIMIT_ENV), else the limit of the cgroup this process runs in
    (v2 `memory.max`, else v1 `memory.limit_in_bytes`). The cgroup's path comes from
    /proc/self/cgroup; where the container sees its own cgroup mounted at the root of
    /sys/fs/cgroup (a cgroup namespace, or v1 inside a container), the root is read instead."""
    given = environ.get(CONTAINER_LIMIT_ENV, "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    fs = root / "sys/fs/cgroup"
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.lstrip("/")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            candidates = [fs / rel / "memory.max", fs / "unified" / rel / "memory.max", fs / "memory.max"]
        elif "memory" in controllers.split(","):  # cgroup v1
            candidates = [fs / "memory" / rel / "memory.limit_in_bytes", fs / "memory/memory.limit_in_bytes"]
        else:
            continue
        for candidate in candidates:
            limit = _read_limit(candidate)
            if limit != -1:
                return limit
    return None


def _read_limit(path: Path) -> int | None:
    """A cgroup limit file's value: None for no limit, -1 when the file is not there."""
    try:
        text = path.read_text().strip()
    except OSError:
        return -1
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return -1
    return None if value >= UNLIMITED else value


_libc: ctypes.CDLL | None = None
try:
    _name = ctypes.util.find_library("c")
    if _name is not None:
        _libc = ctypes.CDLL(_name)
        _libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        _libc.malloc_trim.restype = ctypes.c_int
        _libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        _libc.mallopt.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
    _libc = None


M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc's malloc.h)


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold at its default, 128 KiB. Left to itself glibc raises it to the
    size of each large block freed, so request payloads (hundreds of KiB) move into the heap
    between span bytes and stay resident as fragments once freed; with it fixed they are mapped
    and unmapped whole."""
    if _libc is None:
        return False
    return bool(_libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024))


def malloc_trim() -> bool:
    """Hand memory freed inside the C heap back to the system (glibc releases whole free pages,
    not only the top of the heap). Without it, memory freed by deciding traces early stays resident
    and the governor would see no relief. Blocks for a while on a large heap: call it off the loop."""
    if _libc is None:
        return False
    return bool(_libc.malloc_trim(0))
