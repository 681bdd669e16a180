"""Coerce functions for twistd options: each turns the text into a value or raises
ValueError with a message naming the option (usage.Options makes that the one-line error),
and carries the coerceDoc that --help shows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def number(kind: Callable[[str], Any], minimum: float, name: str) -> Callable[[str], Any]:
    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, not {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")) or number < minimum:
            raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
        return number

    coerce.coerceDoc = f"At least {minimum}."  # type: ignore[attr-defined]
    return coerce


def choice(name: str, *choices: str) -> Callable[[str], str]:
    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    coerce.coerceDoc = f"One of {', '.join(choices)}."  # type: ignore[attr-defined]
    return coerce


def readable_file(name: str) -> Callable[[str], Path]:
    def coerce(value: str) -> Path:
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"{name}: {value!r} is not a readable file")
        return path

    coerce.coerceDoc = "A file path."  # type: ignore[attr-defined]
    return coerce


def coerced(name: str, parse: Callable[[str], Any], doc: str) -> Callable[[str], Any]:
    def coerce(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise ValueError(f"{name} {e}") from None

    coerce.coerceDoc = doc  # type: ignore[attr-defined]
    return coerce


def nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()
