"""--log-format json on a real `twistd presence`: every line it writes (stdout and stderr,
from start-up to shutdown) is one JSON object with time, level and text; no token leaks."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets

from tests.support.daemon import Daemon

pytestmark = pytest.mark.e2e

API_TOKEN = "an-api-token-that-must-never-be-logged"


def test_json_log_lines_from_start_to_stop(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(API_TOKEN + "\n")
    daemon = start_daemon("--log-format", "json", "--api-token-file", str(token_file))

    async def session() -> None:
        async with websockets.connect(daemon.ws_url + "?userId=alice") as ws:
            assert json.loads(await ws.recv())["type"] == "CONNECT"
            await ws.send("not json")  # an ERROR for the client, maybe a log line
            assert json.loads(await ws.recv())["type"] == "ERROR"

    asyncio.run(session())
    assert daemon.get("/presence/alice", {"Authorization": "Bearer wrong-token-xyz"})[0] == 401
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == -signal.SIGTERM
    lines = daemon.log().splitlines()
    assert len(lines) >= 5, lines
    records = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "text"} <= set(record), line
        assert record["time"].endswith("Z") and record["level"] in {
            "debug",
            "info",
            "warn",
            "error",
            "critical",
        }
        records.append(record)
    texts = [r["text"] for r in records]
    assert any(t.startswith("presence serving on tcp:") for t in texts), texts
    assert any("starting up" in t for t in texts) and texts[-1] == "Server Shut Down."
    log = daemon.log()
    assert API_TOKEN not in log and "wrong-token-xyz" not in log


def test_text_is_the_default(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    daemon.stop()
    first = daemon.log().splitlines()[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    assert "presence" in first or "twistd" in first
