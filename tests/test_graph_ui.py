"""The admin UI's service graph: /graph.json and /graph over HTTP, then the page in a real browser
(Debian's chromium driven by Playwright): it draws the known traces, updates in place when traffic
arrives, marks orphaned services, and shows hostile service names as text.

Without chromium or Playwright the browser tests skip, except where TAILSAMPLER_EXPECT_BROWSER=1
(CI: .ci/run sets it, and `make test` installs chromium), where they fail instead."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from sampler.insight.servicegraph import (
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    ServiceGraph,
    SpanRecord,
)
from sampler.server.admin import AdminServer, GraphProvider

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REFRESH_MS = 300  # the page's refresh interval in these tests (?refresh=); 3 s by default
MS = 10**6


class Shop:
    """Traces of the demo's five services as they call each other: user -> frontend -> checkout ->
    payments -> api.stripe.com (external), frontend -> users -> postgresql, frontend and checkout ->
    inventory -> redis; some payments fail; some inventory jobs lose their parent (orphans)."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.next_id = 1

    def _id(self) -> bytes:
        self.next_id += 1
        return self.next_id.to_bytes(8, "big")

    def _call(self, spans: list[SpanRecord], parent: SpanRecord, server: str | None, start: int, ms: int,
              error: bool = False, peer: str | None = None, db: str | None = None) -> SpanRecord:
        """A client span under `parent`, and the server span it reaches when `server` is instrumented."""
        client = SpanRecord(parent.service, self._id(), parent.span_id, KIND_CLIENT, error, start, start + ms * MS,
                            peer, db, None if server else peer)
        spans.append(client)
        if server is None:
            return client
        handler = SpanRecord(server, self._id(), client.span_id, KIND_SERVER, error, start + MS,
                             start + (ms - 1) * MS)
        spans.append(handler)
        return handler

    def trace(self) -> tuple[bytes, list[SpanRecord]]:
        rng = self.rng
        trace_id = rng.randbytes(16)
        t0 = 1_767_225_600 * 10**9
        root = SpanRecord("frontend", self._id(), b"", KIND_SERVER, False, t0, t0 + rng.randint(40, 400) * MS)
        spans = [root]
        users = self._call(spans, root, "users", t0 + MS, rng.randint(5, 30))
        self._call(spans, users, None, t0 + 2 * MS, rng.randint(1, 8), db="postgresql")
        if rng.random() < 0.6:
            checkout = self._call(spans, root, "checkout", t0 + 40 * MS, rng.randint(30, 300))
            failed = rng.random() < 0.06
            payments = self._call(spans, checkout, "payments", t0 + 45 * MS, rng.randint(20, 250), error=failed)
            self._call(spans, payments, None, t0 + 50 * MS, rng.randint(15, 200), error=failed, peer="api.stripe.com")
            inventory = self._call(spans, checkout, "inventory", t0 + 42 * MS, rng.randint(3, 20))
        else:
            inventory = self._call(spans, root, "inventory", t0 + 30 * MS, rng.randint(3, 20))
        self._call(spans, inventory, None, t0 + 31 * MS, 1, db="redis")
        if rng.random() < 0.1:  # a background job whose context was lost on the way
            spans.append(SpanRecord("inventory", self._id(), rng.randbytes(8), KIND_INTERNAL, False, t0, t0 + MS))
        return trace_id, spans


def shop_graph(traces: int = 400) -> tuple[ServiceGraph, Shop]:
    graph, shop = ServiceGraph(), Shop()
    for n in range(traces):
        trace_id, spans = shop.trace()
        graph.add_trace(spans, trace_id, kept=n % 10 == 0)
    return graph, shop


SHOP_NODES = {"user", "frontend", "users", "postgresql", "checkout", "payments", "api.stripe.com", "inventory", "redis"}
SHOP_EDGES = {("user", "frontend"), ("frontend", "users"), ("users", "postgresql"), ("frontend", "checkout"),
              ("checkout", "payments"), ("payments", "api.stripe.com"), ("checkout", "inventory"),
              ("frontend", "inventory"), ("inventory", "redis")}


async def feed(graph: ServiceGraph, shop: Shop, per_tick: int = 4, ticks: int = 600) -> None:
    """Steady traffic while the page watches: a few traces every 50 ms (bounded: 30 s at most)."""
    for n in range(ticks):
        for _ in range(per_tick):
            trace_id, spans = shop.trace()
            graph.add_trace(spans, trace_id, kept=n % 10 == 0)
        await asyncio.sleep(0.05)


@asynccontextmanager
async def admin(graph: GraphProvider | None) -> AsyncIterator[str]:
    server = AdminServer("127.0.0.1", 0, CollectorRegistry(), lambda: True, graph=graph)
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


def run(coro: Callable[[], Awaitable[None]], timeout: float = 90) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(bounded())


# --- over HTTP -----------------------------------------------------------------------------------

def test_graph_json_page_and_assets_over_http() -> None:
    graph, _ = shop_graph(50)
    graph.add_trace([SpanRecord("<b>x</b>", b"\x01" * 8, b"", KIND_SERVER, False, 0, MS)])

    async def check() -> None:
        async with admin(graph.to_json) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/graph.json") as r:
                assert r.status == 200 and r.content_type == "application/json"
                raw = await r.text()
                doc = json.loads(raw)
            assert "<" not in raw and "\\u003cb>x\\u003c/b>" in raw
            assert {n["id"] for n in doc["nodes"]} == SHOP_NODES | {"<b>x</b>"}
            assert all({"client", "server", "requests", "failed"} <= e.keys() for e in doc["edges"])
            async with http.get(f"{base}/graph") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                page = await r.text()
            assert '<a href="/graph" aria-current="page">Graph</a>' in page
            assert '<a href="/debug/decisions">Decisions</a>' in page
            assert '<script src="/ui/graph.js" defer></script>' in page
            assert re.search(r'(src|href)="(https?:)?//', page) is None  # nothing loaded from elsewhere
            for name, kind in (("ui.css", "text/css"), ("graph.js", "text/javascript")):
                async with http.get(f"{base}/ui/{name}") as r:
                    assert r.status == 200 and r.content_type == kind
            for missing in ("/ui/frame.html", "/ui/..%2f__init__.py", "/ui/nope.js"):
                async with http.get(f"{base}{missing}") as r:
                    assert r.status == 404, missing
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
        async with admin(None) as base, aiohttp.ClientSession() as http, http.get(f"{base}/graph.json") as r:
            assert r.status == 404

    run(check)


# --- in a real browser ---------------------------------------------------------------------------

def _browser() -> str:
    """Chromium's path, once Playwright can drive it; skip (or fail where expected) otherwise."""
    expected = os.environ.get("TAILSAMPLER_EXPECT_BROWSER") == "1"
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problem = "Playwright is not installed (pip install -e '.[test]')"
    if path is None:
        problem = "chromium is not installed (make test installs it: apt-get install -y chromium)"
    if problem is not None:
        if expected:
            pytest.fail(f"TAILSAMPLER_EXPECT_BROWSER=1 but {problem}")
        pytest.skip(problem)
    assert path is not None
    return path


class Page:
    """A browser page on the admin server that remembers every console error and uncaught exception."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("dialog", lambda d: self.errors.append(f"dialog: {d.message}"))

    async def updates(self) -> int:
        value = await self.page.get_attribute("#graph-page", "data-updates")
        return int(value or 0)

    async def wait_updates(self, at_least: int) -> None:
        await self.page.wait_for_function(
            "n => Number(document.getElementById('graph-page').dataset.updates || 0) >= n", arg=at_least,
            timeout=20 * REFRESH_MS + 5000)

    async def drawn(self) -> tuple[set[str], set[tuple[str, str]]]:
        nodes = await self.page.eval_on_selector_all("g.node", "els => els.map(e => e.getAttribute('data-id'))")
        edges = await self.page.eval_on_selector_all(
            "g.edge", "els => els.map(e => [e.getAttribute('data-client'), e.getAttribute('data-server')])")
        return set(nodes), {(c, s) for c, s in edges}


@asynccontextmanager
async def browser_page(base: str, width: int = 1280, height: int = 720) -> AsyncIterator[Page]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_browser(), args=CHROMIUM_ARGS)
        try:
            page = Page(await browser.new_page(viewport={"width": width, "height": height}))
            await page.page.goto(f"{base}/graph?refresh={REFRESH_MS}")
            yield page
        finally:
            await browser.close()


def test_graph_page_draws_the_traffic_and_updates_in_place(tmp_path: Path) -> None:
    _browser()
    graph, shop = shop_graph()

    async def check() -> None:
        async with admin(graph.to_json) as base, browser_page(base, 1680, 760) as page:
            await page.wait_updates(2)  # two polls: rates, not just totals
            assert await page.drawn() == (SHOP_NODES, SHOP_EDGES)
            orphaned = await page.page.eval_on_selector_all(
                "g.node.orphaned", "els => els.map(e => e.getAttribute('data-id'))")
            assert orphaned == ["inventory"]
            assert "orphan span" in await page.page.text_content('g.node[data-id="inventory"] text.sub')
            failing = await page.page.get_attribute(
                'g.edge[data-client="payments"][data-server="api.stripe.com"]', "data-error-rate")
            assert failing is not None and float(failing) > 0
            label = await page.page.text_content('g.edge[data-client="checkout"][data-server="payments"] text')
            assert label is not None and " err · p95 " in label
            # mark the drawn elements, keep traffic flowing, add a new edge, and see it drawn beside them
            await page.page.evaluate(
                "document.querySelectorAll('g.node, g.edge').forEach(e => { e.__before = true; })")
            feeding = asyncio.get_running_loop().create_task(feed(graph, shop))
            try:
                await page.wait_updates(await page.updates() + 2)
                before = await page.updates()
                trace_id, spans = next(t for t in (shop.trace() for _ in range(100))
                                       if any(s.service == "checkout" for s in t[1]))
                checkout = next(s for s in spans if s.service == "checkout" and s.kind == KIND_SERVER)
                spans.append(SpanRecord("checkout", b"\xee" * 8, checkout.span_id, KIND_CLIENT, False, 0, 5 * MS,
                                        None, None, "fraud-check.shop.svc"))
                graph.add_trace(spans, trace_id, kept=True)
                await page.page.wait_for_selector(
                    'g.edge[data-client="checkout"][data-server="fraud-check.shop.svc"]', timeout=10 * REFRESH_MS)
                assert await page.updates() <= before + 3  # within a few refreshes
                kept = await page.page.eval_on_selector_all(
                    "g.node, g.edge", "els => els.filter(e => e.__before).length")
                assert kept == len(SHOP_NODES) + len(SHOP_EDGES)  # updated in place, not redrawn
                nodes, edges = await page.drawn()
                assert nodes == SHOP_NODES | {"fraud-check.shop.svc"}
                assert edges == SHOP_EDGES | {("checkout", "fraud-check.shop.svc")}
                await page.wait_updates(await page.updates() + 6)  # a window of steady traffic, for the picture
                rate = await page.page.text_content('g.edge[data-client="user"][data-server="frontend"] tspan.rate')
                assert rate is not None and rate.endswith(" req/s") and float(rate.split()[0]) > 0
                await page.page.screenshot(path=str(tmp_path / "graph.png"), full_page=True)
                docs = os.environ.get("TAILSAMPLER_GRAPH_SCREENSHOT")  # where to save it for docs/graph.png
                if docs:
                    await page.page.screenshot(path=docs, full_page=True)
            finally:
                feeding.cancel()
            assert page.errors == []

    run(check)
    assert (tmp_path / "graph.png").stat().st_size > 10_000


HOSTILE = ['<script>window.__pwned = 1</script>', '<img src=x onerror="window.__pwned = 1">', '"><svg onload=alert(1)>']


def test_hostile_service_names_are_shown_as_text() -> None:
    _browser()
    graph = ServiceGraph()
    for n, name in enumerate(HOSTILE):
        root = SpanRecord(name, bytes([n + 1]) * 8, b"", KIND_SERVER, False, 0, MS)
        graph.add_trace([root, SpanRecord(name, bytes([n + 1, 9]) * 4, root.span_id, KIND_CLIENT, True, 0, MS,
                                          HOSTILE[(n + 1) % len(HOSTILE)])])

    async def check() -> None:
        async with admin(graph.to_json) as base, browser_page(base) as page:
            await page.wait_updates(1)
            nodes, edges = await page.drawn()
            assert nodes == {*HOSTILE, "user"}
            assert edges == {("user", h) for h in HOSTILE} | {(h, HOSTILE[(n + 1) % 3]) for n, h in enumerate(HOSTILE)}
            titles = await page.page.eval_on_selector_all("g.node title", "els => els.map(e => e.textContent)")
            assert set(HOSTILE) <= set(titles)
            assert await page.page.evaluate("window.__pwned") is None
            assert await page.page.eval_on_selector_all("img, svg svg, script", "els => els.length") == 1  # ours
            assert page.errors == []

    run(check)


def test_an_empty_graph_is_drawn_without_errors_and_fills_in() -> None:
    """A process that has seen no traffic yet: an empty drawing, then the first edge as it arrives."""
    _browser()
    graph = ServiceGraph()

    async def check() -> None:
        async with admin(graph.to_json) as base, browser_page(base) as page:
            await page.wait_updates(1)
            assert await page.drawn() == (set(), set())
            assert (await page.page.text_content("#status") or "").startswith("0 nodes, 0 edges")
            trace_id, spans = Shop().trace()
            graph.add_trace(spans, trace_id)
            await page.page.wait_for_selector('g.edge[data-client="user"][data-server="frontend"]',
                                              timeout=10 * REFRESH_MS)
            assert page.errors == []

    run(check)


def test_the_live_graph_of_a_running_tailsampler_updates_when_traffic_arrives(
    tailsampler_factory: Callable[..., Any],
) -> None:
    """The whole path: OTLP requests into `tailsampler run`, decided traces into its live graph, the
    page polling /graph.json: a new edge appears when traffic with it arrives, and orphans show."""
    _browser()
    from otlp_backend import http_request

    from tests.spans import S, request

    ts = tailsampler_factory(None, "policies: [{name: errors, type: errors, errors: {}}]\n", decision_wait="200ms",
                             extra="service_graph: {enabled: true}\n")

    def send(spans: list[S]) -> None:
        reply = http_request(ts.http_url, request(spans), {"Content-Type": "application/x-protobuf"}, "POST")
        assert reply.status == 200, reply.body

    async def check() -> None:
        async with browser_page(ts.admin_url) as page:
            send([S(1, 1, name="GET /", service="web", kind=2), S(1, 2, 1, service="web", kind=3)])
            send([S(1, 3, 2, service="api", kind=2)])
            await page.page.wait_for_selector('g.edge[data-client="web"][data-server="api"]', timeout=15_000)
            before = await page.updates()
            send([S(2, 1, name="GET /", service="web", kind=2), S(2, 2, 1, service="web", kind=3,
                                                                  attrs={"db.system": "redis"})])
            send([S(3, 5, 4, service="lost", kind=2)])  # its parent never arrives: an orphan, and no root
            await page.page.wait_for_selector('g.edge[data-client="web"][data-server="redis"]', timeout=15_000)
            await page.page.wait_for_selector('g.node.orphaned[data-id="lost"]', timeout=15_000)
            assert await page.updates() > before
            nodes, edges = await page.drawn()
            assert {"web", "api", "redis", "lost"} <= nodes
            assert {("web", "api"), ("web", "redis"), ("user", "web")} <= edges
            assert page.errors == []

    run(check)
