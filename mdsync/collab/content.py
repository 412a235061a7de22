"""Content model `text` on top of Yjs: the `ContentBackend` at `app[CONTENT]` for documents whose
markdown lives in `Y.Text('markdown')` (tiptap documents go to the simple backend, for now).

- ETag: a hash of the CRDT state's identity, its state vector and delete set (a pure deletion
  leaves the state vector unchanged, so the vector alone would not do), canonically ordered.
- `read`: the live text when the room is loaded; else the stored projection, but only when it is
  known to be exact (content_heads says it was made from the very update-log seq the database
  holds, and its ETag's state is retained); otherwise the room is loaded and read. A document with
  CRDT state is never answered from a projection that trails it.
- `write`: the new markdown becomes a minimal text diff (delete/insert ops in one transaction) on
  the live Y.Text, so editors see an edit. With a stale `If-Match` the state served under that
  ETag is rebuilt, the client's base→body diff is replayed on a fork of it, and the fork's update
  is merged into the live document: both sides' edits survive. Unknown or expired ETag: 412.
- `States`: the served states behind recent ETags (table content_states; see migration 0005 for
  the chain layout and why it is not Yjs snapshots), with retention and garbage collection.
  Measured on a 57 KB document (138 KB of Yjs state) served 300 times, 40 keystrokes apart:
  a whole state per ETag would store 28 MB, the chain stores 1.8 MB (9 whole states, the rest
  deltas, which carry the delete set: about what state vector + delete set snapshots would cost,
  without turning GC off in every live document).
- A stale-base merge edits as a client id derived from the ETag and the body, so a retried PUT
  yields the very same Yjs items (ignored the second time) instead of a second copy of its text.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import fast_diff_match_patch
from pycrdt import Doc, Text

from mdsync import clock
from mdsync.api.errors import PreconditionFailed, TooLarge
from mdsync.collab import protocol as p
from mdsync.collab.room import TEXT_NAME, DocumentTooLarge, Room, decode_state_vector, seed_update
from mdsync.collab.rooms import RoomManager
from mdsync.db import Database, Tx

log = logging.getLogger("mdsync.collab.content")

# ---------------------------------------------------------------------------------------------
# ETags
# ---------------------------------------------------------------------------------------------


def state_etag(doc: Doc) -> str:
    """The (unquoted) ETag of a Doc's current state: sha256 of its state vector and delete set,
    both sorted (yrs encodes them from hash maps, so two equal states may differ in byte order)."""
    sv = doc.get_state()
    h = hashlib.sha256()
    for client, clock_ in sorted(decode_state_vector(sv).items()):
        h.update(b"%d:%d," % (client, clock_))
    h.update(b"|")
    h.update(_canonical_delete_set(doc.get_update(sv)))
    return "y" + base64.urlsafe_b64encode(h.digest()[:18]).decode()


def _canonical_delete_set(update: bytes) -> bytes:
    """The delete set of a v1 update that carries no structs (`get_update(own state vector)`),
    as sorted text; the raw bytes when the update is not of that shape."""
    try:
        clients, pos = p.read_varuint(update, 0)
        if clients != 0:
            return update
        count, pos = p.read_varuint(update, pos)
        out = []
        for _ in range(count):
            client, pos = p.read_varuint(update, pos)
            ranges, pos = p.read_varuint(update, pos)
            spans = []
            for _ in range(ranges):
                start, pos = p.read_varuint(update, pos)
                length, pos = p.read_varuint(update, pos)
                spans.append((start, length))
            out.append((client, sorted(spans)))
        out.sort()
        return repr(out).encode()
    except Exception:
        return update


def quote(etag: str) -> str:
    return f'"{etag}"'


def etag_candidates(if_match: str) -> list[str]:
    """The bare ETags named by an If-Match header (`*` kept as is)."""
    return [part.strip().removeprefix("W/").strip('"') for part in if_match.split(",") if part.strip()]


# ---------------------------------------------------------------------------------------------
# Minimal text diff → Y.Text operations
# ---------------------------------------------------------------------------------------------
# Google's diff-match-patch (C++ via fast-diff-match-patch): Myers' diff with common prefix/suffix
# trimming, line mode for long texts, a time bound, and a semantic cleanup so that a replaced
# word is one delete + one insert rather than interleaved letters. It releases the GIL, so long
# texts are diffed in a worker thread and the event loop goes on meanwhile.
DIFF_TIME_LIMIT = 1.0      # seconds before the diff settles for a coarser (still correct) answer
THREAD_ABOVE_CHARS = 20000  # diff texts longer than this off the event loop


def text_ops(old: str, new: str) -> list[tuple[int, int, str]]:
    """Edits turning `old` into `new`: (start, end, insert) in code-point offsets of `old`,
    ascending and non-overlapping."""
    if old == new:
        return []
    ops: list[tuple[int, int, str]] = []
    i = j = 0
    for op, length in fast_diff_match_patch.diff(old, new, timelimit=DIFF_TIME_LIMIT, checklines=True,
                                                cleanup="Semantic", counts_only=True):
        if op == "=":
            i += length
            j += length
        elif op == "-":
            if ops and ops[-1][1] == i:  # a replace: extend the previous insert's span
                start, _, insert = ops[-1]
                ops[-1] = (start, i + length, insert)
            else:
                ops.append((i, i + length, ""))
            i += length
        else:
            if ops and ops[-1][1] == i:
                start, end, insert = ops[-1]
                ops[-1] = (start, end, insert + new[j:j + length])
            else:
                ops.append((i, i, new[j:j + length]))
            j += length
    return ops


async def text_ops_async(old: str, new: str) -> list[tuple[int, int, str]]:
    if len(old) + len(new) <= THREAD_ABOVE_CHARS:
        return text_ops(old, new)
    return await asyncio.get_running_loop().run_in_executor(None, text_ops, old, new)


def apply_text_diff(text: Text, new: str, old: str | None = None,
                    ops: list[tuple[int, int, str]] | None = None) -> int:
    """Turn `text` into `new` with a minimal set of deletes and inserts (call inside one
    transaction). `ops` computed beforehand from `old` are used when the text is still `old`.
    pycrdt offsets are UTF-8 bytes: code-point offsets are converted on the way.
    Returns the number of operations."""
    current = str(text)
    if ops is None or old != current:
        ops = text_ops(current, new)
    old = current
    if not ops:
        return 0
    if old.isascii():
        byte_ops = ops
    else:
        byte_ops, at, pos = [], 0, 0
        for start, end, insert in ops:
            at += len(old[pos:start].encode("utf-8"))
            span = len(old[start:end].encode("utf-8"))
            byte_ops.append((at, at + span, insert))
            at += span
            pos = end
    for start, end, insert in reversed(byte_ops):  # from the end: earlier offsets stay valid
        if end > start:
            del text[start:end]
        if insert:
            text.insert(start, insert)
    return len(ops)


# ---------------------------------------------------------------------------------------------
# Served states (content_states)
# ---------------------------------------------------------------------------------------------
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

    async def serve(self, document_id: str, doc: Doc, size_hint: int = 0) -> tuple[str, str]:
        """(text, etag) of `doc` now, its state recorded first so that a later If-Match on that
        ETag can rebuild it: as the delta from the document's previous recorded state, or whole
        when the deltas since the last whole one outweigh the document."""
        async with self._lock(document_id):
            chain = self._chains.get(document_id)
            if chain is None:
                row = await self.db.one(
                    "SELECT seq, sv, etag, (SELECT coalesce(sum(length(data)), 0) FROM content_states"
                    "  WHERE document_id = ?1 AND seq > (SELECT coalesce(max(seq), 0) FROM content_states"
                    "  WHERE document_id = ?1 AND full = 1)) AS since_full"
                    " FROM content_states WHERE document_id = ?1 ORDER BY seq DESC LIMIT 1", (document_id,))
                chain = (row["seq"], row["sv"], row["etag"], row["since_full"]) if row else (0, b"", "", 0)
            text, etag = str(doc.get(TEXT_NAME, type=Text)), state_etag(doc)
            collected = False
            if etag == chain[2]:
                if await self.touch(document_id, etag):
                    self._remember_chain(document_id, chain)
                    return text, etag
                # collected meanwhile: record it again, whole (read again: the doc may have moved on)
                collected = True
                text, etag = str(doc.get(TEXT_NAME, type=Text)), state_etag(doc)
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
            " (SELECT max(seq) FROM content_states WHERE document_id = ?1 AND full = 1 AND seq <= ?2)"
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
    tx.execute("INSERT INTO content_states (document_id, seq, etag, full, sv, data, served_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (document_id, etag) DO UPDATE SET served_at = excluded.served_at",
               (document_id, seq, etag, int(full), sv, data, now))


def _collect(tx: Tx, cutoff: str) -> int:
    # per document: m = its oldest state still in the window, f = the full state m builds on;
    # everything before f goes (all of it when nothing is in the window any more)
    return tx.execute(
        "DELETE FROM content_states AS c WHERE c.served_at < ?1 AND c.seq < coalesce("
        " (SELECT max(f.seq) FROM content_states f WHERE f.document_id = c.document_id AND f.full = 1 AND f.seq <="
        "   (SELECT min(k.seq) FROM content_states k WHERE k.document_id = c.document_id AND k.served_at >= ?1)),"
        " (SELECT max(x.seq) + 1 FROM content_states x WHERE x.document_id = c.document_id))", (cutoff,)).rowcount


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
def merge_client_id(etag: str, markdown: str) -> int:
    """The Yjs client id a stale-base merge edits as: derived from the base and the body, so a
    retried PUT produces the very same items (Yjs ignores items it has) instead of a second copy."""
    digest = hashlib.sha256(etag.encode() + b"\0" + markdown.encode("utf-8", "surrogatepass")).digest()
    return (int.from_bytes(digest[:4], "big") & 0x7FFFFFFF) or 1


class YjsContent:
    """`ContentBackend` for content model `text`; other models go to `fallback`."""

    def __init__(self, db: Database, rooms: RoomManager, states: States, fallback: Any,
                 on_result: Callable[[str], None] | None = None):
        self.db = db
        self.rooms = rooms
        self.states = states
        self.fallback = fallback
        self.on_result = on_result or (lambda kind: None)  # metrics: "diff" · "merge" · "refused"
        self.projector: Any = None  # set by install: REST writes store their projection at once
        # document id -> ETag of the stored projection (filled as projections are stored and read)
        self.heads: OrderedDict[str, str] = OrderedDict()

    def note_head(self, document_id: str, etag: str) -> None:
        self.heads[document_id] = etag
        self.heads.move_to_end(document_id)
        while len(self.heads) > 100000:
            self.heads.popitem(last=False)

    async def load_heads(self) -> None:
        """At startup: the ETags of the projections that are exactly their document's stored state."""
        rows = await self.db.all(
            "SELECT h.document_id, h.etag FROM content_heads h WHERE h.crdt_seq ="
            " max(coalesce((SELECT seq FROM doc_snapshots s WHERE s.document_id = h.document_id), 0),"
            "     coalesce((SELECT max(seq) FROM doc_updates u WHERE u.document_id = h.document_id), 0))")
        for row in rows[-100000:]:
            self.note_head(row["document_id"], row["etag"])

    async def etag(self, doc: Any) -> str:
        """The ETag shown in document metadata: the one `read` would answer now, its state
        retained like every served state, so an If-Match on it merges (one scheme for both
        routes). Without reading the markdown when the live room or a retained head knows it."""
        if doc["content_model"] != "text":
            return await self.fallback.etag(doc)
        document_id = doc["id"]
        room = self.rooms.loaded(document_id)
        if room is not None:
            return (await self._serve(room))[1]
        head = self.heads.get(document_id)
        if head is not None and await self.states.touch(document_id, head):
            return quote(head)
        return (await self.read(doc))[1]

    async def read(self, doc: Any) -> tuple[str, str]:
        if doc["content_model"] != "text":
            return await self.fallback.read(doc)
        document_id = doc["id"]
        room = self.rooms.loaded(document_id)
        if room is None:
            stored = await self._exact_projection(document_id)
            if stored is not None:
                markdown, etag = stored
                if await self.states.touch(document_id, etag):
                    return markdown, quote(etag)
            elif (seeded := await self._serve_seed(document_id)) is not None:
                return seeded
        async with self.rooms.use(document_id) as room:
            return await self._serve(room)

    async def _serve(self, room: Room) -> tuple[str, str]:
        text, etag = await self.states.serve(room.document_id, room.doc, room.size)
        return text, quote(etag)

    async def _serve_seed(self, document_id: str) -> tuple[str, str] | None:
        """A document that has no CRDT state yet (never opened) holds exactly the deterministic
        seed of its markdown (room.seed_update), the state its room will load: serve that state
        without loading the room. None when the document has CRDT state."""
        markdown = await self.db.value(
            "SELECT markdown FROM documents d WHERE id = ?1 AND content_model = 'text'"
            " AND NOT EXISTS (SELECT 1 FROM doc_snapshots WHERE document_id = ?1)"
            " AND NOT EXISTS (SELECT 1 FROM doc_updates WHERE document_id = ?1)", (document_id,))
        if markdown is None:
            return None
        seed = Doc()
        seed.apply_update(seed_update(markdown))
        text, etag = await self.states.serve(document_id, seed, len(markdown))
        if self.rooms.loaded(document_id) is None and document_id not in self.heads:
            self.note_head(document_id, etag)  # its projection (the markdown) is exactly that state
        return text, quote(etag)

    async def _exact_projection(self, document_id: str) -> tuple[str, str] | None:
        """(markdown, etag) of the stored projection when it is exactly the stored CRDT state and
        that state is retained; None when the room must be loaded to know."""
        row = await self.db.one(
            "SELECT d.markdown, h.etag, h.crdt_seq,"
            " max(coalesce((SELECT seq FROM doc_snapshots WHERE document_id = d.id), 0),"
            "     coalesce((SELECT max(seq) FROM doc_updates WHERE document_id = d.id), 0)) AS crdt_now,"
            " (SELECT served_at FROM content_states s WHERE s.document_id = d.id AND s.etag = h.etag) AS served_at"
            " FROM documents d JOIN content_heads h ON h.document_id = d.id WHERE d.id = ?", (document_id,))
        if (row is None or row["crdt_now"] == 0 or row["crdt_now"] != row["crdt_seq"]
                or row["served_at"] is None or row["served_at"] < self.states.cutoff()):
            return None
        self.note_head(document_id, row["etag"])
        return row["markdown"], row["etag"]

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        if doc["content_model"] != "text":
            return await self.fallback.write(doc, markdown, if_match, access)
        document_id = doc["id"]
        user_id = access.user_id if access is not None else None
        async with self.rooms.use(document_id) as room:
            wanted = etag_candidates(if_match) if if_match is not None else []
            try:
                if not wanted or "*" in wanted:
                    # no base named: a diff against the text as it is when applied
                    old = room.text()
                    ops = await text_ops_async(old, markdown)
                    room.edit(lambda text: apply_text_diff(text, markdown, old, ops), user_id)
                    self.on_result("diff")
                elif not await self._apply_if_current(room, wanted, markdown, user_id):
                    base = None
                    for etag in wanted:
                        base = await self.states.rebuild(document_id, etag, merge_client_id(etag, markdown))
                        if base is not None:
                            break
                    if base is None:
                        self.on_result("refused")
                        raise PreconditionFailed("that ETag is unknown or older than the retention window;"
                                                 " GET the content again")
                    await self._merge(room, base, markdown, user_id)
                    self.on_result("merge")
            except DocumentTooLarge as exc:
                raise TooLarge(str(exc)) from None
            await room.drain()
            if self.projector is not None:
                await self.projector.project_now(room)
            return await self._serve(room)

    async def _apply_if_current(self, room: Room, wanted: list[str], markdown: str, user_id: str | None) -> bool:
        """The If-Match names the live state: apply base→markdown as a diff, unless the room moved
        on while the diff was computed (then False: the caller merges from the named base)."""
        if state_etag(room.doc) not in wanted:
            return False
        seq, old = room.seq, room.text()
        ops = await text_ops_async(old, markdown)
        if room.seq != seq:
            return False
        room.edit(lambda text: apply_text_diff(text, markdown, old, ops), user_id)
        self.on_result("diff")
        return True

    @staticmethod
    async def _merge(room: Room, base: Doc, markdown: str, user_id: str | None) -> None:
        """Replay base→markdown on `base` (a private fork at the served state, editing as the
        client id `merge_client_id` derived) and apply what the live document lacks of it. The live state vector is read at the
        instant the update is applied."""
        if base.client_id in decode_state_vector(base.get_state()):
            # the derived id already edits the base (a 1 in 2^31 chance): any unused id will do
            fresh = Doc()
            fresh.apply_update(base.get_update())
            base = fresh
        text = base.get(TEXT_NAME, type=Text)
        old = str(text)
        ops = await text_ops_async(old, markdown)
        if not ops:
            return  # the body is the base: nothing of the client's to merge
        with base.transaction(origin="mdsync-merge"):
            apply_text_diff(text, markdown, old, ops)
        update = base.get_update(room.doc.get_state())
        room.apply_update(update, user_id)
