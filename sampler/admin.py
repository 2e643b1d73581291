"""Admin HTTP: /healthz (alive; under `run --workers`, 503 while a sibling worker is crash-looping),
/readyz (receivers up and policies loaded, 503 while draining), /metrics (Prometheus text).
Read-only by design."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("tailsampler.admin")


class AdminServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool],
                 problem: Callable[[], str | None] | None = None) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.ready = ready
        self.problem = problem  # what makes this process not worth keeping alive, if anything
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
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
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        log.info("admin server listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
