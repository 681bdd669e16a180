"""TLS for ``--port ssl:...``: one policy for every port, and certificates that reload.

Policy (Mozilla "intermediate"): TLS 1.2 minimum; for TLS 1.2 only ECDHE key exchange with
AES-GCM or ChaCha20-Poly1305 (TLS 1.3 suites are all AEAD and stay as OpenSSL has them);
ALPN offers ``http/1.1`` only (WebSocket over HTTP/2 is not served).

``ssl:`` descriptions are parsed here rather than by Twisted's endpoint parser so the
context factory is ours: ``ssl:PORT`` (or ``port=PORT``) with ``privateKey=PATH``,
``certKey=PATH`` (default: the privateKey file; may hold the whole chain, leaf first),
``extraCertChain=PATH``, ``interface=ADDR`` and ``backlog=N``; ``\\:`` escapes a colon.

``ReloadableTLS.reload()`` reads the files again: new connections get the new certificate,
open ones keep the context they were made with, and a file that does not load (or a key
that does not match) leaves the old certificate in place and logs an error. SIGHUP calls
it for every port (``TLSReloadService``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
ALPN: Final = [b"http/1.1"]
# The listen backlog when a --port does not give one: Twisted's default (50) overflows in
# a reconnect storm on a busy machine (clients then wait a SYN retry, 1 s or more); 511 is
# what Node and nginx use, and the kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG: Final = 511
_KEYS: Final = frozenset(
    ("port", "privatekey", "certkey", "extracertchain", "interface", "backlog")
)


class TLSConfigError(ValueError):
    """A description or a file we cannot use."""


@dataclass(frozen=True)
class SSLPort:
    port: int
    private_key: Path
    cert_key: Path
    extra_chain: Path | None = None
    interface: str = ""
    backlog: int = DEFAULT_BACKLOG


def _split(description: str) -> list[str]:
    """Split on ``:``, honouring ``\\:`` (and ``\\\\``) escapes."""
    parts, current, chars = [], [], iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_ssl_port(description: str) -> SSLPort:
    """``ssl:3443:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1`` -> SSLPort."""
    parts = _split(description)
    if not parts or parts[0] != "ssl":
        raise TLSConfigError(f"{description!r} is not an ssl: endpoint")
    values: dict[str, str] = {}
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if not eq:
            name, value = "port", part
        key = name.lower()
        if key not in _KEYS:
            raise TLSConfigError(
                f"ssl: does not take {name!r} (the TLS policy is fixed); use port, "
                "privateKey, certKey, extraCertChain, interface, backlog"
            )
        if key in values:
            raise TLSConfigError(f"ssl: {name} given twice")
        values[key] = value
    try:
        port = int(values["port"])
        backlog = int(values.get("backlog", DEFAULT_BACKLOG))
    except KeyError:
        raise TLSConfigError("ssl: needs a port") from None
    except ValueError:
        raise TLSConfigError("ssl: port and backlog must be numbers") from None
    if not 0 <= port <= 65535 or backlog < 1:
        raise TLSConfigError("ssl: port must be 0-65535 and backlog at least 1")
    if "privatekey" not in values:
        raise TLSConfigError("ssl: needs privateKey=PATH")
    private_key = Path(values["privatekey"])
    chain = values.get("extracertchain")
    return SSLPort(
        port=port,
        private_key=private_key,
        cert_key=Path(values.get("certkey", private_key)),
        extra_chain=Path(chain) if chain else None,
        interface=values.get("interface", ""),
        backlog=backlog,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read the {what} {str(path)!r}: {e.strerror}") from None


def load_options(spec: SSLPort) -> CertificateOptions:
    """Read the key and certificates and build the policy's CertificateOptions (its context
    is made here, so every error shows now, not at the first connection)."""
    key_pem = _read(spec.private_key, "private key")
    cert_pem = _read(spec.cert_key, "certificate")
    chain_pem = b"" if spec.extra_chain is None else _read(spec.extra_chain, "chain")
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        raise TLSConfigError(
            f"{str(spec.private_key)!r} holds no unencrypted PEM private key"
        ) from None
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
        if chain_pem:
            certs += x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TLSConfigError("a certificate file holds no PEM certificate") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    if key.public_key().public_bytes(encoding, public) != certs[0].public_key().public_bytes(
        encoding, public
    ):
        raise TLSConfigError("the private key does not match the certificate")
    # pyOpenSSL takes cryptography objects directly (its own wrappers are deprecated);
    # Twisted only stores them and hands them over.
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=certs[0],  # type: ignore[arg-type]
        extraCertChain=certs[1:],  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        acceptableProtocols=ALPN,
    )
    try:
        options.getContext()
    except SSL.Error as e:
        raise TLSConfigError(f"OpenSSL refused the key or certificate: {e}") from None
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """The connection creator of one ssl: port; ``reload()`` swaps in new files."""

    def __init__(self, spec: SSLPort) -> None:
        self.spec = spec
        self.options = load_options(spec)  # at start-up a bad file stops the daemon

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)

    def reload(self) -> bool:
        try:
            options = load_options(self.spec)
        except TLSConfigError as e:
            log.error(
                "TLS reload for port {port} failed, keeping the old certificate: {error}",
                port=self.spec.port,
                error=str(e),
            )
            return False
        self.options = options
        log.info("TLS certificate for port {port} reloaded", port=self.spec.port)
        return True

    def endpoint(self, reactor: Any) -> SSL4ServerEndpoint:
        spec = self.spec
        return SSL4ServerEndpoint(reactor, spec.port, self, spec.backlog, spec.interface)


class TLSReloadService(Service):
    """On SIGHUP (handled on the reactor thread), reload every ssl: port's files."""

    def __init__(self, ports: list[ReloadableTLS], reactor: Any) -> None:
        self.ports = ports
        self.reactor = reactor
        self._previous: Any = None

    def reload(self) -> bool:
        """True when every port reloaded; callable directly (tests, a control socket)."""
        if not self.ports:
            log.info("SIGHUP: no ssl: port to reload")
        return all([tls.reload() for tls in self.ports])

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.reload)

    def startService(self) -> None:
        super().startService()
        try:
            self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        except ValueError:  # not the main thread (an embedding test): reload() still works
            self._previous = None

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
