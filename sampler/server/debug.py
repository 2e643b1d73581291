"""/debug on the admin port (CONTRACT "Explaining decisions"): why a trace was kept or dropped.

- GET /debug/traces/<32 hex>: a buffered trace (what the policies would say now, changing nothing),
  a recently decided one (the ring's entry: the votes as cast), or `unknown`;
- GET /debug/decisions?decision=&policy=&service=&limit=: the newest decisions, JSON; the HTML page
  when the client asks for text/html (a browser);
- GET /debug/summary: per policy, over the ring: traces it decided, kept, and kept alone;
- POST /debug/explain: an OTLP traces body (protobuf or JSON, gzip or not) evaluated against the
  policies in force, one object per trace; nothing buffered, exported or spent.

These answers carry span names and attribute-derived values: the admin port belongs inside the
cluster (docs/operations.md). With `receivers.auth` set, every /debug request needs the same bearer
token the receivers do.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sampler.insight.recent import votes_of
from sampler.otlp.jsonconv import json_to_protobuf_stepwise
from sampler.otlp.wire import WireError
from sampler.pipeline.core import Core
from sampler.policy.engine import Verdict
from sampler.policy.summary import TraceSummary
from sampler.receivers.http import inflate
from sampler.security.auth import Authenticator
from sampler.server import ui

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def describe(summary: TraceSummary, verdict: Verdict, votes: bytes, names: tuple[str, ...],
             state: str | None = None) -> dict[str, Any]:
    """CONTRACT's object for a trace evaluated now (buffered, or posted to explain): `state` as
    given (buffered), or what the decision would make it; `decision` says which either way."""
    root = None
    if summary.root_name is not None or summary.root_service is not None:
        root = {"service": summary.root_service or "", "name": summary.root_name or ""}
    return {
        "trace_id": summary.trace_id.hex(),
        "state": state or ("kept" if verdict.keep else "dropped"),
        "decision": "keep" if verdict.keep else "drop",
        "reason": None,
        "policy": verdict.policy,
        "votes": votes_of(names, votes),
        "spans": summary.spans,
        "root": root,
    }


def wants_html(request: web.Request) -> bool:
    """A browser navigating here (Accept lists text/html before any JSON), not a script."""
    accept = request.headers.get("Accept", "")
    html_at = accept.find("text/html")
    json_at = accept.find("application/json")
    return html_at >= 0 and (json_at < 0 or html_at < json_at)


def _json(doc: Any, status: int = 200) -> web.Response:
    # "<" escaped: nothing in a document made of span data can read as markup, whoever sniffs it
    text = json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")
    return web.Response(text=text, status=status, content_type="application/json", headers=_HEADERS)


def _page(title: str, body: str) -> web.Response:
    return web.Response(body=ui.page(title, "/debug/decisions", body, ("decisions.js",)), content_type="text/html",
                        charset="utf-8", headers={**_HEADERS, "Content-Security-Policy": ui.CSP})


class Debug:
    def __init__(self, core: Callable[[], Core], auth: Authenticator | None, max_request_bytes: int) -> None:
        self.core = core  # a function: the core is built after the admin server's routes
        self.auth = auth
        self.limit = max_request_bytes

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/debug/traces/{trace_id}", self._guard(self._trace))
        app.router.add_get("/debug/decisions", self._guard(self._decisions))
        app.router.add_get("/debug/summary", self._guard(self._summary))
        app.router.add_post("/debug/explain", self._guard(self._explain))

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.auth is not None and not self.auth.check(request.headers.get("Authorization")):
                return web.json_response({"error": "missing or invalid bearer token"}, status=401,
                                         headers={**_HEADERS, "WWW-Authenticate": "Bearer"})
            return await handler(request)

        return guarded

    async def _trace(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["trace_id"].lower()
        try:
            trace_id = bytes.fromhex(text)
        except ValueError:
            trace_id = b""
        if len(trace_id) != 16 or len(text) != 32:
            return _json({"error": "a trace id is 32 hex digits"}, 400)
        if wants_html(request):
            return _page("Trace " + text, "trace.html")
        return _json(self.trace(trace_id))

    def trace(self, trace_id: bytes) -> dict[str, Any]:
        core = self.core()
        peeked = core.peek_buffered(trace_id)
        if peeked is not None:
            summary, verdict, votes = peeked
            return describe(summary, verdict, votes, core.engine.names, "buffered")
        found = core.recent.find(trace_id) if core.recent is not None else None
        if found is not None:
            return found
        return {"trace_id": trace_id.hex(), "state": "unknown", "reason": None, "policy": None, "votes": {},
                "spans": 0, "root": None}

    async def _decisions(self, request: web.Request) -> web.StreamResponse:
        if wants_html(request):
            return _page("Decisions", "decisions.html")
        q = request.query
        decision = q.get("decision") or None
        if decision not in (None, "keep", "drop"):
            return _json({"error": "decision is keep or drop"}, 400)
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
        except ValueError:
            return _json({"error": "limit is a number"}, 400)
        recent = self.core().recent
        if recent is None:
            return _json([])
        return _json(recent.select(decision, q.get("policy") or None, q.get("service") or None,
                                   max(0, min(limit, MAX_LIMIT))))

    async def _summary(self, request: web.Request) -> web.StreamResponse:
        core = self.core()
        doc = core.recent.summary() if core.recent is not None else {"entries": 0, "kept": 0, "policies": []}
        doc["capacity"] = core.recent.capacity if core.recent is not None else 0
        doc["policies_in_force"] = list(core.engine.names)
        return _json(doc)

    async def _explain(self, request: web.Request) -> web.StreamResponse:
        ctype = request.content_type
        if ctype not in ("application/x-protobuf", "application/json"):
            return _json({"error": "post an OTLP traces request: application/x-protobuf or application/json"}, 415)
        if request.content_length is not None and request.content_length > self.limit:
            return _json({"error": f"request body exceeds {self.limit} bytes"}, 413)
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = inflate(body, self.limit)
            except OverflowError:
                return _json({"error": f"decompressed request exceeds {self.limit} bytes"}, 413)
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
        try:
            data = await json_to_protobuf_stepwise(body) if ctype == "application/json" else body
            core = self.core()
            results = core.peek_request(data)
        except WireError as exc:
            return _json({"error": f"malformed OTLP traces request: {exc}"}, 400)
        names = core.engine.names
        return _json([describe(s, v, votes, names) for s, v, votes in results])
