"""OTLP/gRPC receiver on grpc.aio: TraceService, LogsService and MetricsService. The method handlers
have no request deserializer, so requests arrive as raw bytes and go straight to the wire walkers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import grpc

from sampler.config.models import TlsServer
from sampler.otlp.transport import FORWARDED_HEADER, NOUNS, SERVICES, retry_details
from sampler.otlp.wire import WireError
from sampler.pipeline.pushback import Backpressure
from sampler.security.auth import Authenticator
from sampler.security.tls import grpc_server_credentials

log = logging.getLogger("tailsampler.receiver.grpc")

Ingest = Callable[[bytes, str, str], int]  # (request, protocol, signal) -> items taken


def _fail(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
          trailers: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """Answer with an error status without raising. `context.abort` raises through grpc.aio, and the
    exception's traceback keeps the handler's frame, and so the whole request payload, in a reference
    cycle that only a full garbage collection frees: under sustained pushback, payloads of refused
    requests pile up by the hundred."""
    context.set_code(code)
    context.set_details(message)
    if trailers:
        context.set_trailing_metadata(trailers)
    return b""


class GrpcReceiver:
    def __init__(self, host: str, port: int, ingest: Ingest, max_request_bytes: int,
                 refused: Callable[[str], None], reuse_port: bool = False, tls: TlsServer | None = None,
                 auth: Authenticator | None = None, trusted: Callable[[str], bool] | None = None) -> None:
        self.host = host
        self.trusted = trusted  # whose FORWARDED_HEADER counts (sharding members); None: nobody's
        self._untrusted: set[str] = set()  # callers already warned about
        self.port = port
        self.ingest = ingest
        self.refused = refused
        self.tls = tls
        self.auth = auth
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", int(reuse_port)),  # shared only by --workers processes
        ])
        self.server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(service, {"Export": grpc.unary_unary_rpc_method_handler(
                functools.partial(self._export, signal), request_deserializer=None, response_serializer=None)})
            for signal, service in SERVICES.items()
        ))

    async def _export(self, signal: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = context.invocation_metadata() or ()
        if self.auth is not None:
            given = next((v for k, v in metadata if k == "authorization"), None)
            if not self.auth.check(given if isinstance(given, str) else None):
                self.refused("unauthenticated")
                return _fail(context, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        forwarded = any(key == FORWARDED_HEADER for key, _ in metadata) and self._trusts(context.peer())
        try:
            self.ingest(request, "peer" if forwarded else "grpc", signal)
        except WireError as exc:
            self.refused("malformed")
            return _fail(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed OTLP {NOUNS[signal]} request: {exc}")
        except Backpressure as exc:
            self.refused(exc.reason)
            message = f"tailsampler is overloaded ({exc.reason}); retry later"
            return _fail(context, grpc.StatusCode.UNAVAILABLE, message, retry_details(message))
        return b""  # an empty Export*ServiceResponse: full success

    def _trusts(self, peer: str) -> bool:
        if self.trusted is not None and self.trusted(peer):
            return True
        host = peer.rpartition(":")[0]
        if len(self._untrusted) < 64 and host not in self._untrusted:  # once per address, bounded
            self._untrusted.add(host)
            log.warning("ignoring the %s header from %s, which is not a peer: its spans are routed like any "
                        "client's (behind a service mesh or NAT, peers' own addresses are hidden)",
                        FORWARDED_HEADER, host)
        return False

    async def start(self) -> int:
        address = f"{self.host}:{self.port}"
        if self.tls is not None:
            self.port = self.server.add_secure_port(address, grpc_server_credentials(self.tls))
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.host}")
        await self.server.start()
        log.info("OTLP/gRPC receiver listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
