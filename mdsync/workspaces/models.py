"""Request and response bodies of /workspaces, members and invitations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from mdsync.api.models import Body, Email, Name, Out

Role = Literal["viewer", "commenter", "editor", "admin", "owner"]


def reject_null(value):
    """PATCH fields that may be left out but not set to null."""
    if value is None:
        raise ValueError("must not be null (leave the field out to keep it)")
    return value


class WorkspaceIn(Body):
    name: Name


class WorkspacePatch(Body):
    name: Name | None = None
    settings: dict[str, Any] | None = None

    _not_null = field_validator("name", "settings", mode="before")(reject_null)


class WorkspaceOut(Out):
    id: str
    name: str
    slug: str
    settings: dict[str, Any]
    role: Role
    created_at: str
    updated_at: str


class WorkspaceList(Out):
    items: list[WorkspaceOut]
    next_cursor: str | None


class MemberOut(Out):
    user_id: str
    name: str
    email: str
    role: Role
    joined_at: str


class MemberList(Out):
    items: list[MemberOut]
    next_cursor: str | None


class RoleIn(Body):
    role: Role


class TransferIn(Body):
    user_id: str = Field(max_length=100)


class InvitationIn(Body):
    role: Role
    email: Email | None = None
    expires_in: int | None = Field(None, ge=60, le=365 * 24 * 3600, description="seconds; default 7 days")


class InvitationOut(Out):
    id: str
    workspace_id: str
    role: Role
    email: str | None
    status: Literal["pending", "accepted", "revoked", "expired"]
    created_by: str | None
    created_at: str
    expires_at: str
    accepted_at: str | None
    accepted_by: str | None
    revoked_at: str | None


class InvitationCreated(InvitationOut):
    token: str
    url: str


class InvitationList(Out):
    items: list[InvitationOut]
    next_cursor: str | None


class AcceptIn(Body):
    token: str = Field(min_length=1, max_length=200)


class Joined(Out):
    workspace_id: str
    role: Role
    workspace: WorkspaceOut
