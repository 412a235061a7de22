"""Sharing one document: per-user grants (a role on that document only) and share links
(a token that lets anyone holding it read — or, signed in, comment on — that document).

Grants are for members of the document's workspace and set their role on that document,
higher or lower than their workspace role. Setting them is admin and up; like member roles, an
admin cannot grant above their own role nor change an owner's grant. Share-link tokens are
shown once; only their SHA-256 is stored. Revoking a grant or a link tells the access listeners.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mdsync import audit, clock
from mdsync.api.errors import Forbidden, NotFound
from mdsync.auth.store import insert_token_row
from mdsync.auth.tokens import opaque
from mdsync.db import Database, Tx
from mdsync.hooks import HOOKS
from mdsync.sync import changes
from mdsync.workspaces.access import RANK, Access
from mdsync.workspaces.service import WORKSPACES, keyset

SHARE_PREFIX = "mdl_"


def grant_json(row) -> dict:
    return {"document_id": row["document_id"], "user_id": row["user_id"], "name": row["name"],
            "email": row["email"], "role": row["role"], "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


def link_json(row) -> dict:
    return {"id": row["id"], "document_id": row["document_id"], "role": row["role"],
            "created_by": row["created_by"], "created_at": row["created_at"], "expires_at": row["expires_at"],
            "revoked_at": row["revoked_at"]}


GRANT_SELECT = ("SELECT g.document_id, g.user_id, u.name, u.email, g.role, g.created_at, g.updated_at"
                " FROM document_grants g JOIN users u ON u.id = g.user_id")


class Sharing:
    def __init__(self, app: web.Application, db: Database, public_url: str):
        self.app = app
        self.db = db
        self.public_url = public_url

    def _access_changed(self, tx: Tx, workspace_id: str, user_id: str | None, document_id: str) -> None:
        self.app[WORKSPACES].access_changed(tx, workspace_id, user_id, document_id)

    # -- grants ----------------------------------------------------------------------------
    async def grants(self, document_id: str, after, limit: int) -> list[Any]:
        created, last_id = keyset(after)
        return await self.db.all(GRANT_SELECT + " WHERE g.document_id = ? AND (g.created_at, g.user_id) > (?, ?)"
                                 " ORDER BY g.created_at, g.user_id LIMIT ?", (document_id, created, last_id, limit))

    async def grant(self, document_id: str, user_id: str) -> Any:
        row = await self.db.one(GRANT_SELECT + " WHERE g.document_id = ? AND g.user_id = ?", (document_id, user_id))
        if row is None:
            raise NotFound("this user has no grant on this document")
        return row

    def _may_grant(self, tx: Tx, access: Access, user_id: str, role: str | None) -> str | None:
        """Checks; returns the user's current grant role (or None)."""
        member = tx.value("SELECT role FROM members WHERE workspace_id = ? AND user_id = ?",
                          (access.workspace_id, user_id))
        if member is None:
            raise NotFound("no such member in this workspace")
        current = tx.value("SELECT role FROM document_grants WHERE document_id = ? AND user_id = ?",
                           (access.document_id, user_id))
        if access.role != "owner":
            touched = [r for r in (member, current, role) if r is not None]
            if any(RANK[r] > RANK[access.role] for r in touched):
                raise Forbidden("only an owner can grant above your role or change an owner's access")
        return current

    async def set_grant(self, access: Access, user_id: str, role: str) -> Any:
        ws, doc_id = access.workspace_id, access.document_id

        def put(tx: Tx):
            current = self._may_grant(tx, access, user_id, role)
            now = clock.iso()
            tx.execute("INSERT INTO document_grants (document_id, user_id, role, created_by, created_at, updated_at)"
                       " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (document_id, user_id)"
                       " DO UPDATE SET role = excluded.role, updated_at = excluded.updated_at",
                       (doc_id, user_id, role, access.user_id, now, now))
            # that user's view of the document changed
            changes.record(tx, ws, "document", doc_id, "upsert", user_id=user_id)
            audit.record(tx, "grant.set", actor_id=access.user_id, target_type="user", target_id=user_id,
                         workspace_id=ws, detail={"document_id": doc_id, "from": current, "to": role})
            self._access_changed(tx, ws, user_id, doc_id)
            return tx.one(GRANT_SELECT + " WHERE g.document_id = ? AND g.user_id = ?", (doc_id, user_id))

        return await self.db.write(put)

    async def revoke_grant(self, access: Access, user_id: str) -> None:
        ws, doc_id = access.workspace_id, access.document_id

        def revoke(tx: Tx):
            current = self._may_grant(tx, access, user_id, None)
            if current is None:
                raise NotFound("this user has no grant on this document")
            tx.execute("DELETE FROM document_grants WHERE document_id = ? AND user_id = ?", (doc_id, user_id))
            changes.record(tx, ws, "document", doc_id, "upsert", user_id=user_id)
            audit.record(tx, "grant.revoke", actor_id=access.user_id, target_type="user", target_id=user_id,
                         workspace_id=ws, detail={"document_id": doc_id, "role": current})
            self._access_changed(tx, ws, user_id, doc_id)

        await self.db.write(revoke)

    # -- share links -----------------------------------------------------------------------
    async def create_link(self, access: Access, role: str, expires_in: int | None) -> dict:
        ws, doc_id = access.workspace_id, access.document_id
        token = opaque(SHARE_PREFIX)

        def create(tx: Tx):
            row = insert_token_row(tx, "share_links", token, document_id=doc_id, workspace_id=ws, role=role,
                                   created_by=access.user_id,
                                   expires_at=clock.iso_in(expires_in) if expires_in is not None else None)
            audit.record(tx, "share_link.create", actor_id=access.user_id, target_type="share_link",
                         target_id=row["id"], workspace_id=ws, detail={"document_id": doc_id, "role": role})
            return row

        row = await self.db.write(create)
        return {**link_json(row), "token": token, "url": f"{self.public_url}/api/v1/share/{token}"}

    async def links(self, document_id: str, after, limit: int) -> list[Any]:
        created, last_id = keyset(after)
        return await self.db.all("SELECT * FROM share_links WHERE document_id = ? AND revoked_at IS NULL"
                                 " AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT ?",
                                 (document_id, created, last_id, limit))

    async def link(self, document_id: str, link_id: str) -> Any:
        row = await self.db.one("SELECT * FROM share_links WHERE id = ? AND document_id = ? AND revoked_at IS NULL",
                                (link_id, document_id))
        if row is None:
            raise NotFound("no such share link")
        return row

    async def revoke_link(self, access: Access, link_id: str) -> None:
        ws, doc_id = access.workspace_id, access.document_id

        def revoke(tx: Tx):
            done = tx.execute("UPDATE share_links SET revoked_at = ? WHERE id = ? AND document_id = ? AND revoked_at IS NULL",
                              (clock.iso(), link_id, doc_id)).rowcount
            if not done:
                raise NotFound("no such share link")
            audit.record(tx, "share_link.revoke", actor_id=access.user_id, target_type="share_link",
                         target_id=link_id, workspace_id=ws, detail={"document_id": doc_id})
            self._access_changed(tx, ws, None, doc_id)

        await self.db.write(revoke)

    async def shared_markdown(self, markdown: str, document: Any) -> str:
        for fn in self.app[HOOKS].share_filters:
            result = fn(markdown, document)
            markdown = await result if hasattr(result, "__await__") else result
        return markdown


SHARING: web.AppKey[Sharing] = web.AppKey("sharing", Sharing)
