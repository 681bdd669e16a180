"""--log-format json (server/logs.py): each event is one line of valid JSON with time,
level, namespace and text; the event's own fields follow, never a secret; any value
serializes. And how the daemon hands the observer to twistd."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure

from presence.app import build
from presence.config import Config
from presence.server.logs import json_line, json_observer, observer_for, twistd_log_file
from presence.tap import Options, makeService

T = 1_700_000_000.25


def event(**fields: Any) -> dict[str, Any]:
    return {
        "log_format": "user {user} did {what}",
        "log_level": LogLevel.warn,
        "log_namespace": "presence.test",
        "log_time": T,
        "log_source": None,
        **fields,
    }


def parsed(e: dict[str, Any]) -> dict[str, Any]:
    line = json_line(e)
    assert line.endswith("\n") and "\n" not in line[:-1]
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def test_the_four_keys_then_the_events_fields() -> None:
    out = parsed(event(user="alice", what="connect", count=3, ratio=0.5, ok=True, gone=None))
    assert out == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "warn",
        "namespace": "presence.test",
        "text": "user alice did connect",
        "user": "alice",
        "what": "connect",
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "gone": None,
    }


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "api_token",
        "accessToken",
        "password",
        "redis_password",
        "secret",
        "jwt_secret",
        "authorization",
        "Authorization",
        "cookie",
        "credentials",
        "api_key",
        "private_key",
        "signature",
        "payload",
        "raw",
        "raw_frame",
        "body",
    ],
)
def test_no_secret_or_payload_field_is_written(name: str) -> None:
    leak = "s3cr3t-value-that-must-not-leak"
    line = json_line(event(user="alice", what="x", **{name: leak}))
    assert leak not in line
    assert name not in json.loads(line)


def test_secrets_nested_in_a_mapping_are_dropped_too() -> None:
    out = parsed(event(user="u", what="w", headers={"Authorization": "Bearer x", "Host": "h"}))
    assert out["headers"] == {"Host": "h"}


def test_private_and_legacy_fields_are_not_repeated() -> None:
    out = parsed(event(user="u", what="w", log_logger=object(), _private=1, isError=0))
    assert set(out) == {"time", "level", "namespace", "text", "user", "what"}


class Weird:
    def __repr__(self) -> str:
        return "<Weird>"


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_values_json_cannot_hold_are_written_as_reprs() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    out = parsed(
        event(
            user=b"\xff\x00bytes",
            what=Weird(),
            nan=math.nan,
            inf=-math.inf,
            keys={(1, 2): "tuple key", 3: "int key"},
            cyclic=cyclic,
            broken=Broken(),
            control="line\nbreak\x00\u2028\ud800",
            nested={"a": [1, {"b": {1, 2}}]},
        )
    )
    assert out["user"] == repr(b"\xff\x00bytes")
    assert out["what"] == "<Weird>"
    assert out["nan"] == "nan" and out["inf"] == "-inf"
    assert out["keys"] == {"(1, 2)": "tuple key", "3": "int key"}
    assert isinstance(out["cyclic"], list)
    assert out["broken"] == "<unrepresentable Broken>"
    assert out["control"] == "line\nbreak\x00\u2028\ud800"
    assert out["nested"] == {"a": [1, {"b": [1, 2]}]}


def test_a_field_named_like_a_fixed_key_is_renamed() -> None:
    out = parsed(event(user="u", what="w", text="mine", level=3))
    assert out["text"] == "user u did w" and out["event_text"] == "mine"
    assert out["level"] == "warn" and out["event_level"] == 3


def test_a_failure_is_in_the_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    out = parsed(event(user="u", what="w", log_failure=failure))
    assert "ValueError: boom" in out["text"] and "log_failure" not in out


def test_an_event_that_cannot_be_formatted_still_gives_a_line() -> None:
    out = parsed(event(log_format="{missing} field"))
    assert out["level"] == "warn" and isinstance(out["text"], str)


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=6,
    )
)
def test_any_fields_give_one_line_of_json_with_the_fixed_keys(fields: dict[str, Any]) -> None:
    out = parsed(event(user="u", what="w", **fields))
    assert {"time", "level", "namespace", "text"} <= set(out)


def test_the_observer_writes_what_a_logger_logs() -> None:
    out = io.StringIO()
    log = Logger(namespace="presence.test", observer=json_observer(out))
    log.info("hello {who}", who="world", token="t0ken")
    line = json.loads(out.getvalue())
    assert (line["level"], line["text"], line["who"]) == ("info", "hello world", "world")
    assert "t0ken" not in out.getvalue()


def test_where_twistd_would_log(tmp_path: Any) -> None:
    import sys

    assert twistd_log_file({"nodaemon": True, "logfile": None}) is sys.stdout
    assert twistd_log_file({"nodaemon": False, "logfile": "-"}) is sys.stdout
    path = tmp_path / "presence.log"
    written = twistd_log_file({"nodaemon": True, "logfile": str(path)})
    written.write("x\n")
    written.close()
    assert path.read_text() == "x\n"


def test_json_becomes_the_applications_log_observer_text_leaves_twistds() -> None:
    """twistd's AppLogger uses the Application's ILogObserver component when it has one:
    ours for json, and for text below the debug level (it leaves out debug events); text at
    debug is twistd's own observer, untouched."""
    for fmt, level, ours in [
        ("json", "info", True),
        ("json", "debug", True),
        ("text", "info", True),
        ("text", "debug", False),
    ]:
        options = Options()
        options.parseOptions(["--port", "tcp:0", "--log-format", fmt, "--log-level", level])
        assert (options.config.log_format, options.config.log_level) == (fmt, level)
        application = Application("presence")
        makeService(options).setServiceParent(application)
        observer = application.getComponent(ILogObserver, None)
        assert ILogObserver.providedBy(observer) if ours else observer is None


def test_the_level_leaves_out_less_severe_events(capsys: pytest.CaptureFixture[str]) -> None:
    observer = observer_for("text", {"nodaemon": True}, "info")
    assert observer is not None
    for level, text in [(LogLevel.debug, "a debug line"), (LogLevel.info, "an info line")]:
        observer({"log_level": level, "log_format": text, "log_namespace": "t", "log_time": 0.0})
    out = capsys.readouterr().out
    assert "an info line" in out and "a debug line" not in out


def test_log_format_is_checked_once() -> None:
    with pytest.raises(SystemExit, match="--log-format must be one of text, json, not 'xml'"):
        Options().parseOptions(["--log-format", "xml"])
    assert observer_for("text", None, "debug") is None
    with pytest.raises(SystemExit, match="--log-level must be one of debug, info, warn, error"):
        Options().parseOptions(["--log-level", "loud"])
    assert build(Config(ports=())).log_observer is None


@pytest.mark.parametrize("level, lines", [("debug", 2), ("info", 0)])
def test_the_line_per_connection_is_made_only_at_the_debug_level(level: str, lines: int) -> None:
    from twisted.logger import globalLogPublisher

    from tests.support.harness import Harness

    made = Harness(log_level=level)
    seen: list[dict[str, Any]] = []

    def observer(e: dict[str, Any]) -> None:
        if e.get("log_namespace") == "presence.server.ws":
            seen.append(e)

    globalLogPublisher.addObserver(observer)
    try:
        client = made.open()
        client.request()
        assert client.read_message()["type"] == "CONNECT"
        client.send({"type": "DISCONNECT"})
        made.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    formats = [e["log_format"] for e in seen]
    assert len([f for f in formats if f.startswith(("connect ", "disconnect "))]) == lines
