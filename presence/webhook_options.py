"""The webhook options: the --webhook-* family for twistd, and the one frozen config they
make (``core.webhooks.WebhookConfig``, which the server and the cluster both read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .core.webhooks import EVENT_TYPES, WebhookConfig, parse_secret
from .options import coerced, number, readable_file

URLS = "webhook-urls"  # where the repeatable --webhook-url collects its values


def parse_url(url: str) -> str:
    """An http:// or https:// URL with a host (and a valid port, if one is given)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--webhook-url must be http://host/... or https://..., not {url!r}")
    try:
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError:
        raise ValueError(f"--webhook-url {url!r}: the port must be a number") from None
    if parts.username or parts.password:
        raise ValueError(f"--webhook-url {parts.hostname!r}: no credentials in the URL")
    if any(c.isspace() for c in url):
        raise ValueError("--webhook-url must not contain whitespace")
    return url


def parse_events(value: str) -> frozenset[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVENT_TYPES]
    if not names or unknown:
        raise ValueError(
            f"must be a comma list of {', '.join(EVENT_TYPES)}, not {', '.join(unknown) or '-'}"
        )
    return frozenset(names)


class WebhookURLOption:
    """Mixed into tap.Options: --webhook-url may be given several times."""

    def opt_webhook_url(self, url: str) -> None:
        """Send every event to this http(s) URL (repeatable: each endpoint gets every
        event). Needs --webhook-secret-file."""
        mapping: Any = self
        mapping[URLS] = (*mapping.get(URLS, ()), parse_url(url))


WEBHOOK_OPTIONS: list[Sequence[Any]] = [
    [
        "webhook-secret-file",
        None,
        None,
        "A file holding the webhook signing secret: at least 32 bytes, or whsec_ + base64 "
        "(the Standard Webhooks form). Required with --webhook-url.",
        readable_file("--webhook-secret-file"),
    ],
    [
        "webhook-events",
        None,
        None,
        "Comma list of the events to send (default: all of " + ", ".join(EVENT_TYPES) + ").",
        coerced("--webhook-events", parse_events, "Event types."),
    ],
    [
        "webhook-timeout",
        None,
        5.0,
        "Seconds a webhook endpoint has to answer 2xx; else the event is retried.",
        number(float, 0.05, "--webhook-timeout"),
    ],
    [
        "webhook-retry-for",
        None,
        86400.0,
        "Seconds an event is retried (backoff 1 s doubling to 300 s) before it is dropped.",
        number(float, 0, "--webhook-retry-for"),
    ],
    [
        "webhook-concurrency",
        None,
        8,
        "Events delivered at once (each user's events one at a time, in order).",
        number(int, 1, "--webhook-concurrency"),
    ],
    [
        "webhook-retain",
        None,
        100000,
        "Undelivered events kept (in memory, or in the Redis Stream with --redis); past "
        "it the oldest are dropped and counted.",
        number(int, 1, "--webhook-retain"),
    ],
]


def webhook_config(options: Mapping[str, Any]) -> WebhookConfig | None:
    """The webhooks' part of the command line, checked once (ValueError: the one-line
    message); None without --webhook-url. The secret file is read here, once."""
    urls = tuple(options.get(URLS, ()))
    path = options["webhook-secret-file"]
    if not urls:
        for name in ("webhook-secret-file", "webhook-events"):
            if options[name]:
                raise ValueError(f"--{name} needs --webhook-url")
        return None
    if path is None:
        raise ValueError("--webhook-url needs --webhook-secret-file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        where = f"--webhook-secret-file: cannot read {str(path)!r}"
        raise ValueError(f"{where}: {e.strerror}") from None
    try:
        secret = parse_secret(raw)
    except ValueError as e:
        raise ValueError(f"--webhook-secret-file: {e}") from None
    events = options["webhook-events"]
    return WebhookConfig(
        urls=tuple(dict.fromkeys(urls)),
        secret=secret,
        events=frozenset(EVENT_TYPES) if events is None else events,
        timeout=options["webhook-timeout"],
        retry_for=options["webhook-retry-for"],
        concurrency=options["webhook-concurrency"],
        retain=options["webhook-retain"],
    )
