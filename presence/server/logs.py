"""--log-format json: one JSON object per log event, one per line, for Loki or
Elasticsearch.

    {"time": "2026-12-01T23:59:59.123Z", "level": "info", "namespace": "presence.app",
     "text": "presence serving on tcp:3000", "ports": "tcp:3000"}

``time`` (ISO-8601, UTC), ``level``, ``namespace`` and ``text`` (the event formatted as
the text log would show it, a traceback included) are always there; then the event's own
fields, except twisted's private ``log_*`` ones and any whose name looks like a secret
(token, password, secret, authorization, cookie, ...) or a raw payload. A value JSON cannot
hold (bytes, objects, NaN) is written as its repr. An event field named like one of the
four keys is written as ``event_NAME``.

twistd picks its observer after ``makeService``: the daemon hands this observer to the
twistd Application as its ``ILogObserver`` component (``app.Daemon.setServiceParent``),
which is how twistd lets an application choose (``--logger`` on twistd's own command line
still wins). The text format is twistd's own observer, untouched.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    textFileLogObserver,
)
from twisted.python import logfile

from ..options import choice

# [name, short, default, help, coerce], spliced into tap.PARAMETERS.
LOG_OPTIONS: list[list[Any]] = [
    [
        "log-format",
        None,
        "text",
        "text (twistd's own), or json: one JSON object per log event and line.",
        choice("--log-format", "text", "json"),
    ],
    [
        "log-level",
        None,
        "info",
        "debug, info, warn or error: the least severe events written. A line per "
        "connection opened and closed is debug.",
        choice("--log-level", "debug", "info", "warn", "error"),
    ],
]
FIXED = ("time", "level", "namespace", "text")
SECRET = re.compile(
    r"token|passw|secret|authori[sz]ation|cookie|credential|api.?key|private|signature"
    r"|payload|(?:^|_)raw|body",
    re.IGNORECASE,
)
# What twisted.python.log's legacy events carry beside log_*: already in "text".
LEGACY = frozenset({"message", "format", "isError", "failure", "why", "time", "printed"})
MAX_DEPTH = 6
MAX_STRING = 8192


def iso(timestamp: float) -> str:
    at = datetime.fromtimestamp(timestamp, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return _cut(text)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "...(cut)"


def plain(value: object, depth: int = 0) -> Any:
    """``value`` as something json.dumps writes as valid JSON; anything else as a repr."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _cut(value)
    if depth >= MAX_DEPTH:
        return _repr(value)
    if isinstance(value, Mapping):
        return {
            key if isinstance(key, str) else _repr(key): plain(item, depth + 1)
            for key, item in value.items()
            if not (isinstance(key, str) and SECRET.search(key))
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item, depth + 1) for item in value]
    return _repr(value)


def event_fields(event: LogEvent) -> dict[str, Any]:
    fields = {}
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith(("log_", "_")) or key in LEGACY:
            continue
        if SECRET.search(key):
            continue
        fields[f"event_{key}" if key in FIXED else key] = plain(value)
    return fields


def _text(event: LogEvent) -> str:
    try:
        return eventAsText(event, includeTimestamp=False, includeSystem=False)
    except Exception:
        return "<the event could not be formatted>"


def json_line(event: LogEvent) -> str:
    """One event as one line of JSON (a newline at the end, none inside)."""
    level = event.get("log_level")
    stamp = event.get("log_time")
    record: dict[str, Any] = {
        "time": iso(stamp if isinstance(stamp, int | float) else 0.0),
        "level": getattr(level, "name", "info"),
        "namespace": str(event.get("log_namespace", "")),
        "text": _cut(_text(event)),
    }
    try:
        record.update(event_fields(event))
        line = json.dumps(record, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        line = json.dumps({key: record[key] for key in FIXED}, ensure_ascii=True)
    return line + "\n"


def json_observer(out: IO[str]) -> ILogObserver:
    return FileLogObserver(out, json_line)


def twistd_log_file(server_options: Mapping[str, Any] | None) -> IO[str]:
    """Where twistd itself would write the text log: stdout with -n (or --logfile -),
    else the --logfile (twistd.log by default)."""
    options = server_options or {}
    name = options.get("logfile") or ""
    if name == "-" or (not name and (options.get("nodaemon") or not options)):
        return sys.stdout
    return cast(IO[str], logfile.LogFile.fromFullPath(name or "twistd.log"))


def observer_for(
    log_format: str, server_options: Mapping[str, Any] | None, log_level: str = "info"
) -> ILogObserver | None:
    """The observer twistd should use for ``log_format`` and ``log_level``: twistd's own
    text format, or JSON, written where twistd would write, without the events below the
    level. None keeps twistd's own observer as it is (everything, to --syslog say)."""
    options = server_options or {}
    if log_format == "text" and (log_level == "debug" or options.get("syslog")):
        return None
    out = twistd_log_file(server_options)
    base = json_observer(out) if log_format == "json" else textFileLogObserver(out)
    if log_level == "debug":
        return base
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(log_level))
    return FilteringLogObserver(base, [predicate])
