"""presence-watch without a server: its lines, its JSON, its argument errors."""

from __future__ import annotations

import json

import pytest
from presence_client.state import (
    ConnectionChange,
    ErrorChange,
    Member,
    Room,
    RoomChange,
    User,
    UserChange,
)
from presence_client.watch import as_json, describe, escape, parse


def test_lines() -> None:
    busy = UserChange("alice", User("busy", {"doc": 1}, None, 2), None)
    assert describe(busy) == 'user alice: busy (2 connections) {"doc":1}'
    gone = UserChange("bob", User("offline", {}, "2026-01-01T00:00:00.000Z", 0), None)
    assert describe(gone) == "user bob: offline (last seen 2026-01-01T00:00:00.000Z)"
    room = Room("doc:42", {}, 1)
    diff = RoomChange(
        "doc:42", {"alice": Member("online", {"c": 3}, 1)}, {"bob": None}, {}, 1, False, room
    )
    assert (
        describe(diff)
        == 'room doc:42 diff: alice joined (online, {"c":3}); bob left; 1 in the room'
    )
    closed = ConnectionChange("CLOSED", 1001, "server shutting down", retry_in=0.42)
    assert describe(closed) == "connection CLOSED 1001 server shutting down; retrying in 0.4s"
    final = ConnectionChange("CLOSED", 1002, "missing userId", final=True)
    assert describe(final) == "connection CLOSED 1002 missing userId; stopped"
    assert describe(ErrorChange("FORBIDDEN", "not granted")) == "error FORBIDDEN: not granted"


def test_user_text_cannot_forge_lines() -> None:
    sneaky = UserChange("alice", User("online", {"n": "x\nuser bob: busy\u202e"}, None, 1), None)
    line = describe(sneaky)
    assert "\n" not in line and "\u202e" not in line and "\\u202e" in line
    assert escape("tab\there\x1b[31m") == "tab\\there\\x1b[31m"
    assert escape("été") == "été"


def test_json_objects() -> None:
    change = UserChange("alice", User("busy", {}, None, 1), User("online", {}, None, 1))
    assert json.loads(json.dumps(as_json(change))) == {
        "type": "user",
        "userId": "alice",
        "user": {"status": "busy", "metadata": {}, "lastSeen": None, "connections": 1},
        "previous": {"status": "online", "metadata": {}, "lastSeen": None, "connections": 1},
    }
    assert as_json(ConnectionChange("OPEN"))["state"] == "OPEN"


def test_arguments() -> None:
    args = parse(["--url", "ws://h:3000", "--user-id", "ops", "alice", "--room", "doc:42"])
    assert (args.users, args.room, args.json) == (["alice"], ["doc:42"], False)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--url", "http://h:3000", "--user-id", "ops", "a"], "--url must be"),
        (["--url", "ws://h:3000", "--user-id", "o ps", "a"], "invalid --user-id"),
        (["--url", "ws://h:3000", "--user-id", "ops", "a\tb"], "invalid userId"),
        (["--url", "ws://h:3000", "--user-id", "ops", "--room", ""], "invalid --room"),
        (["--url", "ws://h:3000", "--user-id", "ops"], "nothing to watch"),
        (["--user-id", "ops", "a"], "required: --url"),
        (
            ["--url", "ws://h", "--user-id", "o", "--token", "t", "--token-file", "f", "a"],
            "not allowed",
        ),
        (
            ["--url", "ws://h", "--user-id", "o", "--token-file", "/nonexistent", "a"],
            "--token-file",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        parse(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("presence-watch: error: ") and says in err
