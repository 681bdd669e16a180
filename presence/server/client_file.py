"""GET /client/presence.js: the browser client this daemon was installed with.

The file ships inside the package (presence/server/static/presence.js, package data: a link
to clients/js/presence.js in the repository, the file itself in a wheel) and is read once,
when the site is built.
Any origin may import it (Access-Control-Allow-Origin: *); an ETag of its content lets
browsers revalidate it cheaply (304 on If-None-Match)."""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

CLIENT_FILE = "presence.js"


def client_source() -> bytes:
    return resources.files(__package__).joinpath("static", CLIENT_FILE).read_bytes()


def _matches(header: bytes, etag: bytes) -> bool:
    """If-None-Match: ``*`` or a list of tags, weak ones compared weakly (RFC 9110 13.1.2)."""
    tags = [tag.strip() for tag in header.split(b",")]
    return b"*" in tags or any(tag.removeprefix(b"W/") == etag for tag in tags)


NOT_FOUND_BODY = b'{"error":"NOT_FOUND","message":"no such resource"}'


def _not_found(request: Request) -> bytes:
    request.setResponseCode(404)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return NOT_FOUND_BODY


class ClientFile(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):  # /client/presence.js/anything
            return _not_found(request)
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"etag", self.etag)
        request.setHeader(b"cache-control", b"no-cache")  # revalidate: an upgrade shows
        request.setHeader(b"x-content-type-options", b"nosniff")
        header = request.getHeader(b"if-none-match")
        if header is not None and _matches(header, self.etag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
        return self.body


class ClientDirectory(Resource):
    """/client/: presence.js; any other name (and the directory itself) is a JSON 404."""

    def __init__(self) -> None:
        super().__init__()
        self.file = ClientFile(client_source())

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self.file if path == CLIENT_FILE.encode() else self

    def render(self, request: Request) -> bytes:
        return _not_found(request)
