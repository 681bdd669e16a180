"""PresenceClient: one self-healing connection to a presence daemon, on asyncio and
``websockets``. What it decides (state, backoff, close codes) lives in state.py and
reconnect.py; this module only moves messages."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from . import reconnect
from .reconnect import Backoff, Verdict
from .state import (
    CLOSED,
    CLOSING,
    CONNECTING,
    OPEN,
    Change,
    ConnectionChange,
    ErrorChange,
    PresenceState,
    Room,
    User,
)

STATUSES = ("online", "away", "busy")
TokenSource = Callable[[], str | Awaitable[str]]


class PresenceClosed(Exception):
    """The client has stopped for good (closed, or a close the server means as final)."""


class PresenceClient:
    """``async with PresenceClient(url, user_id="ops") as client: ...``

    Commands (``set_status``, ``watch``, ``join``...) are remembered and re-sent after every
    reconnect; ``user()`` and ``room()`` read the synced state; ``changes()`` yields every
    change in order (a single consumer; at most ``buffer`` unread changes are kept)."""

    def __init__(
        self,
        url: str,
        *,
        user_id: str,
        token: str | None = None,
        get_token: TokenSource | None = None,
        origin: str | None = None,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        buffer: int = 10_000,
        connect_options: Mapping[str, Any] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        if not reconnect.valid_name(user_id):
            raise ValueError(f"invalid userId: {user_id!r}")
        self.url = url
        self.user_id = user_id
        self._token = token
        self._get_token = get_token
        self._origin = origin
        self._backoff = backoff or Backoff()
        self._open_timeout = open_timeout
        self._request_timeout = request_timeout
        self._connect_options = dict(connect_options or {})
        self._rand = rand
        self._state = PresenceState()
        self._status: str | None = None
        self._metadata: dict[str, Any] | None = None
        self._watching: dict[str, None] = {}
        self._rooms: dict[str, dict[str, Any] | None] = {}
        self._ws: ClientConnection | None = None
        self._connection = CLOSED
        self._changes: deque[Change] = deque(maxlen=buffer)
        self._tick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._finished = False
        self._epoch = 0  # connections opened so far
        self._errors = 0  # ERROR messages received so far
        self._room_states: dict[str, int] = {}
        self.connection_id: str | None = None
        self.stopped_reason: str | None = None  # why a final close ended the client

    # -- life ------------------------------------------------------------------------------

    async def __aenter__(self) -> PresenceClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Close the connection with 1000 (the user is offline at once) and stop."""
        if self._finished:
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

    # -- reading the state -----------------------------------------------------------------

    @property
    def state(self) -> str:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        return self._connection

    @property
    def stopped(self) -> bool:
        return self._finished

    def user(self, user_id: str) -> User | None:
        return self._state.users.get(user_id)

    def room(self, name: str) -> Room | None:
        return self._state.rooms.get(name)

    async def changes(self) -> AsyncIterator[Change]:
        """Every change in order; ends after the final ``CLOSED``."""
        while True:
            while self._changes:
                yield self._changes.popleft()
            if self._finished:
                return
            await self._tick.wait()

    async def wait_until(self, predicate: Callable[[], object], timeout: float | None) -> None:
        """Wait until ``predicate()`` is true, re-checked after every change (TimeoutError
        after ``timeout`` seconds; PresenceClosed if the client stops first)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._finished:
                    raise PresenceClosed(self.stopped_reason or "closed")
                await self._tick.wait()

    async def wait_open(self, timeout: float | None = None) -> None:
        await self.wait_until(lambda: self._connection == OPEN, timeout)

    # -- commands --------------------------------------------------------------------------

    async def set_status(self, status: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Set this connection's status (``online``, ``away``, ``busy``) and, if given, its
        metadata; both are re-sent after a reconnect."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}: {status!r}")
        payload: dict[str, Any] = {"status": status}
        self._status = status
        if metadata is not None:
            self._metadata = payload["metadata"] = _object(metadata)
        await self._send("PRESENCE_UPDATE", payload)

    async def watch(self, user_ids: Iterable[str]) -> None:
        """Watch these users; returns once their state is known (when connected)."""
        ids = _names(user_ids, "userId")
        if not ids:
            return
        self._watching.update(dict.fromkeys(ids))
        await self._request(
            "SUBSCRIBE", {"userIds": ids}, lambda: all(i in self._state.users for i in ids)
        )

    async def unwatch(self, user_ids: Iterable[str]) -> None:
        ids = [i for i in _names(user_ids, "userId") if i in self._watching]
        for user_id in ids:
            del self._watching[user_id]
        self._state.forget_users(ids)
        if ids:
            await self._send("UNSUBSCRIBE", {"userIds": ids})

    async def join(self, room: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Join a room (again: set its metadata); returns once its members are known."""
        (room,) = _names([room], "room name")
        payload: dict[str, Any] = {"room": room}
        if metadata is not None:
            payload["metadata"] = _object(metadata)
            self._rooms[room] = payload["metadata"]
        else:
            self._rooms.setdefault(room, None)
        seen = self._room_states.get(room, 0)
        await self._request("JOIN", payload, lambda: self._room_states.get(room, 0) > seen)

    async def update_room(self, room: str, metadata: Mapping[str, Any]) -> None:
        if room not in self._rooms:
            raise ValueError(f"not in room {room!r}: join it first")
        self._rooms[room] = _object(metadata)
        await self._send("ROOM_UPDATE", {"room": room, "metadata": self._rooms[room]})

    async def leave(self, room: str) -> None:
        if self._rooms.pop(room, False) is False:
            return
        self._state.forget_room(room)
        self._room_states.pop(room, None)
        await self._send("LEAVE", {"room": room})

    # -- the connection --------------------------------------------------------------------

    async def _send(self, kind: str, payload: dict[str, Any] | None = None) -> bool:
        """Send now if open (True); otherwise it goes with the next connection's re-send."""
        if self._finished:
            raise PresenceClosed(self.stopped_reason or "closed")
        ws = self._ws
        if ws is None or self._connection != OPEN:
            return False
        message: dict[str, Any] = {"type": kind}
        if payload is not None:
            message["payload"] = payload
        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed:
            return False
        return True

    async def _request(
        self, kind: str, payload: dict[str, Any], answered: Callable[[], bool]
    ) -> None:
        epoch, errors = self._epoch, self._errors
        if not await self._send(kind, payload):
            return
        # The answer, or the reason it did not come, is in changes().
        with contextlib.suppress(TimeoutError, PresenceClosed):
            await self.wait_until(
                lambda: (
                    answered()
                    or self._errors > errors
                    or self._epoch != epoch
                    or self._connection != OPEN
                ),
                self._request_timeout,
            )

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
            self._connection = CLOSED  # told (with what comes next) once that is decided
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
        self._epoch += 1
        self._set_state(OPEN)
        self._backoff.opened(asyncio.get_running_loop().time())
        tasks = [asyncio.create_task(self._heartbeat(ws, float(interval)))]
        if self._get_token is not None:
            tasks.append(asyncio.create_task(self._refresher(ws)))
        try:
            await self._resend()
            async for raw in ws:
                self._handle(raw)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async def _resend(self) -> None:
        """What the application asked for, again: status, watches, rooms."""
        if self._status is not None:
            payload: dict[str, Any] = {"status": self._status}
            if self._metadata is not None:
                payload["metadata"] = self._metadata
            await self._send("PRESENCE_UPDATE", payload)
        if self._watching:
            await self._send("SUBSCRIBE", {"userIds": list(self._watching)})
        for room, metadata in list(self._rooms.items()):
            join: dict[str, Any] = {"room": room}
            if metadata is not None:
                join["metadata"] = metadata
            await self._send("JOIN", join)

    def _handle(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "PRESENCE_STATE" and isinstance(message.get("users"), dict):
            users = message["users"]
            message = {**message, "users": {u: v for u, v in users.items() if u in self._watching}}
        elif kind == "PRESENCE_DIFF" and message.get("userId") not in self._watching:
            return
        elif kind == "ROOM_STATE":
            if message.get("room") not in self._rooms:
                return
            room = str(message["room"])
            self._room_states[room] = self._room_states.get(room, 0) + 1
        elif kind == "ERROR":
            self._errors += 1
        for change in self._state.apply(message):
            self._emit(change)
        self._notify()

    async def _heartbeat(self, ws: ClientConnection, interval: float) -> None:
        heartbeat = json.dumps({"type": "HEARTBEAT"})
        try:
            while True:
                await asyncio.sleep(interval)
                await ws.send(heartbeat)
        except ConnectionClosed:
            pass

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
                self._emit(ErrorChange("GET_TOKEN_FAILED", f"get_token failed: {e}"))
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

    # -- changes ---------------------------------------------------------------------------

    def _set_state(self, state: str, **details: Any) -> None:
        self._connection = state
        self._emit(ConnectionChange(state, **details))
        self._notify()

    def _finish(self, code: int | None, reason: str | None) -> None:
        if self._finished:
            return
        self.stopped_reason = reason
        self._connection = CLOSED
        self._emit(ConnectionChange(CLOSED, code=code, reason=reason, final=True))
        self._finished = True
        self._notify()

    def _emit(self, change: Change) -> None:
        self._changes.append(change)
        self._notify()

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()


def _stale(token: str | None) -> bool:
    """No token yet, or one that expires within the next second."""
    if token is None:
        return True
    expires = reconnect.token_expiry(token)
    return expires is not None and expires - time.time() < 1.0


def _names(names: Iterable[str], what: str) -> list[str]:
    if isinstance(names, str):
        raise TypeError(f"expected a list of {what}s, not one string")
    unique = list(dict.fromkeys(names))
    for name in unique:
        if not isinstance(name, str) or not reconnect.valid_name(name):
            raise ValueError(f"invalid {what}: {name!r}")
    return unique


def _object(metadata: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, not {type(metadata).__name__}")
    return dict(metadata)
