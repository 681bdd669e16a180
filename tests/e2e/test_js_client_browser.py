"""The browser client in headless Chromium against a real `twistd presence` process.

A page on another origin (a loopback HTTP server started here) imports the daemon's own
GET /client/presence.js as `<script type="module">`, the way the README tells a new user to,
so CORS and the served file are part of what is tested. Chromium is Debian's (/usr/bin/chromium,
installed by .ci/run), driven by playwright; no browser is ever downloaded.

Hidden pages: headless Chromium has no window that can be hidden (minimizing a window,
another tab in front, or a background target all leave document.visibilityState "visible"),
so the test page overrides `document.visibilityState` and dispatches `visibilitychange`,
which is exactly what the client reads and listens to.

Every wait is on observable state with a deadline (page.wait_for_function, wait_until)."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.daemon import Daemon, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SECRET = "browser-s3cret-" + "x" * 40
FAST = {"initial": 200, "max": 1000}  # the client's documented backoff option
WAIT = 15_000  # ms: a deadline for each wait in the page

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

if sync_playwright is None or not os.path.exists(CHROMIUM):
    reason = "needs playwright and /usr/bin/chromium (.ci/run installs chromium)"
    if os.environ.get("CI"):  # CI installs both: a skip there would hide a broken setup
        raise RuntimeError(reason)
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=reason)]

PAGE = """<!doctype html>
<meta charset="utf-8"><title>presence client test</title>
<script type="module">
import * as presence from "%(daemon)s/client/presence.js";
window.clients = {};
window.logs = {};
// The page's getToken asks this page's server for a token, as an app asks its backend.
window.make = (name, url, options, tokenUrl) => {
  const opts = { ...options };
  if (tokenUrl) {
    opts.getToken = async () => {
      const answer = await fetch(tokenUrl);
      if (!answer.ok) throw new Error(`token server answered ${answer.status}`);
      return answer.text();
    };
  }
  const client = new presence.PresenceClient(url, opts);
  const log = (window.logs[name] = []);
  client.on("connection", (state, detail) => log.push({ event: "connection", state, ...detail }));
  client.on("user", (id, user) => log.push({ event: "user", id, status: user.status }));
  client.on("room", (room, diff) => log.push({ event: "room", room, count: diff.count }));
  client.on("error", (e) => log.push({ event: "error", code: e.code, message: e.message }));
  window.clients[name] = client;
  return true;
};
let hidden = false;
Object.defineProperty(document, "visibilityState", {
  configurable: true,
  get: () => (hidden ? "hidden" : "visible"),
});
window.setHidden = (value) => {
  hidden = value;
  document.dispatchEvent(new Event("visibilitychange"));
};
window.ready = true;
</script>
"""


class PageServer:
    """The application's origin: the test page and a token endpoint (tokens live `ttl` s)."""

    def __init__(self) -> None:
        self.issued: dict[str, int] = {}
        self.ttl = 300.0
        self.secret = SECRET
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/page":
                    body = (PAGE % {"daemon": query["daemon"]}).encode()
                    self._answer(200, "text/html; charset=utf-8", body)
                elif url.path == "/token":
                    body = server.token(query["user"], query.get("secret", server.secret))
                    self._answer(200, "text/plain", body.encode())
                else:
                    self._answer(404, "text/plain", b"not found")

            def _answer(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, user: str, secret: str) -> str:
        self.issued[user] = self.issued.get(user, 0) + 1
        claims = {
            "sub": user,
            "exp": int(time.time() + self.ttl),
            "jti": f"{user}-{self.issued[user]}",  # every token differs, as a real issuer's
            "watch": ["*"],
            "rooms": ["*"],
        }
        return jwt.encode(claims, secret, algorithm="HS256")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def app() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


@pytest.fixture
def open_page(browser: Browser, app: PageServer) -> Iterator[Callable[[Daemon], Page]]:
    contexts = []

    def open_(daemon: Daemon) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{app.url}/page?daemon={urllib.parse.quote(daemon.http_url)}")
        try:
            page.wait_for_function("window.ready === true", timeout=WAIT)
        except Exception as e:
            raise AssertionError(f"the page did not load the client: {errors}") from e
        return page

    yield open_
    for context in contexts:
        context.close()


def make(
    page: Page, name: str, daemon: Daemon, token_url: str | None = None, **options: Any
) -> None:
    options.setdefault("backoff", FAST)
    page.evaluate(
        "([name, url, options, tokenUrl]) => make(name, url, options, tokenUrl)",
        [name, daemon.ws_url, options, token_url],
    )


def until(page: Page, expression: str, arg: Any = None) -> None:
    """Waits for ``expression`` (a function body of `c` = window.clients, `a` = arg)."""
    try:
        page.wait_for_function(
            f"([a]) => {{ const c = window.clients; return {expression}; }}",
            arg=[arg],
            timeout=WAIT,
        )
    except Exception as e:  # say what the page saw, not just that time ran out
        logs = page.evaluate("() => window.logs")
        raise AssertionError(f"not seen in {WAIT} ms: {expression}\nevents: {logs}") from e


def js(page: Page, expression: str) -> Any:
    return page.evaluate(f"() => {{ const c = window.clients; return {expression}; }}")


def log(page: Page, name: str) -> list[dict[str, Any]]:
    return list(page.evaluate("(name) => window.logs[name]", name))


def test_watch_join_and_a_daemon_restart_under_the_page(
    start_daemon: Callable[..., Daemon], tmp_path: Path, open_page: Callable[[Daemon], Page]
) -> None:
    args = ("--heartbeat-interval", "1", "--heartbeat-timeout", "5", "--offline-grace", "2")
    daemon = start_daemon(*args)
    alice_page, bob_page = open_page(daemon), open_page(daemon)
    make(alice_page, "alice", daemon, userId="alice")
    alice_page.evaluate(
        "() => { clients.alice.watch(['bob', 'carol']); clients.alice.join('doc:42', {cursor: 1}) }"
    )
    make(bob_page, "bob", daemon, userId="bob")
    make(bob_page, "carol", daemon, userId="carol")
    bob_page.evaluate(
        "() => { clients.bob.setStatus('busy', {task: 'review'}); clients.bob.join('doc:42');"
        " clients.carol.join('doc:42') }"
    )
    until(
        alice_page,
        "c.alice.user('bob')?.status === 'busy' && c.alice.user('bob').metadata.task === 'review'"
        " && c.alice.user('carol')?.status === 'online' && c.alice.room('doc:42')?.count === 3",
    )
    members = js(alice_page, "c.alice.room('doc:42').members")
    assert members["alice"]["metadata"] == {"cursor": 1}
    assert members["bob"]["status"] == "busy"
    before = js(alice_page, "c.alice.connectionId")
    # Heartbeats at the advised interval (1 s): the server counts them.
    wait_until(lambda: daemon.metrics().get('ws_messages_total{type="HEARTBEAT"}', 0) >= 2)

    # The daemon goes away; carol's page gives up while it is down; the daemon comes back
    # on the same port with nothing in memory.
    daemon.stop()
    until(bob_page, "c.carol.connectionState === 'CLOSED' && c.bob.connectionState !== 'OPEN'")
    bob_page.evaluate("() => clients.carol.close()")
    again = start_daemon(*args, port=daemon.port)

    # Without a reload: both pages reconnect and re-send status, watches and rooms, and
    # alice's state is the new daemon's (carol, never seen by it, is offline).
    until(
        alice_page,
        "c.alice.connectionState === 'OPEN' && c.alice.connectionId !== a"
        " && c.alice.user('carol')?.status === 'offline'"
        " && c.alice.user('bob')?.status === 'busy'"
        " && c.alice.user('bob').metadata.task === 'review'"
        " && c.alice.room('doc:42')?.count === 2",
        before,
    )
    assert sorted(js(alice_page, "Object.keys(c.alice.room('doc:42').members)")) == [
        "alice",
        "bob",
    ]
    status, bob = again.get_json("/presence/bob")
    assert (status, bob["status"], bob["metadata"]) == (200, "busy", {"task": "review"})
    status, room = again.get_json("/rooms/doc:42")
    assert (status, room["count"], sorted(room["members"])) == (200, 2, ["alice", "bob"])
    assert room["members"]["alice"]["metadata"] == {"cursor": 1}
    # The page states went CONNECTING -> OPEN -> CLOSED (retrying) ... -> OPEN.
    states = [e for e in log(alice_page, "alice") if e["event"] == "connection"]
    assert states[0]["state"] == "CONNECTING"
    closes = [e for e in states if e["state"] == "CLOSED"]
    assert closes and not any(e["final"] for e in closes)
    assert closes[0]["code"] == 1001

    # Live after the recovery, both ways.
    bob_page.evaluate("() => clients.bob.setStatus('away')")
    until(alice_page, "c.alice.user('bob')?.status === 'away'")
    alice_page.evaluate("() => clients.alice.updateRoom('doc:42', {cursor: 7})")
    until(bob_page, "c.bob.room('doc:42')?.members.alice?.metadata.cursor === 7")
    bob_page.evaluate("() => clients.bob.close()")
    until(alice_page, "c.alice.user('bob')?.status === 'offline'")
    until(alice_page, "c.alice.room('doc:42')?.count === 1")


def test_a_hidden_page_goes_away_and_comes_back(
    start_daemon: Callable[..., Daemon], open_page: Callable[[Daemon], Page]
) -> None:
    daemon = start_daemon()
    watcher, hidden = open_page(daemon), open_page(daemon)
    make(watcher, "alice", daemon, userId="alice")
    watcher.evaluate("() => clients.alice.watch('bob')")
    make(hidden, "bob", daemon, userId="bob")
    hidden.evaluate("() => clients.bob.setStatus('busy', {tab: 1})")
    until(watcher, "c.alice.user('bob')?.status === 'busy'")

    hidden.evaluate("() => setHidden(true)")
    until(watcher, "c.alice.user('bob')?.status === 'away'")
    assert js(watcher, "c.alice.user('bob').metadata") == {"tab": 1}
    assert daemon.get_json("/presence/bob")[1]["status"] == "away"
    assert js(hidden, "c.bob.status") == "busy"  # the status chosen is kept

    hidden.evaluate("() => setHidden(false)")
    until(watcher, "c.alice.user('bob')?.status === 'busy'")

    # awayWhenHidden: false ignores it.
    make(hidden, "dora", daemon, userId="dora", awayWhenHidden=False)
    watcher.evaluate("() => clients.alice.watch('dora')")
    until(watcher, "c.alice.user('dora')?.status === 'online'")
    hidden.evaluate("() => setHidden(true)")
    until(watcher, "c.alice.user('bob')?.status === 'away'")
    assert js(watcher, "c.alice.user('dora').status") == "online"
    assert daemon.get_json("/presence/dora")[1]["status"] == "online"


@pytest.fixture
def jwt_daemon(start_daemon: Callable[..., Daemon], tmp_path: Path, app: PageServer) -> Daemon:
    (tmp_path / "jwt.secret").write_text(SECRET + "\n")
    secret = str(tmp_path / "jwt.secret")
    # The page's origin is the only one allowed to connect.
    return start_daemon(
        *("--auth", "jwt", "--jwt-secret-file", secret, "--token-grace", "1"),
        *("--allowed-origins", app.url),
    )


def test_a_token_is_refreshed_before_it_expires(
    jwt_daemon: Daemon, app: PageServer, open_page: Callable[[Daemon], Page]
) -> None:
    app.ttl = 2.5  # each token lives 2-2.5 s; the server allows 1 s more without a refresh
    page = open_page(jwt_daemon)
    make(page, "alice", jwt_daemon, f"{app.url}/token?user=alice", userId="alice")
    until(page, "c.alice.connectionState === 'OPEN'")
    first = js(page, "c.alice.connectionId")
    # Three refreshes: the first token's exp and grace are long past, on the same connection.
    wait_until(
        lambda: jwt_daemon.metrics().get('ws_messages_total{type="REFRESH_TOKEN"}', 0) >= 3,
        timeout=20,
    )
    assert js(page, "c.alice.connectionState") == "OPEN"
    assert js(page, "c.alice.connectionId") == first
    assert app.issued["alice"] >= 4
    events = log(page, "alice")
    assert [e["state"] for e in events if e["event"] == "connection"] == ["CONNECTING", "OPEN"]
    assert not [e for e in events if e["event"] == "error"]


def test_a_refused_token_ends_the_retries(
    jwt_daemon: Daemon, app: PageServer, open_page: Callable[[Daemon], Page]
) -> None:
    page = open_page(jwt_daemon)
    forged = jwt.encode({"sub": "mallory", "exp": int(time.time() + 300)}, "z" * 47, "HS256")
    make(page, "static", jwt_daemon, userId="mallory", token=forged)
    until(page, "c.static.closeInfo?.final === true")
    assert js(page, "c.static.closeInfo") == {
        "code": 1008,
        "reason": "token signature invalid",
        "final": True,
    }
    # With getToken: a fresh token is asked for once; refused too, the client stops.
    bad = urllib.parse.quote("w" * 47)
    make(page, "fetched", jwt_daemon, f"{app.url}/token?user=eve&secret={bad}", userId="eve")
    until(page, "c.fetched.closeInfo?.final === true")
    assert app.issued["eve"] == 2
    states = [e for e in log(page, "fetched") if e["event"] == "connection"]
    assert [e["state"] for e in states] == ["CONNECTING", "CLOSED", "CONNECTING", "CLOSED"]
    assert states[-1]["reason"] == "token signature invalid"
    # Nothing more reaches the server: a good client connects and is counted, the two
    # refused ones stay at three refusals.
    make(page, "good", jwt_daemon, f"{app.url}/token?user=alice", userId="alice")
    until(page, "c.good.connectionState === 'OPEN'")
    assert jwt_daemon.metrics()['ws_errors_total{reason="auth"}'] == 3
    assert json.loads(json.dumps(js(page, "c.fetched.connectionState"))) == "CLOSED"
