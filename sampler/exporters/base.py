"""What every exporter implements, and the errors that tell the queue whether to retry."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import Counter

from sampler.otlp.splice import annotation, encode_request, strip_annotation
from sampler.pipeline.core import KeptTrace

WORKERS = 4  # export batches in flight at once


class RetryableError(Exception):
    """The backend may accept the same batch later; `delay` is its hint (RetryInfo/Retry-After)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """The backend refused the batch for good (bad data, auth); retrying cannot help."""


class TooLargeError(PermanentError):
    """The backend refused the request as too large (gRPC RESOURCE_EXHAUSTED without RetryInfo, HTTP
    413): the same spans may pass in smaller requests."""


class ExportMetrics(Protocol):
    """The counters an export queue moves. The server's `Metrics` satisfies it; the queue names only
    this, so exporters do not import the server shell above them."""

    spans_exported: Counter
    export_failures: Counter
    spans_dropped: Counter


class Sender(Protocol):
    async def send(self, batch: list[KeptTrace]) -> int:
        """Deliver the batch; return how many spans the backend rejected (partial success)."""

    async def close(self) -> None: ...


def encode_batch(batch: list[KeptTrace], annotate: bool) -> bytes:
    """The export request for a batch. When annotating, spans that arrived annotated already have
    that annotation cut out first (once: the trace keeps the stripped spans for any retry), so each
    leaves with one `tailsampling.policy` and one `tailsampling.sample_rate`, ours."""
    if annotate:
        for t in batch:
            if t.marked:
                t.spans = [strip_annotation(s) for s in t.spans]
                t.marked = False
    return encode_request(
        (t.spans, t.groups, annotation(t.policy, t.sample_rate) if annotate else b"") for t in batch
    )


def split_endpoint(endpoint: str) -> tuple[str, bool, str]:
    """`http://h:p/path` -> ("h:p", tls=False, "/path"); https means TLS; a bare host:port is plaintext."""
    tls = endpoint.startswith("https://")
    rest = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
    authority, slash, path = rest.partition("/")
    return authority, tls, slash + path
