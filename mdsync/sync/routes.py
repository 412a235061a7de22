"""HTTP routes of the change feed (docs/api.md "Change feed"): `GET /sync/changes` (a page, or a
long-poll with `wait`) and `GET /sync/events` (the same as Server-Sent Events). The feed is made
by `install` (sync/__init__.py)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from mdsync import clock
from mdsync.api.models import Out
from mdsync.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from mdsync.api.routing import PRINCIPAL, Routes, is_head
from mdsync.sync import changes as change_log
from mdsync.sync.feed import MAX_WAIT, Feed, decode_cursor, encode_cursor

routes = Routes("sync")
FEED: web.AppKey[Feed] = web.AppKey("feed", Feed)


def _blank_is_default(value):
    return None if value == "" else value


class ChangesQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    since: Annotated[str | None, BeforeValidator(_blank_is_default)] = Field(
        None, description="a cursor from an earlier answer; `now` for the current position; absent: the beginning")
    # above the maximum is clamped (Lists convention); 0, negatives and non-integers are 422
    # the bounds sit on the int inside the optional: on `int | None` itself pydantic applies them to
    # None too (`?limit=` → None) and raises TypeError, a 500, instead of a validation error
    limit: Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_blank_is_default),
                     AfterValidator(lambda v: None if v is None else min(v, MAX_LIMIT))] = Field(
        None, description=f"changes per page: default {DEFAULT_LIMIT}, above {MAX_LIMIT} clamped")
    # above 60 s is clamped like limit; negatives, NaN and non-numbers are 422
    wait: Annotated[Annotated[float, Field(ge=0, allow_inf_nan=False)] | None, BeforeValidator(_blank_is_default),
                    AfterValidator(lambda v: None if v is None else min(v, MAX_WAIT))] = Field(
        None, description=f"seconds to hold the request while nothing is new (up to {MAX_WAIT:g})")


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    since: Annotated[str | None, BeforeValidator(_blank_is_default)] = Field(
        None, description="as for /sync/changes; a `Last-Event-ID` header takes precedence")


class ChangeOut(Out):
    seq: int
    workspace_id: str
    entity: change_log.Entity
    id: str
    op: change_log.Op
    at: str


class ChangesOut(Out):
    changes: list[ChangeOut]
    cursor: str
    has_more: bool


def _since(raw: str | None, name: str = "since") -> int | None:
    """The seq to start after: absent is the beginning (0), `now` is None (the current head)."""
    if raw is None:
        return 0
    if raw == "now":
        return None
    return decode_cursor(raw, name)


def _alive(request: web.Request):
    # aiohttp does not cancel a handler whose client left (handler_cancellation is off in
    # `mdsync serve`): a waiting request checks its transport instead
    def alive() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()
    return alive


def _credential(principal) -> str | None:
    """What revokes the caller's waiting requests: their session, or their personal access token
    (the sessions_revoked hook names either)."""
    return principal.session_id or principal.token_id


def _token_lifetime(principal) -> float | None:
    """Seconds the caller's credential has left (its access JWT's exp, or its personal access
    token's expiry; None: it never expires): a stream ends with its token, and the client
    reconnects with a fresh one and its Last-Event-ID."""
    if principal.expires_at is None:
        return None
    return max(0.0, principal.expires_at - clock.timestamp())


@routes.get("/api/v1/sync/changes", "Changes in the caller's workspaces after a cursor; `wait` long-polls",
            query=ChangesQuery, response=ChangesOut)
async def list_changes(request: web.Request, query: ChangesQuery) -> web.Response:
    principal = request[PRINCIPAL]
    wait = 0.0 if is_head(request) else query.wait or 0.0
    lifetime = _token_lifetime(principal)
    if lifetime is not None:
        wait = min(wait, lifetime)  # a long-poll answers when its token expires, at the latest
    page = await request.app[FEED].changes(
        principal.user_id, _credential(principal), _since(query.since), query.limit or DEFAULT_LIMIT,
        wait, alive=_alive(request))
    return web.Response(text=page.json(), content_type="application/json", headers={"Cache-Control": "no-store"})


@routes.get("/api/v1/sync/events", "The change feed as Server-Sent Events (`id` is the cursor)",
            query=EventsQuery, raw_response="text/event-stream")
async def events(request: web.Request, query: EventsQuery) -> web.StreamResponse:
    principal = request[PRINCIPAL]
    last_event_id = request.headers.get("Last-Event-ID")
    # a reconnecting EventSource repeats the URL (and its since) but knows a newer position
    since = _since(last_event_id, "Last-Event-ID") if last_event_id else _since(query.since)
    feed = request.app[FEED]
    if since:   # a position ahead of the feed is a 422 before the stream starts
        await feed.check_cursor(since, "Last-Event-ID" if last_event_id else "since")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",      # proxies must not hold events back
    })
    await response.prepare(request)
    if is_head(request):
        await response.write_eof()
        return response
    alive = _alive(request)
    pages = feed.stream(principal.user_id, _credential(principal), since, MAX_LIMIT, alive=alive,
                        lifetime=_token_lifetime(principal))
    try:
        async with aclosing(pages):   # the stream stops waiting as soon as this handler ends
            await response.write(b": mdsync change feed\nretry: 3000\n\n")
            async for page in pages:
                if page is None:
                    await response.write(b": heartbeat\n\n")
                    continue
                await response.write("".join(f"id: {encode_cursor(seq)}\nevent: change\ndata: {change}\n\n"
                                             for seq, change in page.rows).encode())
    except ConnectionError:   # the client left mid-write
        return response
    if alive():
        await response.write_eof()
    return response


def readings(feed: Feed) -> list:
    """/metrics: how many requests wait on the feed, and how much waking and re-reading it does."""
    stats = feed.stats
    return [
        ("gauge", "mdsync_feed_waiting", "Long-polls and SSE streams waiting for changes", lambda: feed.waiting),
        ("counter", "mdsync_feed_commits", "Committed changes announced to the feed", lambda: stats.commits),
        ("counter", "mdsync_feed_wake_passes", "Coalesced wake-up passes (one per commit batch)", lambda: stats.passes),
        ("counter", "mdsync_feed_wakeups", "Waiting requests woken by a change that concerns them",
         lambda: stats.woken),
        ("counter", "mdsync_feed_waiter_reads", "Pages read by waiting requests (first reads and re-reads)",
         lambda: stats.reads),
        ("counter", "mdsync_feed_heard", "Changes other processes committed, heard over PostgreSQL LISTEN/NOTIFY",
         lambda: stats.heard),
        ("gauge", "mdsync_feed_listening", "1 while the LISTEN connection to PostgreSQL is up (0: head query once a"
         " second; SQLite: always 0)", lambda: int(feed.listener is not None and feed.listener.connected)),
    ]
