"""twistd presence: options (each coerced and validated) and the MultiService they build."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.python import usage

from .app import build
from .cluster.options import CLUSTER_OPTIONS, cluster_config
from .config import DEFAULT_PORT, DEFAULTS, Config, Listen
from .core.auth import BadKey, JwtVerifier, verifier_from_public_key, verifier_from_secret
from .core.origins import parse_origins
from .core.ratelimit import parse_rate
from .options import choice, coerced, nonempty, number, readable_file
from .room_options import ROOM_OPTIONS
from .server.logs import LOG_OPTIONS, observer_for
from .server.tls import ReloadableTLS, TLSConfigError, parse_ssl_port
from .webhook_options import WEBHOOK_OPTIONS, WebhookURLOption, webhook_config

FD_RESERVE = 64  # file descriptors kept for listening sockets, logs, Redis, ...
MIN_TOKEN_BYTES = 16


def _read_token(path: Path, name: str) -> bytes:
    """A bearer token file: one printable ASCII line of at least 16 bytes."""
    try:
        token = path.read_bytes().strip()
    except OSError as e:
        raise usage.UsageError(f"{name}: cannot read {str(path)!r}: {e.strerror}") from None
    if len(token) < MIN_TOKEN_BYTES or not all(33 <= b < 127 for b in token):
        raise usage.UsageError(
            f"{name}: the token must be at least {MIN_TOKEN_BYTES} printable ASCII characters"
        )
    return token


def _load_verifier(options: usage.Options) -> JwtVerifier:
    secret, public = options["jwt-secret-file"], options["jwt-public-key-file"]
    if (secret is None) == (public is None):
        raise usage.UsageError(
            "--auth jwt needs exactly one of --jwt-secret-file or --jwt-public-key-file"
        )
    name, path = ("--jwt-secret-file", secret) if secret else ("--jwt-public-key-file", public)
    try:
        data = path.read_bytes()
        make = verifier_from_secret if secret else verifier_from_public_key
        return make(data, options["jwt-leeway"], options["jwt-audience"], options["jwt-issuer"])
    except OSError as e:
        raise usage.UsageError(f"{name}: cannot read {str(path)!r}: {e.strerror}") from None
    except BadKey as e:
        raise usage.UsageError(f"{name}: {e}") from None


# Parsing an endpoint description only stores the reactor it is given (and twistd has not
# installed one yet when options are parsed): the listening happens in build().
_NOT_YET = object()


def _listen(description: str) -> Listen:
    if description.startswith("ssl:"):
        try:
            return Listen(description, ReloadableTLS(parse_ssl_port(description)))
        except TLSConfigError as e:
            raise ValueError(f"--port: {e}") from None
    try:
        endpoints.serverFromString(_NOT_YET, description)
    except Exception as e:
        raise ValueError(f"--port {description}: {e}") from None
    return Listen(description)


def default_max_connections() -> int:
    """The open-file limit less a reserve: past it accept() would fail with EMFILE anyway."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(1, soft - FD_RESERVE)


# name, short, default, help, coerce: each value is checked once, as it is parsed.
PARAMETERS: list[Sequence[Any]] = [
    [
        "heartbeat-interval",
        None,
        DEFAULTS.heartbeat_interval,
        "Seconds between heartbeats the server advises clients to send.",
        number(float, 0.1, "--heartbeat-interval"),
    ],
    [
        "heartbeat-timeout",
        None,
        DEFAULTS.heartbeat_timeout,
        "Seconds without an inbound frame before a connection is closed (4408).",
        number(float, 0.1, "--heartbeat-timeout"),
    ],
    [
        "max-message-size",
        None,
        DEFAULTS.max_message_size,
        "Largest message in bytes; a larger one closes the connection (1009).",
        number(int, 256, "--max-message-size"),
    ],
    [
        "offline-grace",
        None,
        DEFAULTS.offline_grace,
        "Seconds a user stays present after an abrupt disconnect (0 disables).",
        number(float, 0, "--offline-grace"),
    ],
    [
        "max-subscriptions",
        None,
        DEFAULTS.max_subscriptions,
        "Users one connection may watch.",
        number(int, 1, "--max-subscriptions"),
    ],
    # -- security ---------------------------------------------------------------------
    [
        "auth",
        None,
        DEFAULTS.auth,
        "none (development: the userId is taken as given) or jwt (a token whose sub "
        "is the userId, as ?token= or Authorization: Bearer).",
        choice("--auth", "none", "jwt"),
    ],
    [
        "jwt-secret-file",
        None,
        None,
        "With --auth jwt: a file holding the HS256 secret (at least 32 bytes)",
        readable_file("--jwt-secret-file"),
    ],
    [
        "jwt-public-key-file",
        None,
        None,
        "With --auth jwt: a PEM public key; RSA means RS256, EC P-256 means ES256",
        readable_file("--jwt-public-key-file"),
    ],
    [
        "jwt-leeway",
        None,
        DEFAULTS.jwt_leeway,
        "Seconds of clock skew allowed for a token's nbf and iat.",
        number(float, 0, "--jwt-leeway"),
    ],
    [
        "jwt-audience",
        None,
        None,
        "With --auth jwt: the aud a token must carry (default: aud not checked)",
        coerced("--jwt-audience", nonempty, "A string."),
    ],
    [
        "jwt-issuer",
        None,
        None,
        "With --auth jwt: the iss a token must carry (default: iss not checked)",
        coerced("--jwt-issuer", nonempty, "A string."),
    ],
    [
        "token-grace",
        None,
        DEFAULTS.token_grace,
        "Seconds after a token's exp within which REFRESH_TOKEN must bring a new one "
        "(else close 1008 'token expired').",
        number(float, 0, "--token-grace"),
    ],
    [
        "api-token-file",
        None,
        None,
        "A file holding the Bearer token GET /presence requires. With --auth jwt "
        "/presence always needs it (no file: 401 for everyone); with --auth none it is "
        "open unless this is given",
        readable_file("--api-token-file"),
    ],
    [
        "metrics-token-file",
        None,
        None,
        "A file holding a Bearer token GET /metrics requires (default: /metrics open)",
        readable_file("--metrics-token-file"),
    ],
    [
        "allowed-origins",
        None,
        None,
        "Comma-separated Origin patterns a browser page may connect from "
        "(https://app.example.com, https://*.example.com:8443, null, *); others get 403. "
        "Default * with --auth none; must be given with --auth jwt",
        coerced("--allowed-origins", parse_origins, "Origin patterns."),
    ],
    [
        "rate-limit",
        None,
        "20/10",
        "MSGS/SECONDS per connection: more gets ERROR RATE_LIMITED (dropped); past 3x "
        "the connection is closed (1008).",
        coerced("--rate-limit", parse_rate, "MSGS/SECONDS."),
    ],
    [
        "max-connections",
        None,
        None,
        "WebSocket connections this process accepts; more get HTTP 503 (0: no cap). "
        "[default: the open-file limit less 64]",
        number(int, 0, "--max-connections"),
    ],
    [
        "max-connections-per-user",
        None,
        DEFAULTS.max_connections_per_user,
        "Open connections per userId; one more is closed 1013 (0: no cap).",
        number(int, 0, "--max-connections-per-user"),
    ],
    [
        "handshake-timeout",
        None,
        DEFAULTS.handshake_timeout,
        "Seconds (absolute) for a connection to deliver a complete HTTP request / "
        "opening handshake; slower ones are dropped.",
        number(float, 0.1, "--handshake-timeout"),
    ],
    [
        "max-header-bytes",
        None,
        DEFAULTS.max_header_bytes,
        "Largest request line plus headers; more gets 400 and the connection closes.",
        number(int, 1024, "--max-header-bytes"),
    ],
    [
        "max-send-buffer",
        None,
        DEFAULTS.max_send_buffer,
        "Bytes queued for a client that does not read before it is disconnected (1008).",
        number(int, 65536, "--max-send-buffer"),
    ],
    *ROOM_OPTIONS,
    *CLUSTER_OPTIONS,
    *LOG_OPTIONS,
    *WEBHOOK_OPTIONS,
]


class Options(WebhookURLOption, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A WebSocket presence daemon: ws://HOST:PORT/?userId=ID, GET /health, GET /metrics, "
        "GET /presence/{userId} on every --port."
    )
    optParameters = PARAMETERS
    optFlags: list[Sequence[Any]] = [
        [
            "compression",
            None,
            "Offer permessage-deflate (off by default); inflated messages are still "
            "bounded by --max-message-size.",
        ],
        ["dashboard", None, "Serve the live page GET /dashboard (off by default: 404)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    def opt_port(self, description: str) -> None:
        """A Twisted server endpoint (tcp:3000, ssl:3443:privateKey=K:certKey=C,
        systemd:domain=INET:index=0, unix:/run/presence.sock); repeatable.
        [default: tcp:3000]"""
        if not description or ":" not in description:
            raise usage.UsageError(f"--port: {description!r} is not an endpoint like tcp:3000")
        if description.startswith("ssl:"):
            try:
                parse_ssl_port(description)
            except TLSConfigError as e:
                raise usage.UsageError(f"--port: {e}") from None
        self["ports"].append(description)

    opt_p = opt_port

    def postOptions(self) -> None:
        try:
            self.config = self._config()
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def _config(self) -> Config:
        """The one place the command line becomes the daemon's configuration."""
        if self["heartbeat-timeout"] <= self["heartbeat-interval"]:
            raise ValueError("--heartbeat-timeout must be longer than --heartbeat-interval")
        verifier = None
        origins = self["allowed-origins"]
        if self["auth"] == "jwt":
            if origins is None:
                raise ValueError("--auth jwt needs --allowed-origins (the pages that may connect)")
            verifier = _load_verifier(self)
        elif any(
            self[name]
            for name in ("jwt-secret-file", "jwt-public-key-file", "jwt-audience", "jwt-issuer")
        ):
            raise ValueError("the --jwt-* options need --auth jwt")
        rate = self["rate-limit"]
        if isinstance(rate, str):  # the default, given as text
            rate = parse_rate(rate)
        api, metrics = self["api-token-file"], self["metrics-token-file"]
        max_connections = self["max-connections"]
        return Config(
            ports=tuple(_listen(d) for d in self["ports"] or [DEFAULT_PORT]),
            heartbeat_interval=self["heartbeat-interval"],
            heartbeat_timeout=self["heartbeat-timeout"],
            max_message_size=self["max-message-size"],
            offline_grace=self["offline-grace"],
            max_subscriptions=self["max-subscriptions"],
            auth=self["auth"],
            verifier=verifier,
            jwt_leeway=self["jwt-leeway"],
            token_grace=self["token-grace"],
            api_token=_read_token(api, "--api-token-file") if api else None,
            metrics_token=_read_token(metrics, "--metrics-token-file") if metrics else None,
            allowed_origins=DEFAULTS.allowed_origins if origins is None else origins,
            rate_messages=rate[0],
            rate_seconds=rate[1],
            max_connections=(
                default_max_connections() if max_connections is None else max_connections
            ),
            max_connections_per_user=self["max-connections-per-user"],
            handshake_timeout=self["handshake-timeout"],
            max_header_bytes=self["max-header-bytes"],
            max_send_buffer=self["max-send-buffer"],
            compression=bool(self["compression"]),
            max_rooms_per_connection=self["max-rooms-per-connection"],
            max_room_members=self["max-room-members"],
            room_batch_threshold=self["room-batch-threshold"],
            room_batch_interval=self["room-batch-interval"],
            room_list_limit=self["room-list-limit"],
            cluster=cluster_config(self),
            dashboard=bool(self["dashboard"]),
            log_format=self["log-format"],
            log_level=self["log-level"],
            webhooks=webhook_config(self),
        )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # twistd prints its whole usage before a UsageError; ours is one clear line.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"presence: {e}") from None


def makeService(options: Options, reactor: Any = None) -> IService:
    daemon = build(options.config, reactor)
    config = options.config
    parent = getattr(options, "parent", None)
    daemon.log_observer = observer_for(config.log_format, parent, config.log_level)
    return daemon
