from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.redis_fixture import redis_server, tcp_proxy  # noqa: F401 - fixtures


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """start_daemon(*args, tls=None) runs a real `twistd presence`; all are stopped after."""
    daemons: list[Daemon] = []

    def start(*args: str, **kwargs: object) -> Daemon:
        daemon = Daemon(tmp_path, *args, **kwargs)  # type: ignore[arg-type]
        daemons.append(daemon)
        return daemon.start()

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """One daemon with the defaults, but a short heartbeat timeout and offline grace."""
    return start_daemon("--heartbeat-interval", "1", "--heartbeat-timeout", "3")
