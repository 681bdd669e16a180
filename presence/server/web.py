"""The resource tree on one port: the WebSocket upgrade at "/", /health, /metrics and the
read-only /presence query API. Errors are JSON bodies."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ..core import wire
from ..core.auth import bearer
from ..core.model import UserView
from ..hub import PresenceHub, RoomPage, member_json, user_json
from .client_file import ClientDirectory
from .handshake import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES,
    HandshakeChannel,
    release_channel,
)
from .metrics import Metrics

MAX_QUERY_IDS = 1000


def json_response(request: Request, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return wire.encode(body)


def json_error(request: Request, code: int, error: str, message: str) -> bytes:
    return json_response(request, code, {"error": error, "message": message})


class JsonError(Resource):
    isLeaf = True

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__()
        self.code, self.error, self.message = code, error, message

    def render(self, request: Request) -> bytes:
        return json_error(request, self.code, self.error, self.message)


NOT_FOUND = JsonError(404, "NOT_FOUND", "no such resource")


class Endpoint(Resource):
    """A resource with no children: anything below it is a 404, not itself."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return NOT_FOUND


class Health(Endpoint):
    def __init__(self, clock: IReactorTime, started: float, status: Callable[[], Any]) -> None:
        super().__init__()
        self.clock, self.started, self.status = clock, started, status

    def render_GET(self, request: Request) -> bytes:
        now = self.clock.seconds()
        body = {"status": "OK", "timestamp": wire.iso(now), "uptime": round(now - self.started, 3)}
        problem = self.status()
        if problem:
            body.update(status="DEGRADED", reason=problem)
            return json_response(request, 503, body)
        return json_response(request, 200, body)


class MetricsPage(Endpoint):
    """Rendered on the reactor thread, so collectors read the model without locks."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)


def _user_ids_from(raw: bytes) -> list[str] | None:
    try:
        ids = raw.decode("utf-8").split(",")
    except UnicodeDecodeError:
        return None
    if not all(wire.valid_user_id(user_id) for user_id in ids):
        return None
    return list(dict.fromkeys(ids))


class PresenceQuery(Resource):
    """GET /presence/{userId} and GET /presence?userIds=a,b,c: what watchers would be told."""

    isLeaf = True

    def __init__(self, hub: PresenceHub, online: IResource | None = None) -> None:
        super().__init__()
        self.hub = hub
        self.online = online  # /presence/online: the listing (server/online.py)

    def render_GET(self, request: Request) -> Any:
        path = [segment for segment in request.postpath or () if segment]
        if path == [b"online"] and self.online is not None:
            return self.online.render(request)
        if len(path) > 1:
            return json_error(request, 404, "NOT_FOUND", "no such resource")
        if path:
            ids = _user_ids_from(path[0])
            if ids is None or len(ids) != 1:
                return json_error(request, 400, "INVALID_USER_ID", "invalid userId")
            single = True
        else:
            raw = request.args.get(b"userIds")
            if not raw or len(raw) != 1:
                return json_error(request, 400, "INVALID_QUERY", "userIds is required")
            ids = _user_ids_from(raw[0])
            if ids is None:
                return json_error(request, 400, "INVALID_USER_ID", "userIds holds an invalid id")
            if len(ids) > MAX_QUERY_IDS:
                return json_error(
                    request, 400, "TOO_MANY_USER_IDS", f"at most {MAX_QUERY_IDS} userIds"
                )
            single = False

        def body(views: dict[str, UserView]) -> dict[str, Any]:
            if single:
                return {"userId": ids[0], **user_json(views[ids[0]])}
            return {"users": {u: user_json(v) for u, v in views.items()}}

        return answer_later(request, self.hub.lookup(ids), body)


T = TypeVar("T")
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def _cursor(raw: bytes) -> str | None:
    """A cursor is the last userId of the page before, base64url (opaque to clients)."""
    try:
        user_id = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return user_id if wire.valid_user_id(user_id) else None


def _query_int(request: Request, name: bytes, default: int, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if not raw:
        return default
    try:
        value = int(raw[0])
    except ValueError:
        return None
    return value if low <= value <= high and len(raw) == 1 else None


def cursor_text(user_id: str) -> str:
    return base64.urlsafe_b64encode(user_id.encode()).rstrip(b"=").decode()


def paging(request: Request) -> tuple[int, str | None] | bytes:
    """A paged GET's ``limit`` and the userId its ``cursor`` names (None: the first page),
    or the 400 to answer."""
    limit = _query_int(request, b"limit", DEFAULT_PAGE, 1, MAX_PAGE)
    if limit is None:
        return json_error(request, 400, "INVALID_LIMIT", f"limit must be 1 to {MAX_PAGE}")
    raw = request.args.get(b"cursor")
    if not raw:
        return limit, None
    after = _cursor(raw[0]) if len(raw) == 1 else None
    if after is None:
        return json_error(request, 400, "INVALID_CURSOR", "invalid cursor")
    return limit, after


def answer_later(
    request: Request, d: defer.Deferred[T], body: Callable[[T], dict[str, Any]]
) -> Any:
    """Answer 200 with ``body(result)`` once the hub has, or 503 if it cannot."""

    def answer(result: T) -> None:
        request.write(json_response(request, 200, body(result)))
        request.finish()

    def failed(failure: Failure) -> None:
        request.write(json_error(request, 503, "UNAVAILABLE", "presence store unavailable"))
        request.finish()

    d.addCallbacks(answer, failed)
    return server.NOT_DONE_YET


class RoomQuery(Resource):
    """GET /rooms/{room}?limit=&cursor=: the room's members, paged in userId order."""

    isLeaf = True

    def __init__(self, hub: PresenceHub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: Request) -> Any:
        raw_room = b"/".join(request.postpath or ())  # a room name may hold "/" (or %2F)
        if not raw_room:
            return json_error(request, 404, "NOT_FOUND", "no such resource")
        try:
            room = raw_room.decode("utf-8")
        except UnicodeDecodeError:
            room = ""
        if not wire.valid_room(room):
            return json_error(request, 400, "INVALID_ROOM", "invalid room name")
        paged = paging(request)
        if isinstance(paged, bytes):
            return paged
        limit, after = paged

        def body(page: RoomPage) -> dict[str, Any]:
            return {
                "room": room,
                "count": page.count,
                "members": {u: member_json(m) for u, m in page.members.items()},
                "next": None if page.next is None else cursor_text(page.next),
            }

        return answer_later(request, self.hub.room_page(room, limit, after), body)


class WebSocketEntry(Resource):
    """ "/" upgrades to a WebSocket; a plain GET is told to upgrade. A connection's first
    request, when it is a well-formed upgrade, goes to Autobahn without coming here
    (HandshakeChannel's direct upgrade); everything else still does."""

    isLeaf = True

    def __init__(self, websocket: IResource) -> None:
        super().__init__()
        self.websocket = websocket

    def render(self, request: Request) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            request.setHeader(b"upgrade", b"websocket")
            return json_error(request, 426, "UPGRADE_REQUIRED", "connect with a WebSocket")
        release_channel(request.channel)
        result = self.websocket.render(request)
        if result is server.NOT_DONE_YET:  # upgraded: no HTTP request is pending any more
            request.channel.requests = []
        return result


class BearerGuard(Resource):
    """Serves ``child`` only to ``Authorization: Bearer <token>``; 401 otherwise (and always
    when there is no token to compare with)."""

    isLeaf = True

    def __init__(self, child: IResource, token: bytes | None) -> None:
        super().__init__()
        self.child = child
        self.token = token

    def render(self, request: Request) -> Any:
        header = request.getHeader(b"authorization")
        offered = bearer(header.decode("latin-1")) if header else None
        if (
            self.token is None
            or offered is None
            or not hmac.compare_digest(offered.encode("latin-1", "replace"), self.token)
        ):
            request.setHeader(b"www-authenticate", b'Bearer realm="presence"')
            return json_error(
                request, 401, "UNAUTHORIZED", "a valid Authorization: Bearer token is required"
            )
        return self.child.render(request)


class Root(Resource):
    def __init__(self, children: dict[bytes, IResource]) -> None:
        super().__init__()
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return NOT_FOUND


class QuietSite(server.Site):
    """No access log: request lines carry userIds and tokens in their query strings.

    Every connection gets a HandshakeChannel: an absolute deadline for each request and a
    cap on its header bytes."""

    handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT
    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    on_handshake_expired: Callable[[], None] | None = None
    websocket: Any = None  # the factory "/" upgrades to, directly (see handshake.py)

    def log(self, request: Any) -> None:
        pass

    def protocol(self) -> HandshakeChannel:  # type: ignore[override]
        channel = HandshakeChannel()
        channel.handshake_timeout = self.handshake_timeout
        channel.totalHeadersSize = channel.MAX_LENGTH = self.max_header_bytes
        channel.on_expired = self.on_handshake_expired
        channel.websocket = self.websocket
        return channel


def build_site(
    factory: Any,
    hub: PresenceHub,
    metrics: Metrics,
    clock: IReactorTime,
    started: float,
    *,
    require_api_token: bool = False,
    api_token: bytes | None = None,
    metrics_token: bytes | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    online: IResource | None = None,
    api: Mapping[bytes, IResource] | None = None,
    pages: Mapping[bytes, IResource] | None = None,
) -> server.Site:
    """``require_api_token`` (auth on, or an api token given): /presence needs ``api_token``
    as a Bearer token (no token: always 401). ``metrics_token``: /metrics needs it too.
    ``online`` serves /presence/online; ``api`` more routes under /presence's rule (/stats),
    ``pages`` open ones (/dashboard)."""
    presence: IResource = PresenceQuery(hub, online)
    rooms: IResource = RoomQuery(hub)
    extra = dict(api or {})
    if require_api_token or api_token is not None:
        presence = BearerGuard(presence, api_token)
        rooms = BearerGuard(rooms, api_token)
        extra = {name: BearerGuard(child, api_token) for name, child in extra.items()}
    metrics_page: IResource = MetricsPage(metrics)
    if metrics_token is not None:
        metrics_page = BearerGuard(metrics_page, metrics_token)
    root = Root(
        {
            b"": WebSocketEntry(WebSocketResource(factory)),
            b"health": Health(clock, started, hub.health_problem),
            b"metrics": metrics_page,
            b"presence": presence,
            b"rooms": rooms,
            b"client": ClientDirectory(),
            **extra,
            **(pages or {}),
        }
    )
    site = QuietSite(root, reactor=clock)
    site.displayTracebacks = False
    site.handshake_timeout = handshake_timeout
    site.max_header_bytes = max_header_bytes
    site.on_handshake_expired = metrics.errors["handshake"].inc
    site.websocket = factory
    return site
