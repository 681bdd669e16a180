"""PresenceClient: the presence one asks for, and the presence one is told, over a link
(link.py) that reconnects on its own. The pure parts live in state.py (the synced state)
and reconnect.py (backoff, close codes, token expiry)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from . import reconnect
from .link import Link, TokenSource
from .reconnect import Backoff
from .state import OPEN, Change, PresenceState, Room, User

STATUSES = ("online", "away", "busy")


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
        self._link = Link(
            self,
            url,
            user_id,
            token=token,
            get_token=get_token,
            origin=origin,
            backoff=backoff or Backoff(),
            open_timeout=open_timeout,
            connect_options=connect_options or {},
            rand=rand,
        )
        self._request_timeout = request_timeout
        self._state = PresenceState()
        self._status: str | None = None
        self._metadata: dict[str, Any] | None = None
        self._watching: dict[str, None] = {}
        self._rooms: dict[str, dict[str, Any] | None] = {}
        self._changes: deque[Change] = deque(maxlen=buffer)
        self._tick = asyncio.Event()
        self._errors = 0  # ERROR messages received so far
        self._room_states: dict[str, int] = {}  # ROOM_STATEs received, by room

    # -- life ------------------------------------------------------------------------------

    async def __aenter__(self) -> PresenceClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start connecting (``async with`` does this)."""
        self._link.start()

    async def close(self) -> None:
        """Close the connection with 1000 (the user is offline at once) and stop."""
        await self._link.close()

    # -- reading the state -----------------------------------------------------------------

    @property
    def state(self) -> str:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        return self._link.state

    @property
    def stopped(self) -> bool:
        return self._link.finished

    @property
    def stopped_reason(self) -> str | None:
        """Why the client stopped (the server's close reason, say), once it has."""
        return self._link.stopped_reason

    @property
    def connection_id(self) -> str | None:
        """The ``connectionId`` of the latest ``CONNECT``."""
        return self._link.connection_id

    def user(self, user_id: str) -> User | None:
        return self._state.users.get(user_id)

    def room(self, name: str) -> Room | None:
        return self._state.rooms.get(name)

    async def changes(self) -> AsyncIterator[Change]:
        """Every change in order; ends after the final ``CLOSED``."""
        while True:
            while self._changes:
                yield self._changes.popleft()
            if self._link.finished:
                return
            await self._tick.wait()

    async def wait_until(self, predicate: Callable[[], object], timeout: float | None) -> None:
        """Wait until ``predicate()`` is true, re-checked after every change (TimeoutError
        after ``timeout`` seconds; PresenceClosed if the client stops first)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._link.finished:
                    raise PresenceClosed(self.stopped_reason or "closed")
                await self._tick.wait()

    async def wait_open(self, timeout: float | None = None) -> None:
        await self.wait_until(lambda: self._link.state == OPEN, timeout)

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
        if self._link.finished:
            raise PresenceClosed(self._link.stopped_reason or "closed")
        message: dict[str, Any] = {"type": kind}
        if payload is not None:
            message["payload"] = payload
        return await self._link.send(message)

    async def _request(
        self, kind: str, payload: dict[str, Any], answered: Callable[[], bool]
    ) -> None:
        link, errors = self._link, self._errors
        epoch = link.epoch
        if not await self._send(kind, payload):
            return
        # The answer, or the reason it did not come, is in changes().
        with contextlib.suppress(TimeoutError, PresenceClosed):
            await self.wait_until(
                lambda: (
                    answered() or self._errors > errors or link.epoch != epoch or link.state != OPEN
                ),
                self._request_timeout,
            )

    async def opened(self) -> None:
        """A new connection (the link calls this): what the application asked for, again."""
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

    def received(self, message: dict[str, Any]) -> None:
        """A server message (the link calls this), applied unless it is for what the
        application has stopped watching meanwhile."""
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
            self.changed(change)
        self._notify()

    # -- changes ---------------------------------------------------------------------------

    def changed(self, change: Change) -> None:
        self._changes.append(change)
        self._notify()

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()


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
