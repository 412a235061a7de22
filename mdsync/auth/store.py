"""SQL for users, sessions, refresh tokens and personal access tokens.

Write functions take the writer's `Tx` and run inside its transaction; read functions take the
`Database` and use a read connection. Every write that changes what a request's principal is made
of (a user row, a session ended, a token deleted) calls `principals.changed`: the principals
cached in this process are forgotten when it commits.
"""

from __future__ import annotations

import json
from typing import Any

from mdsync import clock
from mdsync.auth import principals, revocations
from mdsync.auth.tokens import digest
from mdsync.db import Database, IntegrityError, Tx, new_id

USER_COLUMNS = "id, email, name, is_admin, disabled_at, created_at, password_hash"


def user_json(row: Any) -> dict:
    return {"id": row["id"], "email": row["email"], "name": row["name"],
            "is_admin": bool(row["is_admin"]), "created_at": row["created_at"]}


# -- users -------------------------------------------------------------------------------------
def insert_user(tx: Tx, email: str, name: str, password_hash: str, is_admin: bool = False) -> Any:
    now = clock.iso()
    user_id = new_id()
    try:
        with tx.attempt():  # the caller may go on after EmailTaken
            tx.execute("INSERT INTO users (id, email, name, password_hash, is_admin, created_at, updated_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)", (user_id, email, name, password_hash, int(is_admin), now, now))
    except IntegrityError:
        raise EmailTaken(email) from None
    return tx.one(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,))


class EmailTaken(Exception):
    pass


def user_by_email_tx(tx: Tx, email: str) -> Any | None:
    return tx.one(f"SELECT {USER_COLUMNS} FROM users WHERE email = ?", (email,))


def user_by_id_tx(tx: Tx, user_id: str) -> Any | None:
    return tx.one(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,))


async def user_by_email(db: Database, email: str) -> Any | None:
    return await db.one(f"SELECT {USER_COLUMNS} FROM users WHERE email = ?", (email,))


async def user_by_id(db: Database, user_id: str) -> Any | None:
    return await db.lookup(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,))


def count_users(tx: Tx) -> int:
    return tx.value("SELECT count(*) FROM users")


def update_user(tx: Tx, user_id: str, **fields) -> Any:
    allowed = {"name", "email", "email_set_at", "password_hash", "is_admin", "disabled_at"}
    assert set(fields) <= allowed, fields
    if fields:
        assignments = ", ".join(f"{name} = ?" for name in fields)  # names from the allow-list above
        try:
            with tx.attempt():
                tx.execute(f"UPDATE users SET {assignments}, updated_at = ? WHERE id = ?",
                           (*fields.values(), clock.iso(), user_id))
        except IntegrityError:
            raise EmailTaken(fields.get("email")) from None
        principals.changed(tx)
    return user_by_id_tx(tx, user_id)


def delete_user(tx: Tx, user_id: str) -> None:
    """Delete the account; its sessions and tokens go with it (their connections close)."""
    tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
    principals.changed(tx)
    revocations.credentials_ended(tx, user_id, None)


def list_users(tx: Tx) -> list[Any]:
    return tx.all(f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at, email")


# -- sessions and refresh tokens ---------------------------------------------------------------
def create_session(tx: Tx, user_id: str, device_name: str | None, user_agent: str | None,
                   ttl: int, refresh_token: str) -> str:
    now = clock.iso()
    session_id = new_id()
    tx.execute("INSERT INTO sessions (id, user_id, device_name, user_agent, created_at, last_used_at, expires_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)",
               (session_id, user_id, device_name, (user_agent or "")[:500] or None, now, now, clock.iso_in(ttl)))
    tx.execute("INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES (?, ?, ?)",
               (digest(refresh_token), session_id, now))
    return session_id


def refresh_token_row(tx: Tx, refresh_token: str) -> Any | None:
    return tx.one(
        "SELECT r.spent_at, s.id AS session_id, s.user_id, s.revoked_at, s.expires_at, u.disabled_at"
        " FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id"
        " WHERE r.token_hash = ?", (digest(refresh_token),))


def rotate_refresh_token(tx: Tx, session_id: str, old_token: str, new_token: str, ttl: int) -> None:
    now = clock.iso()
    tx.execute("UPDATE refresh_tokens SET spent_at = ? WHERE token_hash = ?", (now, digest(old_token)))
    tx.execute("INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES (?, ?, ?)",
               (digest(new_token), session_id, now))
    tx.execute("UPDATE sessions SET last_used_at = ?, expires_at = ? WHERE id = ?",
               (now, clock.iso_in(ttl), session_id))


def revoke_session(tx: Tx, session_id: str) -> None:
    # all(): a RETURNING statement must run to its end before the job's savepoint is released
    for row in tx.all("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING user_id",
                      (clock.iso(), session_id)):
        principals.changed(tx)
        revocations.credentials_ended(tx, row["user_id"], [session_id])


def revoke_sessions_of(tx: Tx, user_id: str, keep: str | None = None) -> list[str]:
    rows = tx.all("SELECT id FROM sessions WHERE user_id = ? AND revoked_at IS NULL AND id IS DISTINCT FROM ?",
                  (user_id, keep))
    tx.execute("UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL AND id IS DISTINCT FROM ?",
               (clock.iso(), user_id, keep))
    ended = [row["id"] for row in rows]
    if ended:
        principals.changed(tx)
    revocations.credentials_ended(tx, user_id, ended)
    return ended


async def session_state(db: Database, session_id: str) -> Any | None:
    """What every request signed with an access token needs: is the session live, who is it."""
    return await db.lookup(
        "SELECT s.user_id, s.revoked_at, s.expires_at, u.email, u.name, u.is_admin, u.disabled_at, u.created_at"
        " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?", (session_id,))


def _after(after: tuple[str, str] | None) -> tuple[str | None, str]:
    return (None, "") if after is None else after


async def list_sessions(db: Database, user_id: str, after: tuple[str, str] | None, limit: int) -> list[Any]:
    """Newest first, a page after `after` ([created_at, id] of the last row of the previous one)."""
    created, row_id = _after(after)
    return await db.all(
        "SELECT id, device_name, user_agent, created_at, last_used_at FROM sessions"
        " WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?"
        " AND (CAST(? AS TEXT) IS NULL OR (created_at, id) < (?, ?)) ORDER BY created_at DESC, id DESC LIMIT ?",
        (user_id, clock.iso(), created, created, row_id, limit))


def session_of_user(tx: Tx, session_id: str, user_id: str) -> Any | None:
    return tx.one("SELECT id, revoked_at FROM sessions WHERE id = ? AND user_id = ?", (session_id, user_id))


# -- personal access tokens --------------------------------------------------------------------
# the tables whose rows hold a bearer token by its hash
TOKEN_TABLES = frozenset({"api_tokens", "share_links", "invitations"})


def insert_token_row(tx: Tx, table: str, token: str, **columns: Any) -> Any:
    """A new row holding a bearer token (personal access token, share link, invitation): a fresh
    id, the token's SHA-256 (never the token: the caller shows it once), created_at now, and
    `columns`. The table and column names come from the callers' code, never from input."""
    assert table in TOKEN_TABLES, table
    values = {"id": new_id(), "token_hash": digest(token), "created_at": clock.iso(), **columns}
    tx.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
               tuple(values.values()))
    return tx.one(f"SELECT * FROM {table} WHERE id = ?", (values["id"],))


def insert_api_token(tx: Tx, user_id: str, name: str, token: str, scopes: list[str],
                     expires_at: str | None) -> Any:
    return insert_token_row(tx, "api_tokens", token, user_id=user_id, name=name, prefix=token[:12],
                            scopes=json.dumps(scopes), expires_at=expires_at)


def api_token_json(row: Any) -> dict:
    return {"id": row["id"], "name": row["name"], "prefix": row["prefix"], "scopes": json.loads(row["scopes"]),
            "created_at": row["created_at"], "expires_at": row["expires_at"], "last_used_at": row["last_used_at"]}


async def list_api_tokens(db: Database, user_id: str, after: tuple[str, str] | None, limit: int) -> list[Any]:
    created, row_id = _after(after)
    return await db.all("SELECT * FROM api_tokens WHERE user_id = ? AND (CAST(? AS TEXT) IS NULL OR (created_at, id) < (?, ?))"
                        " ORDER BY created_at DESC, id DESC LIMIT ?", (user_id, created, created, row_id, limit))


def delete_api_token(tx: Tx, token_id: str, user_id: str) -> bool:
    if tx.execute("DELETE FROM api_tokens WHERE id = ? AND user_id = ?", (token_id, user_id)).rowcount == 0:
        return False
    principals.changed(tx)
    revocations.credentials_ended(tx, user_id, [token_id])
    return True


def delete_api_tokens_of(tx: Tx, user_id: str) -> list[str]:
    """Revoke every personal access token of a user; returns their ids."""
    ended = [r[0] for r in tx.all("DELETE FROM api_tokens WHERE user_id = ? RETURNING id", (user_id,))]
    if ended:
        principals.changed(tx)
        revocations.credentials_ended(tx, user_id, ended)
    return ended


async def session_signed_in_at(db: Database, session_id: str) -> str | None:
    """When a session signed in (with the password: login, registration or setup)."""
    return await db.value("SELECT created_at FROM sessions WHERE id = ?", (session_id,))


async def api_token_state(db: Database, token_hash: str) -> Any | None:
    """What every request with a personal access token needs, by the token's `digest`."""
    return await db.lookup(
        "SELECT t.id, t.user_id, t.scopes, t.expires_at, t.last_used_at, u.email, u.name, u.is_admin, u.disabled_at,"
        " u.created_at FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?", (token_hash,))


async def api_token_by_id(db: Database, token_id: str) -> Any | None:
    """Whether a personal access token is still usable, by id (for a socket ticket it was traded for)."""
    return await db.lookup(
        "SELECT t.expires_at, u.disabled_at FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?",
        (token_id,))


def touch_api_token(tx: Tx, token_id: str) -> None:
    tx.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (clock.iso(), token_id))
