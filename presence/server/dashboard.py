"""GET /dashboard (with --dashboard): one self-contained page, ``static/dashboard.html``,
that polls /stats, /presence/online and /rooms/{room} of the server that serves it.

Nothing is loaded from elsewhere (it works behind a firewall), and the Content-Security-
Policy says so: no source but this origin for fetches, and only the page's own inline
script and style, allowed by their SHA-256 hashes (no 'unsafe-inline')."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from twisted.web.server import Request

from .web import Endpoint

_BLOCK = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)


def load_page() -> bytes:
    return (resources.files("presence.server") / "static" / "dashboard.html").read_bytes()


def content_security_policy(page: bytes) -> bytes:
    """The page's policy: its inline <script> and <style> blocks by hash, fetches to
    'self', nothing else."""
    hashes: dict[bytes, list[bytes]] = {b"script": [], b"style": []}
    for kind, body in _BLOCK.findall(page):
        digest = base64.b64encode(hashlib.sha256(body).digest())
        hashes[kind].append(b"'sha256-" + digest + b"'")
    return b"; ".join(
        [
            b"default-src 'none'",
            b"script-src " + (b" ".join(hashes[b"script"]) or b"'none'"),
            b"style-src " + (b" ".join(hashes[b"style"]) or b"'none'"),
            b"connect-src 'self'",
            b"img-src 'self' data:",
            b"base-uri 'none'",
            b"form-action 'none'",
            b"frame-ancestors 'none'",
        ]
    )


class DashboardPage(Endpoint):
    def __init__(self, page: bytes | None = None) -> None:
        super().__init__()
        self.page = load_page() if page is None else page
        self.policy = content_security_policy(self.page)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.policy)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return self.page
