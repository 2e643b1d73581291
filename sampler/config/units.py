"""Durations and sizes in human units (`500ms`, `5s`, `1m`; `256MiB`, `1GiB`), shared by the config
file and a Collector `tail_sampling` block's `decision_wait`."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_duration(value: Any) -> float:
    """Seconds from `500ms`, `5s`, `1m` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s or 1m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"invalid duration {value!r}; use e.g. 500ms, 5s, 1m or a number of seconds")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from `256MiB`, `1GiB` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256MiB or 1GiB")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"invalid size {value!r}; use e.g. 256MiB, 1GiB or a number of bytes")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size
