"""OTLP/HTTP exporter (protobuf body), on aiohttp: traces to the endpoint, logs and metrics to their
own paths beside it (`signal_endpoint`), or logs to `logs_endpoint`."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable

import aiohttp

from sampler.config.models import TlsClient
from sampler.exporters.base import (
    PermanentError,
    RawRequest,
    RetryableError,
    TooLargeError,
    encode_batch,
    rejected_points,
    rejected_records,
    rejected_spans,
    signal_endpoint,
    split_endpoint,
)
from sampler.otlp.transport import LOGS, METRICS
from sampler.pipeline.core import KeptTrace
from sampler.security.tls import Files, client_context

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


def http_url(endpoint: str) -> str:
    """An endpoint with no path gets /v1/traces; one with a path is used as is."""
    authority, tls, path = split_endpoint(endpoint)
    return f"{'https' if tls else 'http'}://{authority}{path if path not in ('', '/') else '/v1/traces'}"


def retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; fall back to our own backoff


class HttpSender:
    def __init__(
        self, endpoint: str, headers: dict[str, str], compression: str, timeout: float, annotate: bool,
        tls: TlsClient | None = None, logs_endpoint: str | None = None,
    ) -> None:
        self.url = http_url(endpoint)
        self.logs_url = http_url(logs_endpoint) if logs_endpoint else signal_endpoint(endpoint, LOGS)
        self.metrics_url = signal_endpoint(endpoint, METRICS)
        self.tls = tls or TlsClient() if self.url.startswith("https://") else None
        self.files = Files(*(self.tls.ca_file, self.tls.cert_file, self.tls.key_file) if self.tls else ())
        self.headers = {**headers, "Content-Type": "application/x-protobuf"}
        if compression == "gzip":
            self.headers["Content-Encoding"] = "gzip"
        self.gzip = compression == "gzip"
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.annotate = annotate
        self.session: aiohttp.ClientSession | None = None

    async def send(self, batch: list[KeptTrace]) -> int:
        body = encode_batch(batch, self.annotate)
        if batch[0].logs:
            return await self._post(self.logs_url, body, rejected_records)
        return await self._post(self.url, body, rejected_spans)

    async def send_raw(self, request: RawRequest) -> int:
        return await self._post(self.metrics_url, request.body, rejected_points)

    async def _post(self, url: str, body: bytes, rejected: Callable[[bytes], int]) -> int:
        if self.gzip:  # on a thread: zlib lets go of the GIL, and a big batch takes tens of ms
            body = await asyncio.to_thread(gzip.compress, body, compresslevel=1)
        if self.session is not None and self.files.changed():  # rotated certificates: new connections
            await self.session.close()
            self.session = None
        if self.session is None:
            ssl_ctx = client_context(self.tls) if self.tls is not None else None
            connector = aiohttp.TCPConnector(ssl=ssl_ctx) if ssl_ctx is not None else None
            self.session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
        try:
            async with self.session.post(url, data=body, headers=self.headers) as resp:
                payload = await resp.read()
                if resp.status == 200:
                    if payload and resp.content_type == "application/x-protobuf":
                        return rejected(payload)
                    return 0
                message = f"HTTP {resp.status}: {payload[:200]!r}"
                if resp.status in RETRYABLE_STATUS:
                    raise RetryableError(message, retry_after(resp.headers.get("Retry-After")))
                if resp.status == 413:
                    raise TooLargeError(f"{message} ({len(body)} bytes sent)")
                raise PermanentError(message)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
