"""Single-use WebSocket tickets: `POST /documents/{id}/ws-ticket` hands one out, the socket spends it.

A ticket stands for the caller who asked for it, on one document, for 60 s, once. Browsers use it
to keep their long-lived token out of URLs. On one node tickets live in memory (`Tickets`): a
restart voids them, and a reconnecting client asks for a new one (docs: README "Real-time
editing"). With several nodes (`cluster.redis_url`) a ticket asked for on one node may be spent on
any other, so `SharedTickets` keeps them in the database the nodes share: spending one is one
`DELETE … RETURNING`, which only one node can win. Not Redis: a Redis that is down or flushed
would void tickets or keep them on one node, and a refused ticket closes a y-websocket client for
good (4401); tickets are few (one per socket a browser opens) next to the writes of editing.

The store is bounded: at most `per_user` unspent tickets per user (asking for one more drops that
user's oldest), and expired tickets leave from the front of an ordered map (every ticket lives
the same `ttl`, so issue order is expiry order): issuing never scans the store. A revoked session
or token (sign-out, password reset, a disabled or deleted user) takes its unspent tickets with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections import OrderedDict
from typing import Any, NamedTuple

from mdsync import clock
from mdsync.auth.tokens import Principal
from mdsync.db import Database, Tx

log = logging.getLogger("mdsync.collab")

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

    async def issue(self, principal: Any, document_id: str) -> str:
        self._expire()
        mine = self._by_user.setdefault(principal.user_id, OrderedDict())
        while len(mine) >= self.per_user:
            self._drop(next(iter(mine)))
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        self._issued[ticket] = _Ticket(principal, document_id, clock.timestamp() + self.ttl)
        mine[ticket] = None
        return ticket

    async def redeem(self, ticket: str, document_id: str) -> Any | None:
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


class SharedTickets:
    """The tickets of several nodes, in the `ws_tickets` table (see the module's docstring): the
    same rules as `Tickets` — per user at most `per_user` unspent (the oldest go), `ttl` seconds,
    once, gone with their session or token."""

    def __init__(self, db: Database, ttl: float = TICKET_TTL, per_user: int = MAX_TICKETS_PER_USER):
        self.db = db
        self.ttl = ttl
        self.per_user = per_user

    async def issue(self, principal: Any, document_id: str) -> str:
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        await self.db.write(_insert, _hash(ticket), principal, document_id, clock.timestamp(), self.ttl, self.per_user)
        return ticket

    async def redeem(self, ticket: str, document_id: str) -> Any | None:
        """The principal behind an unspent, unexpired ticket for this document; spends it (on every node)."""
        hashed = _hash(ticket)
        # a read first: a socket with a made-up ticket costs a lookup, not a write
        if await self.db.lookup("SELECT ticket_hash FROM ws_tickets WHERE ticket_hash = ?", (hashed,)) is None:
            return None
        row = await self.db.write(_spend, hashed)
        if row is None or row["document_id"] != document_id or row["expires"] <= clock.timestamp():
            return None
        fields = json.loads(row["principal"])
        fields["scopes"] = tuple(fields["scopes"])
        return Principal(**fields)

    def revoke(self, user_id: str, credential_ids: list[str] | None) -> None:
        """AuthService revocation listener (every node hears it; the deletes agree). Spending a
        ticket also re-checks its session or token (collab/socket.py `authorize`), so a ticket
        is void from the moment its credential ends, before this delete commits."""
        try:
            done = self.db.submit(_revoke, user_id, credential_ids)
        except RuntimeError:  # the database closed (shutdown): the rows expire, and spending re-checks
            return
        done.add_done_callback(_log_failure)


def _log_failure(done) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("unspent tickets of a revoked credential not deleted: %s", done.exception())


def _hash(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def _insert(tx: Tx, ticket_hash: str, principal: Principal, document_id: str, now: float, ttl: float,
            per_user: int) -> None:
    tx.execute("DELETE FROM ws_tickets WHERE expires <= ?", (now,))
    mine = tx.value("SELECT count(*) FROM ws_tickets WHERE user_id = ?", (principal.user_id,))
    if mine >= per_user:  # the oldest go to make room (every ticket lives `ttl`: oldest = expires first)
        tx.execute("DELETE FROM ws_tickets WHERE ticket_hash IN (SELECT ticket_hash FROM ws_tickets"
                   " WHERE user_id = ? ORDER BY expires, ticket_hash LIMIT ?)",
                   (principal.user_id, mine - per_user + 1))
    tx.execute("INSERT INTO ws_tickets (ticket_hash, user_id, credential_id, document_id, principal, expires)"
               " VALUES (?, ?, ?, ?, ?, ?)",
               (ticket_hash, principal.user_id, principal.session_id or principal.token_id or "", document_id,
                json.dumps(principal._asdict()), now + ttl))


def _spend(tx: Tx, ticket_hash: str) -> Any:
    # only one transaction of all nodes deletes the row; the others find nothing
    return tx.one("DELETE FROM ws_tickets WHERE ticket_hash = ? RETURNING document_id, principal, expires",
                  (ticket_hash,))


def _revoke(tx: Tx, user_id: str, credential_ids: list[str] | None) -> None:
    if credential_ids is None:
        tx.execute("DELETE FROM ws_tickets WHERE user_id = ?", (user_id,))
        return
    for credential_id in credential_ids:
        tx.execute("DELETE FROM ws_tickets WHERE user_id = ? AND credential_id = ?", (user_id, credential_id))
