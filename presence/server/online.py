"""GET /presence/online?limit=&cursor=&prefix=: every present user with their view, paged
in userId order, cluster-wide; a backend that was down rebuilds its copy from it (then
follows the webhooks), and the dashboard lists who is online.

The order is the same on every node and the cursor is the last userId of the page before
(base64url, like /rooms/{room}'s), so a cursor from one node continues on another. Served
under /presence (``PresenceQuery`` hands "online" here), so the same Bearer rule applies;
a user whose userId is "online" is looked up as /presence?userIds=online."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from ..core import wire
from ..hub import OnlinePage, PresenceHub, user_json
from .web import answer_later, cursor_text, json_error, paging


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
        paged = paging(request)
        if isinstance(paged, bytes):
            return paged
        limit, after = paged
        prefix = _prefix(request)
        if prefix is None:
            return json_error(request, 400, "INVALID_PREFIX", "prefix must start a valid userId")

        def body(page: OnlinePage) -> dict[str, Any]:
            return {
                "users": {u: user_json(v) for u, v in page.users.items()},
                "next": None if page.next is None else cursor_text(page.next),
            }

        return answer_later(request, self.hub.online_page(limit, after, prefix), body)
