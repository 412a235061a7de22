"""Single-use WebSocket tickets: `POST /documents/{id}/ws-ticket` hands one out, the socket spends it.

A ticket stands for the caller who asked for it, on one document, for 60 s, once. Browsers use it
to keep their long-lived token out of URLs. Tickets live in memory: a restart voids them, and a
reconnecting client asks for a new one (API.md).
"""

from __future__ import annotations

import secrets
from typing import Any

from mdsync import clock

TICKET_PREFIX = "mdt_"
TICKET_TTL = 60.0


class Tickets:
    def __init__(self, ttl: float = TICKET_TTL):
        self.ttl = ttl
        self._issued: dict[str, tuple[Any, str, float]] = {}

    def issue(self, principal: Any, document_id: str) -> str:
        self._expire()
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        self._issued[ticket] = (principal, document_id, clock.timestamp() + self.ttl)
        return ticket

    def redeem(self, ticket: str, document_id: str) -> Any | None:
        """The principal behind an unspent, unexpired ticket for this document; spends it."""
        entry = self._issued.pop(ticket, None)
        if entry is None:
            return None
        principal, for_document, expires = entry
        if for_document != document_id or expires <= clock.timestamp():
            return None
        return principal

    def _expire(self) -> None:
        now = clock.timestamp()
        for ticket in [t for t, (_, _, exp) in self._issued.items() if exp <= now]:
            del self._issued[ticket]
