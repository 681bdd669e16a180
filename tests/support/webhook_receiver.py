"""A webhook receiver for e2e tests: an http.server on an ephemeral loopback port, in a
thread, that verifies every request with the ``standardwebhooks`` library, answers 500 to
the first ``fail_first`` requests and lets the first ``hang_first`` hang (no answer until
the test ends), and records everything it saw. With ``tls`` (a key and certificate) it
speaks HTTPS."""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import standardwebhooks


@dataclass
class Seen:
    id: str
    answer: int | None  # None: left hanging
    payload: Any  # the verified JSON body
    headers: dict[str, str]


class Receiver:
    def __init__(
        self,
        secret: str | bytes,
        fail_first: int = 0,
        hang_first: int = 0,
        tls: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.hook = standardwebhooks.Webhook(secret)
        self.fail_first = fail_first
        self.hang_first = hang_first
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as treq's pool expects

            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme, self.host = ("https" if tls else "http"), host
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[1]), str(tls[0]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"{self.scheme}://{self.host}:{port}/hooks?token=t0ps3cret"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            payload = self.hook.verify(body, headers)
        except Exception as e:
            with self.lock:
                self.errors.append(f"{type(e).__name__}: {e}")
            payload = None
        if request.headers.get("Content-Type") != "application/json":
            with self.lock:
                self.errors.append(f"Content-Type {request.headers.get('Content-Type')}")
        with self.lock:
            n = len(self.seen)
            hang = n < self.hang_first
            code = 500 if hang or n < self.hang_first + self.fail_first else 200
            seen = Seen(headers.get("webhook-id", ""), None if hang else code, payload, headers)
            self.seen.append(seen)
        if hang:
            self.release.wait(60)
            return
        answer = json.dumps({"ok": code == 200}).encode()
        request.send_response(code)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(answer)))
        request.end_headers()
        request.wfile.write(answer)

    def delivered(self) -> list[Seen]:
        """The requests answered 200, in the order they came."""
        with self.lock:
            return [s for s in self.seen if s.answer == 200]

    def events(self) -> list[tuple[str, str]]:
        """(type, userId or room) of what was delivered, in order."""
        return [
            (s.payload["type"], s.payload["data"].get("userId") or s.payload["data"]["room"])
            for s in self.delivered()
        ]
