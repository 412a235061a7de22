"""The versions feature: `app[VERSIONS]` records, lists, reads, diffs and restores versions and
thins old automatic ones.

Recording a version takes the live room's Yjs state and markdown in one event-loop step together
with the document's open burst (its authors), so an update either belongs to this version or
starts the next burst — never both, never neither.

Restore applies the *difference* between the live text and the version's as one ordinary edit
through the room — the content backend's write, as for `PUT …/content` — so connected editors
receive it like any other update and their concurrent edits elsewhere merge by the CRDT; an
`If-Match` naming the content the restorer saw keeps what others typed since. A `restore`
version of the state before is recorded first, so a restore can itself be undone.

For the import feature: `await record_import(app, document_id, user_id)` (or
`app[VERSIONS].record_import(...)`) records an `import` version of the current state right
before an import replaces the content.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from mdsync import clock
from mdsync.api.errors import NotFound, PreconditionFailed, TooLarge, ValidationFailed
from mdsync.collab.yjs_markdown import nul_free
from mdsync.documents.content import CONTENT
from mdsync.db import Database, Tx
from mdsync.versions import policy, store, textdiff
from mdsync.versions.scheduler import Burst, Bursts

log = logging.getLogger("mdsync.versions")


class Versions:
    def __init__(self, app: web.Application, db: Database):
        self.app = app
        self.db = db
        self.bursts = Bursts()
        from mdsync.cluster import CLUSTER
        # several nodes: automatic versions recorded once, whichever node's sockets edited
        self.clustered = CLUSTER in app and app[CLUSTER].enabled
        self._digests: dict[str, bytes] = {}  # document -> sha256 of its latest version's markdown

    @property
    def rooms(self):
        from mdsync.collab.rooms import ROOMS
        return self.app[ROOMS]

    # -- recording ---------------------------------------------------------------------------
    async def markdown_and_state(self, room) -> tuple[str, bytes]:
        """The room's markdown and whole Yjs state, taken in one loop step (no await between)."""
        model = await self._content_model(room.document_id)
        return await self.app[CONTENT].of(model or "text").state(room)

    async def _content_model(self, document_id: str) -> str | None:
        return await self.db.value("SELECT content_model FROM documents WHERE id = ?", (document_id,))

    async def _snapshot(self, document_id: str, room=None) -> tuple[str, bytes, list[str]]:
        """(markdown, state, authors since the previous version) — and that burst ends here. The
        markdown as it is stored (`nul_free`: a NUL typed into Yjs is U+FFFD), so it is compared
        with the previous version's as stored."""
        model = await self._content_model(document_id)
        if model is None:
            raise NotFound("no such document")
        if room is None:
            room = self.rooms.loaded(document_id)
        if room is None:
            burst = self.bursts.open.get(document_id)
            if burst is not None and burst.stash is not None:
                self.bursts.take(document_id)
                return nul_free(burst.stash[0]), burst.stash[1], list(burst.authors)
            async with self.rooms.use(document_id) as loaded:
                return await self._snapshot(document_id, loaded)
        # the burst is taken in the same loop step as the state: a backend reads the room before
        # its first await (rendering TipTap's markdown may then take its time off the loop)
        burst = self.bursts.take(document_id)
        markdown, state = await self.app[CONTENT].of(model).state(room)
        return nul_free(markdown), state, list(burst.authors) if burst else []

    async def _insert(self, document_id: str, kind: str, label: str | None, authors: list[str],
                      created_by: str | None, markdown: str, state: bytes) -> dict[str, Any] | None:
        version = await self.db.write(store.insert, document_id, kind, label, authors, created_by, markdown, state)
        if version is not None:
            self._digests[document_id] = _digest(markdown)
        return version

    async def record_auto(self, document_id: str, room=None, continuing: bool = False) -> dict[str, Any] | None:
        """An automatic version of the document's state now, unless its markdown equals the
        previous version's (an edit undone, or only CRDT bookkeeping): then none. `continuing`:
        the burst is due because editing has gone on for max_interval_seconds (not idle)."""
        burst = self.bursts.open.get(document_id)
        try:
            markdown, state, authors = await self._snapshot(document_id, room)
        except NotFound:
            self.bursts.take(document_id)
            return None
        if self.clustered:
            return await self._record_auto_once(document_id, markdown, state, authors, burst, continuing)
        digest = self._digests.get(document_id)
        if digest is None:
            previous = await store.latest_markdown(self.db, document_id)
            digest = None if previous is None else _digest(previous)
        if digest == _digest(markdown):
            return None
        version = await self._insert(document_id, "auto", None, authors, None, markdown, state)
        if version is not None:
            log.info("automatic version %s of document %s (authors %s)", version["id"], document_id,
                     ",".join(authors) or "-")
        return version

    async def _record_auto_once(self, document_id: str, markdown: str, state: bytes, authors: list[str],
                                burst: Burst | None, continuing: bool) -> dict[str, Any] | None:
        """Several nodes: the version is recorded by one node (`store.insert_auto_once`); when
        another node is recording one right now, the burst is put back and tried at the next tick."""
        since = clock.iso(datetime.fromtimestamp(burst.first, UTC)) if burst is not None else None
        outcome, version = await self.db.write(store.insert_auto_once, document_id, authors, markdown, state,
                                               since, continuing)
        if outcome == "busy":
            if burst is not None:
                self.bursts.reopen(document_id, burst)
            return None
        if outcome == "inserted":
            log.info("automatic version %s of document %s (authors %s)", version["id"], document_id,
                     ",".join(authors) or "-")
        elif outcome == "joined":
            log.info("automatic version %s of document %s, recorded by another node, has this node's authors (%s)",
                     version["id"], document_id, ",".join(authors) or "-")
        return version if outcome == "inserted" else None

    async def record(self, document_id: str, kind: str, label: str | None, user_id: str | None) -> dict[str, Any]:
        """A version of the current state, of kind named, restore or import (always recorded)."""
        markdown, state, authors = await self._snapshot(document_id)
        version = await self._insert(document_id, kind, label, authors, user_id, markdown, state)
        if version is None:
            raise NotFound("no such document")
        return version

    async def record_import(self, document_id: str, user_id: str | None, label: str | None = None) -> dict[str, Any]:
        """The `import` version the import feature records before an import replaces content."""
        return await self.record(document_id, "import", label, user_id)

    # -- reading -----------------------------------------------------------------------------
    async def page(self, document_id: str, after, limit: int) -> list[Any]:
        if after is not None and not (isinstance(after, list) and len(after) == 2
                                      and all(isinstance(x, str) for x in after)):
            raise ValidationFailed.field("cursor", "is not a cursor this server issued")
        return await store.page(self.db, document_id, after, limit)

    async def get(self, version_id: str, *, with_markdown: bool = False) -> Any:
        row = await store.get(self.db, version_id, with_markdown=with_markdown)
        if row is None:
            raise NotFound("no such version")
        return row

    async def of_document(self, document_id: str, version_id: str) -> Any:
        """A version (with markdown) that must belong to `document_id`: a version of another
        document — in this workspace or another — is not found here (404, like an unknown id)."""
        row = await store.get(self.db, version_id, with_markdown=True)
        if row is None or row["document_id"] != document_id:
            raise NotFound(f"no version {version_id} of this document")
        return row

    async def diff(self, document: Any, from_id: str, to_id: str) -> dict[str, Any]:
        document_id = document["id"]
        old = await self.of_document(document_id, from_id)
        if to_id == "current":  # the live text, as GET /documents/{id}/content answers it
            new_markdown, tofile = await self.app[CONTENT].markdown(document), "current"
        else:
            new = await self.of_document(document_id, to_id)
            new_markdown, tofile = new["markdown"], f"version/{to_id}"
        result = await textdiff.run(old["markdown"], new_markdown, f"version/{from_id}", tofile)
        return {"from": from_id, "to": to_id, "unified": result.unified,
                "stats": {"added": result.added, "removed": result.removed}}

    # -- restore -----------------------------------------------------------------------------
    async def restore(self, access: Any, version_id: str, if_match: str | None) -> None:
        """Make the document's text the version's, as one edit by the caller through the live
        room — the same write as `PUT /documents/{id}/content` with the version's markdown as the
        body (the one content backend, `app[CONTENT]`): without `If-Match` a minimal diff against
        the live text; with the ETag of the content the restorer was looking at, the edit
        base→version is merged, so what others typed since that ETag survives. A `restore`
        version of the state before is recorded first."""
        document = access.document
        version = await self.of_document(document["id"], version_id)
        async with self.rooms.use(document["id"]):  # one loaded room for both steps
            before = await self.record(document["id"], "restore", f"Before restoring {version['created_at']}",
                                       access.user_id)
            try:
                await self.app[CONTENT].write(document, version["markdown"], if_match, access)
            except (PreconditionFailed, TooLarge, ValidationFailed):
                # refused before any edit (stale If-Match, too large): nothing was restored, so no
                # "before restoring" version either; its authors go back to the open burst
                await self.db.write(store.remove, before["id"])
                self._digests.pop(document["id"], None)
                self.bursts.give_back(document["id"], [a["id"] for a in before["authors"]])
                raise

    # -- thinning ----------------------------------------------------------------------------
    async def prune(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """The periodic thinning: decide from a read, delete in small jobs (a first prune of a
        long history must not hold the single writer for seconds)."""
        now = clock.now()
        # read through a reader, not the writer: a first prune of a long history reads many rows
        removed = thin(await self.db.all(store.AUTO_VERSIONS_BEFORE, (clock.iso(_horizon(now)),)), now)
        if not dry_run:
            for start in range(0, len(removed), PRUNE_BATCH):
                await self.db.write(store.delete, removed[start:start + PRUNE_BATCH])
        log_removed(removed, dry_run)
        return removed


PRUNE_BATCH = 500


def prune(tx: Tx, now, dry_run: bool = False) -> list[dict[str, Any]]:
    """The thinning job (periodic task and `mdsync versions prune`): remove the automatic
    versions `policy.keep` does not name; answers what it removed (or would, with dry_run).

    Only versions older than the end of the hour that holds "24 h ago" are read: younger ones are
    all kept and share no hour or day with an older one, except within that hour."""
    removed = thin(store.auto_versions_before(tx, clock.iso(_horizon(now))), now)
    if not dry_run:
        store.delete(tx, removed)
    return removed


def _horizon(now):
    return (now - policy.KEEP_ALL).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def thin(rows: list[Any], now) -> list[dict[str, Any]]:
    """Of these automatic versions (store.auto_versions_before), the ones `policy.keep` does not name."""
    by_document: dict[str, list[Any]] = {}
    for row in rows:
        by_document.setdefault(row["document_id"], []).append(row)
    removed: list[Any] = []
    for versions in by_document.values():
        gone = set(policy.thin([(r["id"], r["created_at"]) for r in versions], now))
        removed.extend(r for r in versions if r["id"] in gone)
    return [{"id": r["id"], "document_id": r["document_id"], "workspace_id": r["workspace_id"],
             "created_at": r["created_at"]} for r in removed]


def log_removed(removed: list[dict[str, Any]], dry_run: bool = False) -> None:
    verb = "would prune" if dry_run else "pruned"
    by_document: dict[str, list[str]] = {}
    for row in removed:
        by_document.setdefault(row["document_id"], []).append(f"{row['id']} ({row['created_at']})")
    for document_id, items in by_document.items():
        log.info("%s %d automatic versions of document %s: %s", verb, len(items), document_id, ", ".join(items))


async def record_import(app: web.Application, document_id: str, user_id: str | None,
                        label: str | None = None) -> dict[str, Any]:
    """For the import feature: an `import` version of the current state, before the import."""
    return await app[VERSIONS].record_import(document_id, user_id, label)


def _digest(markdown: str) -> bytes:
    return hashlib.sha256(markdown.encode("utf-8")).digest()


VERSIONS: web.AppKey[Versions] = web.AppKey("versions", Versions)
