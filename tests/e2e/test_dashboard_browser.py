"""GET /dashboard in headless Chromium (Debian's, driven by playwright; no browser is ever
downloaded) against a real `twistd presence --dashboard`: the page asks for the API token
once, shows the connections this test opens, draws its charts, lists and searches the
users online, looks up a room, renders user text as text, and breaks no rule of its own
Content-Security-Policy. A screenshot is left in test-artifacts/dashboard.png."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.daemon import ROOT, Daemon

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]

TOKEN = "dashboard-token-" + "t" * 24
ARTIFACTS = ROOT / "test-artifacts"
HOSTILE = "<img src=x onerror=document.title='owned'>"


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def tell(ws: ClientConnection, kind: str, **payload: Any) -> None:
    ws.send(json.dumps({"type": kind, **({"payload": payload} if payload else {})}))


def send(ws: ClientConnection, kind: str, **payload: Any) -> dict[str, Any]:
    """Send one message and read the answer it gets (ERROR, ROOM_STATE, HEARTBEAT_ACK)."""
    tell(ws, kind, **payload)
    return dict(json.loads(ws.recv(timeout=5)))


def user(stack: ExitStack, daemon: Daemon, user_id: str) -> ClientConnection:
    ws = stack.enter_context(connect(daemon.ws_url + "?userId=" + user_id, open_timeout=5))
    assert json.loads(ws.recv(timeout=5))["type"] == "CONNECT"
    return ws


def rows(page: Any, table: str) -> list[str]:
    return list(page.locator(f"#{table} tr td:first-child").all_text_contents())


def until(check: Callable[[], Any], what: str, tick: Callable[[], None] | None = None) -> Any:
    """Poll the page (and keep the clients busy with ``tick``) until ``check`` holds."""
    deadline = time.monotonic() + 30
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard never showed {what}")
        if tick:
            tick()
        time.sleep(0.2)
    return result


COLORED = """(id) => {
  const c = document.getElementById(id);
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const hi = Math.max(data[i], data[i + 1], data[i + 2]);
    const lo = Math.min(data[i], data[i + 1], data[i + 2]);
    if (hi - lo > 80) n++;  // a series' colour: the grid and the labels are grey
  }
  return n;
}"""


def test_the_dashboard_shows_the_server_live(
    start_daemon: Callable[..., Daemon], tmp_path: Path, browser: Any
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    daemon = start_daemon("--dashboard", "--api-token-file", str(token_file))
    with ExitStack() as stack:
        alice, bob, carol = (user(stack, daemon, name) for name in ("alice", "bob", "carol"))
        tell(bob, "PRESENCE_UPDATE", status="busy", metadata={"note": HOSTILE})
        assert send(bob, "HEARTBEAT")["type"] == "HEARTBEAT_ACK"
        assert send(carol, "JOIN", room="doc:42", metadata={"cursor": 3})["type"] == "ROOM_STATE"

        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        problems: list[str] = []
        page.on(
            "console",
            lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.on("pageerror", lambda e: problems.append(str(e)))
        response = page.goto(daemon.http_url + "/dashboard")
        assert response is not None and response.status == 200
        assert "connect-src 'self'" in response.headers["content-security-policy"]

        # The API token is asked for once, then sent as a Bearer token.
        page.locator("#auth").wait_for(state="visible", timeout=10_000)
        page.fill("#token", TOKEN)
        page.click("#auth button")
        until(lambda: page.text_content("#connections") == "3", "3 connections")
        assert page.text_content("#users-online") == "3"
        assert page.evaluate("sessionStorage.getItem('presence.apiToken')") == TOKEN
        until(lambda: rows(page, "users") == ["alice", "bob", "carol"], "the users online")

        # The charts draw once messages and errors flow between two polls.
        def traffic() -> None:
            for ws in (alice, bob):
                assert send(ws, "HEARTBEAT")["type"] == "HEARTBEAT_ACK"
            ws = carol
            ws.send("not json")
            assert json.loads(ws.recv(timeout=5))["type"] == "ERROR"

        def drawn(chart: str) -> bool:
            segments = int(page.get_attribute(f"#{chart}", "data-segments") or 0)
            return segments > 0 and page.evaluate(COLORED, chart) > 0

        for chart in ("messages-chart", "errors-chart"):
            until(lambda chart=chart: drawn(chart), f"lines on {chart}", traffic)
        assert "HEARTBEAT" in page.text_content("#messages-legend")
        assert "invalid_message" in page.text_content("#errors-legend")

        # User text is shown as text, never as markup.
        until(lambda: HOSTILE in (page.text_content("#users") or ""), "bob's metadata as text")
        assert page.locator("#users img").count() == 0
        assert page.title() == "presence dashboard"

        # Searching by prefix, and a room lookup.
        page.fill("#prefix", "b")
        until(lambda: rows(page, "users") == ["bob"], "the search for 'b'")
        page.fill("#room", "doc:42")
        page.click("#room-form button[type=submit]")
        until(lambda: rows(page, "members") == ["carol"], "the room's member")
        assert page.text_content("#room-note") == "1 member"
        assert '"cursor":3' in (page.text_content("#members") or "")

        # A user leaving: gone from the page (no offline grace with a clean DISCONNECT).
        page.fill("#prefix", "")
        tell(alice, "DISCONNECT")
        until(lambda: page.text_content("#connections") == "2", "2 connections")
        until(lambda: rows(page, "users") == ["bob", "carol"], "alice gone")

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        assert problems == []


def test_without_the_flag_there_is_no_dashboard(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    status, body = daemon.get_json("/dashboard")
    assert status == 404 and body["error"] == "NOT_FOUND"
