"""The benches' minimal WebSocket client (raw frames, no library, so the load generator
stays light) and their process helpers. Loopback only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + b"\x00\x00\x00\x00" + payload  # a zero mask: the RFC allows it


def message(kind: str, **payload: object) -> bytes:
    body = {"type": kind, **({"payload": payload} if payload else {})}
    return frame(json.dumps(body).encode())


async def upgrade(port: int, user_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ws://127.0.0.1:PORT/?userId=USER_ID past its opening handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /?userId={user_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the server (never masked): its opcode and payload."""
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return head[0] & 0x0F, await reader.readexactly(n)


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 20 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
