#!/usr/bin/env python3
"""What one change costs in a large room: a fresh daemon, MEMBERS connections joined to
one room, then a join storm of STORM more users over SECONDS. Prints, in one run:

- ROOM_DIFF messages each member received per second during the storm (batched rooms get
  at most one per --room-batch-interval), and
- server CPU (user + system, from /proc) per delivered ROOM_DIFF during the storm: all of
  it (handshakes, each joiner's ROOM_STATE and the diffs), and the marginal part: the same
  storm shape run first into rooms of one member each (a baseline: handshakes, CONNECT,
  JOIN and a small ROOM_STATE) is subtracted, which leaves what the large room costs.

The daemon runs with its defaults for rooms: past --room-list-limit (1000) the room's
diffs carry only the count, past --room-batch-threshold (100) each member gets at most one
per --room-batch-interval (1 s). ``--list-limit N`` raises the limit for a run with full
diffs (each joiner's ROOM_STATE then lists up to N members).

A minimal asyncio WebSocket client (raw frames, no library) keeps the load generator
light. Loopback only; every loop is bounded in count and time. Run from the project root
after `make test`:

    python3 bench/rooms.py [--members 10000] [--storm 5000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawws import cpu_seconds, free_port, message, read_frame, stop, upgrade

ROOM = "bench:hall"


class Member:
    """One connection: handshake, CONNECT, JOIN; then counts the ROOM_DIFFs it reads."""

    def __init__(self) -> None:
        self.diffs = 0
        self.counting = False
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, user_id: str, room: str, joined: asyncio.Event) -> None:
        try:
            await self._run(port, user_id, room, joined)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not joined.is_set():
                raise
            # closed by the bench once it has its figures

    async def _run(self, port: int, user_id: str, room: str, joined: asyncio.Event) -> None:
        reader, writer = await upgrade(port, user_id)
        self.writer = writer
        writer.write(message("JOIN", room=room))
        while True:
            opcode, payload = await read_frame(reader)
            if opcode != 1:
                continue
            if payload.startswith(b'{"type":"ROOM_STATE"'):
                joined.set()
            elif payload.startswith(b'{"type":"ROOM_DIFF"') and self.counting:
                self.diffs += 1


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def diffs_sent(port: int) -> float:
    return metric(port, "presence_room_diffs_sent_total")


async def connect_all(
    port: int, names: list[str], rate: float, room: str | None = None
) -> list[Member]:
    members, tasks, events = [], [], []
    start = time.monotonic()
    for i, name in enumerate(names):
        member, joined = Member(), asyncio.Event()
        members.append(member)
        events.append(joined)
        tasks.append(asyncio.ensure_future(member.run(port, name, room or f"solo:{name}", joined)))
        if rate:
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load generator, not a test wait
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=300)
    return members


async def bench(args: argparse.Namespace) -> None:
    port = free_port()
    command = [
        os.path.join(".venv", "bin", "twistd"),
        "-n",
        "--pidfile=",
        "presence",
        "--port",
        f"tcp:{port}:backlog=4096:interface=127.0.0.1",
        "--heartbeat-timeout",
        "600",
        "--heartbeat-interval",
        "300",
        *(["--room-list-limit", str(args.list_limit)] if args.list_limit else []),
        "--max-connections",
        "0",
        "--handshake-timeout",
        "60",
    ]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    log = open(args.log, "wb")  # noqa: SIM115 - the daemon's, closed below
    daemon = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                await asyncio.sleep(0.1)
        rate = args.storm / args.seconds
        # The baseline: the same storm, each user alone in a room of their own.
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        solo = await connect_all(port, [f"b{i}" for i in range(args.storm)], rate)
        baseline, baseline_elapsed = cpu_seconds(daemon.pid) - cpu0, time.monotonic() - t0
        for member in solo:
            if member.writer is not None:
                member.writer.close()
        for _ in range(600):  # until the daemon has let them go (bounded)
            if metric(port, "ws_connections_current") == 0:
                break
            await asyncio.sleep(0.1)
        members = await connect_all(port, [f"m{i}" for i in range(args.members)], 1000, ROOM)
        for member in members:
            member.counting = True
        cpu0, sent0, t0 = cpu_seconds(daemon.pid), diffs_sent(port), time.monotonic()
        own0 = time.process_time()
        await connect_all(port, [f"s{i}" for i in range(args.storm)], rate, ROOM)
        elapsed = time.monotonic() - t0
        own = time.process_time() - own0
        cpu1, sent1 = cpu_seconds(daemon.pid), diffs_sent(port)
        received = sum(m.diffs for m in members)
        delivered = sent1 - sent0
        storm = cpu1 - cpu0
        limit = args.list_limit or "1000 (default)"
        print(
            f"room of {args.members} members (--room-list-limit {limit}), join storm of "
            f"{args.storm} in {elapsed:.1f} s"
        )
        print(f"  ROOM_DIFF per member per second          {received / args.members / elapsed:.2f}")
        print(f"  ROOM_DIFF delivered (server count)       {delivered:.0f}")
        print(f"  server CPU during the storm              {storm:.2f} s")
        print(f"  load generator CPU during the storm      {own:.2f} s")
        print(
            f"  baseline: the storm into rooms of one    {baseline:.2f} s "
            f"(in {baseline_elapsed:.1f} s)"
        )
        print(f"  server CPU per delivered ROOM_DIFF, all  {storm / delivered * 1e6:.1f} us")
        print(
            "  server CPU per delivered ROOM_DIFF, over the baseline  "
            f"{(storm - baseline) / delivered * 1e6:.1f} us"
        )
        for member in members:
            if member.writer is not None:
                member.writer.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()  # the members' readers
    finally:
        stop(daemon)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--storm", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--list-limit", type=int, default=0, help="--room-list-limit (0: default)")
    parser.add_argument("--log", default="/tmp/presence-bench-rooms.log")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.members + args.storm + 100
    if need > hard:
        sys.exit(f"rooms bench: needs {need} open files, the limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
