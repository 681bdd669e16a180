"""One VM, all its cores: several daemons accept on one listening socket, handed to each
the way systemd's presence.socket does (LISTEN_FDS, --port systemd:domain=INET:index=0),
over one Redis."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_client import Client, presence, wait_health, wait_until
from tests.support.daemon import TWISTD, Daemon
from tests.support.redis_fixture import RedisServer, needs_redis

pytestmark = [pytest.mark.e2e, needs_redis]

# What systemd does for each presence@N.service: the socket as fd 3, LISTEN_PID, LISTEN_FDS.
SYSTEMD_EXEC = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='presence'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class SocketDaemon(Daemon):
    def __init__(self, log_dir: Path, listener: socket.socket, *args: str) -> None:
        super().__init__(log_dir, *args, port=listener.getsockname()[1])
        self.log_path = log_dir / f"presence-{self.port}-{args[-1]}.log"
        self.listener = listener

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            SYSTEMD_EXEC,
            str(self.listener.fileno()),
            str(TWISTD),
            "-n",
            "--pidfile=",
            "presence",
            "--port",
            "systemd:domain=INET:index=0",
            *self.args,
        ]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    yield sock
    sock.close()


def test_daemons_share_one_port_and_one_presence(
    tmp_path: Path,
    listener: socket.socket,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        return original(*args, pass_fds=(listener.fileno(),), **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    daemons: list[Daemon] = []
    try:
        for core in ("0", "1"):
            daemon = SocketDaemon(
                tmp_path, listener, "--redis", redis_server.url, "--node-timeout", "2",
                "--node-name", f"vm-{core}",
            )  # fmt: skip
            daemons.append(daemon.start())
        front = daemons[0]  # any of them: they answer on the same port

        def registered() -> list[str] | None:
            found = redis_server.cli("HKEYS", "presence:nodes").split()
            return found if len(found) == 2 else None

        nodes = wait_until(registered, "both processes registered")
        assert sorted(n.split("#")[0] for n in nodes) == ["vm-0", "vm-1"]
        wait_health(front, 200)

        async def flow() -> None:
            clients = [await Client.connect(front, f"user{i}") for i in range(16)]
            watcher = await Client.connect(front, "watcher")
            state = await watcher.subscribe(*(c.user_id for c in clients))
            assert {v["status"] for v in state.values()} == {"online"}
            per_node = [
                int(redis_server.cli("HLEN", f"presence:nc:{n}")) for n in nodes
            ]  # fmt: skip
            print("connections per process:", per_node)
            assert sum(per_node) == 17
            users = presence(front, *(c.user_id for c in clients))
            assert all(u["connections"] == 1 for u in users.values())
            await clients[0].update("busy")
            assert (await watcher.diff())["status"] == "busy"
            await Client.close_all()

        asyncio.run(flow())
    finally:
        for daemon in daemons:
            daemon.stop()
