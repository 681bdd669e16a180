"""The wire format: parse client frames into small typed values, encode server messages.

Pure: no Twisted, no Autobahn. Everything the server sends is encoded here, once, as bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

STATUSES: Final = frozenset(("online", "away", "busy"))
MAX_USER_ID_LENGTH: Final = 128
MAX_METADATA_BYTES: Final = 4096
MAX_DEPTH: Final = 16

# Close codes: the API document's, the RFC's, and ours in the private range.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013
CLOSE_HEARTBEAT_TIMEOUT: Final = 4408


class WireError(Exception):
    """A client message we refuse; answered with an ERROR message, the connection stays."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    status: str
    metadata: dict[str, Any] | None  # None: leave the connection's metadata as it is


@dataclass(frozen=True, slots=True)
class Subscribe:
    user_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    user_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token: str


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    metadata: dict[str, Any] | None  # None: keep what this connection set before


@dataclass(frozen=True, slots=True)
class RoomUpdate:
    room: str
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Leave:
    room: str


Message = (
    Heartbeat
    | Disconnect
    | PresenceUpdate
    | Subscribe
    | Unsubscribe
    | RefreshToken
    | Join
    | RoomUpdate
    | Leave
)

HEARTBEAT: Final = Heartbeat()
DISCONNECT: Final = Disconnect()


def valid_user_id(user_id: str) -> bool:
    """1 to 128 characters, none of them whitespace or control characters."""
    if not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        return False
    return user_id.isprintable() and not any(c.isspace() for c in user_id)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _payload(obj: dict[str, Any]) -> dict[str, Any]:
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise WireError("INVALID_PAYLOAD", "payload must be an object")
    return payload


def _user_ids(obj: dict[str, Any]) -> tuple[str, ...]:
    ids = _payload(obj).get("userIds")
    if not isinstance(ids, list) or not ids:
        raise WireError("INVALID_PAYLOAD", "payload.userIds must be a non-empty array")
    for user_id in ids:
        if not isinstance(user_id, str) or not valid_user_id(user_id):
            raise WireError("INVALID_USER_ID", "payload.userIds holds an invalid userId")
    return tuple(dict.fromkeys(ids))  # de-duplicated, request order kept


def _metadata(payload: dict[str, Any]) -> dict[str, Any] | None:
    metadata = payload.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise WireError("INVALID_PAYLOAD", "payload.metadata must be an object")
    if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise WireError("METADATA_TOO_LARGE", "payload.metadata is over 4096 bytes as JSON")
    return metadata


def _presence_update(obj: dict[str, Any]) -> PresenceUpdate:
    payload = _payload(obj)
    status = payload.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        raise WireError("INVALID_STATUS", "payload.status must be one of online, away, busy")
    return PresenceUpdate(status, _metadata(payload))


valid_room = valid_user_id  # the same rule: 1 to 128 characters, no whitespace or controls


def _room(payload: dict[str, Any]) -> str:
    room = payload.get("room")
    if not isinstance(room, str) or not valid_room(room):
        raise WireError("INVALID_ROOM", "payload.room must be 1 to 128 characters, no spaces")
    return room


def _join(obj: dict[str, Any]) -> Join:
    payload = _payload(obj)
    return Join(_room(payload), _metadata(payload))


def _room_update(obj: dict[str, Any]) -> RoomUpdate:
    payload = _payload(obj)
    room = _room(payload)
    metadata = _metadata(payload)
    if metadata is None:
        raise WireError("INVALID_PAYLOAD", "payload.metadata must be an object")
    return RoomUpdate(room, metadata)


def _refresh_token(obj: dict[str, Any]) -> RefreshToken:
    token = _payload(obj).get("token")
    if not isinstance(token, str) or not token:
        raise WireError("INVALID_PAYLOAD", "payload.token must be a non-empty string")
    return RefreshToken(token)


def parse(data: bytes) -> Message:
    """Parse one text frame; raise WireError for anything we do not accept."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise WireError("INVALID_JSON", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise WireError("INVALID_JSON", "message must be a JSON object")
    # Counting brackets is cheap; only a frame that could be deep gets walked.
    if data.count(b"{") + data.count(b"[") > MAX_DEPTH and _depth_exceeds(obj, MAX_DEPTH):
        raise WireError("TOO_DEEP", f"message is nested deeper than {MAX_DEPTH} levels")
    kind = obj.get("type")
    if kind == "HEARTBEAT":
        return HEARTBEAT
    if kind == "PRESENCE_UPDATE":
        return _presence_update(obj)
    if kind == "DISCONNECT":
        return DISCONNECT
    if kind == "SUBSCRIBE":
        return Subscribe(_user_ids(obj))
    if kind == "UNSUBSCRIBE":
        return Unsubscribe(_user_ids(obj))
    if kind == "REFRESH_TOKEN":
        return _refresh_token(obj)
    if kind == "JOIN":
        return _join(obj)
    if kind == "ROOM_UPDATE":
        return _room_update(obj)
    if kind == "LEAVE":
        return Leave(_room(_payload(obj)))
    if not isinstance(kind, str):
        raise WireError("INVALID_MESSAGE", "message must have a string type")
    raise WireError("UNKNOWN_TYPE", "unknown message type")


_second_cache: list[Any] = [-1, ""]


def iso(now: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z; the seconds part is formatted once a second."""
    second = int(now)
    if second != _second_cache[0]:
        _second_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_cache[1]}.{int((now - second) * 1000):03d}Z"


class Shared:
    """One encoded message for many receivers; the transport may cache its framed form."""

    __slots__ = ("payload", "prepared")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.prepared: object = None


def encode(message: Mapping[str, Any]) -> bytes:
    return orjson.dumps(message)


def fragment(value: Any) -> Any:
    """``value`` encoded now, to be placed as it is inside a later ``encode``."""
    return orjson.Fragment(orjson.dumps(value))


def connect_message(
    user_id: str, connection_id: str, interval: float, timeout: float, stamp: str
) -> bytes:
    return encode(
        {
            "type": "CONNECT",
            "userId": user_id,
            "connectionId": connection_id,
            "heartbeatInterval": interval,
            "heartbeatTimeout": timeout,
            "timestamp": stamp,
        }
    )


def heartbeat_ack(stamp: str) -> bytes:
    return b'{"type":"HEARTBEAT_ACK","timestamp":"' + stamp.encode() + b'"}'


def error_message(code: str, message: str, stamp: str) -> bytes:
    return encode({"type": "ERROR", "code": code, "message": message, "timestamp": stamp})


def user_object(
    status: str, metadata: Mapping[str, Any], last_seen: float | None, connections: int
) -> dict[str, Any]:
    return {
        "status": status,
        "metadata": metadata,
        "lastSeen": None if last_seen is None else iso(last_seen),
        "connections": connections,
    }


def member_object(status: str, metadata: Mapping[str, Any], connections: int) -> dict[str, Any]:
    return {"status": status, "metadata": metadata, "connections": connections}
