"""The /debug/decisions page in a real browser (chromium through Playwright, as tests/test_graph_ui.py):
it loads in the admin frame without console errors, its filters narrow the table, and a trace id
opens that trace's votes. Skips without chromium, except under TAILSAMPLER_EXPECT_BROWSER=1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry

from sampler.insight.recent import RecentDecisions
from sampler.server.admin import AdminServer
from sampler.server.debug import Debug
from tests.spans import S, tid
from tests.test_core import Harness
from tests.test_graph_ui import CHROMIUM_ARGS, Page, _browser, run

ROWS_ARE = "n => document.querySelectorAll('#decisions tbody tr').length === n"
POLICIES = """
policies:
  - {name: noisy, type: drop, drop: {drop_sub_policy: [
      {name: health, type: string_attribute, string_attribute: {key: http.route, values: [/health]}}]}}
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  - {name: marked, type: string_attribute, string_attribute: {key: keep, values: ['yes']}}
"""


def _harness() -> Harness:
    h = Harness(policies=POLICIES)
    h.core.recent = RecentDecisions(1000)
    h.core.recent.epoch = 1_767_225_600.0
    for n in range(30):
        if n % 3 == 0:
            span = S(n, 1, status=2, service="api", name="POST /pay")
        elif n % 3 == 1:
            span = S(n, 1, attrs={"http.route": "/health"}, service="web", name="GET /health")
        else:
            span = S(n, 1, service="<b>web</b>", name="<img src=x onerror=alert(1)>")
        h.send(float(n), span)
    h.send(40.0, S(100, 1, attrs={"keep": "yes"}, status=2, service="api", name="GET /both"))
    h.core.sweep(100.0)
    h.send(100.0, S(200, 1, service="api", name="GET /waiting"))  # still buffered
    return h


@asynccontextmanager
async def admin(h: Harness) -> AsyncIterator[str]:
    server = AdminServer("127.0.0.1", 0, CollectorRegistry(), lambda: True,
                         debug=Debug(lambda: h.core, None, 2**20))
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


async def _rows(page: Page) -> list[list[str]]:
    rows: list[list[str]] = await page.page.eval_on_selector_all(
        "#decisions tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
    return rows


def test_decisions_page_filters_and_links_to_votes() -> None:
    h = _harness()

    async def check() -> None:
        from playwright.async_api import async_playwright

        async with admin(h) as base, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=_browser(), args=CHROMIUM_ARGS)
            try:
                page = Page(await browser.new_page())
                await page.page.goto(f"{base}/debug/decisions")
                await page.page.wait_for_function("() => document.querySelectorAll('#decisions tbody tr').length > 0")
                # the shared frame: both pages in the navigation, this one current
                nav = await page.page.eval_on_selector_all("header.frame nav a",
                                                           "as => as.map(a => [a.textContent, a.getAttribute('href')])")
                assert ["Graph", "/graph"] in nav and ["Decisions", "/debug/decisions"] in nav
                assert await page.page.get_attribute('nav a[href="/debug/decisions"]', "aria-current") == "page"
                rows = await _rows(page)
                assert len(rows) == 31
                assert rows[0][1] == tid(100).hex()  # newest first
                assert any(r[6] == "<b>web</b>" and r[7] == "<img src=x onerror=alert(1)>" for r in rows)  # as text
                assert await page.page.locator("#decisions img").count() == 0
                summary = await page.page.eval_on_selector_all(
                    "#summary tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
                assert ["errors", "11", "11", "10"] in summary  # trace 100 was kept by marked too
                # filters
                await page.page.select_option("#f-decision", "drop")
                await page.page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('#decisions tbody tr'))"
                    ".every(r => r.cells[2].textContent === 'drop')")
                assert len(await _rows(page)) == 20
                assert "decision=drop" in page.page.url
                await page.page.select_option("#f-decision", "")
                await page.page.select_option("#f-policy", "noisy")
                await page.page.wait_for_function(ROWS_ARE, arg=10)
                assert {r[3] for r in await _rows(page)} == {"noisy"}
                await page.page.select_option("#f-policy", "")
                await page.page.fill("#f-service", "api")
                await page.page.wait_for_function(ROWS_ARE, arg=11)
                assert {r[6] for r in await _rows(page)} == {"api"}
                # a trace id opens its votes
                await page.page.click(f"a[href='/debug/traces/{tid(100).hex()}']")
                await page.page.wait_for_function("() => document.querySelectorAll('#votes tbody tr').length > 0")
                votes = await page.page.eval_on_selector_all(
                    "#votes tbody tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])")
                assert votes == [["noisy", "not_sampled"], ["errors", "sampled"], ["marked", "sampled"]]
                assert "kept by errors" in (await page.page.text_content("#status") or "")
                # a buffered trace: what the policies would say now
                await page.page.goto(f"{base}/debug/traces/{tid(200).hex()}")
                await page.page.wait_for_function("() => document.querySelectorAll('#facts tbody tr').length > 0")
                assert "buffered" in (await page.page.text_content("#facts") or "")
                assert page.errors == []
            finally:
                await browser.close()

    run(check)
