"""An asyncio client for the presence daemon: ``PresenceClient`` and ``presence-watch``."""

from .client import PresenceClient, PresenceClosed
from .reconnect import Backoff
from .state import (
    CLOSED,
    CLOSING,
    CONNECTING,
    OPEN,
    Change,
    ConnectionChange,
    ErrorChange,
    Member,
    Room,
    RoomChange,
    User,
    UserChange,
)

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "Backoff",
    "Change",
    "ConnectionChange",
    "ErrorChange",
    "Member",
    "PresenceClient",
    "PresenceClosed",
    "Room",
    "RoomChange",
    "User",
    "UserChange",
]
