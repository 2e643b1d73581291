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
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from sampler.config.models import TlsClient
from sampler.exporters.base import (
    WORKERS,
    PermanentError,
    RetryableError,
    TooLargeError,
    encode_batch,
    split_endpoint,
)
from sampler.otlp.transport import EXPORT_METHOD, channel_options, retry_hint
from sampler.pipeline.core import KeptTrace
from sampler.security.tls import Files, grpc_channel_credentials

RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DATA_LOSS,
})


class GrpcSender:
    def __init__(
        self, endpoint: str, headers: dict[str, str], compression: str, timeout: float, annotate: bool,
        tls: TlsClient | None = None, max_backoff: float = 10.0, threads: int = WORKERS,
    ) -> None:
        self.max_backoff_ms = max(100, int(max_backoff * 1000))
        self.target, secure, _ = split_endpoint(endpoint)
        self.tls = tls or TlsClient() if secure else None
        self.files = Files(*(self.tls.ca_file, self.tls.cert_file, self.tls.key_file) if self.tls else ())
        self._connect()
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        self.compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        self.timeout = timeout
        self.annotate = annotate
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="otlp-grpc-export")

    def _connect(self) -> None:
        options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 4 * 2**20),
                   *channel_options(self.max_backoff_ms)]
        if self.tls is not None:
            creds = grpc_channel_credentials(self.tls)
            self.channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.call = self.channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
        )

    async def send(self, batch: list[KeptTrace]) -> int:
        if self.files.changed():  # a rotated CA or client certificate: reconnect with it
            old = self.channel
            self._connect()
            old.close()
        body = encode_batch(batch, self.annotate)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._export, self.call, body)

    def _export(self, call: grpc.UnaryUnaryMultiCallable, body: bytes) -> int:
        """One blocking Export call, on a pool thread."""
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
        return int(response.partial_success.rejected_spans)

    async def close(self) -> None:
        """Closing the channel cancels calls still in flight, so the pool's threads end at once."""
        self.channel.close()
        self.pool.shutdown(wait=False)
