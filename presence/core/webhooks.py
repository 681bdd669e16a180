"""Webhooks, the pure part: the events, their JSON body, the Standard Webhooks signature,
the secret's two forms, the retry schedule and the one frozen config.

Pure: no Twisted. The single-node hub makes ``Event`` values from what the model and the
rooms return; the cluster's Lua scripts make the same events in a Redis Stream. Both are
delivered by ``presence.server.webhooks`` with the body and headers made here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import wire
from .model import UserView

USER_ONLINE: Final = "user.online"
USER_OFFLINE: Final = "user.offline"
USER_UPDATED: Final = "user.updated"
ROOM_JOINED: Final = "room.joined"
ROOM_LEFT: Final = "room.left"
ROOM_OCCUPIED: Final = "room.occupied"
ROOM_VACATED: Final = "room.vacated"
EVENT_TYPES: Final = (
    USER_ONLINE,
    USER_OFFLINE,
    USER_UPDATED,
    ROOM_JOINED,
    ROOM_LEFT,
    ROOM_OCCUPIED,
    ROOM_VACATED,
)

SECRET_PREFIX: Final = b"whsec_"
MIN_RAW_SECRET_BYTES: Final = 32
MIN_DECODED_SECRET_BYTES: Final = 24  # the Standard Webhooks spec: 24 to 64 bytes
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 300.0


@dataclass(frozen=True)
class Event:
    """One thing a backend is told. ``key`` orders delivery: events of one key are delivered
    one at a time, in order ("u:" + userId for user and room.joined/left events, "r:" + room
    for room.occupied/vacated). ``id`` is the webhook-id, the same on every retry."""

    id: str
    type: str
    key: str
    timestamp: float
    data: Mapping[str, Any]


@dataclass(frozen=True)
class WebhookConfig:
    """--webhook-url and friends, checked once (presence.webhook_options makes it)."""

    urls: tuple[str, ...]
    secret: bytes
    events: frozenset[str] = frozenset(EVENT_TYPES)
    timeout: float = 5.0
    retry_for: float = 86400.0
    concurrency: int = 8
    retain: int = 100000


# -- making events ---------------------------------------------------------------------

_boot = base64.b32encode(os.urandom(10)).decode().lower()
_count = itertools.count(1)


def new_id() -> str:
    """A webhook-id unique across processes and restarts: a random per-process part and a
    counter (the Redis side uses "msg_" + the stream entry id instead)."""
    return f"msg_{_boot}{next(_count):x}"


def user_key(user_id: str) -> str:
    return "u:" + user_id


def room_key(room: str) -> str:
    return "r:" + room


def user_data(user_id: str, view: UserView) -> dict[str, Any]:
    """Exactly what a PRESENCE_DIFF tells a watcher of this user (less type and timestamp)."""
    return {
        "userId": user_id,
        **wire.user_object(view.status, view.metadata, view.last_seen, view.connections),
    }


def member_data(
    room: str, user_id: str, status: str, metadata: Mapping[str, Any], connections: int
) -> dict[str, Any]:
    """room.joined / room.left: the member as a ROOM_STATE or ROOM_DIFF lists them."""
    return {
        "room": room,
        "userId": user_id,
        "member": wire.member_object(status, metadata, connections),
    }


def room_data(room: str) -> dict[str, Any]:
    """room.occupied / room.vacated."""
    return {"room": room}


def user_event(kind: str, user_id: str, view: UserView, now: float) -> Event:
    return Event(new_id(), kind, user_key(user_id), now, user_data(user_id, view))


def member_event(
    kind: str,
    room: str,
    user_id: str,
    status: str,
    metadata: Mapping[str, Any],
    connections: int,
    now: float,
) -> Event:
    data = member_data(room, user_id, status, metadata, connections)
    return Event(new_id(), kind, user_key(user_id), now, data)


def room_event(kind: str, room: str, now: float) -> Event:
    return Event(new_id(), kind, room_key(room), now, room_data(room))


# -- the request ------------------------------------------------------------------------


def body(event: Event) -> bytes:
    """The JSON body, compact, encoded once: {"type", "timestamp" (as the wire's), "data"}."""
    return wire.encode(
        {"type": event.type, "timestamp": wire.iso(event.timestamp), "data": event.data}
    )


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: "v1," + base64(HMAC-SHA256(secret, id.timestamp.body))."""
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode("ascii")


def headers(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[bytes, bytes]:
    """Every header of one attempt (webhook-timestamp: the attempt's Unix seconds)."""
    return {
        b"Content-Type": b"application/json",
        b"webhook-id": msg_id.encode(),
        b"webhook-timestamp": str(timestamp).encode(),
        b"webhook-signature": sign(secret, msg_id, timestamp, body).encode(),
    }


def parse_secret(raw: bytes) -> bytes:
    """The secret file's content: at least 32 bytes used as they are, or "whsec_" and
    base64 (the Standard Webhooks form) decoded. Surrounding whitespace is ignored."""
    text = raw.strip()
    if text.startswith(SECRET_PREFIX):
        encoded = text[len(SECRET_PREFIX) :]
        try:
            secret = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the whsec_ secret is not valid base64") from None
        if len(secret) < MIN_DECODED_SECRET_BYTES:
            raise ValueError(
                f"the whsec_ secret must decode to at least {MIN_DECODED_SECRET_BYTES} bytes"
            )
        return secret
    if len(text) < MIN_RAW_SECRET_BYTES:
        raise ValueError(
            f"the secret must hold at least {MIN_RAW_SECRET_BYTES} bytes, or be whsec_ + base64"
        )
    return text


def backoff(attempt: int, rand: float) -> float:
    """Seconds before retry number ``attempt`` (0 for the first): full jitter over an
    exponential ceiling from 1 s, doubling, capped at 5 minutes. ``rand`` is in [0, 1)."""
    ceiling = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(max(attempt, 0), 16))
    return ceiling * min(max(rand, 0.0), 1.0)
