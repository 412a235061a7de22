"""The Yjs states behind recently served ETags (table content_states), so that a `PUT …/content`
with an older `If-Match` can be merged onto exactly the state its client read.

See migration 0005 for the chain layout and why it is not Yjs snapshots: a whole state now and
then, deltas between. Measured on a 57 KB document (138 KB of Yjs state) served 300 times, 40
keystrokes apart: a whole state per ETag would store 28 MB, the chain stores 1.8 MB (9 whole
states, the rest deltas, which carry the delete set: about what state vector + delete set
snapshots would cost, without turning GC off in every live document). A state is kept
`sync.etag_retention_days` after it was last served, then collected.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from aiohttp import web
from pycrdt import Doc

from mdsync import clock
from mdsync.collab.etags import state_etag
from mdsync.collab.yjs_markdown import TEXT, YjsMarkdown
from mdsync.db import Database, Tx

log = logging.getLogger("mdsync.collab.content")


class States:
    """The Yjs states behind recently served ETags, kept `retention` seconds after last served."""

    TOUCH_EVERY = 3600.0  # re-serving a known ETag refreshes its served_at at most this often

    def __init__(self, db: Database, retention_seconds: float):
        self.db = db
        self.retention = retention_seconds
        self._locks: dict[str, asyncio.Lock] = {}
        # document id -> (last seq, its state vector, its ETag, delta bytes since the last full row)
        self._chains: OrderedDict[str, tuple[int, bytes, str, int]] = OrderedDict()
        # (document id, etag) -> loop time of the last served_at refresh
        self._touched: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _lock(self, document_id: str) -> asyncio.Lock:
        lock = self._locks.get(document_id)
        if lock is None:
            if len(self._locks) > 10000:
                for key in [k for k, v in self._locks.items() if not v.locked()]:
                    del self._locks[key]
            lock = self._locks[document_id] = asyncio.Lock()
        return lock

    def cutoff(self) -> str:
        return clock.iso_in(-self.retention)

    async def serve(self, document_id: str, doc: Doc, size_hint: int = 0,
                    model: YjsMarkdown = TEXT) -> tuple[str, str]:
        """(markdown, etag) of `doc` now (its `model` says how its markdown is kept), its state
        recorded first so that a later If-Match on that ETag can rebuild it: as the delta from the
        document's previous recorded state, or whole when the deltas since the last whole one
        outweigh the document. The markdown is rendered from a snapshot taken with the ETag."""
        snapshot, etag = await self._record(document_id, doc, size_hint, model)
        return await model.render(snapshot, document_id), etag

    async def record(self, document_id: str, doc: Doc, size_hint: int = 0, model: YjsMarkdown = TEXT) -> str:
        """The ETag `serve` would answer, its state recorded the same way, without rendering the
        markdown (document metadata asks for ETags of whole listings)."""
        return (await self._record(document_id, doc, size_hint, None))[1]

    async def _record(self, document_id: str, doc: Doc, size_hint: int,
                      model: YjsMarkdown | None) -> tuple[object, str]:
        async with self._lock(document_id):
            chain = self._chains.get(document_id)
            if chain is None:
                row = await self.db.one(
                    "SELECT seq, sv, etag, (SELECT coalesce(sum(length(data)), 0) FROM content_states"
                    "  WHERE document_id = ?1 AND seq > (SELECT coalesce(max(seq), 0) FROM content_states"
                    "  WHERE document_id = ?1 AND \"full\" = 1)) AS since_full"
                    " FROM content_states WHERE document_id = ?1 ORDER BY seq DESC LIMIT 1", (document_id,))
                chain = (row["seq"], row["sv"], row["etag"], row["since_full"]) if row else (0, b"", "", 0)
            text, etag = model.snapshot(doc, size_hint) if model else None, state_etag(doc)
            collected = False
            if etag == chain[2]:
                if await self.touch(document_id, etag):
                    self._remember_chain(document_id, chain)
                    return text, etag
                # collected meanwhile: record it again, whole (read again: the doc may have moved on)
                collected = True
                text, etag = model.snapshot(doc, size_hint) if model else None, state_etag(doc)
            # from here to the insert's submission nothing awaits: text, ETag and bytes are one instant
            sv = doc.get_state()
            seq = chain[0] + 1
            if chain[0] == 0 or collected:
                full, data = True, doc.get_update()
            else:
                data = doc.get_update(chain[1])
                full = chain[3] + len(data) > max(size_hint, 4096)
                if full:
                    data = doc.get_update()
            self._remember_chain(document_id, (seq, sv, etag, 0 if full else chain[3] + len(data)))
            try:
                await self.db.write(_insert_state, document_id, seq, etag, full, sv, data, clock.iso())
            except BaseException:
                self._chains.pop(document_id, None)  # unsure what is stored: ask the database next time
                raise
            self._mark_touched(document_id, etag)
            return text, etag

    def _remember_chain(self, document_id: str, chain: tuple[int, bytes, str, int]) -> None:
        self._chains[document_id] = chain
        self._chains.move_to_end(document_id)
        while len(self._chains) > 10000:
            self._chains.popitem(last=False)

    def _mark_touched(self, document_id: str, etag: str) -> None:
        self._touched[(document_id, etag)] = asyncio.get_running_loop().time()
        self._touched.move_to_end((document_id, etag))
        while len(self._touched) > 50000:
            self._touched.popitem(last=False)

    async def touch(self, document_id: str, etag: str) -> bool:
        """A retained ETag was served again: its retention starts over (written at most hourly,
        and never less often than twice per retention window). False when that state is no
        longer retained (collected): the caller serves the current state instead."""
        last = self._touched.get((document_id, etag))
        if last is not None and asyncio.get_running_loop().time() - last < min(self.TOUCH_EVERY, self.retention / 2):
            return True
        if not await self.db.write(_touch, document_id, etag, clock.iso()):
            self._touched.pop((document_id, etag), None)
            return False
        self._mark_touched(document_id, etag)
        return True

    async def rebuild(self, document_id: str, etag: str, client_id: int | None = None) -> Doc | None:
        """A Doc (editing as `client_id`, when given) holding exactly the state served under
        `etag`, or None when it is unknown or older than the retention window."""
        row = await self.db.one("SELECT seq, served_at FROM content_states WHERE document_id = ? AND etag = ?",
                                (document_id, etag))
        if row is None or row["served_at"] < self.cutoff():
            return None
        rows = await self.db.all(
            "SELECT data FROM content_states WHERE document_id = ?1 AND seq <= ?2 AND seq >="
            " (SELECT max(seq) FROM content_states WHERE document_id = ?1 AND \"full\" = 1 AND seq <= ?2)"
            " ORDER BY seq", (document_id, row["seq"]))
        doc = Doc(client_id=client_id) if client_id is not None else Doc()
        for part in rows:
            doc.apply_update(part["data"])
        if state_etag(doc) != etag:
            log.warning("content state %s of %s does not rebuild to its ETag", etag, document_id)
            return None
        return doc

    async def collect(self) -> int:
        """Delete states past the retention window that no retained state builds on."""
        deleted = await self.db.write(_collect, self.cutoff())
        if deleted:
            self._chains.clear()  # a chain may have lost its last row: re-read before extending it
        return deleted


def _touch(tx: Tx, document_id: str, etag: str, now: str) -> bool:
    # a row still present is rebuildable (collection never keeps a row without its chain base)
    return tx.execute("UPDATE content_states SET served_at = ? WHERE document_id = ? AND etag = ?",
                      (now, document_id, etag)).rowcount > 0


def _insert_state(tx: Tx, document_id: str, seq: int, etag: str, full: bool, sv: bytes, data: bytes, now: str) -> None:
    if tx.value("SELECT 1 FROM documents WHERE id = ?", (document_id,)) is None:
        return  # purged meanwhile
    tx.execute("INSERT INTO content_states (document_id, seq, etag, \"full\", sv, data, served_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (document_id, etag) DO UPDATE SET served_at = excluded.served_at",
               (document_id, seq, etag, int(full), sv, data, now))


def _collect(tx: Tx, cutoff: str) -> int:
    # per document: m = its oldest state still in the window, f = the full state m builds on;
    # everything before f goes (all of it when nothing is in the window any more)
    return tx.execute(
        "DELETE FROM content_states AS c WHERE c.served_at < ?1 AND c.seq < coalesce("
        " (SELECT max(f.seq) FROM content_states f WHERE f.document_id = c.document_id AND f.\"full\" = 1 AND f.seq <="
        "   (SELECT min(k.seq) FROM content_states k WHERE k.document_id = c.document_id AND k.served_at >= ?1)),"
        " (SELECT max(x.seq) + 1 FROM content_states x WHERE x.document_id = c.document_id))", (cutoff,)).rowcount


STATES: web.AppKey[States] = web.AppKey("content_states", States)
