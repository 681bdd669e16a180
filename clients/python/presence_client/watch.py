"""presence-watch: follow users and rooms from a terminal, one line per change.

    presence-watch --url ws://host:3000 --user-id ops alice bob --room doc:42 [--json]

Runs until interrupted (Ctrl-C exits 0) or until the server closes for good (exit 1);
a bad argument exits 2 with a one-line error."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from .client import PresenceClient
from .reconnect import valid_name
from .state import Change, ConnectionChange, ErrorChange, Member, RoomChange, UserChange


def escape(text: str) -> str:
    """``text`` with every unprintable character (newlines, controls, bidi overrides)
    shown as an escape, so that what users send cannot forge or garble a line."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _metadata(metadata: Mapping[str, Any]) -> str:
    return escape(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")))


def _member(member: Member) -> str:
    text = member.status
    if member.connections != 1:
        text += f", {member.connections} connections"
    if member.metadata:
        text += f", {_metadata(member.metadata)}"
    return f"({text})"


def describe(change: Change) -> str:
    """One human-readable line (without the time)."""
    if isinstance(change, UserChange):
        user = change.user
        if user.status == "offline":
            seen = f" (last seen {escape(user.last_seen)})" if user.last_seen else ""
            return f"user {escape(change.user_id)}: offline{seen}"
        plural = "" if user.connections == 1 else "s"
        text = f"user {escape(change.user_id)}: {user.status}"
        text += f" ({user.connections} connection{plural})"
        return text + (f" {_metadata(user.metadata)}" if user.metadata else "")
    if isinstance(change, RoomChange):
        parts = [f"{escape(u)} joined {_member(m)}" for u, m in change.joins.items()]
        parts += [f"{escape(u)} updated {_member(m)}" for u, m in change.updates.items()]
        parts += [f"{escape(u)} left" for u in change.leaves]
        what = "state" if change.snapshot else "diff"
        body = "; ".join(parts) + "; " if parts else ""
        return f"room {escape(change.room)} {what}: {body}{change.count} in the room"
    if isinstance(change, ErrorChange):
        return f"error {escape(change.code)}: {escape(change.message)}"
    text = f"connection {change.state}"
    if change.code is not None:
        text += f" {change.code}"
    if change.reason:
        text += f" {escape(change.reason)}"
    if change.retry_in is not None:
        text += f"; retrying in {change.retry_in:.1f}s"
    elif change.final:
        text += "; stopped"
    return text


def as_json(change: Change) -> dict[str, Any]:
    """One JSON object per change, with a ``type`` of user, room, connection or error."""
    if isinstance(change, UserChange):
        previous = change.previous.to_json() if change.previous else None
        return {"type": "user", "userId": change.user_id, "user": change.user.to_json(),
                "previous": previous}  # fmt: skip
    if isinstance(change, RoomChange):
        return {
            "type": "room",
            "room": change.room,
            "snapshot": change.snapshot,
            "joins": {u: m.to_json() for u, m in change.joins.items()},
            "leaves": {u: {"lastSeen": seen} for u, seen in change.leaves.items()},
            "updates": {u: m.to_json() for u, m in change.updates.items()},
            "count": change.count,
        }
    if isinstance(change, ErrorChange):
        return {"type": "error", "code": change.code, "message": change.message}
    assert isinstance(change, ConnectionChange)
    return {"type": "connection", "state": change.state, "code": change.code,
            "reason": change.reason, "retryIn": change.retry_in, "final": change.final}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="presence-watch", description="Follow presence: one line per change.")
    parser.add_argument("users", nargs="*", metavar="USERID", help="users to watch")
    parser.add_argument("--url", required=True, help="the daemon, ws://host:3000 or wss://...")
    parser.add_argument("--user-id", required=True, help="the userId to connect as")
    parser.add_argument("--room", action="append", default=[], help="a room to join (repeatable)")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token", help="a JWT (with --auth jwt)")
    tokens.add_argument("--token-file", type=Path, help="a file holding the JWT (re-read)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        parser.error(f"--url must be ws://host:port or wss://host:port, not {args.url!r}")
    for name, what in [(args.user_id, "--user-id")] + [(u, "userId") for u in args.users]:
        if not valid_name(name):
            parser.error(f"invalid {what} {escape(repr(name))}: 1-128 characters, no whitespace")
    for room in args.room:
        if not valid_name(room):
            parser.error(f"invalid --room {escape(repr(room))}: 1-128 characters, no whitespace")
    if not args.users and not args.room:
        parser.error("nothing to watch: give userIds and/or --room")
    if args.token_file is not None:
        try:
            args.token = _read_token(args.token_file)
        except (OSError, ValueError) as e:
            parser.error(f"--token-file: {e}")
    return args


def _read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


async def watch(args: argparse.Namespace, out: TextIO) -> int:
    get_token: Callable[[], str] | None = None
    if args.token_file is not None:
        path: Path = args.token_file
        get_token = lambda: _read_token(path)  # noqa: E731 - a rotated file is picked up
    async with PresenceClient(
        args.url, user_id=args.user_id, token=args.token, get_token=get_token
    ) as client:
        if args.users:
            await client.watch(args.users)
        for room in args.room:
            await client.join(room)
        async for change in client.changes():
            if args.json:
                line = json.dumps({"time": _now(), **as_json(change)}, ensure_ascii=True)
            else:
                line = f"{datetime.now().strftime('%H:%M:%S')} {describe(change)}"
            print(line, file=out, flush=True)
    print(f"presence-watch: stopped: {escape(client.stopped_reason or '')}", file=sys.stderr)
    return 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return asyncio.run(watch(args, sys.stdout))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
