"""OTLP/HTTP receiver: `POST /v1/traces`, `/v1/logs` and `/v1/metrics`, protobuf or OTLP/JSON, gzip
or identity, on aiohttp.

Bodies are inflated here rather than by aiohttp so the size limit applies to the decompressed
bytes: a gzip bomb is refused with 413 after inflating at most the limit, never whole.

Memory: a body is taken only when `admit` finds room for it (before reading it, by its
Content-Length), then again for what decoding it costs (once inflated: its size times the cost per
byte of its format); a request without room is refused with 503 and Retry-After before it is read.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import zlib
from collections.abc import Callable

from aiohttp import web
from google.rpc import status_pb2

from sampler.otlp.jsonconv import json_to_protobuf_stepwise
from sampler.otlp.transport import NOUNS, RETRY_AFTER_SECONDS, SERVICES
from sampler.otlp.wire import WireError
from sampler.pipeline.memory import JSON_COST, PROTOBUF_COST
from sampler.pipeline.pushback import Backpressure
from sampler.security.auth import Authenticator

log = logging.getLogger("tailsampler.receiver.http")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

Ingest = Callable[[bytes, str, str], int]  # (request, protocol, signal) -> items taken
Admit = Callable[[int], str | None]  # bytes wanted -> None (taken; release them after) or why not


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
                 auth: Authenticator | None = None, admit: Admit | None = None,
                 release: Callable[[int], None] | None = None) -> None:
        self.host = host
        self.admit = admit
        self.release = release
        self.port = port
        self.ingest = ingest
        self.refused = refused
        self.tls = tls
        self.auth = auth
        self.limit = max_request_bytes
        self.reuse_port = reuse_port
        self.app = web.Application(client_max_size=max_request_bytes)
        for signal in SERVICES:
            self.app.router.add_post(f"/v1/{signal}", functools.partial(self._export, signal))
        self.runner = web.AppRunner(self.app, access_log=None, auto_decompress=False)

    async def _export(self, signal: str, request: web.Request) -> web.Response:
        if self.admit is None:
            return await self._handle(signal, request, None)
        held = [0]
        try:
            return await self._handle(signal, request, held)
        finally:
            if held[0] and self.release is not None:
                self.release(held[0])

    def _reserve(self, held: list[int] | None, cost: int, ctype: str) -> web.Response | None:
        """Hold `cost` bytes for this request instead of what it held so far, or the refusal."""
        if held is None or self.admit is None or self.release is None:
            return None
        if held[0]:
            self.release(held[0])
            held[0] = 0
        reason = self.admit(cost)
        if reason is None:
            held[0] = cost
            return None
        self.refused(reason)
        if reason == "too_large":
            return _error(413, f"decoding this request would take {cost} bytes, more than this instance's "
                               "memory_limit lets requests hold at once", ctype)
        return _error(503, f"tailsampler is overloaded ({reason}); retry later", ctype,
                      {"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def _handle(self, signal: str, request: web.Request, held: list[int] | None) -> web.Response:
        ctype = request.content_type
        if self.auth is not None and not self.auth.check(request.headers.get("Authorization")):
            self.refused("unauthenticated")
            return _error(401, "missing or invalid bearer token", ctype if ctype == JSON else PROTOBUF,
                          {"WWW-Authenticate": "Bearer"})
        if ctype not in (PROTOBUF, JSON):
            self.refused("unsupported_media_type")
            return _error(415, f"unsupported Content-Type {ctype!r}; use {PROTOBUF} or {JSON}", PROTOBUF)
        refusal = self._reserve(held, min(request.content_length or self.limit, self.limit), ctype)
        if refusal is not None:
            return refusal
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
        refusal = self._reserve(held, len(body) * (JSON_COST if ctype == JSON else PROTOBUF_COST), ctype)
        if refusal is not None:
            return refusal
        try:
            data = await json_to_protobuf_stepwise(body, signal) if ctype == JSON else body
            self.ingest(data, "http", signal)
        except WireError as exc:
            self.refused("malformed")
            return _error(400, f"malformed OTLP {NOUNS[signal]} request: {exc}", ctype)
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
