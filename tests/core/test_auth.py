"""JWT verification, pure: every refusal names its check and never echoes the token."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from presence.core.auth import (
    BadKey,
    TokenRejected,
    bearer,
    verifier_from_public_key,
    verifier_from_secret,
)

SECRET = b"s" * 40
NOW = 1_700_000_000.0


def hs(claims: dict[str, object], secret: bytes = SECRET, **headers: object) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "exp": NOW + 60, "iat": NOW - 1, **extra}


def rejected(verify: object, token: str, user_id: str = "alice", now: float = NOW) -> str:
    with pytest.raises(TokenRejected) as e:
        verify.verify(token, user_id, now)  # type: ignore[attr-defined]
    assert not token or token not in e.value.reason
    return e.value.reason


def test_valid_hs256_token() -> None:
    verifier = verifier_from_secret(SECRET + b"\n")
    verified = verifier.verify(hs(claims()), "alice", NOW)
    assert verified.user_id == "alice" and verified.expires == NOW + 60


def test_forged_signature() -> None:
    verifier = verifier_from_secret(SECRET)
    assert rejected(verifier, hs(claims(), b"x" * 40)) == "token signature invalid"


def test_expired_and_exp_required() -> None:
    verifier = verifier_from_secret(SECRET)
    assert rejected(verifier, hs(claims(exp=NOW - 1))) == "token expired"
    assert rejected(verifier, hs(claims(exp=NOW))) == "token expired"
    no_exp = {"sub": "alice"}
    assert rejected(verifier, hs(no_exp)) == "token has no exp claim"
    assert rejected(verifier, hs(claims(exp="soon"))) == "token exp claim is not a number"


def test_nbf_and_iat_with_leeway() -> None:
    verifier = verifier_from_secret(SECRET, leeway=5)
    verifier.verify(hs(claims(nbf=NOW + 4, iat=NOW + 4)), "alice", NOW)
    assert rejected(verifier, hs(claims(nbf=NOW + 6))) == "token not yet valid (nbf)"
    assert rejected(verifier, hs(claims(iat=NOW + 6))) == "token issued in the future (iat)"


def test_wrong_sub() -> None:
    verifier = verifier_from_secret(SECRET)
    assert rejected(verifier, hs(claims()), "bob") == "token sub does not match userId"
    assert rejected(verifier, hs(claims(sub=None))) in (
        "token sub does not match userId",
        "token has no sub claim",
        "token invalid",
    )


def test_alg_none_refused() -> None:
    verifier = verifier_from_secret(SECRET)
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    assert rejected(verifier, f"{header}.{body}.").startswith("token algorithm not allowed")


def test_wrong_algorithm_refused() -> None:
    """An HS256 token signed with the RSA public key (the classic confusion) is refused."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = verifier_from_public_key(pem)
    assert verifier.algorithms == ("RS256",)
    good = jwt.encode(claims(), private, algorithm="RS256")
    assert verifier.verify(good, "alice", NOW).user_id == "alice"
    hs512 = jwt.encode(claims(), b"k" * 64, algorithm="HS512")
    assert rejected(verifier, hs512).startswith("token algorithm not allowed")
    # The server that takes HS256 does not take RS256 either.
    assert rejected(verifier_from_secret(SECRET), good).startswith("token algorithm not allowed")


def test_es256_key() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = verifier_from_public_key(pem)
    assert verifier.algorithms == ("ES256",)
    assert verifier.verify(jwt.encode(claims(), private, "ES256"), "alice", NOW)


def test_malformed_and_oversized() -> None:
    verifier = verifier_from_secret(SECRET)
    assert rejected(verifier, "not-a-jwt") == "token malformed"
    assert rejected(verifier, "") == "missing token"
    assert rejected(verifier, "a" * 9000) == "token too large"


def test_bad_keys() -> None:
    with pytest.raises(BadKey):
        verifier_from_secret(b"short\n")
    with pytest.raises(BadKey):
        verifier_from_public_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pem = small.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(BadKey):
        verifier_from_public_key(pem)


def test_bearer() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer   abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None


def test_audience_and_issuer_when_configured() -> None:
    verifier = verifier_from_secret(SECRET, audience="presence", issuer="https://idp")
    good = hs(claims(aud="presence", iss="https://idp"))
    assert verifier.verify(good, "alice", NOW).user_id == "alice"
    assert rejected(verifier, hs(claims(aud="other", iss="https://idp"))) == (
        "token audience (aud) not accepted"
    )
    assert rejected(verifier, hs(claims(aud="presence", iss="https://evil"))) == (
        "token issuer (iss) not accepted"
    )
    assert rejected(verifier, hs(claims(iss="https://idp"))) == "token has no aud claim"
    # Not configured: not checked.
    assert verifier_from_secret(SECRET).verify(hs(claims(aud="x")), "alice", NOW)
