"""The opening handshake of a plain WebSocket client, without Autobahn's general parse.

Autobahn's ``processHandshake`` handles every kind of request (status pages, Hixie,
subprotocols, extensions, proxies, repeated headers) and formats debug arguments on the
way; for the handshake nearly every client sends it is most of what accepting a connection
costs. ``plain_upgrade`` takes only a request that Autobahn would take exactly as it
comes: ``GET`` of an absolute path over HTTP/1.1, token header names, printable ASCII
values, no header twice, ``Host``, ``Upgrade: websocket``, ``Connection: upgrade``,
``Sec-WebSocket-Version: 13`` and a well-formed key, and none of
``Sec-WebSocket-Protocol``, ``Sec-WebSocket-Extensions`` or ``X-Forwarded-For``. It reads
out of it what Autobahn would and calls ``onConnect``; a refusal goes to Autobahn's own
``failHandshake``, an acceptance gets the 101 response Autobahn's ``succeedHandshake``
would write (that method itself when a subprotocol or extra headers are involved).
Anything else, and any request Autobahn would refuse, goes to Autobahn's
``processHandshake``, which answers it as before. ``tests/server/test_plain_upgrade.py``
runs every case through both paths and compares what comes out.
"""

from __future__ import annotations

import re
from binascii import b2a_base64
from dataclasses import dataclass
from hashlib import sha1
from typing import Any
from urllib.parse import parse_qs

import txaio
from autobahn.websocket.protocol import _is_same_origin, _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger

from .fastpath import DIRECT
from .lean import LeanProtocol

log = Logger()

# Request line, then header lines: a token name, a colon, printable ASCII or HTAB.
_PLAIN_HEAD = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*)\r\n"
)
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
# Autobahn would read these differently, or they need its general path.
_GENERAL = frozenset(("sec-websocket-protocol", "sec-websocket-extensions", "x-forwarded-for"))


@dataclass(frozen=True, slots=True)
class PlainUpgrade:
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]
    host: str
    origin: str
    key: str


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


def read_head(head: bytes) -> tuple[str, dict[str, str]] | None:
    """``head``: a request up to and including its blank line. Its target and its headers
    (by lower-case name, values without the spaces around them) when it is a GET over
    HTTP/1.1 of an absolute path, made of well-formed lines, with no header twice; else
    None."""
    match = _PLAIN_HEAD.fullmatch(head)
    if match is None:
        return None
    headers: dict[str, str] = {}
    for line in match.group(2).decode("ascii").split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        name = name.lower()
        if name in headers:
            return None
        headers[name] = value.strip(" \t")
    return match.group(1).decode("ascii"), headers


def plain_upgrade(head: bytes) -> PlainUpgrade | None:
    """What Autobahn's processHandshake would read from ``head`` (a request up to and
    including its blank line), or None when it is not a plain upgrade (Autobahn then
    decides)."""
    read = read_head(head)
    return None if read is None else plain_request(*read)


def plain_request(uri: str, headers: dict[str, str]) -> PlainUpgrade | None:
    """``plain_upgrade`` of a head ``read_head`` has read."""
    if uri.startswith("//") or "#" in uri or ";" in uri:
        return None  # a netloc, a fragment or path parameters: urlparse's to split
    if not _GENERAL.isdisjoint(headers):
        return None
    host = headers.get("host")
    upgrade = headers.get("upgrade")
    connection = headers.get("connection")
    key = headers.get("sec-websocket-key")
    if (
        host is None
        or upgrade is None
        or connection is None
        or key is None
        or headers.get("sec-websocket-version") != "13"
        or not _has_token(upgrade, "websocket")
        or not _has_token(connection, "upgrade")
        or len(key) != 24
        or not key.endswith("==")
        or not _BASE64.issuperset(key[:-2].encode("ascii"))
    ):
        return None
    if ":" in host and not host.endswith("]"):
        name, _, port = host.rpartition(":")
        if not port.isdigit() or not port.isascii():
            return None
        host = name
    path, _, query = uri.partition("?")
    return PlainUpgrade(path, parse_qs(query), headers, host, headers.get("origin", ""), key)


class UpgradeProtocol(LeanProtocol):
    """``processHandshake`` for plain upgrades (see above); Autobahn's for the rest."""

    # Protocol options read here (the factory sets them on the class).
    maxConnections: int
    autoPingInterval: float
    allowedOriginsPatterns: Any

    # What a plain upgrade leaves as it is (Autobahn's own path sets them for each).
    websocket_version = 13  # the only version the factory takes
    websocket_protocols: Any = ()
    websocket_extensions: Any = ()
    websocket_origin = ""
    websocket_protocol_in_use = None
    websocket_extensions_in_use: Any = ()
    inside_message = False
    current_frame: Any = None

    _plain: PlainUpgrade | None = None  # the head was read already (a direct upgrade)

    def upgrade(self, head: bytes, plain: PlainUpgrade | None = None) -> None:
        """A whole opening handshake (and nothing after it), taken at once: the response
        and what opening the connection sends go out in one send(). ``plain``: what
        ``plain_upgrade(head)`` gave, when the caller read it already."""
        self._plain = plain
        if self.transport.__class__ not in DIRECT:  # TLS: Autobahn's writes, as they were
            self.dataReceived(head)
        else:
            self._cork = []
            try:
                self.dataReceived(head)
            finally:
                if self._cork is not None:
                    self._uncork()
        if self.state == self.STATE_CONNECTING and self.openHandshakeTimeout > 0:
            self.arm_open_handshake_timeout()  # onConnect is still deciding

    def dropConnection(self, abort: bool = False) -> None:
        if self._cork is not None:  # what is held back goes first, as it was sent first
            self._uncork(check=False)
        super().dropConnection(abort)

    def processHandshake(self) -> None:
        data = self.data
        end = data.find(b"\r\n\r\n") + 4
        request, self._plain = self._plain, None
        if request is None and end > 3:
            request = plain_upgrade(data[:end])
        factory = self.factory
        if (
            request is None
            or self.maxConnections > 0
            or factory.externalPort
            or not self._origin_allowed(request.origin)
        ):
            super().processHandshake()
            return
        self.data = data[end:]
        if request.origin:
            self.websocket_origin = request.origin
        connection_request = ConnectionRequest(
            self.peer,
            request.headers,
            request.host,
            request.path,
            request.params,
            13,
            request.origin,
            [],
            [],
        )
        try:
            accepted = self.onConnect(connection_request)
        except ConnectionDeny as e:
            self.failHandshake(e.reason, e.code)  # type: ignore[arg-type]
            return
        except Exception as e:
            log.failure("unexpected error in onConnect")
            self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
            return
        if accepted is not None or factory.headers or self.autoPingInterval:
            self._wskey = request.key
            self.succeedHandshake(accepted)  # a subprotocol or headers: Autobahn's answer
        else:
            self._succeed(request.key)

    def _succeed(self, key: str) -> None:
        """Autobahn's succeedHandshake with no subprotocol, extension, header of our own or
        automatic ping: the same response, and the connection open."""
        server = self.factory.server
        accept = b2a_base64(sha1(key.encode("ascii") + self._WS_MAGIC).digest(), newline=False)
        self.sendData(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            + (f"Server: {server}\r\n".encode() if server else b"")
            + b"Upgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
        )
        self.state = self.STATE_OPEN
        call = self.openHandshakeTimeoutCall
        if call is not None:
            call.cancel()
            self.openHandshakeTimeoutCall = None
        self._onOpen()
        if self._is_open is None:
            self._open_done = True  # is_open, when first read, is resolved
        else:
            txaio.resolve(self._is_open, None)  # type: ignore[attr-defined]
        if self.data:
            self.consumeData()

    def _origin_allowed(self, origin: str) -> bool:
        """Autobahn's own origin check (its own functions), where it would pass."""
        if not origin:
            return True
        try:
            parsed: Any = _url_to_origin(origin)
        except ValueError:
            return False
        if parsed == "null" and self.factory.allowNullOrigin:
            return True
        factory = self.factory
        return bool(
            _is_same_origin(
                parsed,
                "https" if factory.isSecure else "http",
                factory.externalPort or factory.port,
                self.allowedOriginsPatterns,
            )
        )
