"""WebSocket framing on our hot path (RFC 6455 section 5), and how much a transport
still has to send. Pure functions: no Autobahn, no reactor."""

from __future__ import annotations

from typing import Any

ZERO_MASK = b"\x00\x00\x00\x00"


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server text frame (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    if mask == ZERO_MASK:  # what many load generators and some clients send
        return payload
    length = len(payload)
    key = (mask * ((length >> 2) + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little"
    )


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a transport but not yet handed to the kernel.

    TCP and UNIX transports (``abstract.FileDescriptor``) keep ``dataBuffer`` (from
    ``offset``) plus ``_tempDataBuffer`` (``_tempDataLen`` bytes); TLS wraps one of those
    and holds application data of its own until its handshake is done.
    """
    total = 0
    for _ in range(3):
        pending = getattr(transport, "_tempDataLen", None)
        if pending is not None:
            buffered: int = pending + len(transport.dataBuffer) - transport.offset
            return total + buffered
        early = getattr(transport, "_appSendBuffer", None)
        if early:
            total += sum(map(len, early))
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return total
