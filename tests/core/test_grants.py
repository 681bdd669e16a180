"""The watch and rooms claims: names, trailing-* patterns, "*", and nothing without a claim."""

from __future__ import annotations

import jwt
import pytest

from presence.core.auth import TokenRejected, verifier_from_secret
from presence.core.grants import ALL, BadGrant, Grant, Grants

SECRET = b"s" * 32


def test_patterns_names_and_everything() -> None:
    grant = Grant.parse(["doc:*", "team-7:*", "lobby"], "rooms")
    assert grant.allows("doc:42") and grant.allows("team-7:x") and grant.allows("lobby")
    assert not grant.allows("lobby2") and not grant.allows("do") and not grant.allows("team-8:x")
    assert Grant.parse(["*"], "rooms").allows("anything")
    assert not Grant.parse(None, "rooms").allows("anything")
    assert not Grant.parse([], "rooms").allows("anything")
    assert grant.refused(["doc:1", "x", "lobby"]) == ["x"]


@pytest.mark.parametrize("claim", ["doc:*", [1], [""], ["a*b"], ["**"], [None]])
def test_a_malformed_claim_is_refused(claim: object) -> None:
    with pytest.raises(BadGrant):
        Grant.parse(claim, "watch")


def test_a_user_may_always_watch_themself() -> None:
    grants = Grants(Grant.parse(["bob"], "watch"), Grant.parse(None, "rooms"))
    assert grants.unwatchable("alice", ["alice", "bob", "carol"]) == ["carol"]
    assert ALL.unwatchable("alice", ["x", "y"]) == []


def test_the_verifier_reads_the_claims() -> None:
    now = 1_800_000_000.0
    verifier = verifier_from_secret(SECRET)

    def token(**claims: object) -> str:
        return jwt.encode({"sub": "alice", "exp": now + 60, **claims}, SECRET, "HS256")

    plain = verifier.verify(token(), "alice", now).grants
    assert not plain.watch.allows("bob") and not plain.rooms.allows("doc:1")
    wide = verifier.verify(token(watch=["*"], rooms=["doc:*"]), "alice", now).grants
    assert wide.watch.allows("bob") and wide.rooms.allows("doc:1")
    assert not wide.rooms.allows("chat:1")
    with pytest.raises(TokenRejected) as e:
        verifier.verify(token(rooms="doc:*"), "alice", now)
    assert "rooms claim" in e.value.reason
