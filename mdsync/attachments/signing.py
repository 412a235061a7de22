"""Signed attachment URLs: `?exp=<unix seconds>&sig=<HMAC-SHA256(key, "<id>:<exp>")>`, the key
derived from the server secret (so a signature is good for nothing else the secret signs)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re

from mdsync import clock


class Signer:
    def __init__(self, secret: str, public_url: str, ttl: int):
        self.key = hmac.new(secret.encode(), b"mdsync attachment urls", hashlib.sha256).digest()
        self.public_url = public_url.rstrip("/")
        self.ttl = ttl

    def _sig(self, attachment_id: str, exp: int) -> str:
        mac = hmac.new(self.key, f"{attachment_id}:{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def url(self, attachment_id: str) -> str:
        exp = math.ceil(clock.now().timestamp()) + self.ttl
        return f"{self.public_url}/api/v1/attachments/{attachment_id}?exp={exp}&sig={self._sig(attachment_id, exp)}"

    def valid(self, attachment_id: str, exp: str, sig: str) -> bool:
        """Whether `sig` signs `exp` for this attachment and `exp` is still ahead. Anything but
        the form `url` writes (ASCII digits; unpadded base64url) is simply not valid."""
        if not _EXP.fullmatch(exp) or not sig.isascii():
            return False
        when = int(exp)
        if not hmac.compare_digest(self._sig(attachment_id, when), sig):
            return False
        return when > clock.now().timestamp()


_EXP = re.compile(r"[0-9]{1,12}")  # Unix seconds; 12 digits reach the year 33658
