"""The ledger: a workspace's AI limits, and every call reserved before it goes upstream and
settled after (docs/api.md "AI proxy").

`reserve` runs as one job of the database's single writer: it adds the call's reservation (prompt
estimate + output cap) to the running totals, the workspace's month first, then refuses (403
model, 429 user limit, 429 budget) — the job's savepoint undoing the additions — or records the
call, all in one transaction. The writer runs one job at a time; the additions come first because
each is an upsert that answers the new total under its row's lock: even a second writer (another
process on the same PostgreSQL database, whose READ COMMITTED would let two read-then-write
checks pass together) waits for the month row and then sees the other's calls, so concurrent
requests can never together pass `tokens_per_month` or a user's limits.
`settle` replaces the reservation with the provider's counts (or the estimate), releasing the
rest; it runs in the proxy's `finally`, so errors and cut-off streams release too. It claims the
call with one conditional UPDATE, so a call is settled once.

Totals (`ai_spend`): per workspace and UTC month (user ''), per workspace, user and UTC day.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mdsync import clock
from mdsync.ai.provider import Usage
from mdsync.api.errors import Forbidden, RateLimited
from mdsync.db import Database, Tx

LIMIT_FIELDS = ("tokens_per_month", "user_requests_per_minute", "user_tokens_per_day", "models")
NO_RETRY = {"x-should-retry": "false"}


class UserLimited(RateLimited):
    """A per-user limit: the only refusal of the proxy that clients may retry (after Retry-After)."""


@dataclass(frozen=True)
class Limits:
    tokens_per_month: int | None = None
    user_requests_per_minute: int | None = None
    user_tokens_per_day: int | None = None
    models: list[str] | None = None

    def json(self) -> dict:
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


def _limits(row) -> Limits:
    if row is None:
        return Limits()
    return Limits(row["tokens_per_month"], row["user_requests_per_minute"], row["user_tokens_per_day"],
                  None if row["models"] is None else json.loads(row["models"]))


def _month_start_after(moment: datetime) -> datetime:
    return datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)


def _add(tx: Tx, workspace_id: str, period: str, user_id: str, tokens: int) -> int:
    """Add `tokens` to a running total (locking its row until commit); the new total."""
    return tx.value("INSERT INTO ai_spend (workspace_id, period, user_id, tokens) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (workspace_id, period, user_id) DO UPDATE SET tokens = ai_spend.tokens + excluded.tokens"
                    " RETURNING tokens", (workspace_id, period, user_id, tokens))


class Ledger:
    def __init__(self, db: Database, node_id: str = ""):
        self.db = db
        self.node_id = node_id   # recorded on each call: who is running it (Cluster.node_id)

    # -- limits ----------------------------------------------------------------------------------
    async def limits(self, workspace_id: str) -> Limits:
        return _limits(await self.db.lookup("SELECT * FROM ai_limits WHERE workspace_id = ?", (workspace_id,)))

    async def set_limits(self, workspace_id: str, limits: Limits) -> Limits:
        def store(tx: Tx) -> None:
            tx.execute("INSERT INTO ai_limits (workspace_id, tokens_per_month, user_requests_per_minute,"
                       " user_tokens_per_day, models, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                       " ON CONFLICT (workspace_id) DO UPDATE SET tokens_per_month = excluded.tokens_per_month,"
                       " user_requests_per_minute = excluded.user_requests_per_minute,"
                       " user_tokens_per_day = excluded.user_tokens_per_day, models = excluded.models,"
                       " updated_at = excluded.updated_at",
                       (workspace_id, limits.tokens_per_month, limits.user_requests_per_minute,
                        limits.user_tokens_per_day, None if limits.models is None else json.dumps(limits.models),
                        clock.iso()))

        await self.db.write(store)
        return limits

    # -- reserve, settle -------------------------------------------------------------------------
    async def reserve(self, workspace_id: str, user_id: str, provider: str, model: str, tokens: int) -> int:
        """Record the call and hold `tokens`; the call's id. Raises Forbidden or RateLimited."""
        return await self.db.write(_reserve, workspace_id, user_id, provider, model, tokens, clock.timestamp(),
                                   self.node_id)

    async def settle(self, call_id: int, status: int, usage: Usage) -> None:
        await self.db.write(_settle, call_id, status, usage)

    async def release_abandoned(self, alive_after: float | None = None) -> int:
        """Calls no running node will settle hold nothing any more; how many were released. One
        node (`alive_after` None), at start: every call of another process (an earlier run).
        Several nodes (mdsync/cluster/nodes.py), at start and then every lease: the calls of nodes
        whose heartbeat is not newer than `alive_after` — never those of a live node, which may
        still be running them. A call released while its node was stalled past the lease and then
        finished is not counted again (`_settle` claims a call once)."""
        def release(tx: Tx) -> int:
            if alive_after is None:
                rows = tx.all("SELECT id FROM ai_calls WHERE settled_at IS NULL AND (node IS NULL OR node <> ?)",
                              (self.node_id,))
            else:
                rows = tx.all("SELECT id FROM ai_calls WHERE settled_at IS NULL AND (node IS NULL OR node <> ?"
                              " AND node NOT IN (SELECT id FROM nodes WHERE seen_at > ?))",
                              (self.node_id, alive_after))
            for row in rows:
                _settle(tx, row["id"], 0, Usage(0, 0, True))
            return len(rows)

        return await self.db.write(release)


def _reserve(tx: Tx, workspace_id: str, user_id: str, provider: str, model: str, tokens: int, now: float,
             node_id: str = "") -> int:
    moment = datetime.fromtimestamp(now, UTC)
    day, month = moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")
    limits = _limits(tx.one("SELECT * FROM ai_limits WHERE workspace_id = ?", (workspace_id,)))
    if limits.models is not None and model not in limits.models:
        raise Forbidden(f"the model {model!r} is not allowed in this workspace", headers=NO_RETRY)
    # first the totals, the workspace's month before the user's day (settle takes them in the
    # same order): the month row's lock serializes the workspace's reservations (see above)
    workspace_month = _add(tx, workspace_id, month, "", tokens)
    user_day = _add(tx, workspace_id, day, user_id, tokens)
    if limits.user_requests_per_minute is not None:
        recent = tx.all("SELECT started FROM ai_calls WHERE workspace_id = ? AND user_id = ? AND started > ?"
                        " ORDER BY started LIMIT ?", (workspace_id, user_id, now - 60, limits.user_requests_per_minute))
        if len(recent) >= limits.user_requests_per_minute:
            raise UserLimited(recent[0]["started"] + 60 - now,
                              f"at most {limits.user_requests_per_minute} AI requests per minute per user")
    if limits.user_tokens_per_day is not None and user_day > limits.user_tokens_per_day:
        midnight = datetime(moment.year, moment.month, moment.day, tzinfo=UTC) + timedelta(days=1)
        raise UserLimited((midnight - moment).total_seconds(),
                          f"this request could pass the {limits.user_tokens_per_day} tokens a user may use per day")
    if limits.tokens_per_month is not None and workspace_month > limits.tokens_per_month:
        raise RateLimited((_month_start_after(moment) - moment).total_seconds(),
                          f"the workspace's AI budget of {limits.tokens_per_month} tokens this month is spent"
                          " (or held by requests in progress)", headers=NO_RETRY)
    return tx.value("INSERT INTO ai_calls (workspace_id, user_id, provider, model, started, day, reserved, node)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (workspace_id, user_id, provider, model, now, day, tokens, node_id))


def _settle(tx: Tx, call_id: int, status: int, usage: Usage) -> None:
    # claiming the call (settled_at set) and reading its reservation in one statement: settled once
    row = tx.one("UPDATE ai_calls SET status = ?, input_tokens = ?, output_tokens = ?, estimated = ?, settled_at = ?"
                 " WHERE id = ? AND settled_at IS NULL RETURNING workspace_id, user_id, day, reserved",
                 (status, usage.input_tokens, usage.output_tokens, int(usage.estimated), clock.iso(), call_id))
    if row is None:
        return
    tx.execute("UPDATE ai_calls SET reserved = 0 WHERE id = ?", (call_id,))
    delta = usage.input_tokens + usage.output_tokens - row["reserved"]
    # the month row before the day row, as `_reserve` takes them
    _add(tx, row["workspace_id"], row["day"][:7], "", delta)
    _add(tx, row["workspace_id"], row["day"], row["user_id"], delta)
