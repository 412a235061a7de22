"""The one-time setup token of a server without users: `POST /api/v1/auth/setup` with it creates
the first admin (docs/operations.md "4. First admin").

The token belongs to the database, not to a process: several nodes behind a load balancer share
one database, and whichever node receives the POST must accept the token whichever node printed.
The `setup_token` table holds at most one row: the token's SHA-256, its expiry
(`auth.setup_token_ttl`) and who printed it. The token itself is never stored, so only the
process that made it can print it.

- `mint`: a server starting without users makes a token unless a valid unused one exists, and
  prints it. A node starting while one exists does not make a competing one: it prints where and
  when the existing one was printed. So every token a node ever printed keeps working until it
  is used, expires or the operator replaces it, and the log of whichever node printed one holds a
  working token (a second token would silently void the first: the one in the log the operator
  reads might be the void one).
- `replace`: `mdsync users setup-token` replaces it with a fresh one, printed to the
  operator who asked: the way to a token when the log that holds one is out of reach or it expired.
- `consume`: spends it in the transaction that creates the first admin. Its row is deleted there,
  so of two setups racing on two nodes one deletes it and the other finds it gone (PostgreSQL: the
  second DELETE waits for the first transaction, then sees its user: 409).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from mdsync import clock
from mdsync.api.errors import Conflict, Forbidden
from mdsync.auth import store
from mdsync.auth.tokens import digest
from mdsync.db import Database, Tx

NEW_TOKEN_COMMAND = "mdsync users setup-token"
SETUP_DONE = "setup is done: this server already has users"


def made_by(program: str) -> str:
    """Who prints a token, as the other nodes will name it: `program` on this host, this pid."""
    return f"`{program}` on {socket.gethostname()} (pid {os.getpid()})"


def mint(tx: Tx, token: str, ttl: int, maker: str) -> bool:
    """Store `token` (its hash) as the setup token, valid `ttl` seconds, unless a valid one exists:
    True when stored. Conflict when the server has users."""
    if store.count_users(tx):
        raise Conflict(SETUP_DONE)
    tx.execute("DELETE FROM setup_token WHERE expires_at <= ?", (clock.iso(),))
    # two nodes starting at once: one inserts, the other's insert waits for it and does nothing
    return tx.execute("INSERT INTO setup_token (id, token_hash, created_at, expires_at, made_by)"
                      " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                      (digest(token), clock.iso(), clock.iso_in(ttl), maker)).rowcount == 1


def replace(tx: Tx, token: str, ttl: int, maker: str) -> tuple[str, Any]:
    """Store `token` (its hash) as the setup token, valid `ttl` seconds; the valid one it replaces
    stops working. Returns the new token's expiry and the replaced one's row (made_by,
    created_at; None when there was none). Conflict when the server has users."""
    if store.count_users(tx):
        raise Conflict(SETUP_DONE)
    replaced = tx.one("SELECT made_by, created_at FROM setup_token WHERE expires_at > ?", (clock.iso(),))
    expires = clock.iso_in(ttl)
    tx.execute("INSERT INTO setup_token (id, token_hash, created_at, expires_at, made_by) VALUES (1, ?, ?, ?, ?)"
               " ON CONFLICT (id) DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at,"
               " expires_at = excluded.expires_at, made_by = excluded.made_by",
               (digest(token), clock.iso(), expires, maker))
    return expires, replaced


def consume(tx: Tx, token: str) -> None:
    """Spend `token` in the caller's transaction (the one creating the first admin): Conflict when
    the server has users, Forbidden when the token is wrong, expired or already spent."""
    key = digest(token)
    spent = tx.execute("DELETE FROM setup_token WHERE token_hash = ? AND expires_at > ?", (key, clock.iso())).rowcount
    # counted after the DELETE: a DELETE that waited for a racing setup's transaction sees its user
    if store.count_users(tx):
        raise Conflict(SETUP_DONE)
    if not spent:
        raise refusal(tx.one("SELECT expires_at FROM setup_token WHERE token_hash = ?", (key,)))


async def check(db: Database, token: str) -> None:
    """What `consume` would refuse, read without writing: asked before the password is hashed, so
    a wrong token costs no argon2 hash."""
    if await db.value("SELECT count(*) FROM users"):
        raise Conflict(SETUP_DONE)
    row = await db.one("SELECT expires_at FROM setup_token WHERE token_hash = ?", (digest(token),))
    if row is None or row["expires_at"] <= clock.iso():
        raise refusal(row)


def refusal(row: Any) -> Forbidden:
    """Why a setup token is refused: `row` is its (expires_at), None when no such token exists."""
    if row is None:
        return Forbidden("the setup token is not valid: use the one `mdsync serve` printed on a server without"
                         f" users (any node accepts it), or print a new one with `{NEW_TOKEN_COMMAND}`")
    return Forbidden(f"the setup token expired at {minute(row['expires_at'])}: print a new one with"
                     f" `{NEW_TOKEN_COMMAND}` (a node starting without users also prints one)")


async def pending(db: Database) -> Any:
    """The valid unused token's row (made_by, created_at, expires_at) while the server has no
    user, else None."""
    return await db.one("SELECT made_by, created_at, expires_at FROM setup_token"
                        " WHERE expires_at > ? AND NOT EXISTS (SELECT 1 FROM users)", (clock.iso(),))


def minute(iso: str) -> str:
    """A stored timestamp to the minute, as the banners print it: `2026-12-08 16:52 UTC`."""
    return iso[:16].replace("T", " ") + " UTC"
