"""OTLP/gRPC receiver on grpc.aio. The method handler has no request deserializer, so requests
arrive as raw bytes and go straight to the wire walker."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from sampler.otlp.wire import WireError

log = logging.getLogger("tailsampler.receiver.grpc")
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"

Ingest = Callable[[bytes, str], int]


class GrpcReceiver:
    def __init__(self, host: str, port: int, ingest: Ingest, max_request_bytes: int,
                 refused: Callable[[str], None]) -> None:
        self.host = host
        self.port = port
        self.ingest = ingest
        self.refused = refused
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", 0),
        ])
        handler = grpc.unary_unary_rpc_method_handler(self._export, request_deserializer=None,
                                                      response_serializer=None)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))

    async def _export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            self.ingest(request, "grpc")
        except WireError as exc:
            self.refused("malformed")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed OTLP trace request: {exc}")
        return b""  # an empty ExportTraceServiceResponse: full success

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(f"{self.host}:{self.port}")
        if self.port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.host}")
        await self.server.start()
        log.info("OTLP/gRPC receiver listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
