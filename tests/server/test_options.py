"""`twistd presence` options, in process: ``Options().parseOptions(args)`` either builds the
Config or exits with one clear line ("presence: ..."), never twistd's whole usage and never
a traceback. (One real twistd run in tests/e2e/test_e2e_daemon.py shows that line is what
the process prints.) A port that cannot be bound fails later, when the service starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory

from presence.config import Config
from presence.server.services import ListeningPort, with_backlog
from presence.tap import Options
from tests.support.certs import make_cert

SAFE_PORT = "tcp:0:interface=127.0.0.1"  # were a bad option accepted, nothing is exposed

BAD_OPTIONS = {
    "timeout-abc": ["--heartbeat-timeout", "abc"],
    "timeout-nan": ["--heartbeat-timeout", "nan"],
    "timeout-inf": ["--heartbeat-timeout", "inf"],
    "timeout-negative": ["--heartbeat-timeout", "-5"],
    "interval-empty": ["--heartbeat-interval", ""],
    "interval-zero": ["--heartbeat-interval", "0"],
    "timeout-not-above-interval": ["--heartbeat-interval", "30", "--heartbeat-timeout", "10"],
    "max-size-float": ["--max-message-size", "1.5"],
    "max-size-tiny": ["--max-message-size", "1"],
    "unknown-option": ["--bogus", "1"],
}
BAD_PORTS = {
    "no-type": "nonsense",
    "empty": "",
    "bare-number": "3000",
    "tcp-notaport": "tcp:notaport",
    "tcp-bad-backlog": "tcp:3000:backlog=many",
    "unknown-type": "carrier-pigeon:3000",
    "ssl-missing-files": "ssl:0:privateKey=/nonexistent/key.pem:certKey=/nonexistent/cert.pem",
}


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def refusal(*args: str) -> str:
    """The one line ``args`` exit with (a string exit code: printed, exit status 1)."""
    with pytest.raises(SystemExit) as exited:
        parse(*args)
    message = exited.value.code
    assert isinstance(message, str), message
    assert "\n" not in message.strip(), message
    assert message.startswith("presence: "), message
    assert "Traceback" not in message, message
    return message


@pytest.mark.parametrize("name", BAD_OPTIONS)
def test_bad_option_value_exits_with_one_line_error(name: str) -> None:
    option = BAD_OPTIONS[name][0]
    message = refusal("--port", SAFE_PORT, *BAD_OPTIONS[name])
    assert option in message or "--heartbeat-timeout" in message, message


@pytest.mark.parametrize("name", BAD_PORTS)
def test_bad_port_exits_with_one_line_error(name: str) -> None:
    assert "--port" in refusal("--port", BAD_PORTS[name])


def test_bad_security_options_exit_with_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x" * 40)
    short = tmp_path / "short"
    short.write_text("x" * 5)
    cases = [
        (["--auth", "jwt", "--jwt-secret-file", str(secret)], "needs --allowed-origins"),
        (["--auth", "jwt", "--allowed-origins", "*"], "exactly one of"),
        (
            ["--auth", "jwt", "--allowed-origins", "*", "--jwt-secret-file", str(short)],
            "at least 32 bytes",
        ),
        (["--rate-limit", "fast"], "MSGS/SECONDS"),
        (["--allowed-origins", "example.com"], "not an origin pattern"),
        (["--port", "ssl:3443:privateKey=/nonexistent.pem"], "cannot read"),
    ]
    for args, message in cases:
        assert message in refusal(*args), args


def test_bad_certificate_files_exit_with_one_line(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, "a")
    other_key, _ = make_cert(tmp_path, "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for private, certificate in [(key, garbage), (garbage, cert), (other_key, cert)]:
        message = refusal("--port", f"ssl:0:privateKey={private}:certKey={certificate}")
        assert message.startswith("presence: --port: "), message
    # The good pair is accepted: the TLS context is made while the options are parsed.
    assert parse("--port", f"ssl:0:privateKey={key}:certKey={cert}").config.ports[0].tls


def test_good_options_make_the_config() -> None:
    options = parse(
        *("--port", SAFE_PORT, "--heartbeat-interval", "1", "--heartbeat-timeout", "3"),
        *("--rate-limit", "1000000/1", "--max-connections-per-user", "1000000"),
    )
    config = options.config
    assert isinstance(config, Config)
    assert [p.description for p in config.ports] == [SAFE_PORT]
    assert (config.heartbeat_interval, config.heartbeat_timeout) == (1.0, 3.0)
    assert (config.rate_messages, config.rate_seconds) == (1_000_000, 1.0)
    assert config.max_connections_per_user == 1_000_000


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--help")
    assert exited.value.code in (None, 0)
    help_text = capsys.readouterr().out
    for option in (
        "--port",
        "--heartbeat-interval",
        "--heartbeat-timeout",
        "--max-message-size",
        "--rate-limit",
        "--max-connections-per-user",
    ):
        assert option in help_text, option


class Unbindable:
    """An endpoint whose port is taken."""

    def __init__(self, port: int) -> None:
        self.port = port

    def listen(self, factory: object) -> defer.Deferred[object]:
        error = OSError(98, "Address already in use")
        return defer.fail(CannotListenError("127.0.0.1", self.port, error))


def test_a_port_that_cannot_be_bound_stops_start_up_with_one_line() -> None:
    service = ListeningPort("tcp:3000:interface=127.0.0.1", Unbindable(3000), Factory())
    with pytest.raises(SystemExit) as exited:
        service.privilegedStartService()
    message = exited.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith("presence: cannot listen on tcp:3000:interface=127.0.0.1: ")
    assert "Address already in use" in message


@pytest.mark.parametrize(
    ("given", "listened"),
    [
        ("tcp:3000", "tcp:3000:backlog=511"),
        ("tcp6:3000:interface=\\:\\:1", "tcp6:3000:interface=\\:\\:1:backlog=511"),
        ("unix:/run/presence.sock", "unix:/run/presence.sock:backlog=511"),
        ("tcp:3000:backlog=64", "tcp:3000:backlog=64"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_a_port_without_a_backlog_gets_ours(given: str, listened: str) -> None:
    assert with_backlog(given) == listened


def test_dashboard_is_an_off_by_default_flag() -> None:
    assert parse("--port", SAFE_PORT).config.dashboard is False
    assert parse("--port", SAFE_PORT, "--dashboard").config.dashboard is True
    assert Config().dashboard is False
