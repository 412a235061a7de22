"""Single-use WebSocket tickets: `POST /documents/{id}/ws-ticket` hands one out, the socket spends it.

A ticket stands for the caller who asked for it, on one document, for 60 s, once. Browsers use it
to keep their long-lived token out of URLs. Tickets live in memory: a restart voids them, and a
reconnecting client asks for a new one (docs: README "Real-time editing").

The store is bounded: at most `per_user` unspent tickets per user (asking for one more drops that
user's oldest), and expired tickets leave from the front of an ordered map (every ticket lives
the same `ttl`, so issue order is expiry order): issuing never scans the store. A revoked session
or token (sign-out, password reset, a disabled or deleted user) takes its unspent tickets with it.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any, NamedTuple

from mdsync import clock

TICKET_PREFIX = "mdt_"
TICKET_TTL = 60.0
MAX_TICKETS_PER_USER = 256  # one per document of a Hocuspocus socket (hocuspocus.MAX_DOCUMENTS)


class _Ticket(NamedTuple):
    principal: Any
    document_id: str
    expires: float


class Tickets:
    def __init__(self, ttl: float = TICKET_TTL, per_user: int = MAX_TICKETS_PER_USER):
        self.ttl = ttl
        self.per_user = per_user
        self._issued: OrderedDict[str, _Ticket] = OrderedDict()      # oldest first
        self._by_user: dict[str, OrderedDict[str, None]] = {}         # user id -> their tickets, oldest first

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, principal: Any, document_id: str) -> str:
        self._expire()
        mine = self._by_user.setdefault(principal.user_id, OrderedDict())
        while len(mine) >= self.per_user:
            self._drop(next(iter(mine)))
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        self._issued[ticket] = _Ticket(principal, document_id, clock.timestamp() + self.ttl)
        mine[ticket] = None
        return ticket

    def redeem(self, ticket: str, document_id: str) -> Any | None:
        """The principal behind an unspent, unexpired ticket for this document; spends it."""
        entry = self._drop(ticket)
        if entry is None or entry.document_id != document_id or entry.expires <= clock.timestamp():
            return None
        return entry.principal

    def revoke(self, user_id: str, credential_ids: list[str] | None) -> None:
        """AuthService revocation listener: unspent tickets of ended sessions or deleted personal
        access tokens go (all of the user's when `credential_ids` is None)."""
        for ticket in list(self._by_user.get(user_id, ())):
            principal = self._issued[ticket].principal
            credential = principal.session_id or principal.token_id
            if credential_ids is None or credential in credential_ids:
                self._drop(ticket)

    def _drop(self, ticket: str) -> _Ticket | None:
        entry = self._issued.pop(ticket, None)
        if entry is not None:
            user_id = entry.principal.user_id
            mine = self._by_user.get(user_id)
            if mine is not None:
                mine.pop(ticket, None)
                if not mine:
                    del self._by_user[user_id]
        return entry

    def _expire(self) -> None:
        now = clock.timestamp()
        while self._issued:
            ticket, entry = next(iter(self._issued.items()))
            if entry.expires > now:
                break
            self._drop(ticket)
