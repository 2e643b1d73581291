"""`stdout` exporter: one summary line per kept trace (and per batch of its log records, per metrics
request passed through), for trying tailsampler without a backend."""

from __future__ import annotations

import sys
from typing import TextIO

from sampler.exporters.base import RawRequest
from sampler.pipeline.core import KeptTrace


def summary_line(trace: KeptTrace) -> str:
    tid = trace.trace_id.hex()
    if trace.logs:
        return f"{tid or '(no trace)'} logs records={len(trace.spans)} policy={trace.policy or '-'}"
    s = trace.summary
    if s is None:
        return f"{tid} late spans={len(trace.spans)} policy={trace.policy}"
    service = s.root_service if s.root_name is not None else s.first_service
    name = s.root_name if s.root_name is not None else "(no root span)"
    ms = s.duration_ns / 1e6
    return f"{tid} {service or '?'} {name} spans={s.spans} duration={ms:.1f}ms policy={trace.policy}"


class StdoutSender:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    async def send(self, batch: list[KeptTrace]) -> int:
        stream = self.stream or sys.stdout
        stream.write("".join(summary_line(t) + "\n" for t in batch))
        stream.flush()
        return 0

    async def send_raw(self, request: RawRequest) -> int:
        stream = self.stream or sys.stdout
        stream.write(f"{request.signal} passed through: {request.count} data points\n")
        stream.flush()
        return 0

    async def close(self) -> None:
        return None
