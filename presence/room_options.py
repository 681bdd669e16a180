"""The rooms' options for twistd (spliced into ``tap.PARAMETERS``): each coerced and
checked once, with the defaults of ``config.Config``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import DEFAULTS
from .options import number

# name, short, default, help, coerce
ROOM_OPTIONS: list[Sequence[Any]] = [
    [
        "max-rooms-per-connection",
        None,
        DEFAULTS.max_rooms_per_connection,
        "Rooms one connection may join; one more gets ERROR TOO_MANY_ROOMS.",
        number(int, 1, "--max-rooms-per-connection"),
    ],
    [
        "max-room-members",
        None,
        DEFAULTS.max_room_members,
        "Users one room may hold; a new one gets ERROR ROOM_FULL (0: no cap).",
        number(int, 0, "--max-room-members"),
    ],
    [
        "room-batch-threshold",
        None,
        DEFAULTS.room_batch_threshold,
        "Members past which a room's diffs are batched (one net ROOM_DIFF per interval).",
        number(int, 0, "--room-batch-threshold"),
    ],
    [
        "room-batch-interval",
        None,
        DEFAULTS.room_batch_interval,
        "Seconds between the ROOM_DIFFs of a batched room.",
        number(float, 0.05, "--room-batch-interval"),
    ],
    [
        "room-list-limit",
        None,
        DEFAULTS.room_list_limit,
        "Members past which ROOM_STATE lists only this many (complete: false) and diffs "
        "carry only the count; page the rest with GET /rooms/{room}.",
        number(int, 1, "--room-list-limit"),
    ],
]
