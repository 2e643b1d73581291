"""Trace-id hashing shared by every chance-based policy.

Decisions that depend on chance use the trace id, never a random generator, so every instance and
every replay decides the same trace the same way. This is the OpenTelemetry Collector's
`probabilistic` hash: FNV-1a 64 over the salt followed by the 16 trace-id bytes, kept when
hash <= floor((2^64 - 1) * percentage / 100).
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_extensions import i64  # native 64-bit integers when compiled with mypyc

DEFAULT_SALT = "default-hash-seed"
_FNV_OFFSET = 0xCBF29CE484222325
_MASK = 0xFFFFFFFFFFFFFFFF


class SaltedHash:
    """FNV-1a 64 of a fixed salt followed by a trace id. The state after the salt is computed once,
    so each trace hashes only its 16 id bytes.

    The arithmetic runs on two 32-bit halves so that no intermediate exceeds 2^42: native integer
    arithmetic when compiled. The prime is 2^40 + 0x1b3, so h * prime mod 2^64 is
    h * 0x1b3 + (low half << 40), the high half's shift falling off the top."""

    def __init__(self, salt: bytes) -> None:
        self.lo: i64 = _FNV_OFFSET & 0xFFFFFFFF
        self.hi: i64 = _FNV_OFFSET >> 32
        self.lo, self.hi = self._fold(salt, self.lo, self.hi)

    @staticmethod
    def _fold(data: bytes, lo: i64, hi: i64) -> tuple[i64, i64]:
        n: i64 = len(data)
        i: i64 = 0
        while i < n:
            b: i64 = data[i]
            lo ^= b
            t: i64 = lo * 0x1B3
            hi = (hi * 0x1B3 + (t >> 32) + (lo << 8)) & 0xFFFFFFFF
            lo = t & 0xFFFFFFFF
            i += 1
        return lo, hi

    def __call__(self, trace_id: bytes) -> int:
        lo, hi = self._fold(trace_id, self.lo, self.hi)
        return (int(hi) << 32) | int(lo)


def fnv1a64(data: bytes) -> int:
    return SaltedHash(b"")(data)


def threshold(percentage: float) -> int:
    """The largest hash kept at this percentage (exact arithmetic, clamped to [0, 100])."""
    pct = Fraction(min(max(percentage, 0.0), 100.0))
    return int(_MASK * pct / 100)


def rate_for(percentage: float) -> float:
    """Sample rate (1 / probability) of a percentage; 0% keeps nothing, so its rate is moot (0)."""
    return 100.0 / percentage if percentage > 0 else 0.0
