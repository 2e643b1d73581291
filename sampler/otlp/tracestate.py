"""The OpenTelemetry consistent-sampling threshold in a span's W3C `tracestate` (the specification's
"TraceState: Probability Sampling"): a trace kept with probability p carries `ot=th:<hex>`, the
rejection threshold (1 - p) * 2^56 in hex with trailing zeros removed, so backends and span metrics
can weight each kept span by its adjusted count, 1/p.

- Precision: 4 significant hex digits, the specification's recommended default, raised by one per
  leading `f` (so small probabilities keep theirs): 10% is `e666`, 1% `fd70a`, 0.1% `ffbe77`.
- Merging: other `ot` sub-keys (`rv`...) and other vendors' members are kept; the `ot` member moves
  to the front (W3C: a modified member goes first). A span that already carries a threshold was
  sampled before with that probability: as the specification's proportional downstream sampler,
  the new threshold is that of the product of both probabilities (thresholds only ever rise).
- Splicing: a span's `trace_state` (field 3) is replaced in its bytes; every other field stays as it
  came, in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache

from sampler.otlp.splice import field
from sampler.otlp.split import COMPILED
from sampler.otlp.wire import _length, _skip, _tag

MAX_THRESHOLD = 1 << 56
PRECISION = 4
TRACE_STATE = 0x1A  # Span.trace_state (field 3), length-delimited
# What a threshold adds to a span at most (tag, length, "ot=th:" and 14 digits, a separator), for sizing
# export requests before the spans are rewritten.
ALLOWANCE = 32


def threshold(probability: float, precision: int = PRECISION) -> str:
    """The `th` value (hex, trailing zeros removed) for a sampling probability in [2^-56, 1]."""
    if probability >= 1:
        return "0"
    _, exp = math.frexp(probability)
    digits = max(1, min(13, precision + exp // -4))
    scale = 16**digits
    n = int((1 - Fraction(probability)) * scale + Fraction(1, 2))  # rounded half up
    n = min(n, scale - 1)
    return format(n, f"0{digits}x").rstrip("0") or "0"


def probability_of(th: str) -> float | None:
    """The sampling probability a `th` value stands for; None when it is not a valid one."""
    if not th or len(th) > 14:
        return None
    try:
        t = int(th.ljust(14, "0"), 16)
    except ValueError:
        return None
    return (MAX_THRESHOLD - t) / MAX_THRESHOLD


@lru_cache(maxsize=4096)
def merge(tracestate: str, probability: float) -> str:
    """`tracestate` with the threshold of a keep at `probability` in its `ot` member."""
    members = [m.strip() for m in tracestate.split(",") if m.strip()] if tracestate else []
    ot: list[str] = []
    others: list[str] = []
    for m in members:
        if m.startswith("ot=") and not ot:
            ot = [sub for sub in m[3:].split(";") if sub]
        else:
            others.append(m)
    p = probability
    for sub in ot:
        if sub.startswith("th:"):
            earlier = probability_of(sub[3:])
            if earlier is not None and earlier > 0:
                p = max(probability * earlier, 2.0**-56)
    th = "th:" + threshold(p)
    for i, sub in enumerate(ot):
        if sub.startswith("th:"):
            ot[i] = th
            break
    else:
        ot.insert(0, th)
    return ",".join(["ot=" + ";".join(ot), *others])


def _cut_field(data: bytes, tag: int) -> tuple[bytes, bytes | None]:
    """Interpreted: `data` without its top-level fields of `tag`, and the last one's value (None
    without one); as the compiled `cut_field` in _split.pyx."""
    end = len(data)
    pos = 0
    current: bytes | None = None
    parts: list[bytes] = []
    kept_from = 0
    while pos < end:
        start = pos
        t, pos = _tag(data, pos, end)
        if t == tag:
            n, pos = _length(data, pos, end)
            current = data[pos : pos + n]  # the last one wins, as protobuf parsers read it
            parts.append(data[kept_from:start])
            pos += n
            kept_from = pos
        else:
            pos = _skip(data, pos, end, t, 0)
    if current is None:
        return data, None
    parts.append(data[kept_from:])
    return b"".join(parts), current


cut_field: Callable[[bytes, int], tuple[bytes, bytes | None]]
if COMPILED:
    from sampler.otlp._split import cut_field
else:
    cut_field = _cut_field


@lru_cache(maxsize=4096)
def _threshold_field(current: bytes, probability: float) -> bytes:
    return field(TRACE_STATE, merge(current.decode("utf-8", "replace"), probability).encode())


def with_threshold(span: bytes, probability: float) -> bytes:
    """A serialized Span whose trace_state carries the threshold of a keep at `probability`."""
    rest, current = cut_field(span, TRACE_STATE)
    return rest + _threshold_field(current or b"", probability)
