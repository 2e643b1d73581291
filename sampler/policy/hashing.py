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


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64, computed on two 32-bit halves so that no intermediate exceeds 2^42: native
    integer arithmetic when compiled. The prime is 2^40 + 0x1b3, so h * prime mod 2^64 is
    h * 0x1b3 + (low half << 40), the high half's shift falling off the top."""
    lo: i64 = _FNV_OFFSET & 0xFFFFFFFF
    hi: i64 = _FNV_OFFSET >> 32
    for b in data:
        lo ^= b
        t: i64 = lo * 0x1B3
        hi = (hi * 0x1B3 + (t >> 32) + (lo << 8)) & 0xFFFFFFFF
        lo = t & 0xFFFFFFFF
    return (int(hi) << 32) | int(lo)


def threshold(percentage: float) -> int:
    """The largest hash kept at this percentage (exact arithmetic, clamped to [0, 100])."""
    pct = Fraction(min(max(percentage, 0.0), 100.0))
    return int(_MASK * pct / 100)


def trace_hash(salt: bytes, trace_id: bytes) -> int:
    return fnv1a64(salt + trace_id)


def rate_for(percentage: float) -> float:
    """Sample rate (1 / probability) of a percentage; 0% keeps nothing, so its rate is moot (0)."""
    return 100.0 / percentage if percentage > 0 else 0.0
