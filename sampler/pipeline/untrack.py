"""Hide long-lived, acyclic buffer objects from the cyclic garbage collector.

The buffer holds a few objects per trace (its entry, summary and the lists of span bytes and
groups) for seconds, hundreds of thousands at a time. None of them can be part of a reference
cycle: an entry refers to its summary and lists, the lists to span bytes and shared groups, the
summary to bytes, strings and dicts of plain values, and nothing refers back. Reference counting
frees them when their trace is decided; the cycle collector only ever walks them in vain. And each
walk is expensive: visiting a list touches the header of every span bytes object in it, memory that
has long left the CPU caches, which made young-generation collections under load take 17-68 ms.
Untracked, those collections take a few milliseconds (bench/e2e.py, README "Performance").

Only objects that can never be part of a cycle may be passed here: a cycle through an untracked
object is never collected.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

_gc_untrack: Callable[[object], None] | None
try:
    _gc_untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    _gc_untrack.argtypes = (ctypes.py_object,)
    _gc_untrack.restype = None
except (AttributeError, ValueError):  # an interpreter without CPython's C API
    _gc_untrack = None


def _untrack(obj: object) -> None:
    """Without the compiled module: the same C call through ctypes (slower, same effect), or
    nothing where there is no such call (the collector then just keeps walking these objects)."""
    if _gc_untrack is not None and gc.is_tracked(obj):  # only tracked objects have a GC link to undo
        _gc_untrack(obj)


untrack: Callable[[object], None]
try:
    from sampler.pipeline._untrack import untrack
except ImportError:  # no compiled module (TAILSAMPLER_NO_COMPILE, no compiler)
    untrack = _untrack
