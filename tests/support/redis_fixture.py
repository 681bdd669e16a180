"""Real redis-server processes on ephemeral loopback ports, started and stopped by the tests
(never the Redis that may run on 6379), and a TCP proxy in front of one that can be cut or
paused."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None, reason="redis-server is not installed"
)


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.extra = extra
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                reply = self.cli("PING")
                if reply == "PONG" or "NOAUTH" in reply:
                    return self
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cli(self, *args: str) -> str:
        assert REDIS_CLI is not None
        out = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            timeout=5,
        )
        return out.stdout.decode().strip()


class _Pipe:
    """One direction of one proxied connection. While paused, what it reads is held, not
    forwarded; if its source closes meanwhile, the held bytes are dropped, as a kernel
    drops unread data on a reset."""

    def __init__(self, source: socket.socket, sink: socket.socket, paused: bool) -> None:
        self.source, self.sink = source, sink
        self.paused = paused
        self.held: list[bytes] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            self.source.settimeout(None)
            while True:
                data = self.source.recv(65536)
                if not data:
                    break
                with self.lock:
                    if self.paused:
                        self.held.append(data)
                    else:
                        self.sink.sendall(data)
        except OSError:
            pass
        with self.lock:
            self.held = []
        for s in (self.source, self.sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        with self.lock:
            self.paused = False
            held, self.held = self.held, []
            with contextlib.suppress(OSError):
                for data in held:
                    self.sink.sendall(data)


class TcpProxy:
    """Forwards 127.0.0.1:port to a target port. cut() drops every connection and refuses
    new ones until restore(). pause() is a hung server: connections are still accepted and
    kept, but nothing is forwarded either way until resume()."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._pipes: list[_Pipe] = []
        self._paused = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        self._thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        self._thread.start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                pipes = [
                    _Pipe(client, upstream, self._paused),
                    _Pipe(upstream, client, self._paused),
                ]
                self._pipes += pipes
            for pipe in pipes:
                threading.Thread(target=pipe.run, daemon=True).start()

    def pause(self) -> None:
        with self._lock:
            self._paused = True
            for pipe in self._pipes:
                with pipe.lock:
                    pipe.paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.resume()

    def held(self) -> bytes:
        """Everything read and not forwarded since the pause, towards the target and back."""
        with self._lock:
            pipes = list(self._pipes)
        out = []
        for pipe in pipes:
            with pipe.lock:
                out.extend(pipe.held)
        return b"".join(out)

    def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # shutdown() wakes the accept thread blocked on it (close() alone does not, and
            # the port stayed bound until one more connection came); then no connection
            # can get through after the cut.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
            if self._thread is not None:
                self._thread.join(timeout=5)
                assert not self._thread.is_alive(), "the proxy's accept thread did not stop"
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._pipes = []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(target: int) -> TcpProxy:
        proxy = TcpProxy(target).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


class Resp:
    """A tiny blocking Redis client for tests (RESP2): call() and, once subscribed, read()."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def read(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"bad reply {line!r}")

    def send(self, *args: object) -> None:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))

    def call(self, *args: object) -> object:
        self.send(*args)
        return self.read()
