"""Autobahn's per-frame paths, trimmed for the frames a presence server sees, and the
``Peer`` side the model and hub send through.

Autobahn's own versions format debug-log arguments for every frame and fire a
Deferred-backed observer per message; these run once per frame. Whatever is not a small,
complete, masked text frame goes to Autobahn's own parser, which enforces RFC 6455.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp, unix

from ..core import wire
from .frames import text_frame, unmask, unsent_bytes

STATE_OPEN = WebSocketProtocol.STATE_OPEN
CORK_LIMIT = 4096  # bytes of answers to one read held back for one send(), at most
NO_QUEUE: Any = ()  # Autobahn's send queue, until a chopped or synchronous send needs one
# Transports whose socket we may write to directly (TLS has buffering of its own).
DIRECT: frozenset[Any] = frozenset((tcp.Server, unix.Server))


def write(transport: Any, data: bytes) -> None:
    """``transport.write``, but a send() at once when nothing is queued for that socket.

    Twisted's own write queues the bytes and registers the socket for writability; the
    send happens on the next reactor turn (two epoll_ctl calls and a callback per write).
    When nothing is queued, sending now is what the next turn would do, in the same order.
    Whatever the kernel does not take (or any error) goes to Twisted's buffered write, so
    buffering, producer pausing and error handling stay exactly as they are."""
    if (
        transport.__class__ in DIRECT
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error Twisted's write path finds and reports itself
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class FastPathProtocol(WebSocketServerProtocol):
    """Subclasses give ``max_message_size``, ``max_send_buffer``, ``prepare`` (one shared
    frame for many watchers), ``on_text`` (a complete text message) and ``too_slow``."""

    max_message_size = 65536
    max_send_buffer = 4 * 1024 * 1024
    backed_up = False
    # While the frames of one read are handled: what we send meanwhile, sent at the end
    # in one send() (None: each write goes out at once), and its size.
    _cork: list[bytes] | None = None
    _corked = 0

    def on_text(self, payload: bytes, binary: bool) -> None:
        raise NotImplementedError

    def prepare(self, payload: bytes) -> Any:
        raise NotImplementedError

    def too_slow(self) -> None:
        raise NotImplementedError

    # -- receiving ------------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.on_text(payload, isBinary)

    def dataReceived(self, data: bytes) -> None:
        if (
            self.state == STATE_OPEN
            and self.current_frame is None
            and not self.data
            and not self.inside_message
            and self._perMessageCompress is None
        ):
            try:
                data = self._small_text_frames(data)
            finally:
                if self._cork is not None:
                    self._uncork()
            if not data:
                return
        self._dataReceived(data)

    def _small_text_frames(self, data: bytes) -> bytes:
        """Complete, masked, unfragmented text frames (nearly every frame we get) go straight
        to ``on_text``; whatever else is left (control frames, partial or large frames, bad
        UTF-8) is returned for Autobahn's own parser, which enforces the rules."""
        offset, end, limit = 0, len(data), self.max_message_size
        while self.state == STATE_OPEN and end - offset >= 6:
            first, second = data[offset], data[offset + 1]
            length = second & 0x7F
            header = 6
            if length == 126:
                if end - offset < 8:
                    break
                length = int.from_bytes(data[offset + 2 : offset + 4], "big")
                header = 8
                if length < 126:  # not the minimal encoding: Autobahn fails it
                    break
            if first != 0x81 or second < 0x80 or length == 127 or length > limit:
                break
            start = offset + header
            if end - start < length:
                break
            payload = unmask(data[start : start + length], data[start - 4 : start])
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break
            offset = start + length
            if offset < end and self._cork is None and not self.backed_up:
                self._cork = []  # more follows: the answers go out together, in order
            self.on_text(payload, False)
        return data[offset:] if offset else data

    def onMessageEnd(self) -> None:
        if not self.failedByMe:
            self.on_text(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]

    # -- sending --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        cork = self._cork
        if cork is None:
            write(self.transport, data)
        else:
            cork.append(data)
            self._corked += len(data)
            if self._corked > CORK_LIMIT:
                self._uncork(check=False)  # send*() check right after; sendData never did

    def _uncork(self, check: bool = True) -> None:
        """One send() for everything the frames of one read answered (the bytes and their
        order as they were), then the slow-reader check the sends made while the bytes
        were held back (no-ops then: the transport saw nothing new). A client that does
        not read is never corked (``backed_up``), and a cork goes out at CORK_LIMIT, so the
        check comes at most that many bytes later than it did."""
        cork, self._cork = self._cork, None
        self._corked = 0
        if cork:
            write(self.transport, b"".join(cork))
            if check and self.state == STATE_OPEN:
                self._check_send_buffer()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue:
            if self._cork is not None:  # Autobahn writes the queue's first piece at once
                self._uncork(check=False)
            if self.send_queue is NO_QUEUE:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)
        else:
            self._write(data)

    def send(self, data: bytes) -> None:
        if self.state == STATE_OPEN:
            if self._perMessageCompress is None:
                if self._cork is None:
                    write(self.transport, text_frame(data))
                else:
                    self._write(text_frame(data))
            else:
                self._send_compressed(data)
            self._check_send_buffer()

    def send_framed(self, data: bytes, frame: bytes) -> None:
        """``send(data)`` with ``frame`` already made: ``text_frame(data)``."""
        if self.state == STATE_OPEN:
            if self._perMessageCompress is None:
                if self._cork is None:
                    write(self.transport, frame)
                else:
                    self._write(frame)
            else:
                self._send_compressed(data)
            self._check_send_buffer()

    def send_shared(self, message: wire.Shared) -> None:
        if self.state != STATE_OPEN:
            return
        if self._perMessageCompress is None:
            prepared = message.prepared
            if prepared is None:
                prepared = message.prepared = self.prepare(message.payload)
            # What sendPreparedMessage does uncompressed, without two calls per watcher.
            if self._cork is None:  # (the check inline: once per watcher of a diff)
                write(self.transport, prepared.payloadHybi)  # type: ignore[attr-defined]
            else:
                self._write(prepared.payloadHybi)  # type: ignore[attr-defined]
        else:  # compressed per connection: each has its own deflate context
            self._send_compressed(message.payload)
        self._check_send_buffer()

    def _send_compressed(self, data: bytes) -> None:
        # Autobahn applies --max-message-size to what we send as well (after compression);
        # it is a limit on clients, so the server's own messages are exempt.
        limit: int = self.maxMessagePayloadSize  # type: ignore[has-type]
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(data)
        finally:
            self.maxMessagePayloadSize = limit

    def _check_send_buffer(self) -> None:
        if self.backed_up and unsent_bytes(self.transport) > self.max_send_buffer:
            self.too_slow()

    # IPushProducer, registered with the transport when the connection opens: the transport
    # pauses us once its send buffer is full (64 KiB for TCP), i.e. the client is not keeping
    # up. Only then is the buffer measured, so a client that reads costs nothing per send.

    def pauseProducing(self) -> None:
        self.backed_up = True

    def resumeProducing(self) -> None:
        self.backed_up = False

    def stopProducing(self) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        """Close with any code, 1001-1013 included: sendClose only takes 1000 and 3000-4999."""
        if self.state == STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)
