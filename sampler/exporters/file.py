"""`file` exporter: kept spans appended as OTLP/JSON lines (one ExportTraceServiceRequest per
line), the format `tailsampler simulate` reads back; kept log records and metrics passed through
the same way (ExportLogsServiceRequest, ExportMetricsServiceRequest lines)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sampler.exporters.base import RawRequest, encode_batch, signal_of
from sampler.otlp.jsonconv import protobuf_to_dict
from sampler.pipeline.core import KeptTrace


class FileSender:
    def __init__(self, path: str, annotate: bool) -> None:
        self.path = Path(path)
        self.annotate = annotate

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)

    async def send(self, batch: list[KeptTrace]) -> int:
        await self._write(encode_batch(batch, self.annotate), signal_of(batch))
        return 0

    async def send_raw(self, request: RawRequest) -> int:
        await self._write(request.body, request.signal)
        return 0

    async def _write(self, body: bytes, signal: str) -> None:
        line = json.dumps(protobuf_to_dict(body, signal), separators=(",", ":")) + "\n"
        await asyncio.to_thread(self._append, line)

    async def close(self) -> None:
        return None
