"""Decisions about connections that are policy, not plumbing: when a closed connection ends
its user's presence at once, and who may open one more connection. Pure."""

from __future__ import annotations

from . import wire


class OverCapacity(Exception):
    """One connection more than a cap allows."""


def ends_at_once(said_goodbye: bool, closed_by_server: bool, remote_code: int | None) -> bool:
    """Offline at once only when the client said goodbye (DISCONNECT, or a close 1000 of its
    own); any other end (a dropped connection, a timeout, a server close) gets the grace."""
    return said_goodbye or (not closed_by_server and remote_code == wire.CLOSE_NORMAL)


def at_capacity(open_connections: int, cap: int) -> bool:
    """--max-connections: this process already holds as many WebSockets as it may (0: no cap)."""
    return cap > 0 and open_connections >= cap


def over_user_cap(connections_with_this_one: int, cap: int) -> bool:
    """--max-connections-per-user: this connection ranks over the cap (0: no cap). The rank
    is the user's connection count right after it registered, so among connections racing
    for the last places exactly those ranked past the cap are refused."""
    return cap > 0 and connections_with_this_one > cap
