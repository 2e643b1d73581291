"""OTLP/gRPC exporter: sends spliced request bytes through a generic unary call (no message
objects), classifying failures as the OTLP specification says.

Calls go through grpc's blocking API on a few threads of their own, not through grpc.aio: gRPC core
compresses a message inside the call that sends it, and grpc.aio makes that call on the event-loop
thread holding the GIL, so gzip of a large batch stalled every receive behind it (py-spy under
bench/e2e.py; docs/performance.md). The blocking API releases
the GIL while core works, so compression runs on the second core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from sampler.config.models import TlsClient
from sampler.exporters.base import (
    WORKERS,
    PermanentError,
    RawRequest,
    RetryableError,
    TooLargeError,
    encode_batch,
    rejected_points,
    rejected_records,
    rejected_spans,
    split_endpoint,
)
from sampler.otlp.transport import (
    EXPORT_METHOD,
    LOGS_EXPORT_METHOD,
    METRICS_EXPORT_METHOD,
    channel_options,
    retry_hint,
)
from sampler.pipeline.core import KeptTrace
from sampler.security.tls import Files, grpc_channel_credentials

RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DATA_LOSS,
})


class _Channel:
    """One channel to a backend and its Export calls, reconnected when the TLS files change."""

    def __init__(self, target: str, tls: TlsClient | None, max_backoff_ms: int) -> None:
        self.target = target
        self.tls = tls
        self.max_backoff_ms = max_backoff_ms
        self.files = Files(*(tls.ca_file, tls.cert_file, tls.key_file) if tls else ())
        self._connect()

    def _connect(self) -> None:
        options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 4 * 2**20),
                   *channel_options(self.max_backoff_ms)]
        if self.tls is not None:
            self.channel = grpc.secure_channel(self.target, grpc_channel_credentials(self.tls), options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.calls = {
            method: self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            for method in (EXPORT_METHOD, LOGS_EXPORT_METHOD, METRICS_EXPORT_METHOD)
        }

    def call(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        if self.files.changed():  # a rotated CA or client certificate: reconnect with it
            old = self.channel
            self._connect()
            old.close()
        return self.calls[method]


class GrpcSender:
    """Traces, logs and metrics over OTLP/gRPC: one channel to `endpoint`, and one to
    `logs_endpoint` for logs when it is another."""

    def __init__(
        self, endpoint: str, headers: dict[str, str], compression: str, timeout: float, annotate: bool,
        tls: TlsClient | None = None, max_backoff: float = 10.0, threads: int = WORKERS,
        logs_endpoint: str | None = None,
    ) -> None:
        backoff_ms = max(100, int(max_backoff * 1000))
        self.channel = self._channel(endpoint, tls, backoff_ms)
        self.logs_channel = self._channel(logs_endpoint, tls, backoff_ms) if logs_endpoint else self.channel
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        self.compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        self.timeout = timeout
        self.annotate = annotate
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="otlp-grpc-export")

    @staticmethod
    def _channel(endpoint: str, tls: TlsClient | None, backoff_ms: int) -> _Channel:
        target, secure, _ = split_endpoint(endpoint)
        return _Channel(target, tls or TlsClient() if secure else None, backoff_ms)

    async def send(self, batch: list[KeptTrace]) -> int:
        body = encode_batch(batch, self.annotate)
        if batch[0].logs:
            call, rejected = self.logs_channel.call(LOGS_EXPORT_METHOD), rejected_records
        else:
            call, rejected = self.channel.call(EXPORT_METHOD), rejected_spans
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._export, call, body, rejected)

    async def send_raw(self, request: RawRequest) -> int:
        call = self.channel.call(METRICS_EXPORT_METHOD)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._export, call, request.body,
                                                                rejected_points)

    def _export(self, call: grpc.UnaryUnaryMultiCallable, body: bytes, rejected: Callable[[bytes], int]) -> int:
        """One blocking Export call, on a pool thread; returns how many items the backend rejected."""
        try:
            response = call(body, timeout=self.timeout, metadata=self.metadata, compression=self.compression)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)  # grpc raises errors that are also the failed call
            code = exc.code()
            delay = retry_hint(exc.trailing_metadata())
            message = f"gRPC {code.name}: {exc.details()}"
            if code in RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None):
                raise RetryableError(message, delay) from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # without RetryInfo: a message over a size limit
                raise TooLargeError(f"{message} ({len(body)} bytes)") from None
            raise PermanentError(message) from None
        except ValueError as exc:  # its channel was closed for a reconnect after the call was queued
            raise RetryableError(f"gRPC channel replaced: {exc}") from None
        return rejected(response) if response else 0

    async def close(self) -> None:
        """Closing the channel cancels calls still in flight, so the pool's threads end at once."""
        self.channel.channel.close()
        self.logs_channel.channel.close()
        self.pool.shutdown(wait=False)
