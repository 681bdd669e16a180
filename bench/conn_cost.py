#!/usr/bin/env python3
"""What one idle connection costs, part by part (`make bench-memory`).

The daemon runs in this process (``build()`` on the real reactor, one loopback port) with
``tracemalloc`` on; a child process opens N raw WebSocket connections (``bench/rawws.py``),
waits for every ``CONNECT`` and holds them. Before and after, with the garbage collected:
the Python memory still allocated, grouped by the package whose code allocated it
(Twisted's transport, Autobahn's protocol, our protocol and model, the rest), and the
kernel's own memory for the sockets (``/proc/slabinfo``, both ends of each loopback
connection, so halved; it is not in the RSS). Figures per connection. The RSS per
connection, without tracemalloc's own bookkeeping, is the hold figure of `make bench`.

    .venv/bin/python bench/conn_cost.py [--connections 2000]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rawws import free_port

CHILD = """
import asyncio, sys
sys.path.insert(0, {bench!r})
from rawws import upgrade, read_frame

async def main():
    conns = []
    for i in range({n}):
        reader, writer = await upgrade({port}, f"mem-{{i}}")
        await read_frame(reader)  # CONNECT
        conns.append((reader, writer))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""

# Where an allocation's code lives -> the part of a connection it is.
PARTS = [
    ("twisted/internet", "Twisted transport (tcp.Server, its socket object)"),
    ("twisted/internet/protocol.py", "the protocol object itself (its attributes' dict)"),
    ("twisted/web", "twisted.web (the HTTP channel, gone after the upgrade)"),
    ("autobahn", "Autobahn protocol (WebSocketServerProtocol state)"),
    ("txaio", "Autobahn protocol (its is_open/is_closed Deferreds)"),
    ("twisted/internet/defer", "Autobahn protocol (its is_open/is_closed Deferreds)"),
    ("presence/core", "our model (Connection, the user's entry, the rate bucket)"),
    ("presence/server", "our protocol (its state)"),
    ("presence/hub", "our hub"),
]
SLABS = ("TCP", "TCPv6", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq")


def part_of(filename: str) -> str:
    found = "other (the interpreter, the standard library)"
    best = -1
    for marker, name in PARTS:
        at = filename.find(marker)
        if at >= 0 and len(marker) > best:
            found, best = name, len(marker)
    return found


def slab_bytes() -> int | None:
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
    except OSError:
        return None
    total = 0
    for line in lines:
        fields = line.split()
        if fields[0] in SLABS:
            total += int(fields[1]) * int(fields[3])  # active objects x object size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    n = args.connections

    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol

    from presence.app import build
    from presence.config import Config, Listen

    port = free_port()
    daemon = build(
        Config(ports=(Listen(f"tcp:{port}:interface=127.0.0.1"),), log_level="warn"), reactor
    )
    daemon.startService()
    figures: dict[str, Any] = {}

    class Child(ProcessProtocol):
        def outReceived(self, data: bytes) -> None:
            if b"ready" in data:
                reactor.callLater(0.5, measure_after, self)

        def processEnded(self, reason: Any) -> None:
            if reactor.running:
                reactor.stop()

    def measure_before() -> None:
        gc.collect()
        figures["before"] = tracemalloc.take_snapshot()
        figures["slab"] = slab_bytes()
        code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), n=n, port=port)
        reactor.spawnProcess(
            Child(), sys.executable, [sys.executable, "-c", code], env=dict(os.environ)
        )

    def measure_after(child: Any) -> None:
        gc.collect()
        after = tracemalloc.take_snapshot()
        slab = slab_bytes()
        held = daemon.hub.figures.connection_count
        by_part: dict[str, int] = {}
        for stat in after.compare_to(figures["before"], "lineno"):
            frame = stat.traceback[0]
            part = part_of(f"{frame.filename}:{frame.lineno}")
            by_part[part] = by_part.get(part, 0) + stat.size_diff
            if os.environ.get("CONN_COST_LINES") and abs(stat.size_diff) > 20 * held:
                print(f"  {frame.filename}:{frame.lineno} {stat.size_diff / held:,.0f}")
        print(f"connections held: {held} (of {n})")
        print("| part | bytes per connection |")
        print("| --- | --- |")
        python = 0
        for part, size in sorted(by_part.items(), key=lambda kv: -kv[1]):
            python += size
            print(f"| {part} | {size / held:,.0f} |")
        print(f"| all Python objects (tracemalloc) | {python / held:,.0f} |")
        if slab is not None and figures["slab"] is not None:
            kernel = (slab - figures["slab"]) / 2 / held
            print(f"| kernel: socket, file, epoll entry (half of both ends) | {kernel:,.0f} |")
        child.transport.closeStdin()

    tracemalloc.start(1)
    reactor.callLater(1.0, measure_before)
    reactor.callLater(300, reactor.stop)  # bounded, whatever happens
    reactor.run()


if __name__ == "__main__":
    main()
