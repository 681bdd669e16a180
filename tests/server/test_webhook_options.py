"""The --webhook-* options (one line on error), and the daemon wired with them: events the
hub decides reach the delivery, and the metrics are there with or without webhooks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from presence.core.webhooks import EVENT_TYPES, WebhookConfig
from presence.tap import Options
from tests.server.test_webhook_delivery import FakePoster
from tests.support.harness import Harness

SECRET = b"x" * 32


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture
def secret(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return str(path)


def test_without_a_url_there_are_no_webhooks() -> None:
    assert parse().config.webhooks is None


def test_the_options_make_one_config(secret: str, tmp_path: Path) -> None:
    config = parse(
        *("--webhook-url", "https://a.example/h", "--webhook-url", "http://10.0.0.1:81/"),
        *("--webhook-secret-file", secret, "--webhook-events", "user.online, room.left"),
        *("--webhook-timeout", "0.5", "--webhook-retry-for", "60"),
        *("--webhook-concurrency", "2", "--webhook-retain", "10"),
    ).config.webhooks
    assert config == WebhookConfig(
        urls=("https://a.example/h", "http://10.0.0.1:81/"),
        secret=SECRET,
        events=frozenset({"user.online", "room.left"}),
        timeout=0.5,
        retry_for=60.0,
        concurrency=2,
        retain=10,
    )
    defaults = parse("--webhook-url", "http://h/", "--webhook-secret-file", secret).config
    assert defaults.webhooks is not None
    assert defaults.webhooks.events == frozenset(EVENT_TYPES)
    assert (defaults.webhooks.timeout, defaults.webhooks.retry_for) == (5.0, 86400.0)
    assert (defaults.webhooks.concurrency, defaults.webhooks.retain) == (8, 100000)
    whsec = tmp_path / "whsec"
    whsec.write_bytes(b"whsec_" + base64.b64encode(b"k" * 24))
    config = parse("--webhook-url", "http://h/", "--webhook-secret-file", str(whsec)).config
    assert config.webhooks is not None and config.webhooks.secret == b"k" * 24


@pytest.mark.parametrize(
    "args, message",
    [
        (("--webhook-url", "ftp://h/"), "--webhook-url must be http"),
        (("--webhook-url", "http:///path"), "--webhook-url must be http"),
        (("--webhook-url", "http://h:port/"), "the port must be a number"),
        (("--webhook-url", "http://u:p@h/"), "no credentials"),
        (("--webhook-url", "http://h/"), "--webhook-url needs --webhook-secret-file"),
        (("--webhook-secret-file", "SECRET"), "--webhook-secret-file needs --webhook-url"),
        (("--webhook-events", "user.online"), "--webhook-events needs --webhook-url"),
        (("--webhook-events", "user.gone"), "--webhook-events must be a comma list"),
        (("--webhook-events", ","), "--webhook-events must be a comma list"),
        (("--webhook-timeout", "0"), "--webhook-timeout must be at least"),
        (("--webhook-retry-for", "-1"), "--webhook-retry-for must be at least"),
        (("--webhook-concurrency", "0"), "--webhook-concurrency must be at least"),
        (("--webhook-retain", "x"), "--webhook-retain must be a number"),
        (("--webhook-secret-file", "/no/such/file"), "is not a readable file"),
    ],
)
def test_bad_options_get_one_line(args: tuple[str, ...], message: str, secret: str) -> None:
    args = tuple(secret if a == "SECRET" else a for a in args)
    with pytest.raises(SystemExit) as e:
        parse(*args)
    text = str(e.value)
    assert message in text and "\n" not in text


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"too short\n")
    with pytest.raises(SystemExit, match="at least 32 bytes") as e:
        parse("--webhook-url", "http://h/", "--webhook-secret-file", str(short))
    assert "too short" not in str(e.value)  # never the secret itself


def test_the_daemon_delivers_what_its_hub_decides() -> None:
    config = WebhookConfig(urls=("http://receiver/",), secret=SECRET, timeout=1.0)
    h = Harness(webhooks=config, offline_grace=2.0)
    assert h.daemon.webhooks is not None
    poster = FakePoster(h.clock)
    h.daemon.webhooks.poster = poster
    alice = h.user("alice")
    assert alice.read_message()["type"] == "CONNECT"
    (request,) = poster.requests
    assert json.loads(request.body)["type"] == "user.online"
    request.answer(200)
    alice.drop()
    h.flush()
    h.advance(2.5)
    offline = poster.requests[-1]
    assert json.loads(offline.body)["data"]["userId"] == "alice"
    assert json.loads(offline.body)["type"] == "user.offline"
    assert h.sample("presence_webhook_pending") == 1
    offline.answer(200)
    assert h.sample("presence_webhook_pending") == 0
    assert h.sample("presence_webhook_deliveries_total", result="ok") == 2


def test_the_metrics_are_registered_without_webhooks() -> None:
    h = Harness()
    assert h.daemon.webhooks is None
    assert (
        h.metrics.registry.get_sample_value(
            "presence_webhook_deliveries_total", {"result": "dropped"}
        )
        == 0
    )
    assert h.metrics.registry.get_sample_value("presence_webhook_pending") == 0
