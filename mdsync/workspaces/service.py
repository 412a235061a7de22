"""Workspaces and their members: create, rename, settings, soft delete / restore / purge, list
mine, change roles, remove, leave, transfer ownership — and the last-owner rule.

Every change writes its change-feed rows and audit rows in its own transaction. A workspace
always keeps at least one owner: each membership change re-counts owners before it commits and
refuses (409) when none would be left, so no sequence of changes can get past it.

The `access_changed` hooks (mdsync/hooks.py) are called on the event loop after a commit that
changed someone's access (member removed, left,
role raised or lowered; grant changed or revoked; share link revoked; document trashed or purged;
workspace deleted), whichever process committed it — the admin CLI too (auth/revocations.py).
`None` means "everyone" / "every document". Live sockets re-check their access
(`access.recheck`) and close or downgrade.
"""

from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from typing import Any

from aiohttp import web

from mdsync import audit, clock
from mdsync.api.errors import Conflict, Forbidden, NotFound, ValidationFailed
from mdsync.auth import revocations
from mdsync.db import Database, Tx, new_id
from mdsync.hooks import Hooks, Purge
from mdsync.sync import changes
from mdsync.workspaces.access import RANK, Access

log = logging.getLogger("mdsync.workspaces")

MAX_SETTINGS_BYTES = 64 * 1024


def workspace_json(row, role: str | None = None) -> dict:
    out = {"id": row["id"], "name": row["name"], "slug": row["slug"],
           "settings": json.loads(row["settings"]), "created_at": row["created_at"],
           "updated_at": row["updated_at"]}
    if role is not None:
        out["role"] = role
    if "deleted_at" in row.keys() and row["deleted_at"]:
        out["deleted_at"] = row["deleted_at"]
        out["purge_after"] = row["purge_after"]
    return out


def keyset(after: Any, size: int = 2) -> tuple[str, ...]:
    """The decoded `?cursor=` of a list sorted by text keys (…, id); empty strings for page one."""
    if after is None:
        return ("",) * size
    if not (isinstance(after, list) and len(after) == size and all(isinstance(v, str) for v in after)):
        raise ValidationFailed.field("cursor", "is not a cursor this server issued")
    return tuple(after)


def _slugify(name: str) -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:48] or "workspace"


# -- statements shared by the API, the invitations and the CLI (all run inside a Tx) -------------
def insert_workspace(tx: Tx, name: str, owner_id: str) -> Any:
    now = clock.iso()
    base = _slugify(name)
    slug, n = base, 1
    while tx.value("SELECT 1 FROM workspaces WHERE slug = ?", (slug,)):
        n += 1
        slug = f"{base}-{n}"
    ws_id = new_id()
    tx.execute("INSERT INTO workspaces (id, name, slug, created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
               (ws_id, name, slug, owner_id, now, now))
    changes.record(tx, ws_id, "workspace", ws_id, "upsert")
    add_member(tx, ws_id, owner_id, "owner", actor_id=owner_id)
    audit.record(tx, "workspace.create", actor_id=owner_id, target_type="workspace", target_id=ws_id,
                 workspace_id=ws_id)
    return tx.one("SELECT * FROM workspaces WHERE id = ?", (ws_id,))


def add_member(tx: Tx, workspace_id: str, user_id: str, role: str, *, actor_id: str | None,
               via: str | None = None) -> None:
    """A new membership (Conflict when already a member)."""
    if tx.value("SELECT 1 FROM members WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id)):
        raise Conflict("already a member of this workspace")
    now = clock.iso()
    tx.execute("INSERT INTO members (workspace_id, user_id, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
               (workspace_id, user_id, role, now, now))
    changes.record(tx, workspace_id, "member", user_id, "upsert")
    # the joiner learns about the workspace itself through their own feed
    changes.record(tx, workspace_id, "workspace", workspace_id, "upsert", user_id=user_id)
    audit.record(tx, "member.add", actor_id=actor_id, target_type="user", target_id=user_id,
                 workspace_id=workspace_id, detail={"role": role, **({"via": via} if via else {})})


def workspace_by_ref(tx: Tx, ref: str, *, deleted: bool = True) -> Any:
    """The workspace whose id or slug is `ref` (what an admin types), or None; `deleted=False`
    skips a deleted one."""
    return tx.one("SELECT * FROM workspaces WHERE (id = ? OR slug = ?) AND (? OR deleted_at IS NULL)",
                  (ref, ref, deleted))


def list_all(tx: Tx) -> list[Any]:
    """Every workspace with its member count and owners' emails (`mdsync workspaces list`)."""
    concat = {"sqlite": "group_concat", "postgresql": "string_agg"}[tx.engine]
    return tx.all(
        "SELECT w.id, w.slug, w.name, w.deleted_at, count(m.user_id) AS members,"
        f" {concat}(CASE WHEN m.role = 'owner' THEN CAST(u.email AS TEXT) END, ',') AS owners"
        " FROM workspaces w LEFT JOIN members m ON m.workspace_id = w.id LEFT JOIN users u ON u.id = m.user_id"
        " GROUP BY w.id ORDER BY w.name, w.id")


def member_role(tx: Tx, workspace_id: str, user_id: str) -> str | None:
    return tx.value("SELECT role FROM members WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id))


def _ensure_an_owner(tx: Tx, workspace_id: str) -> None:
    if not tx.value("SELECT count(*) FROM members WHERE workspace_id = ? AND role = 'owner'", (workspace_id,)):
        raise Conflict("a workspace must keep at least one owner: make someone else owner first")


def set_role(tx: Tx, workspace_id: str, user_id: str, role: str, *, actor_id: str | None) -> str:
    """Change a member's role; returns the old one. Conflict when no owner would remain."""
    old = member_role(tx, workspace_id, user_id)
    if old is None:
        raise NotFound("no such member")
    if old == role:
        return old
    tx.execute("UPDATE members SET role = ?, updated_at = ? WHERE workspace_id = ? AND user_id = ?",
               (role, clock.iso(), workspace_id, user_id))
    _ensure_an_owner(tx, workspace_id)
    changes.record(tx, workspace_id, "member", user_id, "upsert")
    audit.record(tx, "member.role", actor_id=actor_id, target_type="user", target_id=user_id,
                 workspace_id=workspace_id, detail={"from": old, "to": role})
    # both ways: a lowered role makes live sockets read-only, a raised one writable
    revocations.access_changed(tx, workspace_id, user_id)
    return old


def remove_member(tx: Tx, workspace_id: str, user_id: str, *, actor_id: str | None, action: str = "member.remove") -> None:
    """End a membership (and the member's grants in this workspace). Conflict for the last owner."""
    old = member_role(tx, workspace_id, user_id)
    if old is None:
        raise NotFound("no such member")
    tx.execute("DELETE FROM members WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id))
    _ensure_an_owner(tx, workspace_id)
    tx.execute("DELETE FROM document_grants WHERE user_id = ? AND document_id IN"
               " (SELECT id FROM documents WHERE workspace_id = ?)", (user_id, workspace_id))
    changes.record(tx, workspace_id, "member", user_id, "delete")
    # the one change the removed user still sees: the workspace is gone for them
    changes.record(tx, workspace_id, "workspace", workspace_id, "delete", user_id=user_id)
    audit.record(tx, action, actor_id=actor_id, target_type="user", target_id=user_id,
                 workspace_id=workspace_id, detail={"role": old})
    revocations.access_changed(tx, workspace_id, user_id)


def sole_owner_workspaces(tx: Tx, user_id: str) -> list[Any]:
    """Workspaces (not purged) where `user_id` is the only owner."""
    return tx.all(
        "SELECT w.id, w.name FROM members m JOIN workspaces w ON w.id = m.workspace_id"
        " WHERE m.user_id = ? AND m.role = 'owner' AND NOT EXISTS ("
        "  SELECT 1 FROM members o WHERE o.workspace_id = m.workspace_id AND o.role = 'owner' AND o.user_id <> m.user_id)",
        (user_id,))


def purge_workspace(tx: Tx, workspace_id: str, hooks: list[Purge] = ()) -> None:
    for hook in hooks:
        hook(tx, workspace_id)
    tx.execute("DELETE FROM workspaces WHERE id = ?", (workspace_id,))
    audit.record(tx, "workspace.purge", target_type="workspace", target_id=workspace_id, workspace_id=workspace_id)


# A deleted workspace's documents (each cascading its update log, snapshots, versions, ...) are
# purged a few at a time, each job ending after this long, so a big workspace never holds the
# single writer (which commits live edits within 1 s) for more than a moment.
PURGE_JOB_SECONDS = 0.05
PURGE_JOB_DOCUMENTS = 500


def purge_some_documents(tx: Tx, workspace_id: str, due_by: str | None) -> int:
    """Delete some documents of a deleted workspace (one job's worth); 0 when none are left, or
    when the workspace is live again (restored) or, with `due_by`, not yet due for its purge."""
    if tx.value("SELECT 1 FROM workspaces WHERE id = ? AND deleted_at IS NOT NULL"
                " AND (CAST(? AS TEXT) IS NULL OR purge_after <= ?)", (workspace_id, due_by, due_by)) is None:
        return 0
    deadline = time.perf_counter() + PURGE_JOB_SECONDS
    done = 0
    for row in tx.all("SELECT id FROM documents WHERE workspace_id = ? LIMIT ?", (workspace_id, PURGE_JOB_DOCUMENTS)):
        tx.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        done += 1
        if time.perf_counter() > deadline:
            break
    return done


async def purge_documents_in_steps(db: Database, workspace_id: str, due_by: str | None) -> None:
    """Empty a deleted workspace of its documents, job by job (see PURGE_JOB_SECONDS)."""
    for _ in range(10_000_000):  # bounded by the documents there are: each job deletes one at least
        if not await db.write(purge_some_documents, workspace_id, due_by):
            return


class WorkspaceService:
    def __init__(self, db: Database, purge_grace_seconds: int, hooks: Hooks):
        self.db = db
        self.purge_grace_seconds = purge_grace_seconds
        self.hooks = hooks  # calls workspace_purge

    # -- listeners -------------------------------------------------------------------------
    def access_changed(self, tx: Tx, workspace_id: str, user_id: str | None = None,
                       document_id: str | None = None) -> None:
        """Record in this transaction that access may have shrunk: the access listeners hear of
        it once it commits (auth/revocations.py; `set_role` and `remove_member` record their own)."""
        revocations.access_changed(tx, workspace_id, user_id, document_id)

    # -- workspaces ------------------------------------------------------------------------
    async def create(self, user_id: str, name: str) -> dict:
        row = await self.db.write(insert_workspace, name, user_id)
        return workspace_json(row, "owner")

    async def list_mine(self, user_id: str, after, limit: int) -> list[Any]:
        # sorted by (name, id); `after` is the last (name, id) served
        name, last_id = keyset(after)
        return await self.db.all(
            "SELECT w.*, m.role FROM members m JOIN workspaces w ON w.id = m.workspace_id"
            " WHERE m.user_id = ? AND w.deleted_at IS NULL AND (w.name, w.id) > (?, ?)"
            " ORDER BY w.name, w.id LIMIT ?", (user_id, name, last_id, limit))

    async def get(self, access: Access) -> dict:
        row = await self.db.one("SELECT * FROM workspaces WHERE id = ?", (access.workspace_id,))
        return workspace_json(row, access.role)

    async def update(self, access: Access, name: str | None, settings: dict | None) -> dict:
        if settings is not None and len(json.dumps(settings)) > MAX_SETTINGS_BYTES:
            raise ValidationFailed.field("settings", f"must be at most {MAX_SETTINGS_BYTES} bytes as JSON")
        ws_id = access.workspace_id

        def update(tx: Tx):
            if name is not None:
                tx.execute("UPDATE workspaces SET name = ? WHERE id = ?", (name, ws_id))
            if settings is not None:
                tx.execute("UPDATE workspaces SET settings = ? WHERE id = ?", (json.dumps(settings), ws_id))
            tx.execute("UPDATE workspaces SET updated_at = ? WHERE id = ?", (clock.iso(), ws_id))
            changes.record(tx, ws_id, "workspace", ws_id, "upsert")
            audit.record(tx, "workspace.update", actor_id=access.user_id, target_type="workspace", target_id=ws_id,
                         workspace_id=ws_id, detail={"fields": [f for f, v in (("name", name), ("settings", settings)) if v is not None]})
            return tx.one("SELECT * FROM workspaces WHERE id = ?", (ws_id,))

        return workspace_json(await self.db.write(update), access.role)

    async def delete(self, access: Access) -> None:
        ws_id = access.workspace_id

        def delete(tx: Tx):
            now = clock.iso()
            tx.execute("UPDATE workspaces SET deleted_at = ?, purge_after = ?, updated_at = ? WHERE id = ?",
                       (now, clock.iso_in(self.purge_grace_seconds), now, ws_id))
            changes.record(tx, ws_id, "workspace", ws_id, "delete")
            audit.record(tx, "workspace.delete", actor_id=access.user_id, target_type="workspace", target_id=ws_id,
                         workspace_id=ws_id, detail={"grace_seconds": self.purge_grace_seconds})
            self.access_changed(tx, ws_id)

        await self.db.write(delete)

    async def restore(self, access: Access) -> dict:
        """Undo a delete within the grace period (owners, resolved with `deleted=True`)."""
        ws_id = access.workspace_id

        def restore(tx: Tx):
            if not tx.execute("UPDATE workspaces SET deleted_at = NULL, purge_after = NULL, updated_at = ?"
                              " WHERE id = ? AND deleted_at IS NOT NULL", (clock.iso(), ws_id)).rowcount:
                raise Conflict("this workspace is not deleted")
            changes.record(tx, ws_id, "workspace", ws_id, "upsert")
            audit.record(tx, "workspace.restore", actor_id=access.user_id, target_type="workspace", target_id=ws_id,
                         workspace_id=ws_id)
            return tx.one("SELECT * FROM workspaces WHERE id = ?", (ws_id,))

        return workspace_json(await self.db.write(restore), access.role)

    async def purge_expired(self) -> int:
        """Purge every deleted workspace whose grace period is over; returns how many. Its
        documents go first, in short jobs (purge_some_documents), then the rest in one."""
        now = clock.iso()

        def purge(tx: Tx, workspace_id: str) -> int:
            if tx.value("SELECT 1 FROM workspaces WHERE id = ? AND purge_after IS NOT NULL AND purge_after <= ?",
                        (workspace_id, now)) is None:
                return 0  # restored meanwhile
            purge_workspace(tx, workspace_id, self.hooks.workspace_purge)
            return 1

        purged = 0
        for row in await self.db.all("SELECT id FROM workspaces WHERE purge_after IS NOT NULL AND purge_after <= ?",
                                     (now,)):
            await purge_documents_in_steps(self.db, row["id"], now)
            purged += await self.db.write(purge, row["id"])
        return purged

    # -- members ---------------------------------------------------------------------------
    async def members(self, workspace_id: str, after, limit: int) -> list[Any]:
        joined, last_id = keyset(after)
        return await self.db.all(
            "SELECT m.user_id, u.name, u.email, m.role, m.created_at AS joined_at FROM members m JOIN users u ON u.id = m.user_id"
            " WHERE m.workspace_id = ? AND (m.created_at, m.user_id) > (?, ?)"
            " ORDER BY m.created_at, m.user_id LIMIT ?", (workspace_id, joined, last_id, limit))

    async def member(self, workspace_id: str, user_id: str) -> Any:
        return await self.db.one(
            "SELECT m.user_id, u.name, u.email, m.role, m.created_at AS joined_at FROM members m JOIN users u ON u.id = m.user_id"
            " WHERE m.workspace_id = ? AND m.user_id = ?", (workspace_id, user_id))

    def _may_manage(self, access: Access, target_role: str, new_role: str | None = None) -> None:
        """Admins manage everyone up to admin; only owners touch owners or make owners."""
        if access.role == "owner":
            return
        if RANK[target_role] > RANK[access.role] or (new_role and RANK[new_role] > RANK[access.role]):
            raise Forbidden("only an owner can change an owner or give a role above yours")

    async def change_role(self, access: Access, user_id: str, role: str) -> None:
        ws_id = access.workspace_id

        def change(tx: Tx):
            old = member_role(tx, ws_id, user_id)
            if old is None:
                raise NotFound("no such member")
            self._may_manage(access, old, role)
            set_role(tx, ws_id, user_id, role, actor_id=access.user_id)

        await self.db.write(change)

    async def remove(self, access: Access, user_id: str) -> None:
        ws_id = access.workspace_id

        def remove(tx: Tx):
            old = member_role(tx, ws_id, user_id)
            if old is None:
                raise NotFound("no such member")
            if user_id != access.user_id:
                self._may_manage(access, old)
            remove_member(tx, ws_id, user_id, actor_id=access.user_id,
                          action="member.leave" if user_id == access.user_id else "member.remove")

        await self.db.write(remove)

    async def transfer(self, access: Access, user_id: str) -> None:
        """Make `user_id` an owner and the calling owner an admin."""
        ws_id = access.workspace_id
        if user_id == access.user_id:
            raise Conflict("you already own this workspace")

        def transfer(tx: Tx):
            if member_role(tx, ws_id, user_id) is None:
                raise NotFound("no such member")
            set_role(tx, ws_id, user_id, "owner", actor_id=access.user_id)
            set_role(tx, ws_id, access.user_id, "admin", actor_id=access.user_id)
            audit.record(tx, "workspace.transfer", actor_id=access.user_id, target_type="user", target_id=user_id,
                         workspace_id=ws_id)

        await self.db.write(transfer)


WORKSPACES: web.AppKey[WorkspaceService] = web.AppKey("workspaces", WorkspaceService)
