"""Invitations: an admin (or owner) invites someone with a role; the token joins them.

Only the SHA-256 of a token is stored; the token itself is shown once, in the create answer.
An invitation is usable once, until it expires or is revoked; an unusable one is `Gone` (410)
and accepting it changes nothing. An invitation with an email can only be used by an account that
had that email when the invitation was created, or by registering a new account with that email
and the invitation: emails are not verified, so an address set on an account after the
invitation (PATCH /me) never accepts it (403; the inviter sends a new one).
`accept_in_tx` is also the `accept_invitation` hook of registration (mdsync/hooks.py): a user who
registers with an invitation joins in the same transaction that creates the account.
"""

from __future__ import annotations

from typing import Any

from mdsync import audit, clock
from mdsync.api.errors import Conflict, Forbidden, Gone, NotFound
from mdsync.auth.store import insert_token_row
from mdsync.auth.tokens import digest, opaque
from mdsync.db import Database, Tx
from mdsync.workspaces.access import RANK, Access
from mdsync.workspaces.service import WorkspaceService, add_member, keyset, workspace_json

TOKEN_PREFIX = "mdi_"
DEFAULT_TTL = 7 * 24 * 3600


def invitation_json(row) -> dict:
    status = "pending"
    if row["accepted_at"]:
        status = "accepted"
    elif row["revoked_at"]:
        status = "revoked"
    elif row["expires_at"] <= clock.iso():
        status = "expired"
    return {"id": row["id"], "workspace_id": row["workspace_id"], "role": row["role"], "email": row["email"],
            "created_by": row["created_by"], "created_at": row["created_at"], "expires_at": row["expires_at"],
            "accepted_at": row["accepted_at"], "accepted_by": row["accepted_by"], "revoked_at": row["revoked_at"],
            "status": status}


def accept_in_tx(tx: Tx, token: str, user_id: str, email: str, *, new_account: bool = False) -> dict:
    """Use an invitation for `user_id` (`new_account`: registering with it): validate it and add
    the membership, in `tx`."""
    row = tx.one("SELECT i.*, w.deleted_at AS ws_deleted FROM invitations i JOIN workspaces w ON w.id = i.workspace_id"
                 " WHERE i.token_hash = ?", (digest(token),))
    if row is None or row["ws_deleted"]:
        raise Gone("this invitation is not valid")
    if row["revoked_at"]:
        raise Gone("this invitation was revoked")
    if row["accepted_at"]:
        raise Gone("this invitation was already used")
    if row["expires_at"] <= clock.iso():
        raise Gone("this invitation has expired")
    if row["email"]:
        user = tx.one("SELECT email, coalesce(email_set_at, created_at) AS since FROM users WHERE id = ?", (user_id,))
        if user is None or row["email"].lower() != user["email"].lower():
            raise Forbidden("this invitation is for another email address")
        if not new_account and user["since"] > row["created_at"]:
            raise Forbidden("this invitation is for an email address your account took after it was sent;"
                            " ask for a new invitation")
    add_member(tx, row["workspace_id"], user_id, row["role"], actor_id=user_id, via="invitation")
    tx.execute("UPDATE invitations SET accepted_at = ?, accepted_by = ? WHERE id = ?", (clock.iso(), user_id, row["id"]))
    audit.record(tx, "invitation.accept", actor_id=user_id, target_type="invitation", target_id=row["id"],
                 workspace_id=row["workspace_id"], detail={"role": row["role"]})
    return {"workspace_id": row["workspace_id"], "role": row["role"]}


def registration_hook(tx: Tx, token: str, user_id: str, email: str) -> None:
    accept_in_tx(tx, token, user_id, email, new_account=True)


class Invitations:
    def __init__(self, db: Database, workspaces: WorkspaceService, public_url: str):
        self.db = db
        self.workspaces = workspaces
        self.public_url = public_url

    async def create(self, access: Access, role: str, email: str | None, expires_in: int | None) -> dict:
        if RANK[role] > RANK[access.role]:
            raise Forbidden(f"you cannot invite with a role above your own ({access.role})")
        token = opaque(TOKEN_PREFIX)
        ws_id = access.workspace_id

        def create(tx: Tx):
            row = insert_token_row(tx, "invitations", token, workspace_id=ws_id, role=role, email=email,
                                   created_by=access.user_id,
                                   expires_at=clock.iso_in(expires_in if expires_in is not None else DEFAULT_TTL))
            audit.record(tx, "invitation.create", actor_id=access.user_id, target_type="invitation",
                         target_id=row["id"], workspace_id=ws_id, detail={"role": role, "email": email})
            return row

        row = await self.db.write(create)
        return {**invitation_json(row), "token": token, "url": f"{self.public_url}/invite/{token}"}

    async def list(self, workspace_id: str, after, limit: int) -> list[Any]:
        created, last_id = keyset(after)
        return await self.db.all(
            "SELECT * FROM invitations WHERE workspace_id = ? AND (created_at, id) > (?, ?)"
            " ORDER BY created_at, id LIMIT ?", (workspace_id, created, last_id, limit))

    async def revoke(self, access: Access, invitation_id: str) -> None:
        def revoke(tx: Tx):
            row = tx.one("SELECT * FROM invitations WHERE id = ? AND workspace_id = ?",
                         (invitation_id, access.workspace_id))
            if row is None:
                raise NotFound("no such invitation")
            if row["accepted_at"]:
                raise Conflict("this invitation was already used; remove the member instead")
            if RANK[row["role"]] > RANK[access.role]:
                raise Forbidden("only an owner can revoke an invitation to become owner")
            if not row["revoked_at"]:
                tx.execute("UPDATE invitations SET revoked_at = ? WHERE id = ?", (clock.iso(), invitation_id))
                audit.record(tx, "invitation.revoke", actor_id=access.user_id, target_type="invitation",
                             target_id=invitation_id, workspace_id=access.workspace_id)

        await self.db.write(revoke)

    async def accept(self, user_id: str, email: str, token: str) -> dict:
        def accept(tx: Tx):
            joined = accept_in_tx(tx, token, user_id, email)
            ws = tx.one("SELECT * FROM workspaces WHERE id = ?", (joined["workspace_id"],))
            return {**joined, "workspace": workspace_json(ws, joined["role"])}

        return await self.db.write(accept)
