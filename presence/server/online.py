"""GET /presence/online?limit=&cursor=&prefix=: every present user with their view, paged
in userId order, cluster-wide; a backend that was down rebuilds its copy from it (then
follows the webhooks), and the dashboard lists who is online.

The order is the same on every node and the cursor is the last userId of the page before
(base64url, like /rooms/{room}'s), so a cursor from one node continues on another. Served
under /presence (``PresenceQuery`` hands "online" here), so the same Bearer rule applies;
a user whose userId is "online" is looked up as /presence?userIds=online."""

from __future__ import annotations

import base64
from typing import Any

from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.server import Request

from ..core import wire
from ..hub import OnlinePage, PresenceHub, user_json
from .web import DEFAULT_PAGE, MAX_PAGE, _cursor, _query_int, json_error, json_response


def cursor_text(user_id: str) -> str:
    return base64.urlsafe_b64encode(user_id.encode()).rstrip(b"=").decode()


def _prefix(request: Request) -> str | None:
    """'' for none; None for a bad one (given twice, not UTF-8, or not a userId's start)."""
    raw = request.args.get(b"prefix")
    if not raw:
        return ""
    if len(raw) != 1:
        return None
    if not raw[0]:
        return ""
    try:
        prefix = raw[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return prefix if wire.valid_user_id(prefix) else None


class OnlineQuery(Resource):
    isLeaf = True

    def __init__(self, hub: PresenceHub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: Request) -> Any:
        limit = _query_int(request, b"limit", DEFAULT_PAGE, 1, MAX_PAGE)
        if limit is None:
            return json_error(request, 400, "INVALID_LIMIT", f"limit must be 1 to {MAX_PAGE}")
        after = None
        raw = request.args.get(b"cursor")
        if raw:
            after = _cursor(raw[0]) if len(raw) == 1 else None
            if after is None:
                return json_error(request, 400, "INVALID_CURSOR", "invalid cursor")
        prefix = _prefix(request)
        if prefix is None:
            return json_error(request, 400, "INVALID_PREFIX", "prefix must start a valid userId")

        def answer(page: OnlinePage) -> None:
            body = {
                "users": {u: user_json(v) for u, v in page.users.items()},
                "next": None if page.next is None else cursor_text(page.next),
            }
            request.write(json_response(request, 200, body))
            request.finish()

        def failed(failure: Failure) -> None:
            request.write(json_error(request, 503, "UNAVAILABLE", "presence store unavailable"))
            request.finish()

        self.hub.online_page(limit, after, prefix).addCallbacks(answer, failed)
        return server.NOT_DONE_YET
