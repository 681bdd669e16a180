"""The direct write: a send() at once when nothing is queued for the socket, and Twisted's
buffered write for whatever the kernel does not take, in order."""

from __future__ import annotations

from typing import Any

import pytest

from presence.server import fastpath


class Socket:
    def __init__(self, takes: int | None = None, error: OSError | None = None) -> None:
        self.takes, self.error = takes, error
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        n = len(data) if self.takes is None else min(self.takes, len(data))
        self.sent.append(bytes(data[:n]))
        return n


class Transport:
    """The attributes of a connected tcp.Server that the direct write reads."""

    def __init__(self, socket: Socket) -> None:
        self.socket = socket
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        self._tempDataLen += len(data)


@pytest.fixture(autouse=True)
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "DIRECT", frozenset((Transport,)))


def test_nothing_queued_goes_to_the_socket_at_once() -> None:
    t = Transport(Socket())
    fastpath.write(t, b"frame")
    assert t.socket.sent == [b"frame"] and t.written == []


def test_what_the_kernel_does_not_take_is_queued_and_later_writes_follow_it() -> None:
    t = Transport(Socket(takes=2))
    fastpath.write(t, b"abcdef")
    fastpath.write(t, b"gh")  # something is queued now: no send, behind the rest
    assert t.socket.sent == [b"ab"]
    assert t.written == [b"cdef", b"gh"]


@pytest.mark.parametrize("error", [BlockingIOError(), BrokenPipeError(), ConnectionResetError()])
def test_a_send_error_leaves_everything_to_twisted(error: OSError) -> None:
    t = Transport(Socket(error=error))
    fastpath.write(t, b"frame")
    assert t.written == [b"frame"]


@pytest.mark.parametrize(
    "state",
    [
        {"dataBuffer": b"x"},
        {"_tempDataLen": 1},
        {"connected": False},
        {"disconnecting": True},
        {"_writeDisconnected": True},
    ],
)
def test_queued_or_closing_transports_are_never_written_past(state: dict[str, Any]) -> None:
    t = Transport(Socket())
    for name, value in state.items():
        setattr(t, name, value)
    fastpath.write(t, b"frame")
    assert t.socket.sent == [] and t.written == [b"frame"]


def test_other_transports_use_their_own_write() -> None:
    class TLS(Transport):
        pass

    t = TLS(Socket())
    fastpath.write(t, b"frame")
    assert t.socket.sent == [] and t.written == [b"frame"]
