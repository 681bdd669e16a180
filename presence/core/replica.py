"""One room as one node of a cluster knows it: pure, like ``rooms``.

The members come from elsewhere (a snapshot read from Redis, then each published change
applied in order, or this node's own view while Redis is away); what the node's joined
connections were last told, and when, is the same ``Told`` state ``Rooms`` keeps, and the
diffs are made by the same ``flush``: a room of more than ``batch_threshold`` members is
told at most once per ``batch_interval`` (the net change since the last diff), a smaller one
at once, and past ``list_limit`` only its count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import wire
from .model import Peer
from .roomdiff import Member, RoomDiff, RoomState, Told, flush, hold


class RoomReplica:
    def __init__(
        self,
        name: str,
        batch_threshold: int = 100,
        batch_interval: float = 1.0,
        list_limit: int = 1000,
    ) -> None:
        self.name = name
        self.batch_threshold = batch_threshold
        self.batch_interval = batch_interval
        self.list_limit = list_limit
        self.members: dict[str, Member] = {}
        self.version = 0
        self.peers: dict[str, Peer] = {}  # this node's joined connections: who is told
        self.told = Told()
        self.diffs_sent = 0
        self._listed: RoomState | None = None  # kept until a listed member changes

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def flush_at(self) -> float | None:
        return self.told.flush_at

    def state(self) -> RoomState:
        kept = self._listed
        if kept is None:
            listed: dict[str, Member] = {}
            for user_id, member in self.members.items():
                if len(listed) >= self.list_limit:
                    break
                listed[user_id] = member
            encoded: Any = wire.fragment(
                {
                    u: wire.member_object(m.status, m.metadata, m.connections)
                    for u, m in listed.items()
                }
            )
            kept = self._listed = RoomState(self.name, listed, 0, False, encoded)
        count = self.count
        return RoomState(
            self.name, kept.members, count, len(kept.members) == count, kept.members_json
        )

    def adopt(self, members: Mapping[str, Member], version: int) -> None:
        """A first snapshot, before anyone here is told: it is what they will be told."""
        self.members = dict(members)
        self._listed = None
        self.version = version
        self.told = Told(dict(members), {}, len(members))

    def reset(self, members: Mapping[str, Member], now: float) -> list[RoomDiff]:
        """The members are now these (a re-read, or this node's own view): each user who
        differs from what was told is a change."""
        old = self.members
        self.members = dict(members)
        self._listed = None
        dirty = self.told.dirty
        for user_id in {*old, *members, *self.told.told}:
            if self.told.told.get(user_id) != self.members.get(user_id):
                dirty.setdefault(user_id, now)
        return self._settle(now)

    def apply(
        self,
        user_id: str,
        member: Member | None,
        at: float,
        now: float,
        skip: str | None = None,
        force: bool = False,
    ) -> list[RoomDiff]:
        """A user's membership is now ``member`` (None: they left, at ``at``)."""
        kept = self._listed
        if kept is not None and (user_id in kept.members or len(kept.members) < self.list_limit):
            self._listed = None
        if member is None:
            self.members.pop(user_id, None)
        else:
            self.members[user_id] = member
        self.told.dirty[user_id] = at
        return self._settle(now, skip, user_id if force else "")

    def due(self, now: float) -> list[RoomDiff]:
        """The batched diff, if its window passed."""
        at = self.told.flush_at
        if at is None or at > now:
            return []
        return self._flush(now)

    def _settle(self, now: float, skip: str | None = None, force: str = "") -> list[RoomDiff]:
        if hold(self.told, self.count, self.batch_threshold, self.batch_interval, now):
            return []
        return self._flush(now, skip, force)

    def _flush(self, now: float, skip: str | None = None, force: str = "") -> list[RoomDiff]:
        changes = flush(self.told, self.members.get, self.count, self.list_limit, now, force)
        recipients = tuple(p for cid, p in self.peers.items() if cid != skip)
        if changes is None or not recipients:
            return []
        self.diffs_sent += len(recipients)
        return [RoomDiff(self.name, *changes, self.count, recipients)]
