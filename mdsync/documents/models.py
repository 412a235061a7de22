"""Request and response bodies of folders, documents, grants and share links."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mdsync.api.models import Body, Name, Out
from mdsync.workspaces.models import Role, reject_null

Kind = Literal["note", "template", "context"]
ContentModel = Literal["text", "tiptap"]
Position = float
Id = str


def _finite(value):
    if value is not None and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError("must be a finite number")
    return value


class FolderIn(Body):
    name: Name
    parent_id: Id | None = Field(None, max_length=100)
    position: Position | None = None

    _pos = field_validator("position")(_finite)


class FolderPatch(Body):
    name: Name | None = None
    parent_id: Id | None = Field(None, max_length=100, description="null: move to the top level")
    position: Position | None = None

    _pos = field_validator("position")(_finite)
    _not_null = field_validator("name", "position", mode="before")(reject_null)


class FolderOut(Out):
    id: str
    workspace_id: str
    parent_id: str | None
    name: str
    position: float
    created_at: str
    updated_at: str
    deleted_at: str | None


class DocumentIn(Body):
    title: Name
    folder_id: Id | None = Field(None, max_length=100)
    kind: Kind = "note"
    content_model: ContentModel = "text"
    markdown: str | None = None
    template_id: Id | None = Field(None, max_length=100)


class DocumentPatch(Body):
    title: Name | None = None
    folder_id: Id | None = Field(None, max_length=100, description="null: move to the top level")
    position: Position | None = None
    kind: Kind | None = None

    _pos = field_validator("position")(_finite)
    _not_null = field_validator("title", "position", "kind", mode="before")(reject_null)


class DocumentOut(Out):
    id: str
    workspace_id: str
    folder_id: str | None
    title: str
    kind: Kind
    content_model: ContentModel
    position: float
    created_by: str | None
    created_at: str
    updated_at: str
    deleted_at: str | None
    size: int
    etag: str


class DocumentList(Out):
    items: list[DocumentOut]
    next_cursor: str | None


class FolderList(Out):
    items: list[FolderOut]
    next_cursor: str | None


class DocumentQuery(Body):
    kind: Kind | None = None
    folder_id: Id | None = Field(None, max_length=100)
    limit: str | None = None
    cursor: str | None = None


class PageQuery(Body):
    limit: str | None = None
    cursor: str | None = None


class DeleteQuery(Body):
    permanent: bool = False


class TreeFolder(Out):
    id: str
    name: str
    parent_id: str | None
    position: float
    updated_at: str


class TreeDocument(Out):
    id: str
    title: str
    folder_id: str | None
    position: float
    kind: Kind
    updated_at: str


class TreeOut(Out):
    workspace_id: str
    folders: list[TreeFolder]
    documents: list[TreeDocument]


class GrantIn(Body):
    role: Role


class GrantOut(Out):
    document_id: str
    user_id: str
    name: str
    email: str
    role: Role
    created_at: str
    updated_at: str


class GrantList(Out):
    items: list[GrantOut]
    next_cursor: str | None


class ShareLinkIn(Body):
    role: Literal["viewer", "commenter"] = "viewer"
    expires_in: int | None = Field(None, ge=1, le=10 * 365 * 24 * 3600, description="seconds; default: never")


class ShareLinkOut(Out):
    id: str
    document_id: str
    role: Literal["viewer", "commenter"]
    created_by: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class ShareLinkCreated(ShareLinkOut):
    token: str
    url: str


class ShareLinkList(Out):
    items: list[ShareLinkOut]
    next_cursor: str | None


class SharedDocument(Out):
    document: TreeDocument
    role: Literal["viewer", "commenter"]
    markdown: str
