"""Admin HTTP: /healthz (alive; under `run --workers`, 503 while a sibling worker is crash-looping),
/readyz (receivers up and policies loaded, 503 while draining), /metrics (Prometheus text), and the
admin UI: /graph (the live service graph page) and /graph.json (its data), /debug (why a trace was
kept or dropped: sampler/server/debug.py) with its page, and the UI's static files under /ui/.
Read-only by design: even /debug/explain only evaluates what it is sent."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from sampler.server import ui
from sampler.server.debug import Debug

log = logging.getLogger("tailsampler.admin")

# Returns the service graph document (ServiceGraph.to_json()): CONTRACT's /graph.json.
GraphProvider = Callable[[], Mapping[str, Any]]

_UI_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class AdminServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool],
                 problem: Callable[[], str | None] | None = None, graph: GraphProvider | None = None,
                 debug: Debug | None = None) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.ready = ready
        self.problem = problem  # what makes this process not worth keeping alive, if anything
        self.graph = graph  # the live service graph, when this process keeps one
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/graph", self._graph_page)
        app.router.add_get("/graph.json", self._graph_json)
        app.router.add_get("/ui/{name}", self._ui_asset)
        if debug is not None:
            debug.routes(app)
        self.runner = web.AppRunner(app, access_log=None)

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self.problem() if self.problem is not None else None
        if problem is not None:
            return web.Response(status=503, text=f"unhealthy: {problem}\n")
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        """The Prometheus text format, or OpenMetrics (with exemplars) when the scraper asks for it."""
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            body = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
            return web.Response(body=body, headers={"Content-Type": openmetrics.CONTENT_TYPE_LATEST})
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _graph_page(self, request: web.Request) -> web.Response:
        body = ui.page("Service graph", "/graph", "graph.html", ("graph.js",))
        return web.Response(body=body, content_type="text/html", charset="utf-8",
                            headers={**_UI_HEADERS, "Content-Security-Policy": ui.CSP})

    async def _graph_json(self, request: web.Request) -> web.Response:
        if self.graph is None:
            return web.json_response({"error": "this process keeps no service graph"}, status=404,
                                     headers=_UI_HEADERS)
        # "<" escaped too: nothing in the document can read as markup, whoever sniffs it
        text = json.dumps(self.graph(), separators=(",", ":")).replace("<", "\\u003c")
        return web.Response(text=text, content_type="application/json", headers=_UI_HEADERS)

    async def _ui_asset(self, request: web.Request) -> web.Response:
        found = ui.asset(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_UI_HEADERS)

    async def start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        log.info("admin server listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
