"""Runs the real `twistd presence` process on a free loopback port for end-to-end tests.

This drives a real process, so waiting here is on real time: ``wait_until`` polls what the
process shows (an answer, a metric, a log line) until a generous deadline. No test waits a
fixed time for a server-side timer, and none asserts how long something took."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "",
) -> None:
    """Poll ``predicate`` until it is true; fail (AssertionError) once ``timeout`` seconds
    have passed. The timeout is a bound on a wait, never a measurement."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = message() if callable(message) else message
            raise AssertionError(f"condition not met within {timeout}s {detail}".rstrip())
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(
        self,
        log_dir: Path,
        *args: str,
        tls: tuple[Path, Path] | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = args
        self.tls = tls
        self.port = port or free_port()
        self.log_path = log_dir / f"presence-{self.port}.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self.tls:
            key, cert = self.tls
            return f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        return f"tcp:{self.port}:interface=127.0.0.1"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(TWISTD), "-n", "--pidfile=", "presence", "--port", self.endpoint, *self.args]

    def start(self, timeout: float = 20.0) -> Daemon:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        log.close()
        try:
            wait_until(self._answers, timeout)
        except AssertionError:
            self.stop()
            raise RuntimeError(
                f"presence did not answer /health in {timeout}s:\n{self.log()}"
            ) from None
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"presence exited with {self.proc.returncode}:\n{self.log()}")
        try:
            self.get("/health")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls[1]))
        context.check_hostname = False
        return context

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.http_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context()) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, body = self.get(path, headers)
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        """Samples by name with labels, e.g. 'ws_messages_total{type="HEARTBEAT"}'."""
        _, body = self.get("/metrics")
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
