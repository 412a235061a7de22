"""Request and response bodies of /auth and /me."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from mdsync.api.models import OPAQUE, Body, Email, Name, Out

Password = Annotated[str, StringConstraints(min_length=1, max_length=1024), OPAQUE]  # hashed: may hold NUL
Device = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class RegisterIn(Body):
    email: Email
    password: Password
    name: Name
    invitation: str | None = Field(None, max_length=200)
    device_name: Device | None = None


class LoginIn(Body):
    email: Email
    password: Password
    device_name: Device | None = None


class RefreshIn(Body):
    refresh_token: str = Field(max_length=4096)  # anything longer is no token we issued; 422


class SetupIn(Body):
    setup_token: str = Field(max_length=200)
    email: Email
    password: Password
    name: Name


class ProfileIn(Body):
    name: Name | None = None
    email: Email | None = None
    current_password: Password | None = None  # required to change the email


class PasswordIn(Body):
    current_password: Password
    new_password: Password


class TokenIn(Body):
    name: Name
    scopes: list[Literal["read", "write"]] = ["read", "write"]
    expires_at: datetime | None = None
    password: Password | None = None  # required unless the session signed in recently

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        scopes = sorted(set(value), key=["read", "write"].index)
        if scopes not in (["read"], ["read", "write"]):
            raise ValueError('must be ["read"] or ["read", "write"]')
        return scopes

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a timezone (e.g. 2027-01-01T00:00:00Z)")
        return value


class UserOut(Out):
    id: str
    email: str
    name: str
    is_admin: bool
    created_at: str


class TokenPairOut(Out):
    user: UserOut
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class SessionOut(Out):
    id: str
    device_name: str | None
    user_agent: str | None
    created_at: str
    last_used_at: str
    current: bool


class SessionList(Out):
    items: list[SessionOut]
    next_cursor: str | None = None


class ApiTokenOut(Out):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: str
    expires_at: str | None
    last_used_at: str | None


class ApiTokenCreated(ApiTokenOut):
    token: str


class ApiTokenList(Out):
    items: list[ApiTokenOut]
    next_cursor: str | None = None
