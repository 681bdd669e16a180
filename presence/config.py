"""The daemon's whole configuration, made once from the command line (``tap.Options``) or
directly by tests, and read by ``app.build``. Every value here is already coerced and
checked; the defaults are the command line's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cluster.options import ClusterConfig
from .core.auth import JwtVerifier
from .core.webhooks import WebhookConfig

DEFAULT_PORT = "tcp:3000"


@dataclass(frozen=True)
class Listen:
    """One --port: its endpoint description, and the TLS context for ssl: ports."""

    description: str
    tls: Any = None  # a server.tls.ReloadableTLS for ssl: ports


@dataclass(frozen=True)
class Config:
    ports: tuple[Listen, ...] = (Listen(DEFAULT_PORT),)
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 45.0
    max_message_size: int = 65536
    offline_grace: float = 10.0
    max_subscriptions: int = 1000
    auth: str = "none"
    verifier: JwtVerifier | None = None
    jwt_leeway: float = 10.0
    token_grace: float = 30.0
    api_token: bytes | None = None
    metrics_token: bytes | None = None
    allowed_origins: tuple[str, ...] = ("*",)
    rate_messages: int = 20
    rate_seconds: float = 10.0
    max_connections: int = 0  # 0: no cap of our own (the command line's default is the fd limit)
    max_connections_per_user: int = 16  # 0: no cap
    handshake_timeout: float = 5.0
    max_header_bytes: int = 16384
    max_send_buffer: int = 4 * 1024 * 1024
    compression: bool = False
    max_rooms_per_connection: int = 100
    max_room_members: int = 0  # 0: no cap
    room_batch_threshold: int = 100
    room_batch_interval: float = 1.0
    room_list_limit: int = 1000
    cluster: ClusterConfig | None = None  # --redis
    dashboard: bool = False  # --dashboard: GET /dashboard serves the page
    log_format: str = "text"  # or "json" (server/logs.py)
    log_level: str = "info"  # the least severe events logged (connections are debug)
    webhooks: WebhookConfig | None = None  # --webhook-url

    @property
    def require_api_token(self) -> bool:
        """/presence needs the API token: always with auth on, else when one is given."""
        return self.auth != "none" or self.api_token is not None


DEFAULTS = Config()
