"""The one pagination helper: `?limit=` (default 50, clamped to 200) and an opaque `?cursor=`.

A cursor is the sort key of the last item served, base64url-encoded JSON; lists answer
`{"items": [...], "next_cursor": "..." | null}`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mdsync.api.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class Page:
    limit: int
    after: Any  # the decoded cursor (the last key served), or None for the first page

    def fetch_limit(self) -> int:
        """Ask the store for one more row than the page holds, to know whether more exist."""
        return self.limit + 1

    def result(self, rows: list[Any], key, shape=lambda row: row) -> dict[str, Any]:
        """`rows` fetched with `fetch_limit()`; `key(row)` is the sort key the next page starts after."""
        more = len(rows) > self.limit
        rows = rows[: self.limit]
        next_cursor = encode_cursor(key(rows[-1])) if more and rows else None
        return {"items": [shape(row) for row in rows], "next_cursor": next_cursor}


    def result_json(self, rows: list[Any], key, text) -> str:
        """`result` for rows whose JSON SQLite built: `text(row)` is an item's JSON text; answers
        the page as JSON text, without decoding and re-encoding the items."""
        more = len(rows) > self.limit
        rows = rows[: self.limit]
        next_cursor = encode_cursor(key(rows[-1])) if more and rows else None
        return '{"items":[' + ",".join(text(row) for row in rows) + '],"next_cursor":' + json.dumps(next_cursor) + "}"


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed.field("limit", "must be an integer") from None
    if value < 1:
        raise ValidationFailed.field("limit", "must be at least 1")
    return min(value, maximum)


def page(request: web.Request) -> Page:
    limit = parse_limit(request.query.get("limit"))
    raw = request.query.get("cursor")
    return Page(limit=limit, after=decode_cursor(raw) if raw else None)


def encode_cursor(key: Any) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        raise ValidationFailed.field("cursor", "is not a cursor this server issued") from None
    # no key this server gives holds a NUL (PostgreSQL refuses one in any text it is sent)
    if b"\\u0000" in raw and _holds_nul(key):
        raise ValidationFailed.field("cursor", "is not a cursor this server issued")
    return key


def _holds_nul(value: Any) -> bool:
    pending = [value]
    while pending:  # no recursion: a cursor may nest as deep as json.loads allows
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
    return False
