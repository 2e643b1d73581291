"""OTLP/gRPC exporter: sends spliced request bytes through a generic unary call (no message
objects), classifying failures as the OTLP specification says."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from sampler.core import KeptTrace
from sampler.exporters.base import PermanentError, RetryableError, encode_batch, split_endpoint

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DATA_LOSS,
})


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay carried in the status details, if the server sent one."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


class GrpcSender:
    def __init__(
        self, endpoint: str, headers: dict[str, str], compression: str, timeout: float, annotate: bool
    ) -> None:
        target, tls, _ = split_endpoint(endpoint)
        options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 4 * 2**20)]
        if tls:
            self.channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self.call = self.channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
        )
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        self.compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        self.timeout = timeout
        self.annotate = annotate

    async def send(self, batch: list[KeptTrace]) -> int:
        body = encode_batch(batch, self.annotate)
        try:
            response = await self.call(
                body, timeout=self.timeout, metadata=self.metadata, compression=self.compression
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            delay = retry_delay(exc)
            message = f"gRPC {code.name}: {exc.details()}"
            if code in RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None):
                raise RetryableError(message, delay) from None
            raise PermanentError(message) from None
        return int(response.partial_success.rejected_spans)

    async def close(self) -> None:
        await self.channel.close()
