"""The cluster's atomic steps: one Lua script each (``lua/``), and parsing their answers.

Every step recomputes what it touches inside Redis, atomically, and publishes a versioned
diff on the user's channel when what a watcher sees changed; see ``lua/_common.lua`` for
the keys. The scripts run through anything with an ``eval`` (the ``RedisLink``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import orjson
from twisted.internet import defer

from ..core.model import OFFLINE, UserView
from ..core.paging import lex_start
from .link import RedisUnavailable
from .options import RedisURL

__all__ = ["CHANNEL_PREFIX", "REFUSED", "RedisURL", "RedisUnavailable", "Store", "Sweep"]

PREFIX = "presence:"
CHANNEL_PREFIX = PREFIX + "ch:"
SCRIPTS = (
    "open",
    "update",
    "close",
    "snapshot",
    "heartbeat",
    "sweep",
    "expire",
    "resync",
    "leave",
    "online",
)
REFUSED = -1  # open: the user is at the cap; nothing was registered


def channel(user_id: str) -> str:
    return CHANNEL_PREFIX + user_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_view(status: str, connections: str, last_seen: str, metadata: str) -> UserView:
    return UserView(
        status or OFFLINE,
        orjson.loads(metadata) if metadata else {},
        float(last_seen) if last_seen else None,
        int(connections),
    )


def parse_message(payload: str) -> tuple[int, UserView]:
    """A channel message: version, status, connections, lastSeen, metadata (one a line)."""
    version, status, connections, last_seen, metadata = payload.split("\n", 4)
    return int(version), parse_view(status, connections, last_seen, metadata)


def encode_metadata(metadata: Any) -> str:
    """Metadata as the scripts keep and compare it: as text, keys sorted, so the same
    metadata sent with its keys in another order is no change (as the model sees it)."""
    return orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode()


def stamp(now: float) -> str:
    return f"{now:.3f}"


NO_WEBHOOKS = "local WH_TYPES, WH_RETAIN = {}, 0\n"  # the scripts add no events


def load_script(name: str, prelude: str = NO_WEBHOOKS) -> str:
    """``prelude``: the node's webhook settings (``webhook_stream.prelude``)."""
    package = resources.files("presence.cluster") / "lua"
    common = package.joinpath("_common.lua").read_text()
    rooms = package.joinpath("_rooms.lua").read_text()  # settle and reap call into it
    online = package.joinpath("_online.lua").read_text()  # settle and go_offline call it
    events = prelude + package.joinpath("_events.lua").read_text()  # both call into it
    return "\n".join((online, events, rooms, common, package.joinpath(f"{name}.lua").read_text()))


_SCRIPT_TEXT = {name: load_script(name) for name in SCRIPTS}


class Evaluator(Protocol):
    def eval(self, script: str, args: Sequence[Any]) -> defer.Deferred[Any]: ...


@dataclass(frozen=True)
class Sweep:
    alive: int
    nodes_ended: int
    connections_ended: int
    users_present: int


Live = tuple[str, str, str, str]  # connectionId, userId, status, metadata JSON or ''
Ended = tuple[str, str, float, bool]  # connectionId, userId, when, clean


class Scripts:
    """Runs one node's Lua scripts (``scripts``: name -> text) on the link."""

    scripts: dict[str, str] = {}

    def __init__(
        self,
        link: Evaluator,
        node: str,
        grace: float,
        last_seen_ttl: int,
        prelude: str = NO_WEBHOOKS,
    ) -> None:
        self.link = link
        self.node = node
        self.grace = grace
        self.ttl = last_seen_ttl
        self.prelude = prelude
        if prelude != NO_WEBHOOKS:  # this node's scripts add webhook events
            self.scripts = {name: load_script(name, prelude) for name in self.scripts}

    def _run(self, name: str, args: Sequence[Any]) -> defer.Deferred[Any]:
        return self.link.eval(self.scripts[name], args)


class Store(Scripts):
    """The atomic operations, one Lua script each; every method returns a Deferred."""

    scripts = _SCRIPT_TEXT

    def open(
        self, connection_id: str, user_id: str, now: float, cap: int = 0
    ) -> defer.Deferred[int]:
        """The user's connection count with this one, or ``REFUSED`` (over ``cap``)."""
        args = [self.node, connection_id, user_id, stamp(now), self.ttl, cap]
        return self._run("open", args).addCallback(int)

    def update(
        self,
        connection_id: str,
        user_id: str,
        status: str,
        metadata: Any,
        now: float,
    ) -> defer.Deferred[int]:
        """1 if a diff was published, 0 if not, -1 if Redis does not know the connection."""
        has, encoded = ("0", "") if metadata is None else ("1", encode_metadata(metadata))
        args = [self.node, connection_id, user_id, status, has, encoded, stamp(now), self.ttl]
        return self._run("update", args).addCallback(int)

    def close(
        self, connection_id: str, user_id: str, now: float, clean: bool
    ) -> defer.Deferred[Any]:
        args = [self.node, connection_id, user_id, stamp(now), int(clean), self.grace, self.ttl]
        return self._run("close", args)

    def snapshot(self, user_ids: Sequence[str]) -> defer.Deferred[dict[str, tuple[int, UserView]]]:
        ids = list(user_ids)

        def parse(reply: list[Any]) -> dict[str, tuple[int, UserView]]:
            out = {}
            values = [_text(v) for v in reply]
            for i, user_id in enumerate(ids):
                v, status, connections, last_seen, metadata = values[i * 5 : i * 5 + 5]
                out[user_id] = (int(v), parse_view(status, connections, last_seen, metadata))
            return out

        if not ids:
            return defer.succeed({})
        return self._run("snapshot", ids).addCallback(parse)

    def heartbeat(self, now: float, node_timeout: float) -> defer.Deferred[bool]:
        """True if another node ended this node's connections meanwhile."""
        args = [self.node, stamp(now), int(node_timeout * 1000)]
        return self._run("heartbeat", args).addCallback(lambda r: int(r) == 1)

    def sweep(self, now: float, same_name: str = "") -> defer.Deferred[Sweep]:
        args = [self.node, stamp(now), self.ttl, self.grace, same_name]
        return self._run("sweep", args).addCallback(lambda r: Sweep(*(int(x) for x in r)))

    def expire(self, now: float, limit: int = 500) -> defer.Deferred[int]:
        return self._run("expire", [stamp(now), self.ttl, limit]).addCallback(int)

    def resync(
        self,
        now: float,
        node_timeout: float,
        live: Sequence[Live],
        ended: Sequence[Ended],
    ) -> defer.Deferred[bool]:
        """Returns whether Redis had no presence data (first start, or it lost its data)."""
        args: list[Any] = [
            self.node,
            stamp(now),
            self.ttl,
            self.grace,
            int(node_timeout * 1000),
            len(live),
        ]
        for item in live:
            args.extend(item)
        for connection_id, user_id, at, clean in ended:
            args.extend((connection_id, user_id, stamp(at), int(clean)))
        return self._run("resync", args).addCallback(lambda r: int(r[1]) == 1)

    def leave(self, now: float) -> defer.Deferred[int]:
        return self._run("leave", [self.node, stamp(now), self.ttl, self.grace]).addCallback(int)

    def online(
        self, limit: int, after: str | None, prefix: str = ""
    ) -> defer.Deferred[tuple[dict[str, UserView], str | None]]:
        """A page of the present users in userId order (``lua/online.lua``), and the
        cursor for the next page (None on the last)."""

        def parse(reply: list[Any]) -> tuple[dict[str, UserView], str | None]:
            values = [_text(v) for v in reply]
            users = {}
            for i in range(1, len(values), 5):
                uid, status, connections, last_seen, metadata = values[i : i + 5]
                users[uid] = parse_view(status, connections, last_seen, metadata)
            return users, values[0] or None

        args = [lex_start(after, prefix), prefix, limit]
        return self._run("online", args).addCallback(parse)
