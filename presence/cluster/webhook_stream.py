"""Webhook events in Redis Streams: what the presence scripts add, and the scripts a
delivering node runs (``lua/_events.lua``, ``lua/wh_*.lua``).

Emission. The scripts that decide a transition add its event in the same script run, so
an event exists exactly when the transition happened, once, whichever node decided it.
The node's webhook settings (the enabled types, ``--webhook-retain``) are a few lines of
Lua put before every script (``prelude``): no script's arguments change, and without
webhooks the scripts hold an empty table and add nothing.

Order. An event goes to one of ``SHARDS`` streams by a hash of its key ("u:" + userId,
"r:" + room), so all events of one user (or one room) are in one stream in the order Redis
decided them. Each stream is delivered by one node at a time, the holder of its lease
(``consumer``), which is what keeps a user's events in order and never two at once across
the cluster.

The cap. The streams together hold at most ``--webhook-retain`` events: a delivered event
is acknowledged and deleted at once, so what they hold is exactly the backlog, and past
the cap the oldest event makes room and is counted as dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from twisted.internet import defer

from ..core import webhooks
from ..core.model import UserView
from ..core.webhooks import Event
from .store import Evaluator, _text

SHARDS = 16  # lua/_events.lua WH_SHARDS: fixed, a stream's events are ordered by it
GROUP = "webhooks"
CLAIM_BATCH = 500

USER_TYPES = frozenset((webhooks.USER_ONLINE, webhooks.USER_OFFLINE, webhooks.USER_UPDATED))
MEMBER_TYPES = frozenset((webhooks.ROOM_JOINED, webhooks.ROOM_LEFT))


def prelude(events: Iterable[str], retain: int) -> str:
    """The Lua put before the presence scripts: which events they add, and the cap."""
    types = ", ".join(
        f"['{name}'] = true" for name in sorted(events) if name in webhooks.EVENT_TYPES
    )
    return f"local WH_TYPES, WH_RETAIN = {{{types}}}, {int(retain)}\n"


def _load(name: str) -> str:
    package = resources.files("presence.cluster") / "lua"
    events = package.joinpath("_events.lua").read_text()
    return prelude((), 1) + events + "\n" + package.joinpath(f"{name}.lua").read_text()


_SCRIPTS = {name: _load(name) for name in ("wh_lease", "wh_claim", "wh_read", "wh_ack")}


def event_of(shard: int, entry_id: str, fields: Sequence[Any]) -> Event:
    """The event a stream entry holds; its id is the same on every node and every retry."""
    f = {_text(fields[i]): _text(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    kind, ts = f["t"], float(f["ts"])
    data: dict[str, Any]
    if kind in USER_TYPES:
        last_seen = float(f["l"]) if f.get("l") else None
        view = UserView(f["s"], orjson.loads(f["m"]), last_seen, int(f["c"]))
        data = webhooks.user_data(f["u"], view)
    elif kind in MEMBER_TYPES:
        data = webhooks.member_data(f["r"], f["u"], f["s"], orjson.loads(f["m"]), int(f["c"]))
    else:
        data = webhooks.room_data(f["r"])
    return Event(f"msg_{shard}_{entry_id}", kind, f["k"], ts, data)


@dataclass(frozen=True)
class Leases:
    dropped: int  # events the cap dropped since any node last counted them
    backlog: int  # events in the streams, not yet delivered (cluster-wide)
    nodes: int  # live nodes
    held: frozenset[int]


@dataclass(frozen=True)
class Entry:
    shard: int
    id: str
    event: Event | None  # None: trimmed by the cap before it was read


class WebhookStream:
    """The delivering side's scripts on the link; every method returns a Deferred."""

    def __init__(self, link: Evaluator, consumer: str) -> None:
        self.link = link
        self.consumer = consumer

    def leases(
        self, ttl: float, offset: int, give_up: Iterable[int] = ()
    ) -> defer.Deferred[Leases]:
        args = [self.consumer, max(1, int(ttl * 1000)), GROUP, offset, *give_up]

        def parse(reply: list[Any]) -> Leases:
            values = [int(_text(v)) for v in reply]
            return Leases(values[0], values[1], values[2], frozenset(values[3:]))

        return self.link.eval(_SCRIPTS["wh_lease"], args).addCallback(parse)

    async def claim(self, shard: int) -> None:
        """Every pending entry of the shard becomes this node's (it holds the lease)."""
        start = "-"
        while start:
            args = [shard, GROUP, self.consumer, start, CLAIM_BATCH]
            start = _text(await self.link.eval(_SCRIPTS["wh_claim"], args))

    def read(self, count: int, cursors: dict[int, str]) -> defer.Deferred[list[Entry]]:
        """Up to ``count`` entries per shard from each cursor ('>' new, an id: this node's
        pending after it), in stream order per shard."""
        args: list[Any] = [GROUP, self.consumer, count]
        for shard, cursor in cursors.items():
            args.extend((shard, cursor))

        def parse(reply: list[Any]) -> list[Entry]:
            out = []
            for shard_text, entries in reply:
                shard = int(_text(shard_text))
                for entry_id, fields in entries or ():
                    eid = _text(entry_id)
                    event = event_of(shard, eid, fields) if fields else None
                    out.append(Entry(shard, eid, event))
            return out

        return self.link.eval(_SCRIPTS["wh_read"], args).addCallback(parse)

    def ack(self, done: Sequence[tuple[int, str]], counted: bool = True) -> defer.Deferred[Any]:
        """Events finished (delivered or dropped by this node): acknowledged and deleted."""
        args: list[Any] = [GROUP, int(counted)]
        for shard, entry_id in done:
            args.extend((shard, entry_id))
        return self.link.eval(_SCRIPTS["wh_ack"], args)
