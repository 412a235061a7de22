"""The one permission check: who may do what in a workspace, on a folder or on a document.

`resolve(db, principal, workspace_id=… | document_id=… | folder_id=…)` answers the caller's
effective `Access` (their role) or raises NotFound when the caller cannot see the thing at all;
`require(request, role, …)` adds the role check (Forbidden when they can see it but their role
is too low). Every route on workspaces, folders and documents calls `require` first.

Why 404 rather than 403: a caller who is not a member must not learn that an id exists (docs/api.md
"Conventions"). A member whose role is too low sees the thing, so they get 403.

Effective role on a document: the member's workspace role, replaced by their document grant on
that document when there is one (a grant raises or lowers). Share links give their role on their
one document to whoever holds the token: anonymously at `GET /share/{token}` (`resolve_share`),
and to signed-in callers on routes that opt in with `share=True` (the token travels in the
`X-Mdsync-Share` header or the `?share=` query parameter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mdsync import clock
from mdsync.api.errors import Forbidden, NotFound
from mdsync.api.routing import PRINCIPAL
from mdsync.appkeys import DB
from mdsync.auth.tokens import digest

ROLES = ("viewer", "commenter", "editor", "admin", "owner")  # ascending
RANK = {role: i for i, role in enumerate(ROLES)}
SHARE_HEADER = "X-Mdsync-Share"
SHARE_QUERY = "share"

# The document columns an Access carries (everything but the markdown, which can be large).
DOC_COLUMNS = ("d.id, d.workspace_id, d.folder_id, d.title, d.kind, d.content_model, d.size, d.seq,"
               " d.position, d.created_by, d.created_at, d.updated_at, d.deleted_at")


# The documents a signed-in user may read, for queries over many documents at once (search),
# as joins onto a `documents` alias `d`, with one parameter: the user id. The same rule as
# `resolve`: a member of the document's workspace, which is not deleted. A grant only replaces
# the role on its document, and every role reads. Trashed documents are the caller's to exclude.
READABLE_DOCUMENTS = ("JOIN workspaces w ON w.id = d.workspace_id AND w.deleted_at IS NULL"
                      " JOIN members m ON m.workspace_id = d.workspace_id AND m.user_id = ?")


def rank(role: str) -> int:
    return RANK[role]


@dataclass(frozen=True, eq=False)
class Access:
    """What the caller may do: their effective role in `workspace_id` (on `document` if given).

    `user_id` is None for an anonymous share-link holder; `share_link_id` is set when the access
    comes from a share link rather than a membership, `expires_at` when that link expires.
    """

    user_id: str | None
    workspace_id: str
    role: str
    document: Any = None  # sqlite3.Row or dict: the document's columns (DOC_COLUMNS), no markdown
    share_link_id: str | None = None
    expires_at: str | None = None  # the share link's expiry (RFC 3339), if any

    def at_least(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]

    @property
    def document_id(self) -> str | None:
        return None if self.document is None else self.document["id"]


def _row(db):
    """Every read here is a primary-key lookup: read it on the loop when the database offers that."""
    return getattr(db, "lookup", None) or db.one


def _user_id(principal: Any) -> str | None:
    if principal is None:
        return None
    return principal if isinstance(principal, str) else principal.user_id


async def resolve(db, principal, *, workspace_id: str | None = None, document_id: str | None = None,
                  folder_id: str | None = None, trashed: bool = False, deleted: bool = False) -> Access:
    """The caller's access; NotFound when they cannot see it.

    `principal`: an auth Principal, a user id, or None (anonymous: never a member).
    `trashed=True` lets documents and folders in the trash resolve (reading their metadata,
    restoring, purging); otherwise a trashed one is not found. `deleted=True` (workspace only)
    lets a soft-deleted workspace resolve for its members (restoring it). With both `workspace_id` and a
    document or folder id, the document or folder must belong to that workspace.
    """
    user_id = _user_id(principal)
    if document_id is not None:
        row = await _row(db)(
            f"SELECT {DOC_COLUMNS}, m.role AS member_role, g.role AS grant_role"
            " FROM documents d JOIN workspaces w ON w.id = d.workspace_id AND w.deleted_at IS NULL"
            " LEFT JOIN members m ON m.workspace_id = d.workspace_id AND m.user_id = ?"
            " LEFT JOIN document_grants g ON g.document_id = d.id AND g.user_id = ?"
            " WHERE d.id = ?", (user_id, user_id, document_id))
        if (row is None or row["member_role"] is None
                or (workspace_id is not None and row["workspace_id"] != workspace_id)
                or (row["deleted_at"] is not None and not trashed)):
            raise NotFound("no such document")
        document = {k: row[k] for k in row.keys() if k not in ("member_role", "grant_role")}
        return Access(user_id, row["workspace_id"], row["grant_role"] or row["member_role"], document)
    if folder_id is not None:
        row = await _row(db)(
            "SELECT f.workspace_id, f.deleted_at, m.role FROM folders f"
            " JOIN workspaces w ON w.id = f.workspace_id AND w.deleted_at IS NULL"
            " JOIN members m ON m.workspace_id = f.workspace_id AND m.user_id = ?"
            " WHERE f.id = ?", (user_id, folder_id))
        if (row is None or (workspace_id is not None and row["workspace_id"] != workspace_id)
                or (row["deleted_at"] is not None and not trashed)):
            raise NotFound("no such folder")
        return Access(user_id, row["workspace_id"], row["role"])
    if workspace_id is not None:
        row = await _row(db)(
            "SELECT m.role FROM members m JOIN workspaces w ON w.id = m.workspace_id"
            " WHERE m.workspace_id = ? AND m.user_id = ? AND (w.deleted_at IS NULL OR ?)",
            (workspace_id, user_id, deleted and document_id is None and folder_id is None))
        if row is None:
            raise NotFound("no such workspace")
        return Access(user_id, workspace_id, row["role"])
    raise TypeError("resolve needs a workspace_id, document_id or folder_id")


async def resolve_share(db, token: str, principal=None, *, document_id: str | None = None) -> Access:
    """The access a share token gives (NotFound when unknown, revoked, expired, or its document
    is trashed or its workspace deleted). With `document_id`, the link must be for that document."""
    row = await _row(db)(
        f"SELECT {DOC_COLUMNS}, s.id AS link_id, s.role AS link_role, s.expires_at AS link_expires_at"
        " FROM share_links s"
        " JOIN documents d ON d.id = s.document_id AND d.deleted_at IS NULL"
        " JOIN workspaces w ON w.id = d.workspace_id AND w.deleted_at IS NULL"
        " WHERE s.token_hash = ? AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > ?)",
        (digest(token), clock.iso()))
    if row is None or (document_id is not None and row["id"] != document_id):
        raise NotFound("no such share link")
    document = {k: row[k] for k in row.keys() if k not in ("link_id", "link_role", "link_expires_at")}
    return Access(_user_id(principal), row["workspace_id"], row["link_role"], document, share_link_id=row["link_id"],
                  expires_at=row["link_expires_at"])


async def recheck(db, access: Access) -> Access | None:
    """The same caller's access now (after a membership, grant or share-link change), or None
    when they lost it. For long-lived connections (sockets) holding an Access."""
    try:
        if access.share_link_id is not None:
            row = await _row(db)("SELECT 1 FROM share_links s JOIN documents d ON d.id = s.document_id"
                               " JOIN workspaces w ON w.id = d.workspace_id"
                               " WHERE s.id = ? AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > ?)"
                               " AND d.deleted_at IS NULL AND w.deleted_at IS NULL",
                               (access.share_link_id, clock.iso()))
            return access if row is not None else None
        if access.document is not None:
            return await resolve(db, access.user_id, document_id=access.document["id"])
        return await resolve(db, access.user_id, workspace_id=access.workspace_id)
    except NotFound:
        return None


def share_token(request: web.Request) -> str | None:
    return request.headers.get(SHARE_HEADER) or request.query.get(SHARE_QUERY) or None


async def require(request: web.Request, role: str, *, workspace_id: str | None = None,
                  document_id: str | None = None, folder_id: str | None = None,
                  trashed: bool = False, deleted: bool = False, share: bool = False) -> Access:
    """THE permission check of every route: resolve the caller's access (404 when they cannot
    see it) and refuse (403) when their effective role is below `role`.

    `share=True` (document routes only): a caller who is not otherwise allowed to see the
    document may present a share token for it (header `X-Mdsync-Share` or `?share=`) and works
    with the link's role. Routes without it answer a valid token for that document with 403
    (the holder can see the document, but a link does not open this route) and never admit them.
    """
    db = request.app[DB]
    principal = request.get(PRINCIPAL)
    try:
        if principal is None and document_id is None:
            raise NotFound("no such " + ("folder" if folder_id else "workspace"))
        if principal is None:
            raise NotFound("no such document")
        access = await resolve(db, principal, workspace_id=workspace_id, document_id=document_id,
                               folder_id=folder_id, trashed=trashed, deleted=deleted)
    except NotFound:
        token = share_token(request) if document_id is not None else None
        if token is None:
            raise
        access = await resolve_share(db, token, principal, document_id=document_id)
        if not share:
            # the holder can see this document (elsewhere), so this is "not allowed", not "not found"
            raise Forbidden("a share link does not allow this") from None
    if not access.at_least(role):
        raise Forbidden(f"this needs the {role} role or higher; you are {access.role}")
    return access
