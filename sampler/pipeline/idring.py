"""A bounded memory of trace ids, oldest forgotten first, each with a small integer.

The decision cache remembers up to a million decided trace ids so that late spans follow their
trace's decision. As Python objects (a `bytes` per id in a set or dict) that costs 80-100 bytes an
id and frees hundreds of thousands of objects at once when a generation rotates. The compiled ring
(`_idring.pyx`) holds each id in 24-32 bytes of arrays allocated once, so its memory is known up
front and never moves. Without the compiled module the same behaviour comes from an insertion-
ordered dict (more memory per id, reported by `nbytes`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

ID_BYTES = 16
# What the interpreted ring keeps alive per id besides its dict: the id's bytes object (the trace
# summary's, which would otherwise be freed with the trace). Values are small cached ints.
_ID_OBJECT = sys.getsizeof(b"\0" * ID_BYTES)


class Ring(Protocol):
    """What the compiled and the interpreted ring both offer."""

    @property
    def capacity(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int: ...
    def add(self, trace_id: bytes, value: int) -> None: ...
    def get(self, trace_id: bytes) -> int: ...
    def clear(self) -> None: ...


class _IdRing:
    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self.ids: dict[bytes, int] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def nbytes(self) -> int:
        return sys.getsizeof(self.ids) + len(self.ids) * _ID_OBJECT

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, trace_id: bytes, value: int) -> None:
        if len(trace_id) != ID_BYTES:
            raise ValueError("trace ids are 16 bytes")
        ids = self.ids
        if trace_id not in ids and len(ids) >= self._capacity:
            del ids[next(iter(ids))]
        ids[trace_id] = value

    def get(self, trace_id: bytes) -> int:
        return self.ids.get(trace_id, -1)

    def clear(self) -> None:
        self.ids.clear()


IdRing: Callable[[int], Ring]
try:
    from sampler.pipeline._idring import IdRing
except ImportError:  # no compiled module (TAILSAMPLER_NO_COMPILE, no compiler)
    IdRing = _IdRing
