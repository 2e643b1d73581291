"""Build hook: compile the wire-format walker (sampler/otlp/wire.py) with mypyc.

Everything else is declared in pyproject.toml. The compiled module is an optimisation only: when
mypyc or a C compiler is unavailable, when compiling fails, or when TAILSAMPLER_NO_COMPILE=1 is set,
the package installs as pure Python and `sampler.otlp.wire` runs interpreted (its `COMPILED` flag
says which one is loaded).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The receive path: the wire walker, and the per-span / per-trace work of the core around it.
COMPILED_MODULES = [
    "sampler/otlp/wire.py",
    "sampler/summary.py",
    "sampler/buffer.py",
    "sampler/core.py",
    "sampler/policy/hashing.py",
]


def _warn(message: str) -> None:
    print(f"tailsampler setup: {message}; installing the pure-Python walker", file=sys.stderr)


def _remove_stale_inplace_builds() -> None:
    """An editable install compiles in place; a later pure-Python build must not leave the old
    extension module shadowing the .py source."""
    for path in COMPILED_MODULES:
        for so in glob.glob(path[:-3] + ".*.so") + glob.glob(path[:-3] + "__mypyc.*.so"):
            os.remove(so)


class OptionalBuildExt(build_ext):
    """Build the mypyc extensions, but fall back to pure Python instead of failing the install.
    The extensions of one walker only work together, so if any of them fails none is kept."""

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
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        _warn(f"mypyc is not available ({exc})")
        return []
    try:
        # The build environment has mypy but not the runtime dependencies' stubs: treat those
        # imports as Any (the walker's hot code does not touch them).
        return list(mypycify(["--ignore-missing-imports", *COMPILED_MODULES], opt_level="3"))
    except BaseException as exc:  # mypy reports type errors by raising SystemExit
        _warn(f"mypyc could not compile the walker ({exc!r})")
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
