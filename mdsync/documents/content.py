"""Where a document's content lives: one declared interface, one backend per content model.

`app[CONTENT]` is a `ContentModels`, built once in `app.py`: it hands every call to the
`ContentBackend` of the document's `content_model` (`text`, `tiptap`). Every caller goes through
it: the content routes, document metadata (the `etag`), template copies, export, version diffs
and restores, the markdown projection. `doc` is a document row (the columns of
`access.DOC_COLUMNS`: id, workspace_id, content_model, seq, ...).

Backends today:
- `text`: `collab/content.py` `YjsTextContent`, the markdown in the CRDT `Y.Text('markdown')`;
  stale `If-Match` bases are merged.
- `tiptap`: `StoredMarkdown` below: the markdown as stored in `documents.markdown`, its ETag the
  content revision (`documents.seq`), so a stale `If-Match` is 412.

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
from mdsync.api.errors import NotFound, PreconditionFailed
from mdsync.db import Database, Tx
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

    def room_markdown(self, room: Room) -> str | None:
        """The markdown of a loaded room's Yjs document at this instant (synchronous: the caller
        reads the room's state vector in the same step), or None when this model's markdown is not
        derived from the room. The projection stores it into `documents.markdown`."""

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


def revision_etag(doc_id: str, seq: int) -> str:
    """The ETag of content revision `seq` (quoted, as HTTP wants it)."""
    return quote(f"{doc_id[:8]}.{seq}")


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
def store_markdown(tx: Tx, doc_id: str, markdown: str, *, trashed: bool = False) -> int | None:
    """Write a document's markdown (content or projection) with its size, a new content revision
    and updated_at, and the change-feed upsert, in the caller's transaction. `trashed=True` also
    writes a trashed document's (silently: it keeps its text for a restore, and the feed shows it
    deleted). Returns the new revision, or None when there is no such document (or it is trashed)."""
    row = tx.one("UPDATE documents SET markdown = ?, size = ?, seq = seq + 1, updated_at = ?"
                 " WHERE id = ? AND (? OR deleted_at IS NULL) RETURNING seq, workspace_id, deleted_at",
                 (markdown, len(markdown.encode("utf-8")), clock.iso(), doc_id, trashed))
    if row is None:
        return None
    if row["deleted_at"] is None:
        changes.record(tx, row["workspace_id"], "document", doc_id, "upsert")
    return row["seq"]


class StoredMarkdown:
    """`ContentBackend` of markdown stored as-is in documents.markdown (content model `tiptap`
    until it has a backend of its own); If-Match must name the current revision."""

    def __init__(self, db: Database):
        self.db = db

    async def etag(self, doc: Any) -> str:
        return revision_etag(doc["id"], doc["seq"])

    async def read(self, doc: Any) -> tuple[str, str]:
        row = await self.db.one("SELECT markdown, seq FROM documents WHERE id = ?", (doc["id"],))
        if row is None:
            raise NotFound("no such document")
        return row["markdown"], revision_etag(doc["id"], row["seq"])

    async def markdown(self, doc: Any) -> str:
        return (await self.read(doc))[0]

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        doc_id = doc["id"]

        def replace(tx: Tx) -> int:
            seq = tx.value("SELECT seq FROM documents WHERE id = ?", (doc_id,))
            if seq is None:
                raise NotFound("no such document")
            if not etag_matches(if_match, revision_etag(doc_id, seq)):
                raise PreconditionFailed("the document changed since that ETag; GET it again")
            seq = store_markdown(tx, doc_id, markdown)
            if seq is None:
                raise NotFound("no such document")
            return seq

        seq = await self.db.write(replace)
        return markdown, revision_etag(doc_id, seq)

    def room_markdown(self, room: Room) -> None:
        return None  # not derived from the room: nothing to project

    async def state(self, room: Room) -> tuple[str, bytes]:
        state = room.encode_state()
        markdown = await self.db.value("SELECT markdown FROM documents WHERE id = ?", (room.document_id,))
        return markdown or "", state


CONTENT: web.AppKey[ContentModels] = web.AppKey("content", ContentModels)
