#!/usr/bin/env python3
"""What presence costs Redis: a fresh redis-server, three daemons on it (--redis), USERS
clients spread over them; then every client opens, updates its status UPDATES times, and
disconnects. For each phase Redis's own figures are read before and after:

- ``INFO commandstats``: microseconds Redis spent executing commands (the Lua scripts,
  PUBLISH, ...), per presence operation;
- ``INFO cpu``: the redis-server process's CPU (user + system, so network I/O and
  protocol parsing too), per presence operation;
- ``INFO memory``: used_memory per present user.

From those it prints a sizing table: how many users and updates per second one Redis
primary (one core, the way Redis runs commands) carries. A minimal raw-frame asyncio client
keeps the load generator light. Loopback only; every loop is bounded in count and time.
Run from the project root after `make test`:

    python3 bench/redis_cost.py [--users 3000] [--updates 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawws import free_port, message, read_frame, stop, upgrade

from tests.support.redis_fixture import RedisServer

NODES = 3


class Client:
    def __init__(self, port: int, user_id: str) -> None:
        self.port, self.user_id = port, user_id
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        reader, writer = await upgrade(self.port, self.user_id)
        self.writer = writer
        await read_frame(reader)
        self.reader = reader  # CONNECT has arrived: the daemon counts the connection
        self.draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while await self.reader.read(65536):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)


class Redis:
    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def info(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for section in ("commandstats", "cpu", "memory"):
            for line in self.server.cli("INFO", section).splitlines():
                name, _, value = line.partition(":")
                if name.startswith("cmdstat_"):
                    fields = dict(f.split("=") for f in value.split(","))
                    out["usec"] = out.get("usec", 0.0) + float(fields["usec"])
                    out["calls"] = out.get("calls", 0.0) + float(fields["calls"])
                    if name in ("cmdstat_eval", "cmdstat_evalsha"):
                        out["scripts"] = out.get("scripts", 0.0) + float(fields["calls"])
                elif name in ("used_cpu_sys", "used_cpu_user", "used_memory"):
                    out[name] = float(value)
        out["cpu"] = out.get("used_cpu_sys", 0.0) + out.get("used_cpu_user", 0.0)
        return out


def start_daemon(port: int, url: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        os.path.join(".venv", "bin", "twistd"),
        "-n",
        "--pidfile=",
        "presence",
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--redis",
        url,
        "--heartbeat-timeout",
        "600",
        "--heartbeat-interval",
        "300",
        "--rate-limit",
        "1000000/1",
        "--handshake-timeout",
        "60",
    ]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


async def until(predicate: object, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"redis cost bench: {what} did not happen within {seconds:.0f} s")
        await asyncio.sleep(0.05)


async def bench(args: argparse.Namespace, workdir: Path) -> None:
    server = RedisServer(workdir).start()
    redis = Redis(server)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for i in range(NODES):
            port = free_port()
            ports.append(port)
            daemons.append(start_daemon(port, server.url, workdir / f"presence-{i}.log"))
        await until(lambda: all(healthy(p) for p in ports), "the daemons' start")
        await asyncio.sleep(1.0)  # registration and the first heartbeats settle
        clients = [Client(ports[i % NODES], f"user{i}") for i in range(args.users)]
        results: dict[str, tuple[dict[str, float], float, int]] = {}

        # What the daemons' own ticks (heartbeat, expiry, sweep) cost Redis while idle:
        # subtracted from every phase, so that what is left is the clients' operations.
        before, t0 = redis.info(), time.monotonic()
        await asyncio.sleep(3.0)
        after, idle_seconds = redis.info(), time.monotonic() - t0
        idle = {k: (after[k] - before.get(k, 0.0)) / idle_seconds for k in after}

        async def phase(name: str, count: int, scripts: int, action: object) -> None:
            before, t0 = redis.info(), time.monotonic()
            await action()  # type: ignore[operator]
            deadline = t0 + 120  # bounded: a phase that does not finish is reported short
            while time.monotonic() < deadline:
                ran = redis.info()["scripts"] - before["scripts"]
                if ran - idle["scripts"] * (time.monotonic() - t0) >= scripts:
                    break
                await asyncio.sleep(0.05)
            after, elapsed = redis.info(), time.monotonic() - t0
            delta = {k: after[k] - before.get(k, 0.0) - idle.get(k, 0.0) * elapsed for k in after}
            delta["elapsed"] = elapsed
            results[name] = (delta, t0, count)
            print(f"  ({name}: {delta['scripts']:.0f} scripts in {elapsed:.1f} s)", flush=True)

        async def open_all() -> None:
            for start in range(0, len(clients), 200):  # 200 at a time, bounded
                await asyncio.gather(*(c.open() for c in clients[start : start + 200]))

        async def update_all() -> None:
            for k in range(args.updates):
                status = "busy" if k % 2 == 0 else "online"
                for c in clients:
                    c.send(message("PRESENCE_UPDATE", status=status))
                await asyncio.sleep(0)

        async def close_all() -> None:
            for c in clients:
                c.send(message("DISCONNECT"))

        await phase("open", args.users, args.users, open_all)
        memory = results["open"][0]["used_memory"]
        updates = args.users * args.updates
        await phase("update", updates, updates, update_all)
        await phase("close", args.users, args.users, close_all)

        version = server.cli("INFO", "server").split("redis_version:")[1].split()[0]
        print(f"{args.users} users on {NODES} daemons, one Redis {version}")
        print(f"  {'operation':<10} {'Redis command us/op':>20} {'Redis CPU us/op':>16}", end="")
        print(f" {'scripts/op':>11}")
        per_op = {}
        for name, (delta, _, count) in results.items():
            command_us = delta["usec"] / count
            cpu_us = delta["cpu"] / count * 1e6
            per_op[name] = cpu_us
            print(
                f"  {name:<10} {command_us:>20.1f} {cpu_us:>16.1f} "
                f"{delta.get('scripts', 0) / count:>11.2f}"
            )
        print(f"  Redis memory per present user: {memory / args.users:.0f} bytes")
        rate = updates / results["update"][0]["elapsed"]
        print(f"  updates pushed by the 3 daemons: {rate:,.0f}/s (this machine: 2 cores shared)")
        print("sizing, one Redis primary (one core for commands; keep it under 50% busy):")
        for users in (10_000, 100_000, 1_000_000):
            mem = memory / args.users * users / 2**20
            print(f"  {users:>9,} users present: {mem:>8,.0f} MiB of Redis memory")
        for share in (0.5,):
            print(
                f"  updates/s at {share:.0%} of a core: {share * 1e6 / per_op['update']:,.0f}; "
                f"opens or closes/s: {share * 1e6 / per_op['open']:,.0f} / "
                f"{share * 1e6 / per_op['close']:,.0f}"
            )
        for c in clients:
            if c.writer is not None:
                c.writer.close()
    finally:
        for d in daemons:
            stop(d)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="presence-redis-cost-") as workdir:
        asyncio.run(bench(args, Path(workdir)))


if __name__ == "__main__":
    main()
