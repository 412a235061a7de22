"""`GET /ai/usage`: settled calls summed per user, provider, model, UTC day and whether the
counts are the provider's or an estimate. Workspace admins see everyone's, others their own."""

from __future__ import annotations

import re
from datetime import date

from mdsync.api.errors import ValidationFailed
from mdsync.db import Database

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SELECT = ("SELECT c.workspace_id, c.user_id, c.provider, c.model, c.day, COUNT(*) AS requests,"
           " SUM(c.input_tokens) AS input_tokens, SUM(c.output_tokens) AS output_tokens, c.estimated"
           " FROM ai_calls c JOIN members m ON m.workspace_id = c.workspace_id AND m.user_id = ?"
           " WHERE c.settled_at IS NOT NULL AND (c.status BETWEEN 200 AND 299 OR c.input_tokens + c.output_tokens > 0)"
           " AND c.day >= ? AND c.day <= ?"
           " AND (c.user_id = ? OR m.role IN ('admin', 'owner'))")
_GROUP = (" GROUP BY c.workspace_id, c.user_id, c.provider, c.model, c.day, c.estimated"
          " ORDER BY c.day, c.workspace_id, c.user_id, c.provider, c.model, c.estimated")


def check_date(value: str | None, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not _DATE.match(value):
        raise ValidationFailed.field(field, "must be a date, YYYY-MM-DD")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValidationFailed.field(field, "is not a calendar date") from None
    return value


async def report(db: Database, me: str, workspace_id: str | None, start: str | None, end: str | None) -> list[dict]:
    params = [me, start or "0000-00-00", end or "9999-99-99", me]
    if workspace_id:
        params.append(workspace_id)
    sql = _SELECT + (" AND c.workspace_id = ?" if workspace_id else "") + _GROUP
    rows = await db.all(sql, params)
    return [{"workspace_id": r["workspace_id"], "user_id": r["user_id"], "provider": r["provider"],
             "model": r["model"], "day": r["day"], "requests": r["requests"], "input_tokens": r["input_tokens"],
             "output_tokens": r["output_tokens"], "estimated": bool(r["estimated"])} for r in rows]
