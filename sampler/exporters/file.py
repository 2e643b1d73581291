"""`file` exporter: kept spans appended as OTLP/JSON lines (one ExportTraceServiceRequest per
line), the format `tailsampler simulate` reads back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sampler.exporters.base import encode_batch
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
        line = json.dumps(protobuf_to_dict(encode_batch(batch, self.annotate)), separators=(",", ":")) + "\n"
        await asyncio.to_thread(self._append, line)
        return 0

    async def close(self) -> None:
        return None
