"""What a connection may observe: the ``watch`` and ``rooms`` claims of its token. Pure.

A grant is a list of names or patterns: a name with a single trailing ``*`` matches every
name it begins (``"doc:*"``), and ``"*"`` alone matches everything. A token without a claim
grants nothing of that kind; without tokens (``--auth none``) everything is granted. A user
may always watch themself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final


class BadGrant(ValueError):
    """A claim that is not an array of names and patterns."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One kind of grant: exact names and name prefixes; ``everything`` for ``"*"``."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    everything: bool = False

    @classmethod
    def parse(cls, claim: Any, name: str) -> Grant:
        if claim is None:
            return NOTHING
        if not isinstance(claim, list) or not all(isinstance(p, str) and p for p in claim):
            raise BadGrant(f"token {name} claim must be an array of names and patterns")
        if "*" in claim:
            return EVERYTHING
        names, prefixes = set(), []
        for pattern in claim:
            if pattern.endswith("*"):
                if "*" in pattern[:-1]:
                    raise BadGrant(f"token {name} claim: only a trailing * is a pattern")
                prefixes.append(pattern[:-1])
            elif "*" in pattern:
                raise BadGrant(f"token {name} claim: only a trailing * is a pattern")
            else:
                names.add(pattern)
        return cls(frozenset(names), tuple(prefixes))

    def allows(self, name: str) -> bool:
        return self.everything or name in self.names or name.startswith(self.prefixes)

    def refused(self, names: Iterable[str]) -> list[str]:
        return [] if self.everything else [n for n in names if not self.allows(n)]


NOTHING: Final = Grant()
EVERYTHING: Final = Grant(everything=True)


@dataclass(frozen=True, slots=True)
class Grants:
    watch: Grant = EVERYTHING
    rooms: Grant = EVERYTHING

    def unwatchable(self, user_id: str, user_ids: Iterable[str]) -> list[str]:
        """The userIds among ``user_ids`` this connection may not watch."""
        return [u for u in self.watch.refused(user_ids) if u != user_id]

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Grants:
        return cls(
            Grant.parse(claims.get("watch"), "watch"), Grant.parse(claims.get("rooms"), "rooms")
        )


ALL: Final = Grants()  # --auth none
