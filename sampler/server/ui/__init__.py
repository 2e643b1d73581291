"""The admin UI's pages: one frame (header, navigation, shared CSS) around each page's body, and the
static files they load. Everything is package data served by the admin server itself: no CDN, no
build step, nothing fetched from elsewhere, so the pages work offline.

What a page shows comes from untrusted spans (service names), so no page builds HTML from data:
the frame and bodies here are static, and the scripts put data into the DOM as text only. The
Content-Security-Policy the admin server sends with every page allows scripts from this server
only, no inline script, so an injected tag could not run even if one slipped through.
"""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files

NAV = (("Graph", "/graph"), ("Decisions", "/debug/decisions"))

CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript"}
ASSETS = frozenset({"ui.css", "graph.js", "decisions.js"})  # what /ui/<name> serves

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@cache
def _text(name: str) -> str:
    return (files(__package__) / name).read_text(encoding="utf-8")


def asset(name: str) -> tuple[bytes, str] | None:
    """A static file's bytes and content type; None for a name that is not one."""
    if name not in ASSETS:
        return None
    return _text(name).encode(), CONTENT_TYPES[name[name.rfind("."):]]


def page(title: str, active: str, body_file: str, scripts: tuple[str, ...] = ()) -> bytes:
    """A whole HTML page: the frame with `body_file` (static HTML from this package) inside."""
    current = ' aria-current="page"'
    nav = "".join(f'<a href="{html.escape(href)}"{current if href == active else ""}>{html.escape(label)}</a>'
                  for label, href in NAV)
    tags = "".join(f'<script src="/ui/{html.escape(s)}" defer></script>' for s in scripts)
    return (_text("frame.html")
            .replace("{title}", html.escape(title))
            .replace("{nav}", nav)
            .replace("{scripts}", tags)
            .replace("{body}", _text(body_file))).encode()
