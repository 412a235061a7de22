"""Request and response bodies of comments (docs/api.md "Comments")."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mdsync.api.models import Body, Out
from mdsync.collab import positions

MAX_BODY_CHARS = 10_000
MAX_QUOTE_CHARS = 5_000
MAX_CONTEXT_CHARS = 1_000  # prefix, suffix


def _prose(value: str) -> str:
    """A comment body: lines of text (tabs and line breaks allowed, other control characters not),
    1–10 000 characters, not only blanks."""
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_BODY_CHARS:
        raise ValueError(f"must be at most {MAX_BODY_CHARS} characters")
    for ch in value:
        code = ord(ch)
        if (code < 32 and ch not in "\t\n\r") or 0x7F <= code < 0xA0:
            raise ValueError("must not contain control characters")
    return value


def decode_position(value: str) -> bytes:
    """base64url (padding optional) of one Yjs relative position → its bytes; ValueError if not."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("must be base64url of a Yjs relative position (Y.encodeRelativePosition)") from None
    positions.check(raw)
    return raw


def encode_position(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class AnchorIn(Body):
    quote: str = Field(min_length=1, max_length=MAX_QUOTE_CHARS, description="the commented text, as written")
    prefix: str | None = Field(None, max_length=MAX_CONTEXT_CHARS,
                               description="text right before the quote (picks among repeats)")
    suffix: str | None = Field(None, max_length=MAX_CONTEXT_CHARS, description="text right after the quote")
    yjs_start: str | None = Field(None, max_length=200, description="base64url of Y.encodeRelativePosition")
    yjs_end: str | None = Field(None, max_length=200, description="base64url of Y.encodeRelativePosition")

    @field_validator("yjs_start", "yjs_end")
    @classmethod
    def _position(cls, value: str | None) -> str | None:
        if value is not None:
            decode_position(value)
        return value

    @model_validator(mode="after")
    def _both_or_neither(self):
        if (self.yjs_start is None) != (self.yjs_end is None):
            raise ValueError("give both yjs_start and yjs_end, or neither (the server places the quote)")
        return self


class CommentIn(Body):
    body: str
    anchor: AnchorIn | None = None
    parent_id: str | None = Field(None, max_length=100, description="the thread this is a reply to")

    _body = field_validator("body")(_prose)


class CommentPatch(Body):
    body: str

    _body = field_validator("body")(_prose)


class CommentQuery(Body):
    status: Literal["open", "resolved", "all"] = "open"
    limit: str | None = None
    cursor: str | None = None


class AnchorOut(Out):
    quote: str
    prefix: str | None
    suffix: str | None
    yjs_start: str | None
    yjs_end: str | None


class CommentOut(Out):
    id: str
    document_id: str
    parent_id: str | None
    author_id: str | None
    author_name: str | None
    body: str
    anchor: AnchorOut | None
    resolved: bool
    resolved_at: str | None
    resolved_by: str | None
    created_at: str
    updated_at: str
    replies: list[CommentOut] = Field(description="a thread's replies, oldest first; always empty for a reply")


class CommentList(Out):
    items: list[CommentOut]
    next_cursor: str | None
