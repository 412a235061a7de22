"""The change feed, read side: which changes a caller sees, the cursor, and waiting for new ones.

Visibility: a caller sees the changes of the workspaces they are a member of *now* (rows with
`user_id` NULL) plus the rows addressed to them (`user_id` = theirs) — so a removed member gets
the one `workspace delete` addressed to them and nothing of that workspace after it.

Cursor: a position in the global `seq` order, opaque to clients. A page holds the visible changes
with `since < seq <= head`, where `head` is the newest seq when the page was read; a page that is
not full advances the cursor to `head`, past rows the caller cannot see, so idle clients never
rescan them. The single writer assigns `seq` in commit order, so a reader never sees a seq while
a smaller one is still uncommitted: pages never skip or repeat a change.

Waiting: no reader polls the database. `changes.record` wakes this feed after every commit
(`Feed.on_commit`); the wake-ups of one commit batch are folded into one pass that skips when the
head did not move, and wakes only the waiters the new changes may concern (their workspaces,
rows addressed to them, and the user a `member` change is about: a join gives them a workspace
they did not have). Each woken waiter re-reads once, however many commits arrived meanwhile.
Commits of other processes (other nodes, the admin CLI beside a server) call no listener here.
On PostgreSQL their `record` NOTIFYs at commit (db/notifications.py) and the feed hears it on its
database's LISTEN connection: the same targeted wake-up as for its own commits, at once. On SQLite,
and on PostgreSQL while that connection is lost, one head check per feed every second notices them
while anyone waits (and wakes every waiter); a LISTEN connection made again checks the head once,
and one that is up every 10 s (a notification lost unnoticed costs a late wake-up, not a hang).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from mdsync.api.errors import Gone, ValidationFailed
from mdsync.db import Database
from mdsync.db.notifications import CHANGES, ORIGIN
from mdsync.sync.changes import DATABASE_KEY, Wake

log = logging.getLogger("mdsync.sync")

MAX_WAIT = 60.0        # seconds a long-poll may wait (docs/api.md "Change feed")
HEARTBEAT = 15.0       # seconds between SSE comments on a quiet stream
CHECK_EVERY = 1.0      # how often the feed looks whether waiting clients are still there (no query)
ARMS_PER_QUERY = 200   # workspaces merged in one statement (SQLite allows 500 compound arms)
# seconds between looks for commits of other processes (the admin CLI on SQLite; on PostgreSQL only
# while its LISTEN connection is lost), while anyone waits: such a change reaches waiting clients
# within ~1.5 s
OTHER_WRITERS_EVERY = 1.0
# while the LISTEN connection is up, the head is still checked this often: a seq nobody announced
# (a notification lost in a way the connection did not notice) costs one late wake-up, not a hang
LISTENING_CHECK_EVERY = 10.0
WAKE_GRACE = 0.3            # how late an own commit's wake-up may be before it counts as someone else's

_CURSOR_TAG = "f1:"
# each change leaves the database as its JSON text: no Python object per field, no json.dumps per
# page (it halves the cost of a 200-change page)
_CHANGE_JSON = {
    "sqlite": "json_object('seq', seq, 'workspace_id', workspace_id, 'entity', entity, 'id', entity_id,"
              " 'op', op, 'at', at)",
    "postgresql": "json_build_object('seq', seq, 'workspace_id', workspace_id, 'entity', entity, 'id', entity_id,"
                  " 'op', op, 'at', at)::text",
}


# -- cursors ---------------------------------------------------------------------------------
def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_TAG}{seq}".encode()).decode().rstrip("=")


def decode_cursor(raw: str, name: str = "since") -> int:
    """The seq inside a cursor this server issued; 422 naming `name` for anything else."""
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    digits = text[len(_CURSOR_TAG):] if text.startswith(_CURSOR_TAG) else ""
    if not digits.isdigit() or len(digits) > 18 or encode_cursor(int(digits)) != raw:
        raise ValidationFailed.field(name, "is not a cursor this server issued")
    return int(digits)


# -- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    rows: list             # (seq, the change as JSON text), in seq order
    cursor: int            # the seq the next page starts after
    has_more: bool
    workspaces: frozenset[str]   # the caller's workspaces when the page was read

    def json(self) -> str:
        """The answer of GET /sync/changes, assembled from the changes' JSON texts."""
        return ('{"changes":[' + ",".join(row[1] for row in self.rows) + '],"cursor":"'
                + encode_cursor(self.cursor) + '","has_more":' + ("true" if self.has_more else "false") + "}")


def _merged_query(engine: str, since: int, head: int, limit: int, user_id: str | None,
                  workspaces: list[str]) -> tuple[str, tuple]:
    """One statement that merges the callers' workspaces and their own rows in seq order.

    Each arm is a range scan of changes_workspace (workspace_id, seq) or changes_user
    (user_id, seq) delivering rows already ordered, so the database merges them (SQLite's MERGE
    (UNION ALL), PostgreSQL's Merge Append) and stops at the LIMIT: the cost of a page is its
    size, not the size of the feed. PostgreSQL merges only arms that carry their own LIMIT (else
    it reads every row in range and sorts them: 0.1 ms became 25 ms on a 30 000-change feed);
    SQLite has no LIMIT per arm of a compound SELECT, and needs none.
    """
    columns = f"seq, {_CHANGE_JSON[engine]} AS change"
    arms = [(f"SELECT {columns} FROM changes WHERE workspace_id = ? AND user_id IS NULL AND seq > ? AND seq <= ?",
             (workspace_id, since, head)) for workspace_id in workspaces]
    if user_id is not None:
        arms.append((f"SELECT {columns} FROM changes WHERE user_id = ? AND seq > ? AND seq <= ?",
                     (user_id, since, head)))
    if engine == "postgresql" and len(arms) > 1:
        arms = [(f"({sql} ORDER BY seq LIMIT ?)", (*params, limit)) for sql, params in arms]
    sql = " UNION ALL ".join(sql for sql, _ in arms) + " ORDER BY seq LIMIT ?"
    return sql, (*(value for _, params in arms for value in params), limit)


def _trimmed(name: str) -> Gone:
    return Gone(f"the changes after this {name} are no longer kept (sync.changes_retention_days): take a fresh"
                " cursor with since=now, read the tree of each workspace again, then go on from that cursor")


def _ahead(name: str) -> ValidationFailed:
    return ValidationFailed.field(name, "is ahead of this server's change feed (was the database restored?): "
                                        "sync in full, then start again with since=now")


# the newest seq ever given (AUTOINCREMENT's high-water mark; PostgreSQL's changes_head, see
# sync/changes.py): unlike max(seq), it never goes back when rows are deleted (a purged
# workspace's rows), so no issued cursor ever lies ahead
HEAD = {
    "sqlite": "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)",
    "postgresql": "SELECT seq FROM changes_head",
}
# the newest seq the retention sweep deleted (sync/changes.py trim): a cursor before it may
# have missed changes that are gone, so it is refused (410) instead of answered with a gap
TRIMMED = "SELECT coalesce((SELECT through_seq FROM changes_trimmed), 0)"
_WORKSPACES = {
    "sqlite": "(SELECT json_group_array(workspace_id) FROM members WHERE user_id = ?)",   # JSON text
    "postgresql": "ARRAY(SELECT workspace_id FROM members WHERE user_id = ?)",           # a list
}
HEAD_AND_WORKSPACES = {engine: f"SELECT ({HEAD[engine]}) AS head, ({TRIMMED}) AS trimmed,"
                               f" {_WORKSPACES[engine]} AS workspaces" for engine in HEAD}


async def read_page(db: Database, user_id: str, since: int | None, limit: int) -> Page:
    """The caller's changes after `since` (None: `now`), at most `limit`."""
    # head and membership in one statement: one snapshot, so the page below (bounded by head)
    # is exactly what this membership could see; later joins and removals show on the next page
    row = await db.one(HEAD_AND_WORKSPACES[db.engine], (user_id,))
    head = row["head"]
    workspaces = row["workspaces"]
    workspaces = frozenset(json.loads(workspaces) if isinstance(workspaces, str) else workspaces)
    if since is None:
        return Page([], head, False, workspaces)
    if since > head:
        raise _ahead("since")
    if since < row["trimmed"]:
        raise _trimmed("since")
    if since == head:
        return Page([], head, False, workspaces)
    ordered = sorted(workspaces)
    chunks = [ordered[i:i + ARMS_PER_QUERY] for i in range(0, len(ordered), ARMS_PER_QUERY)] or [[]]
    results = []
    for n, chunk in enumerate(chunks):
        sql, params = _merged_query(db.engine, since, head, limit + 1, user_id if n == 0 else None, chunk)
        results.append(await db.all(sql, params))
    rows = results[0] if len(results) == 1 else list(heapq.merge(*results, key=lambda r: r[0]))
    if len(rows) > limit:
        rows = rows[:limit]
        return Page(rows, rows[-1][0], True, workspaces)
    return Page(rows, head, False, workspaces)


# -- waiting ---------------------------------------------------------------------------------
@dataclass(eq=False)
class Waiter:
    """One long-poll or SSE stream waiting for its caller's next change."""

    user_id: str
    session_id: str | None
    alive: Callable[[], bool]                  # False once the client has gone away
    event: asyncio.Event = field(default_factory=asyncio.Event)
    workspaces: frozenset[str] | None = None   # None until the first read: wake on anything
    ended: str | None = None                   # "shutdown", "revoked" or "gone": stop for good


@dataclass
class FeedStats:
    """Counters for /metrics and tests: how much waking and re-reading the feed does."""

    commits: int = 0        # Wake notices received (one per recorded change, ours or heard)
    heard: int = 0          # of which other processes' (PostgreSQL NOTIFY)
    passes: int = 0         # coalesced wake passes run
    skipped: int = 0        # passes that found the head unmoved
    woken: int = 0          # waiter wake-ups handed out
    reads: int = 0          # pages read by waiters (first reads and re-reads)


class Feed:
    """The change feed of one app: reads pages and parks callers until a change concerns them."""

    def __init__(self, db: Database):
        self.db = db
        self.database: str | None = None  # our database's key: commits of other apps' databases are ignored
        self.head = 0                      # newest seq announced by a commit (ours or heard)
        # every seq up to `known` was announced (or covered by a head check that woke everyone);
        # `_above`: those announced above it, out of order (other writers' arrive over the network)
        self.known = 0
        self._above: set[int] = set()
        self.covered = 0                   # every waiter was woken when the head was this (head checks)
        self.closed = False
        self.listener = None               # the database's LISTEN connection (PostgreSQL)
        self.stats = FeedStats()
        self._pending: list[Wake] = []
        self._scheduled = False
        self._by_user: dict[str, set[Waiter]] = {}
        self._by_workspace: dict[str, set[Waiter]] = {}
        self._unknown: set[Waiter] = set()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """After the database opened: learn its key (as the writer gives it) and head."""
        self.database = await self.db.value(DATABASE_KEY[self.db.engine])
        self.head = self.known = self.covered = await self.db.value(HEAD[self.db.engine])
        self.listener = self.db.listener()
        if self.listener is not None:
            self.listener.subscribe(CHANGES, self.on_notify, self._check_head_soon)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch_other_writers()), loop.create_task(self._let_go_of_the_gone())]

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.unsubscribe(self.on_notify, self._check_head_soon)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _let_go_of_the_gone(self) -> None:
        """aiohttp does not cancel a handler whose client left (`mdsync serve` runs without
        handler cancellation): one pass a second over the waiters ends those nobody listens to."""
        while True:
            await asyncio.sleep(CHECK_EVERY)
            for waiters in list(self._by_user.values()):
                for waiter in list(waiters):
                    if not waiter.ended and not waiter.alive():
                        waiter.ended = "gone"
                        waiter.event.set()

    async def _watch_other_writers(self) -> None:
        """Commits of another process call no listener here: where nothing tells of them (SQLite,
        or a lost LISTEN connection), one query per interval for the whole feed notices them
        while anyone waits. Commits of this process never wait for it."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            await asyncio.sleep(OTHER_WRITERS_EVERY)
            if not self._by_user:
                # nobody to wake: a waiter's first read starts from the head, so no gap is owed
                self._known_through(self.head)
                continue
            if self._scheduled:
                continue
            if (self.listener is not None and self.listener.connected
                    and loop.time() - checked < LISTENING_CHECK_EVERY):
                continue
            checked = loop.time()
            await self._check_head()

    def _announced(self, seq: int) -> None:
        if seq <= self.known:
            return
        self._above.add(seq)
        while self.known + 1 in self._above:
            self.known += 1
            self._above.discard(self.known)

    def _known_through(self, seq: int) -> None:
        if seq > self.known:
            self.known = seq
            self._above = {s for s in self._above if s > seq}

    def _check_head_soon(self) -> None:
        """The LISTEN connection is back: what was committed while it was down is looked for once."""
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._check_head()))

    async def _check_head(self) -> None:
        """When the head moved past a seq this feed was not told of, wake every waiter (the rows
        are not known: each re-reads once). Seqs have no holes on either engine (a rolled-back
        change gives its number back), so a seq not announced is one committed by a process that
        told nobody."""
        try:
            head = (await self.db.lookup(HEAD[self.db.engine]))[0]   # one small read on the loop, no reader hop
        except Exception:   # a closing database: the next round (or cleanup) settles it
            log.debug("feed head check failed", exc_info=True)
            return
        if head <= self.known:
            return
        # our own commits become visible to readers a moment before their wake-ups arrive
        await asyncio.sleep(WAKE_GRACE)
        if head > self.known:
            self.head = max(self.head, head)
            self.covered = max(self.covered, head)
            self._known_through(head)
            for waiters in list(self._by_user.values()):
                for waiter in waiters:
                    if not waiter.event.is_set():
                        self.stats.woken += 1
                        waiter.event.set()

    async def check_cursor(self, since: int, name: str = "since") -> None:
        """422 for a position this feed has not reached, 410 for one older than what it keeps
        (SSE checks before its answer starts)."""
        row = await self.db.one(f"SELECT ({HEAD[self.db.engine]}) AS head, ({TRIMMED}) AS trimmed")
        if since > row["head"]:
            raise _ahead(name)
        if since < row["trimmed"]:
            raise _trimmed(name)

    # -- wake-ups (event loop only) ---------------------------------------------------------
    def on_commit(self, change: Wake) -> None:
        """Listener for `changes.listeners`: fold every notice of this loop turn into one pass."""
        if change.database != self.database:
            return
        self.stats.commits += 1
        self._pending.append(change)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._wake_pass)

    def on_notify(self, payload: str) -> None:
        """A change another process committed (PostgreSQL NOTIFY, db/notifications.py): woken as
        one of ours would be. Ours are skipped: `on_commit` had them at our commit."""
        origin, seq, workspace_id, entity, entity_id, user_id = payload.split(" ")
        if origin == ORIGIN:
            return
        self.stats.heard += 1
        self.on_commit(Wake(self.database, int(seq), workspace_id, entity, entity_id,
                            None if user_id == "-" else user_id))

    def _wake_pass(self) -> None:
        pending, self._pending, self._scheduled = self._pending, [], False
        self.stats.passes += 1
        # not `seq > head`: with other writers, wake-ups do not arrive in seq order (ours at our
        # commit, theirs over the network); only a head check that woke everyone covers a seq
        fresh = [c for c in pending if c.seq > self.covered]
        if not fresh:
            self.stats.skipped += 1
            return
        self.head = max(self.head, max(c.seq for c in fresh))
        for change in fresh:
            self._announced(change.seq)
        targets = set(self._unknown)
        for workspace_id in {c.workspace_id for c in fresh if c.user_id is None}:
            targets |= self._by_workspace.get(workspace_id, set())
        users = {c.user_id for c in fresh if c.user_id is not None}
        # a member change names the user (entity id): a joiner has no index entry for it yet
        users.update(c.entity_id for c in fresh if c.entity == "member")
        for user_id in users:
            targets |= self._by_user.get(user_id, set())
        for waiter in targets:
            if not waiter.event.is_set():
                self.stats.woken += 1
                waiter.event.set()

    def revoke(self, user_id: str, session_ids: list[str] | None) -> None:
        """AuthService revocation listener: streams of ended sessions stop (None: all of the user's)."""
        for waiter in list(self._by_user.get(user_id, ())):
            if session_ids is None or waiter.session_id in session_ids:
                waiter.ended = "revoked"
                waiter.event.set()

    def close(self) -> None:
        """Shutdown: every waiter answers now; streams end."""
        self.closed = True
        for waiters in self._by_user.values():
            for waiter in waiters:
                waiter.ended = waiter.ended or "shutdown"
                waiter.event.set()

    # -- waiter bookkeeping -----------------------------------------------------------------
    def _watch(self, user_id: str, session_id: str | None, alive: Callable[[], bool]) -> Waiter:
        waiter = Waiter(user_id, session_id, alive)
        self._by_user.setdefault(user_id, set()).add(waiter)
        self._unknown.add(waiter)
        if self.closed:
            waiter.ended = "shutdown"
        return waiter

    def _know(self, waiter: Waiter, workspaces: frozenset[str]) -> None:
        if waiter.workspaces == workspaces:
            return
        self._unindex(waiter)
        waiter.workspaces = workspaces
        for workspace_id in workspaces:
            self._by_workspace.setdefault(workspace_id, set()).add(waiter)

    def _unindex(self, waiter: Waiter) -> None:
        self._unknown.discard(waiter)
        for workspace_id in waiter.workspaces or ():
            waiters = self._by_workspace.get(workspace_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_workspace[workspace_id]

    def _unwatch(self, waiter: Waiter) -> None:
        self._unindex(waiter)
        waiters = self._by_user.get(waiter.user_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._by_user[waiter.user_id]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._by_user.values())

    @property
    def parked(self) -> int:
        """Waiters past their first read (indexed by workspace): what a commit may wake."""
        return self.waiting - len(self._unknown)

    async def _read(self, waiter: Waiter, since: int | None, limit: int) -> Page:
        waiter.event.clear()   # a commit during the read sets it again: we look once more
        page = await read_page(self.db, waiter.user_id, since, limit)
        self.stats.reads += 1
        self._know(waiter, page.workspaces)
        return page

    @staticmethod
    async def _sleep(waiter: Waiter, seconds: float) -> bool:
        """Wait for a wake-up (or the end) up to `seconds`; False on timeout."""
        if seconds <= 0:
            return False
        try:
            await asyncio.wait_for(waiter.event.wait(), seconds)
            return True
        except TimeoutError:
            return False

    # -- the two ways to read ---------------------------------------------------------------
    async def changes(self, user_id: str, session_id: str | None, since: int | None, limit: int,
                      wait: float, alive: Callable[[], bool] = lambda: True) -> Page:
        """One page; with `wait` > 0 and nothing new, hold on until a change for this caller
        commits, `wait` seconds pass, the client leaves, or the server shuts down."""
        if wait <= 0 or since is None:
            return await read_page(self.db, user_id, since, limit)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, MAX_WAIT)
        waiter = self._watch(user_id, session_id, alive)
        try:
            while True:
                page = await self._read(waiter, since, limit)
                if page.rows or waiter.ended:
                    return page
                since = page.cursor   # past rows this caller cannot see: never rescanned
                if not await self._sleep(waiter, deadline - loop.time()) or waiter.ended == "gone":
                    return page
        finally:
            self._unwatch(waiter)

    async def stream(self, user_id: str, session_id: str | None, since: int | None, limit: int,
                     alive: Callable[[], bool] = lambda: True, heartbeat: float | None = None,
                     lifetime: float | None = None) -> AsyncIterator[Page | None]:
        """Pages as they come (SSE); None when `heartbeat` seconds (default HEARTBEAT) passed
        without one. Ends when the client leaves, its session is revoked, the server shuts down,
        or after `lifetime` seconds (when the caller's access token expires)."""
        heartbeat = HEARTBEAT if heartbeat is None else heartbeat
        loop = asyncio.get_running_loop()
        end = loop.time() + lifetime if lifetime is not None else math.inf
        waiter = self._watch(user_id, session_id, alive)
        try:
            if since is None:
                since = (await self._read(waiter, None, limit)).cursor
            last_sent = loop.time()
            while not waiter.ended and loop.time() < end:
                try:
                    page = await self._read(waiter, since, limit)
                except Gone:
                    return  # trimmed past this stream's position: the reconnect answers 410
                since = page.cursor
                if page.rows:
                    yield page
                    last_sent = loop.time()
                    if page.has_more:
                        continue
                # quiet: sleep until woken, sending a heartbeat whenever one is due
                while not waiter.ended:
                    now = loop.time()
                    if now >= end:
                        return
                    if last_sent + heartbeat <= now:
                        yield None
                        last_sent = loop.time()
                        continue
                    if await self._sleep(waiter, min(last_sent + heartbeat, end) - now):
                        break          # woken (or ended): look again
        finally:
            self._unwatch(waiter)
