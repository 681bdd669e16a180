"""JWT verification for the opening handshake and REFRESH_TOKEN.

Pure: no Twisted, no Autobahn; time comes in as ``now``. The accepted algorithms come from
the server's key (a secret: HS256; an RSA public key: RS256; a P-256 public key: ES256),
never from the token. A refusal names the check that failed and never echoes the token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options as JwtOptions

from .grants import ALL, BadGrant, Grants

MIN_SECRET_BYTES: Final = 32
MIN_RSA_BITS: Final = 2048
MAX_TOKEN_LENGTH: Final = 8192
DEFAULT_LEEWAY: Final = 10.0


class TokenRejected(Exception):
    """A token we refuse; ``reason`` says which check failed (safe to send and log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadKey(ValueError):
    """A key file we cannot use (raised at start-up, never for a client)."""


@dataclass(frozen=True, slots=True)
class Verified:
    user_id: str
    expires: float
    grants: Grants = ALL  # what the token lets the connection observe


def _number(claims: dict[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(f"token {name} claim is not a number")
    return float(value)


class JwtVerifier:
    def __init__(
        self,
        key: Any,
        algorithms: tuple[str, ...],
        leeway: float = DEFAULT_LEEWAY,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        if not algorithms or "none" in (a.lower() for a in algorithms):
            raise ValueError("a verifier needs real algorithms")
        self._key = key
        self.algorithms = algorithms
        self.leeway = leeway
        self.audience = audience
        self.issuer = issuer
        self._options: JwtOptions = {
            "verify_signature": True,
            # Time claims are checked below against the `now` we are given.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": audience is not None,
            "verify_iss": issuer is not None,
            "verify_sub": False,
            "verify_jti": False,
            "require": [
                "exp",
                "sub",
                *(["aud"] if audience is not None else []),
                *(["iss"] if issuer is not None else []),
            ],
        }

    def verify(self, token: str, user_id: str, now: float) -> Verified:
        """The token's claims if it is good for ``user_id`` at ``now``; else TokenRejected."""
        if not token:
            raise TokenRejected("missing token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRejected("token too large")
        claims = self._decode(token)
        expires = _number(claims, "exp")
        assert expires is not None  # required above
        if now >= expires:
            raise TokenRejected("token expired")
        not_before = _number(claims, "nbf")
        if not_before is not None and now + self.leeway < not_before:
            raise TokenRejected("token not yet valid (nbf)")
        issued_at = _number(claims, "iat")
        if issued_at is not None and issued_at > now + self.leeway:
            raise TokenRejected("token issued in the future (iat)")
        subject = claims.get("sub")
        if not isinstance(subject, str) or subject != user_id:
            raise TokenRejected("token sub does not match userId")
        try:
            grants = Grants.from_claims(claims)
        except BadGrant as e:
            raise TokenRejected(str(e)) from None
        return Verified(subject, expires, grants)

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                options=self._options,
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.InvalidAlgorithmError:
            raise TokenRejected(
                f"token algorithm not allowed (server accepts {', '.join(self.algorithms)})"
            ) from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature invalid") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenRejected(f"token has no {e.claim} claim") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("token audience (aud) not accepted") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("token issuer (iss) not accepted") from None
        except jwt.DecodeError:
            raise TokenRejected("token malformed") from None
        except jwt.PyJWTError:
            raise TokenRejected("token invalid") from None
        if not isinstance(claims, dict):
            raise TokenRejected("token malformed")
        return claims


def verifier_from_secret(
    secret: bytes,
    leeway: float = DEFAULT_LEEWAY,
    audience: str | None = None,
    issuer: str | None = None,
) -> JwtVerifier:
    """HS256 with a shared secret (surrounding whitespace, e.g. a final newline, ignored)."""
    secret = secret.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise BadKey(f"the JWT secret must hold at least {MIN_SECRET_BYTES} bytes")
    return JwtVerifier(secret, ("HS256",), leeway, audience, issuer)


def verifier_from_public_key(
    pem: bytes,
    leeway: float = DEFAULT_LEEWAY,
    audience: str | None = None,
    issuer: str | None = None,
) -> JwtVerifier:
    """RS256 for an RSA key (2048 bits or more), ES256 for a P-256 key; PEM."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise BadKey("the JWT public key is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise BadKey(f"the JWT RSA key must have at least {MIN_RSA_BITS} bits")
        return JwtVerifier(key, ("RS256",), leeway, audience, issuer)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return JwtVerifier(key, ("ES256",), leeway, audience, issuer)
    raise BadKey("the JWT public key must be RSA (RS256) or EC P-256 (ES256)")


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None
