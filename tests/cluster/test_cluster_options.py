"""--redis and friends: parsed and checked at start-up, one line on error."""

from __future__ import annotations

from pathlib import Path

import pytest

from presence.cluster.store import RedisURL
from presence.tap import Options


def test_redis_urls() -> None:
    url = RedisURL.parse("redis://127.0.0.1:6380/2")
    assert (url.host, url.port, url.db, url.password, url.tls) == (
        "127.0.0.1",
        6380,
        2,
        None,
        False,
    )
    url = RedisURL.parse("rediss://:s%40cret@redis.internal/0")
    assert (url.port, url.password, url.username, url.tls) == (6379, "s@cret", None, True)
    url = RedisURL.parse("redis://app:pw@h:1", password="from-file")
    assert (url.username, url.password, url.db) == ("app", "from-file", 0)
    assert url.describe() == "redis://h:1/0"  # never the password
    for bad in ("http://h:1/0", "redis://:1/0", "redis://h:port/0", "redis://h:1/db"):
        with pytest.raises(ValueError):
            RedisURL.parse(bad)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_cluster_options(tmp_path: Path) -> None:
    options = parse()
    assert options["redis"] is None and options["node-timeout"] == 15.0
    assert options["last-seen-ttl"] == 30 * 86400
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    options = parse(
        *("--redis", "redis://h:1/0", "--redis-password-file", str(secret)),
        *("--node-name", "vm-1", "--node-timeout", "2", "--last-seen-ttl", "60"),
    )
    assert (options["node-name"], options["node-timeout"], options["last-seen-ttl"]) == (
        "vm-1",
        2.0,
        60.0,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--redis", "http://h/0"),
        ("--node-name", "x"),  # without --redis
        ("--redis", "redis://h/0", "--node-name", "a#b"),
        ("--redis", "redis://h/0", "--node-timeout", "0"),
        ("--redis", "redis://h/0", "--redis-password-file", "/nonexistent/pw"),
    ],
)
def test_bad_cluster_options_exit_with_one_line(args: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*args)
    message = str(exited.value)
    assert message.startswith("presence: ") and "\n" not in message
