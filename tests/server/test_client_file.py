"""GET /client/presence.js: the browser client this daemon ships, as a page on any origin
imports it (text/javascript, CORS open, an ETag answered 304). In memory, over build()."""

from __future__ import annotations

import hashlib
from pathlib import Path

from presence.server.client_file import client_source
from tests.support.harness import Harness

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "presence" / "server" / "static" / "presence.js"
SOURCE = ROOT / "clients" / "js" / "presence.js"


def headers(raw: bytes | None) -> dict[str, str]:
    assert raw is not None
    lines = raw.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_the_package_serves_the_client_source() -> None:
    """presence/server/static/presence.js is a link to clients/js/presence.js (a wheel
    holds the file itself: test_js_client_package.py), so there is one copy to edit."""
    assert SHIPPED.resolve() == SOURCE.resolve()
    assert client_source() == SOURCE.read_bytes()


def test_served_with_type_cors_and_etag_then_304() -> None:
    server = Harness()
    first = server.http("/client/presence.js", {"Origin": "https://app.example.com"})
    assert first.status == 200
    assert first.body == SOURCE.read_bytes()
    got = headers(first.response_headers)
    assert got["content-type"] == "text/javascript; charset=utf-8"
    assert got["access-control-allow-origin"] == "*"
    assert got["cache-control"] == "no-cache"
    etag = got["etag"]
    assert etag == '"' + hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:32] + '"'

    for offered in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = server.http("/client/presence.js", {"If-None-Match": offered})
        assert again.status == 304, offered
        assert again.body == b""
        assert headers(again.response_headers)["etag"] == etag
        assert headers(again.response_headers)["access-control-allow-origin"] == "*"

    stale = server.http("/client/presence.js", {"If-None-Match": '"an-older-version"'})
    assert stale.status == 200
    assert stale.body == SOURCE.read_bytes()


def test_nothing_else_under_client() -> None:
    server = Harness()
    for path in ("/client", "/client/", "/client/other.js", "/client/presence.js/x"):
        answer = server.http(path)
        assert answer.status == 404, path
        assert b'"NOT_FOUND"' in answer.body, path
    # Open whatever the API token rule: with --auth jwt the file is still served.
    guarded = Harness(api_token=b"t" * 32)
    assert guarded.http("/client/presence.js").status == 200
    assert guarded.http("/presence/alice").status == 401
