"""Fixtures shared by the subprocess tests: a recording OTLP/gRPC backend and tailsampler processes
that are always stopped at teardown."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # pytest's default import mode adds it already
    sys.path.insert(0, _HERE)

from otlp_backend import (  # noqa: E402
    OtlpBackend,
    StartTailsampler,
    Tailsampler,
    running_backend,
    start_tailsampler,
)


@pytest.fixture
def otlp_backend() -> Iterator[OtlpBackend]:
    with running_backend() as backend:
        yield backend


@pytest.fixture
def tailsampler_factory(tmp_path: Path) -> Iterator[StartTailsampler]:
    """`start(backend_endpoint, policies_yaml=..., decision_wait=...)` -> a ready Tailsampler; all
    started processes are SIGTERMed (then killed) at teardown."""
    started: list[Tailsampler] = []

    def start(backend_endpoint: str | None, policies_yaml: str | None = None, decision_wait: str = "1s",
              extra: str = "") -> Tailsampler:
        workdir = tmp_path / f"tailsampler{len(started)}"
        ts = start_tailsampler(workdir, backend_endpoint, policies_yaml, decision_wait, extra)
        started.append(ts)
        return ts

    try:
        yield start
    finally:
        for ts in started:
            ts.stop()
