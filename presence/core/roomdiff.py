"""What a room's members are told, as values, and the batching both ``Rooms`` (one node)
and ``RoomReplica`` (a cluster node's copy of a room) run: every room remembers what its
members were last told of each user (``Told``); ``hold`` says whether a change waits for
the room's batch window, ``flush`` computes the net change since the last diff. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import Peer


@dataclass(frozen=True, slots=True)
class Member:
    status: str
    metadata: Mapping[str, Any]
    connections: int


@dataclass(frozen=True, slots=True)
class RoomState:
    """What a joining connection is told: the members (at most ``list_limit``), and, when
    the room has it at hand, those members already encoded (``wire.fragment``)."""

    room: str
    members: Mapping[str, Member]
    count: int
    complete: bool
    members_json: Any = field(default=None, compare=False)


@dataclass(slots=True)
class RoomDiff:
    room: str
    joins: dict[str, Member]
    leaves: dict[str, float]  # userId -> when their membership ended
    updates: dict[str, Member]
    count: int
    recipients: tuple[Peer, ...]


@dataclass(slots=True)
class Told:
    """What a room's members were last told of each user, and who changed since: the
    batching state ``flush`` works on (for ``Rooms`` and for ``RoomReplica`` alike)."""

    told: dict[str, Member] = field(default_factory=dict)
    dirty: dict[str, float] = field(default_factory=dict)  # userId -> when it changed
    told_count: int = 0
    flush_at: float | None = None  # a batched room: when its next diff is due
    last_flush: float = float("-inf")


Changes = tuple[dict[str, Member], dict[str, float], dict[str, Member]]


def hold(told: Told, count: int, threshold: int, interval: float, now: float) -> bool:
    """Whether a room of ``count`` members waits for its batch window (scheduling it)."""
    if count > threshold or len(told.told) > threshold:
        if told.flush_at is None:
            told.flush_at = max(now, told.last_flush + interval)
        return told.flush_at > now
    return False


def flush(
    told: Told,
    member_of: Callable[[str], Member | None],
    count: int,
    list_limit: int,
    now: float,
    force: str = "",
) -> Changes | None:
    """The net change since the room was last told (None: nothing to send); what it tells
    becomes what the room was told. Past ``list_limit`` only a changed count is sent."""
    told.flush_at = None
    told.last_flush = now
    joins: dict[str, Member] = {}
    leaves: dict[str, float] = {}
    updates: dict[str, Member] = {}
    dirty, told.dirty = told.dirty, {}
    for user_id, at in dirty.items():
        before = told.told.get(user_id)
        after = member_of(user_id)
        if after is None:
            if before is not None:
                leaves[user_id] = at
                del told.told[user_id]
            continue
        if before is None:
            joins[user_id] = after
        elif after != before or user_id == force:
            updates[user_id] = after
        told.told[user_id] = after
    if count > list_limit or told.told_count > list_limit:
        changed = count != told.told_count
        told.told_count = count
        if not changed:
            return None
        return {}, {}, {}
    told.told_count = count
    if not (joins or leaves or updates):
        return None
    return joins, leaves, updates
