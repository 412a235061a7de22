"""Tokens: short-lived access JWTs (HS256), opaque refresh tokens, personal access tokens and
one-time setup tokens. Opaque tokens are random; only their SHA-256 is ever stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import jwt

from mdsync import clock

PAT_PREFIX = "mds_"
REFRESH_PREFIX = "mdr_"


def new_id() -> str:
    import uuid
    return str(uuid.uuid4())


def opaque(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str
    expires_at: float


class AccessTokens:
    """Issue and verify access JWTs. Only HS256 with our secret is accepted; `typ` must be access."""

    def __init__(self, secret: str, ttl: int):
        self._key = hashlib.sha256(("mdsync-access:" + secret).encode()).digest()
        self.ttl = ttl

    def issue(self, user_id: str, session_id: str) -> str:
        issued = int(clock.timestamp())
        claims = {"sub": user_id, "sid": session_id, "iat": issued, "exp": issued + self.ttl, "typ": "access"}
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid, unexpired access token; None for anything else."""
        try:
            claims = jwt.decode(
                token, self._key, algorithms=["HS256"],
                options={"require": ["sub", "sid", "iat", "exp", "typ"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return None
        if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str) \
                or not isinstance(claims.get("sid"), str):
            return None
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or exp <= clock.timestamp():
            return None
        return AccessClaims(claims["sub"], claims["sid"], float(exp))


@dataclass(frozen=True)
class Principal:
    """Who is calling: from an access JWT (a session) or a personal access token."""

    user_id: str
    name: str
    email: str
    is_admin: bool
    session_id: str | None = None
    token_id: str | None = None
    scopes: tuple[str, ...] = ("read", "write")

    @property
    def can_write(self) -> bool:
        return "write" in self.scopes
