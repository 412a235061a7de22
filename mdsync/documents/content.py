"""Where a document's content lives: one declared interface, one backend per content model.

`app[CONTENT]` is a `ContentModels`, built once in `app.py`: it hands every call to the
`ContentBackend` of the document's `content_model` (`text`, `tiptap`). Every caller goes through
it: the content routes, document metadata (the `etag`), template copies, export, version diffs
and restores, the markdown projection. `doc` is a document row (the columns of
`access.DOC_COLUMNS`: id, workspace_id, content_model, seq, ...).

Backends today (both Yjs-backed, sharing `collab/content.py` `YjsContent`; stale `If-Match`
bases are merged):
- `text`: `collab/content.py` `YjsTextContent`, the markdown in the CRDT `Y.Text('markdown')`.
- `tiptap`: `tiptap/content.py` `YjsTipTapContent`, TipTap's `Y.XmlFragment('default')` rendered
  to markdown and written by a block diff.

A new content model adds a class that satisfies `ContentBackend` and one entry in `app.py`.

New documents are created with their initial markdown written straight into
`documents.markdown` (in the creating transaction); a Yjs backend seeds its CRDT state from
that column the first time it opens a document that has none.

One ETag scheme per document, whichever route hands it out: `etag(doc)` is the ETag `read(doc)`
would answer at that moment, and an `If-Match` on it is honoured by `write` exactly as one from
`read` (docs/api.md, "Document content").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from mdsync import clock
from mdsync.db import Tx
from mdsync.sync import changes

if TYPE_CHECKING:
    from mdsync.collab.room import Room


class ContentBackend(Protocol):
    """How documents of one content model keep their content, as markdown to the outside."""

    async def etag(self, doc: Any) -> str:
        """The ETag (quoted) `read(doc)` would answer now, as document metadata shows it, as good
        for If-Match (one scheme whichever route hands it out). Cheap: it is asked for every
        document in a listing."""

    async def read(self, doc: Any) -> tuple[str, str]:
        """(markdown, etag) of the content now (`GET …/content`). A later `write` with this ETag
        as `If-Match` is based on exactly this content."""

    async def markdown(self, doc: Any) -> str:
        """The markdown alone (export, version diffs, template copies): no ETag is handed out."""

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        """Make the content `markdown`, by `access.user_id` (`PUT …/content`, version restore).
        `if_match` absent or `*`: applied to the content as it is. Naming an older served state:
        merged onto it, or PreconditionFailed when this backend cannot. Returns (markdown, etag)
        after the write, which is durable on return."""

    async def room_markdown(self, room: Room) -> str | None:
        """The markdown of a loaded room's Yjs document at the instant of the call: the room is
        read before the first await, so a caller reading the room's state vector right before
        the call describes the same state (rendering may then take its time off the loop). None
        when this model's markdown is not derived from the room. The projection stores it into
        `documents.markdown`."""

    async def state(self, room: Room) -> tuple[str, bytes]:
        """(markdown, whole Yjs state) of a loaded room, read at one instant: a version."""


class ContentModels:
    """`app[CONTENT]`: the backend of each content model; each call goes to the backend of the
    document's `content_model`."""

    def __init__(self, backends: dict[str, ContentBackend]):
        self.backends = backends

    def of(self, content_model: str) -> ContentBackend:
        return self.backends[content_model]

    async def etag(self, doc: Any) -> str:
        return await self.of(doc["content_model"]).etag(doc)

    async def read(self, doc: Any) -> tuple[str, str]:
        return await self.of(doc["content_model"]).read(doc)

    async def markdown(self, doc: Any) -> str:
        return await self.of(doc["content_model"]).markdown(doc)

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        return await self.of(doc["content_model"]).write(doc, markdown, if_match, access)


# -- ETags ------------------------------------------------------------------------------------------
def quote(etag: str) -> str:
    return f'"{etag}"'


def if_match_etags(header: str) -> list[str]:
    """The bare ETags an `If-Match` / `If-None-Match` header names (weak or strong, quoted or
    not; `*` kept as is). The one parser of these headers."""
    return [part.strip().removeprefix("W/").strip('"') for part in header.split(",") if part.strip()]


def etag_matches(if_match: str | None, current: str) -> bool:
    """`If-Match` absent, `*`, or naming the current ETag."""
    if if_match is None:
        return True
    wanted = if_match_etags(current)
    named = if_match_etags(if_match)
    return "*" in named or any(etag in named for etag in wanted)


# -- the one writer of documents.markdown -------------------------------------------------------------
def store_markdown(tx: Tx, doc_id: str, markdown: str, *, trashed: bool = False, if_changed: bool = False,
                   now: str | None = None) -> int | None:
    """Write a document's markdown (content or projection) with its size, a new content revision
    and updated_at, and the change-feed upsert, in the caller's transaction. `trashed=True` also
    writes a trashed document's (silently: it keeps its text for a restore, and the feed shows it
    deleted). `if_changed=True`: nothing is written when the stored markdown is this text already
    (the same statement compares). `now`: the time to record (the job's; default the clock's).
    Returns the new revision, or None when nothing was written (no such document, it is trashed,
    or, with `if_changed`, its markdown is the same)."""
    now = now or clock.iso()
    params = (markdown, len(markdown.encode("utf-8")), now, doc_id, trashed)
    row = tx.one(_STORE_CHANGED, params + (markdown,)) if if_changed else tx.one(_STORE, params)
    if row is None:
        return None
    if row["deleted_at"] is None:
        changes.record(tx, row["workspace_id"], "document", doc_id, "upsert", at=now)
    return row["seq"]


def store_changed_markdowns(tx: Tx, docs: list[tuple[str, str]], now: str) -> dict[str, int]:
    """`store_markdown(tx, id, markdown, trashed=True, if_changed=True, now=now)` for several
    documents (distinct ids) in a few statements (one UPDATE and one change-feed insert per
    `CHUNK` documents, not two statements each): the projection's writer job. Each written
    document gets its own revision and its own feed row, as one at a time. Returns document id ->
    new revision, for the documents written (those that exist and whose markdown differed)."""
    written: dict[str, int] = {}
    for chunk in _chunks(docs):
        params: list[Any] = [now]
        for doc_id, markdown in chunk:
            params += (doc_id, markdown, len(markdown.encode("utf-8")))
        rows = tx.all("UPDATE documents SET markdown = v.column2, size = v.column3, seq = documents.seq + 1,"
                      " updated_at = ? FROM (VALUES " + ", ".join(["(?, ?, CAST(? AS INTEGER))"] * len(chunk)) + ") AS v"
                      " WHERE documents.id = v.column1 AND documents.markdown <> v.column2"
                      " RETURNING documents.id, documents.seq, documents.workspace_id, documents.deleted_at", params)
        order = {doc_id: i for i, (doc_id, _) in enumerate(chunk)}
        rows.sort(key=lambda row: order[row[0]])  # the feed rows in the job's order
        changes.record_many(tx, [(row[2], "document", row[0], "upsert") for row in rows if row[3] is None], at=now)
        written.update((row[0], row[1]) for row in rows)
    return written


CHUNK = 200  # documents per statement (3 parameters each: far below either engine's limit) ...
CHUNK_CHARS = 4_000_000  # ... and at most about this much text (large documents: fewer at a time)


def _chunks(docs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """`docs` in runs of at most CHUNK documents and (unless one alone is larger) CHUNK_CHARS."""
    chunks: list[list[tuple[str, str]]] = [[]]
    chars = 0
    for doc in docs:
        if chunks[-1] and (len(chunks[-1]) >= CHUNK or chars + len(doc[1]) > CHUNK_CHARS):
            chunks.append([])
            chars = 0
        chunks[-1].append(doc)
        chars += len(doc[1])
    return [chunk for chunk in chunks if chunk]


_STORE = ("UPDATE documents SET markdown = ?, size = ?, seq = seq + 1, updated_at = ?"
          " WHERE id = ? AND (? OR deleted_at IS NULL){} RETURNING seq, workspace_id, deleted_at")
_STORE, _STORE_CHANGED = _STORE.format(""), _STORE.format(" AND markdown <> ?")


CONTENT: web.AppKey[ContentModels] = web.AppKey("content", ContentModels)
