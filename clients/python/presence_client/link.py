"""The link: one WebSocket at a time to the daemon, reconnected by the rules of
reconnect.py, with the heartbeat and the token refresh. It knows nothing of presence: it
tells its owner (the PresenceClient) what changed, what arrived, and when to re-send."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from . import reconnect
from .reconnect import Backoff, Verdict
from .state import CLOSED, CLOSING, CONNECTING, OPEN, Change, ConnectionChange, ErrorChange

TokenSource = Callable[[], str | Awaitable[str]]


class Owner(Protocol):
    def changed(self, change: Change) -> None: ...

    async def opened(self) -> None: ...

    def received(self, message: dict[str, Any]) -> None: ...


class Link:
    def __init__(
        self,
        owner: Owner,
        url: str,
        user_id: str,
        *,
        token: str | None,
        get_token: TokenSource | None,
        origin: str | None,
        backoff: Backoff,
        open_timeout: float,
        connect_options: Mapping[str, Any],
        rand: Callable[[], float],
    ) -> None:
        self._owner = owner
        self.url = url
        self.user_id = user_id
        self._token = token
        self._get_token = get_token
        self._origin = origin
        self._backoff = backoff
        self._open_timeout = open_timeout
        self._connect_options = dict(connect_options)
        self._rand = rand
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.state = CLOSED
        self.finished = False
        self.stopped_reason: str | None = None
        self.epoch = 0  # connections opened so far
        self.connection_id: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Close with 1000 and stop for good."""
        if self.finished:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            self._set_state(CLOSING)
            with contextlib.suppress(TimeoutError, OSError, WebSocketException):
                await asyncio.wait_for(ws.close(1000), self._open_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._finish(1000, "closed by the client")

    async def send(self, message: dict[str, Any]) -> bool:
        """Send now if open (True); False if there is no open connection to send on."""
        ws = self._ws
        if ws is None or self.state != OPEN:
            return False
        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed:
            return False
        return True

    # -- reconnecting ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._reconnecting()
        except Exception as e:  # a bug here must not leave the application waiting
            self._finish(None, f"internal error: {e!r}")

    async def _reconnecting(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._set_state(CONNECTING)
            verdict, code, reason = await self._attempt()
            if self._closing:
                return
            self._backoff.closed(loop.time())
            if verdict == "new-token":
                refused = self._token
                try:
                    self._token = await self._fetch_token()
                except Exception as e:
                    self._finish(code, f"{reason}; get_token failed: {e}")
                    return
                if self._token == refused:
                    self._finish(code, f"{reason}; get_token gave the refused token again")
                    return
            elif verdict == "stop":
                self._finish(code, reason)
                return
            delay = self._backoff.next_delay(self._rand)
            self._set_state(CLOSED, code=code, reason=reason, retry_in=delay)
            await asyncio.sleep(delay)

    async def _attempt(self) -> tuple[Verdict, int | None, str | None]:
        if self._get_token is not None and _stale(self._token):
            try:
                self._token = await self._fetch_token()
            except Exception as e:
                return "retry", None, f"get_token failed: {e}"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            ws = await connect(
                self._connect_url(),
                additional_headers=headers,
                origin=self._origin,  # type: ignore[arg-type]
                open_timeout=self._open_timeout,
                max_size=2**24,
                **self._connect_options,
            )
        except InvalidStatus as e:
            status = e.response.status_code
            return reconnect.after_refused_handshake(status), None, f"HTTP {status}"
        except (OSError, TimeoutError, WebSocketException) as e:
            return "retry", None, str(e) or type(e).__name__
        self._ws = ws
        try:
            await self._session(ws)
        finally:
            self._ws = None
            self.state = CLOSED  # told (with what comes next) once that is decided
        code, reason = ws.close_code, ws.close_reason
        return reconnect.after_close(code, reason, self._get_token is not None), code, reason

    async def _session(self, ws: ClientConnection) -> None:
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), self._open_timeout))
        except (TimeoutError, ValueError):
            await ws.close(1002, "no CONNECT")
            return
        except ConnectionClosed:
            return
        if not isinstance(hello, dict) or hello.get("type") != "CONNECT":
            await ws.close(1002, "no CONNECT")
            return
        self.connection_id = hello.get("connectionId")
        interval = hello.get("heartbeatInterval")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            interval = 15.0
        self.epoch += 1
        self._set_state(OPEN)
        self._backoff.opened(asyncio.get_running_loop().time())
        tasks = [asyncio.create_task(self._heartbeat(ws, float(interval)))]
        if self._get_token is not None:
            tasks.append(asyncio.create_task(self._refresher(ws)))
        try:
            await self._owner.opened()
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self._owner.received(message)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async def _heartbeat(self, ws: ClientConnection, interval: float) -> None:
        heartbeat = json.dumps({"type": "HEARTBEAT"})
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(interval)
                await ws.send(heartbeat)

    async def _refresher(self, ws: ClientConnection) -> None:
        """Fetch a new token before the current one expires and send REFRESH_TOKEN."""
        pause = 0.0
        while True:
            expires = reconnect.token_expiry(self._token) if self._token else None
            if expires is None:
                return
            now = time.time()
            await asyncio.sleep(max(pause, reconnect.refresh_at(expires, now) - now))
            pause = 1.0  # never more than one refresh a second
            try:
                token = await self._fetch_token()
            except Exception as e:
                self._owner.changed(ErrorChange("GET_TOKEN_FAILED", f"get_token failed: {e}"))
                continue
            if token == self._token:
                continue
            self._token = token
            try:
                await ws.send(json.dumps({"type": "REFRESH_TOKEN", "payload": {"token": token}}))
            except ConnectionClosed:
                return

    async def _fetch_token(self) -> str:
        assert self._get_token is not None
        token = self._get_token()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise ValueError("get_token must return a non-empty string")
        return token

    def _connect_url(self) -> str:
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "userId"]
        query.append(("userId", self.user_id))
        return urlunsplit(parts._replace(path=parts.path or "/", query=urlencode(query)))

    def _set_state(self, state: str, **details: Any) -> None:
        self.state = state
        self._owner.changed(ConnectionChange(state, **details))

    def _finish(self, code: int | None, reason: str | None) -> None:
        if self.finished:
            return
        self.stopped_reason = reason
        self.state = CLOSED
        self.finished = True
        self._owner.changed(ConnectionChange(CLOSED, code=code, reason=reason, final=True))


def _stale(token: str | None) -> bool:
    """No token yet, or one that expires within the next second."""
    if token is None:
        return True
    expires = reconnect.token_expiry(token)
    return expires is not None and expires - time.time() < 1.0
