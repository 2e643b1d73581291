"""Build hook: compile the receive path. The per-span work (walking, validating and splitting each
request by trace: sampler/otlp/_split.pyx) is C through Cython, since it reads bytes at pointer
speed; the per-trace work around it (summary, buffer, core, hashing) is typed Python compiled with
mypyc.

Everything else is declared in pyproject.toml. The compiled modules are an optimisation only: when
Cython, mypyc or a C compiler is unavailable, when compiling fails, or when TAILSAMPLER_NO_COMPILE=1
is set, the package installs as pure Python (`sampler.otlp.split.COMPILED` says which one is loaded).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

CYTHON_MODULES = [
    "sampler/otlp/_split.pyx",
    "sampler/pipeline/_untrack.pyx",
    "sampler/pipeline/_idring.pyx",
    "sampler/pipeline/_pack.pyx",
]
# The per-trace work of the core around the splitter.
MYPYC_MODULES = [
    "sampler/policy/summary.py",
    "sampler/pipeline/frames.py",
    "sampler/pipeline/buffer.py",
    "sampler/pipeline/core.py",
    "sampler/policy/hashing.py",
    "sampler/policy/engine.py",
    "sampler/pipeline/decisions.py",
    "sampler/otlp/splice.py",
    "sampler/otlp/jsonwire.py",
    # The policy types the engine evaluates per decided trace (their pydantic models are in
    # policy/configs.py, interpreted; loader, regex and the OTTL parser stay interpreted too).
    "sampler/policy/base.py",
    "sampler/policy/always_sample.py",
    "sampler/policy/boolean_attribute.py",
    "sampler/policy/composite.py",
    "sampler/policy/compound.py",
    "sampler/policy/errors.py",
    "sampler/policy/latency.py",
    "sampler/policy/limiter.py",
    "sampler/policy/numeric_attribute.py",
    "sampler/policy/probabilistic.py",
    "sampler/policy/rate_limiting.py",
    "sampler/policy/route.py",
    "sampler/policy/span_count.py",
    "sampler/policy/status_code.py",
    "sampler/policy/string_attribute.py",
    "sampler/policy/trace_flags.py",
    "sampler/policy/trace_state.py",
]


def _warn(message: str) -> None:
    print(f"tailsampler setup: {message}; installing the pure-Python receive path", file=sys.stderr)


def _remove_stale_inplace_builds() -> None:
    """An editable install compiles in place; a later pure-Python build must not leave the old
    extension module shadowing the .py source."""
    stale = glob.glob("*__mypyc.*.so")  # mypyc's shared runtime module of the compiled group
    for path in MYPYC_MODULES + CYTHON_MODULES:
        stem = path.rsplit(".", 1)[0]
        stale += glob.glob(stem + ".*.so") + glob.glob(stem + "__mypyc.*.so")
    for so in stale:
        os.remove(so)


class OptionalBuildExt(build_ext):
    """Build the extensions, but fall back to pure Python instead of failing the install. The
    compiled modules are built and tested together, so if any of them fails none is kept."""

    def run(self) -> None:
        if self.inplace or getattr(self, "editable_mode", False):  # editable: no old build may shadow the source
            _remove_stale_inplace_builds()
        self._failed = False
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, ...
            _warn(f"building the compiled walker failed ({exc})")
            self._failed = True
        if self._failed:
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            self.extensions = []

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"compiling {ext.name} failed ({exc})")
            self._failed = True

    def copy_extensions_to_source(self) -> None:
        if not getattr(self, "_failed", False):
            super().copy_extensions_to_source()

    def get_outputs(self) -> list[str]:
        return [p for p in super().get_outputs() if os.path.exists(p)]


def ext_modules() -> list[object]:
    if os.environ.get("TAILSAMPLER_NO_COMPILE", "") not in ("", "0"):
        _remove_stale_inplace_builds()
        _warn("TAILSAMPLER_NO_COMPILE is set")
        return []
    if sys.byteorder != "little":  # the splitter reads fixed64/fixed32 fields in host byte order
        _warn("big-endian host")
        return []
    try:
        from Cython.Build import cythonize
        from mypyc.build import mypycify
    except ImportError as exc:
        _warn(f"Cython or mypyc is not available ({exc})")
        _remove_stale_inplace_builds()
        return []
    try:
        cython_ext = cythonize(CYTHON_MODULES, quiet=True)
        # The first build of a fresh environment runs before the runtime dependencies are
        # installed: their imports are Any, so subclassing pydantic's BaseModel (policy/configs.py,
        # imported by the policy types) and its validator decorators must be allowed here.
        # `make lint` checks the same code strictly with the dependencies installed.
        flags = ["--ignore-missing-imports", "--allow-subclassing-any", "--allow-untyped-decorators"]
        return [*cython_ext, *mypycify([*flags, *MYPYC_MODULES], opt_level="3")]
    except BaseException as exc:  # mypy reports type errors by raising SystemExit
        _warn(f"compiling the receive path failed ({exc!r})")
        _remove_stale_inplace_builds()  # an earlier build of other sources must not shadow these
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
