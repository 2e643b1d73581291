"""OTLP/HTTP receiver: `POST /v1/traces`, protobuf or OTLP/JSON, gzip or identity, on aiohttp.

Bodies are inflated here rather than by aiohttp so the size limit applies to the decompressed
bytes: a gzip bomb is refused with 413 after inflating at most the limit, never whole.
"""

from __future__ import annotations

import json
import logging
import ssl
import zlib
from collections.abc import Callable

from aiohttp import web
from google.rpc import status_pb2

from sampler.auth import Authenticator
from sampler.core import Backpressure
from sampler.otlp.jsonconv import json_to_protobuf
from sampler.otlp.wire import WireError
from sampler.receivers.grpc import RETRY_AFTER_SECONDS

log = logging.getLogger("tailsampler.receiver.http")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

Ingest = Callable[[bytes, str], int]


_CODES = {400: 3, 401: 16, 413: 8, 503: 14}  # INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED, UNAVAILABLE


def _error(status: int, message: str, content_type: str, headers: dict[str, str] | None = None) -> web.Response:
    """An OTLP error response: a google.rpc.Status in the request's own encoding."""
    code = _CODES.get(status, 2)
    if content_type == JSON:
        text = json.dumps({"code": code, "message": message})
        return web.Response(status=status, text=text, content_type=JSON, headers=headers)
    body = status_pb2.Status(code=code, message=message).SerializeToString()
    return web.Response(status=status, body=body, content_type=PROTOBUF, headers=headers)


def inflate(body: bytes, limit: int) -> bytes:
    """Gunzip at most `limit` bytes; ValueError on a bad stream, OverflowError beyond the limit."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"invalid gzip body: {exc}") from None
    if len(out) > limit:
        raise OverflowError
    if not d.eof:
        raise ValueError("truncated gzip body")
    return out


class HttpReceiver:
    def __init__(self, host: str, port: int, ingest: Ingest, max_request_bytes: int,
                 refused: Callable[[str], None], reuse_port: bool = False, tls: ssl.SSLContext | None = None,
                 auth: Authenticator | None = None) -> None:
        self.host = host
        self.port = port
        self.ingest = ingest
        self.refused = refused
        self.tls = tls
        self.auth = auth
        self.limit = max_request_bytes
        self.reuse_port = reuse_port
        self.app = web.Application(client_max_size=max_request_bytes)
        self.app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(self.app, access_log=None, auto_decompress=False)

    async def _traces(self, request: web.Request) -> web.Response:
        ctype = request.content_type
        if self.auth is not None and not self.auth.check(request.headers.get("Authorization")):
            self.refused("unauthenticated")
            return _error(401, "missing or invalid bearer token", ctype if ctype == JSON else PROTOBUF,
                          {"WWW-Authenticate": "Bearer"})
        if ctype not in (PROTOBUF, JSON):
            self.refused("unsupported_media_type")
            return _error(415, f"unsupported Content-Type {ctype!r}; use {PROTOBUF} or {JSON}", PROTOBUF)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.refused("too_large")
            return _error(413, f"request body exceeds {self.limit} bytes", ctype)
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding == "gzip":
            try:
                body = inflate(body, self.limit)
            except OverflowError:
                self.refused("too_large")
                return _error(413, f"decompressed request exceeds {self.limit} bytes", ctype)
            except ValueError as exc:
                self.refused("malformed")
                return _error(400, str(exc), ctype)
        elif encoding not in ("identity", ""):
            self.refused("unsupported_encoding")
            return _error(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none", ctype)
        try:
            data = json_to_protobuf(body) if ctype == JSON else body
            self.ingest(data, "http")
        except WireError as exc:
            self.refused("malformed")
            return _error(400, f"malformed OTLP trace request: {exc}", ctype)
        except Backpressure as exc:
            self.refused(exc.reason)
            return _error(503, f"tailsampler is overloaded ({exc.reason}); retry later", ctype,
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if ctype == JSON:
            return web.Response(text="{}", content_type=JSON)
        return web.Response(body=b"", content_type=PROTOBUF)

    async def start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_port=self.reuse_port or None,
                           ssl_context=self.tls)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        log.info("OTLP/HTTP receiver listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
