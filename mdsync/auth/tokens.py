"""Tokens: short-lived access JWTs (HS256), opaque refresh tokens, personal access tokens and
one-time setup tokens. Opaque tokens are random; only their SHA-256 is ever stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import NamedTuple

from mdsync import clock

PAT_PREFIX = "mds_"
REFRESH_PREFIX = "mdr_"


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
    """Issue and verify access JWTs. Only HS256 with our secret is accepted; `typ` must be access.

    Standard JWTs (any JWT library reads them), made and checked here rather than with PyJWT:
    verification runs on every request and PyJWT spends ~70 µs per token checking the base64
    alphabet in Python, and importing it (with `cryptography`) adds ~80 ms to every start. The rules are the
    strict subset we issue: three base64url segments without padding, the signature equal (in
    constant time) to HMAC-SHA256 of the first two under our key — whatever the header claims —
    then the header must say exactly HS256, and the claims must be an access token's.
    """

    def __init__(self, secret: str, ttl: int):
        self._key = hashlib.sha256(("mdsync-access:" + secret).encode()).digest()
        self.ttl = ttl
        # tokens already verified (signature, header, claims): a client sends the same one on
        # every request until it expires. Only the expiry is checked again; revocation is the
        # session lookup's business, every request. Bounded: emptied when full.
        self._verified: dict[str, AccessClaims] = {}

    def issue(self, user_id: str, session_id: str) -> str:
        issued = int(clock.timestamp())
        claims = {"sub": user_id, "sid": session_id, "iat": issued, "exp": issued + self.ttl, "typ": "access"}
        signing_input = f"{_HEADER}.{_b64encode(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{_b64encode(signature)}"

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid, unexpired access token; None for anything else."""
        known = self._verified.get(token)
        if known is not None:
            return known if known.expires_at > clock.timestamp() else None
        claims = self._check(token)
        if claims is not None:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        return claims

    def _check(self, token: str) -> AccessClaims | None:
        if len(token) > 4096 or not _JWT_SHAPE.fullmatch(token):
            return None
        signing_input, _, signature = token.rpartition(".")
        expected = hmac.digest(self._key, signing_input.encode("ascii"), "sha256")  # one-shot: no HMAC object
        # compared as text: the one spelling of the signature (its last character's two unused
        # bits zero), in constant time; the shape check made both ASCII
        if not hmac.compare_digest(signature, _b64encode(expected)):
            return None
        header_part, _, payload_part = signing_input.partition(".")
        try:
            # the header this server issues is known; only another spelling needs decoding
            header = _HEADER_JSON if header_part == _HEADER else json.loads(_b64decode(header_part))
            claims = json.loads(_b64decode(payload_part))
        except ValueError:
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return None
        if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str) \
                or not isinstance(claims.get("sid"), str) or not isinstance(claims.get("iat"), (int, float)):
            return None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or exp <= clock.timestamp():
            return None
        return AccessClaims(claims["sub"], claims["sid"], float(exp))


VERIFIED_CACHE_SIZE = 4096

# header.payload.signature, each unpadded base64url (the signature of HS256 is 43 characters);
# matched with fullmatch: `$` would also match before a final newline
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_HEADER = _b64encode(b'{"alg":"HS256","typ":"JWT"}')
_HEADER_JSON = {"alg": "HS256", "typ": "JWT"}


def _b64decode(segment: str) -> bytes:
    """Strict unpadded base64url: only the canonical spelling (the unused low bits of the last
    character zero) decodes; anything else raises ValueError (binascii.Error is one)."""
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if _b64encode(raw) != segment:
        raise ValueError("not canonical base64url")
    return raw


class Principal(NamedTuple):
    """Who is calling: from an access JWT (a session) or a personal access token. Immutable; a
    named tuple rather than a frozen dataclass: one is made per request, and a frozen dataclass's
    __init__ (an object.__setattr__ per field) cost four times as much."""

    user_id: str
    name: str
    email: str
    is_admin: bool
    session_id: str | None = None
    token_id: str | None = None
    scopes: tuple[str, ...] = ("read", "write")
    # Unix time the credential stops working (the JWT's exp, the token's expires_at; None: never).
    # Long-lived connections end there: sockets close with 4401, SSE streams end.
    expires_at: float | None = None
    user_created_at: str = ""  # read with the rest of the user's row: GET /me needs no second read

    @property
    def can_write(self) -> bool:
        return "write" in self.scopes
