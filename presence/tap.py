"""twistd presence: options (each coerced and validated) and the MultiService they build."""

from __future__ import annotations

import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage

from .cluster.hub import CLUSTER_OPTIONS, ClusterHub, build_cluster_hub, check_cluster_options
from .core import wire
from .core.auth import BadKey, JwtVerifier, verifier_from_public_key, verifier_from_secret
from .core.model import PresenceModel
from .core.origins import parse_origins
from .core.ratelimit import parse_rate
from .hub import LocalHub, PresenceHub
from .options import choice, coerced, nonempty, number, readable_file
from .server.handshake import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HEADER_BYTES
from .server.metrics import Metrics
from .server.reaper import Reaper
from .server.tls import ReloadableTLS, TLSConfigError, TLSReloadService, parse_ssl_port
from .server.web import build_site
from .server.ws import PresenceFactory, ProtocolConfig

log = Logger()

DEFAULT_PORT = "tcp:3000"
SHUTDOWN_WAIT = 3.0
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


def default_max_connections() -> int:
    """The open-file limit less a reserve: past it accept() would fail with EMFILE anyway."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(1, soft - FD_RESERVE)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A WebSocket presence daemon: ws://HOST:PORT/?userId=ID, GET /health, GET /metrics, "
        "GET /presence/{userId} on every --port."
    )
    optParameters: list[Sequence[Any]] = [
        [
            "heartbeat-interval",
            None,
            15.0,
            "Seconds between heartbeats the server advises clients to send.",
            number(float, 0.1, "--heartbeat-interval"),
        ],
        [
            "heartbeat-timeout",
            None,
            45.0,
            "Seconds without an inbound frame before a connection is closed (4408).",
            number(float, 0.1, "--heartbeat-timeout"),
        ],
        [
            "max-message-size",
            None,
            65536,
            "Largest message in bytes; a larger one closes the connection (1009).",
            number(int, 256, "--max-message-size"),
        ],
        [
            "offline-grace",
            None,
            10.0,
            "Seconds a user stays present after an abrupt disconnect (0 disables).",
            number(float, 0, "--offline-grace"),
        ],
        [
            "max-subscriptions",
            None,
            1000,
            "Users one connection may watch.",
            number(int, 1, "--max-subscriptions"),
        ],
        # -- security (issue 4) --------------------------------------------------------
        [
            "auth",
            None,
            "none",
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
            10.0,
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
            30.0,
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
            16,
            "Open connections per userId; one more is closed 1013 (0: no cap).",
            number(int, 0, "--max-connections-per-user"),
        ],
        [
            "handshake-timeout",
            None,
            DEFAULT_HANDSHAKE_TIMEOUT,
            "Seconds (absolute) for a connection to deliver a complete HTTP request / "
            "opening handshake; slower ones are dropped.",
            number(float, 0.1, "--handshake-timeout"),
        ],
        [
            "max-header-bytes",
            None,
            DEFAULT_MAX_HEADER_BYTES,
            "Largest request line plus headers; more gets 400 and the connection closes.",
            number(int, 1024, "--max-header-bytes"),
        ],
        [
            "max-send-buffer",
            None,
            4 * 1024 * 1024,
            "Bytes queued for a client that does not read before it is disconnected (1008).",
            number(int, 65536, "--max-send-buffer"),
        ],
        *CLUSTER_OPTIONS,
    ]
    optFlags: list[Sequence[Any]] = [
        [
            "compression",
            None,
            "Offer permessage-deflate (off by default); inflated messages are still "
            "bounded by --max-message-size.",
        ],
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
        if not self["ports"]:
            self["ports"] = [DEFAULT_PORT]
        self["tls"] = {}
        for description in self["ports"]:
            if description.startswith("ssl:"):
                try:
                    self["tls"][description] = ReloadableTLS(parse_ssl_port(description))
                except TLSConfigError as e:
                    raise usage.UsageError(f"--port: {e}") from None
                continue
            try:
                # Parsing needs no real reactor (and twistd has not installed one yet).
                endpoints.serverFromString(MemoryReactor(), description)
            except Exception as e:
                raise usage.UsageError(f"--port {description}: {e}") from None
        if self["heartbeat-timeout"] <= self["heartbeat-interval"]:
            raise usage.UsageError("--heartbeat-timeout must be longer than --heartbeat-interval")
        self["verifier"] = None
        if self["auth"] == "jwt":
            if self["allowed-origins"] is None:
                raise usage.UsageError(
                    "--auth jwt needs --allowed-origins (the pages that may connect)"
                )
            self["verifier"] = _load_verifier(self)
        elif any(
            self[name]
            for name in ("jwt-secret-file", "jwt-public-key-file", "jwt-audience", "jwt-issuer")
        ):
            raise usage.UsageError("the --jwt-* options need --auth jwt")
        if self["allowed-origins"] is None:
            self["allowed-origins"] = ("*",)
        self["api-token"] = (
            _read_token(self["api-token-file"], "--api-token-file")
            if self["api-token-file"]
            else None
        )
        self["metrics-token"] = (
            _read_token(self["metrics-token-file"], "--metrics-token-file")
            if self["metrics-token-file"]
            else None
        )
        if isinstance(self["rate-limit"], str):
            self["rate-limit"] = parse_rate(self["rate-limit"])
        if self["max-connections"] is None:
            self["max-connections"] = default_max_connections()
        check_cluster_options(self)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # twistd prints its whole usage before a UsageError; ours is one clear line.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"presence: {e}") from None


class ShutdownService(Service):
    """On stop, closes every client with 1001 and waits (briefly) for them to go."""

    def __init__(self, hub: PresenceHub, clock: IReactorTime) -> None:
        self.hub = hub
        self.clock = clock

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for conn in self.hub.model.all_connections():
            conn.peer.close(wire.CLOSE_GOING_AWAY, "server shutting down")
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.clock.seconds() + SHUTDOWN_WAIT

        def check() -> None:
            if self.hub.model.connection_count == 0 or self.clock.seconds() >= deadline:
                done.callback(None)
            else:
                self.clock.callLater(0.05, check)

        check()
        return done


class ListeningPort(StreamServerEndpointService):
    """A listening port whose failure to bind stops start-up with one clear line."""

    _raiseSynchronously = True

    def __init__(
        self, description: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(
                f"presence: cannot listen on {self.description}: {e.socketError}"
            ) from None


def reaper_interval(heartbeat_timeout: float) -> float:
    return min(1.0, heartbeat_timeout / 4)


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    root = MultiService()
    model = PresenceModel(
        offline_grace=options["offline-grace"], max_subscriptions=options["max-subscriptions"]
    )
    metrics = Metrics()
    hub: LocalHub | ClusterHub
    if options["redis"]:
        hub = build_cluster_hub(options, model, metrics.registry, reactor)
        hub.setServiceParent(root)  # on stop it removes this node's connections from Redis
        health_problem: Callable[[], Any] = hub.health_problem
    else:
        hub = LocalHub(model)
        health_problem = lambda: None  # noqa: E731
    metrics.watch(lambda: hub.model, lambda: hub.diffs_sent, hub.users_present)
    config = ProtocolConfig(
        heartbeat_interval=options["heartbeat-interval"],
        heartbeat_timeout=options["heartbeat-timeout"],
        max_message_size=options["max-message-size"],
        allowed_origins=options["allowed-origins"],
        compression=bool(options["compression"]),
        verifier=options["verifier"],
        token_grace=options["token-grace"],
        rate_messages=options["rate-limit"][0],
        rate_seconds=options["rate-limit"][1],
        max_connections=options["max-connections"],
        max_connections_per_user=options["max-connections-per-user"],
        max_send_buffer=options["max-send-buffer"],
    )
    factory = PresenceFactory(hub, metrics, config, reactor)
    site = build_site(
        factory,
        hub,
        metrics,
        reactor,
        reactor.seconds(),
        require_api_token=options["auth"] != "none",
        api_token=options["api-token"],
        metrics_token=options["metrics-token"],
        handshake_timeout=options["handshake-timeout"],
        max_header_bytes=options["max-header-bytes"],
        health_problem=health_problem,
    )
    verifier = options["verifier"]
    log.info(
        "auth={auth}{algorithms} origins={origins} rate-limit={rate}/{per}s "
        "max-connections={total} per-user={per_user}",
        auth=options["auth"],
        algorithms=f" ({', '.join(verifier.algorithms)})" if verifier else "",
        origins=",".join(options["allowed-origins"]),
        rate=options["rate-limit"][0],
        per=options["rate-limit"][1],
        total=options["max-connections"] or "none",
        per_user=options["max-connections-per-user"] or "none",
    )
    if options["auth"] != "none" and options["api-token"] is None:
        log.warn("no --api-token-file: GET /presence answers 401 to everyone")

    ShutdownService(hub, reactor).setServiceParent(root)
    Reaper(
        hub, options["heartbeat-timeout"], reactor, reaper_interval(options["heartbeat-timeout"])
    ).setServiceParent(root)
    tls_ports: dict[str, ReloadableTLS] = options.get("tls") or {}
    for description in options["ports"]:
        tls = tls_ports.get(description)
        # ssl: ports get our TLS policy and a context that reloads on SIGHUP.
        endpoint = (
            endpoints.serverFromString(reactor, description)
            if tls is None
            else tls.endpoint(reactor)
        )
        ListeningPort(description, endpoint, site).setServiceParent(root)
    TLSReloadService(list(tls_ports.values()), reactor).setServiceParent(root)
    log.info("presence serving on {ports}", ports=", ".join(options["ports"]))
    return root
