"""Where a document's content lives, behind one small interface.

`app[CONTENT]` holds the backend every content route (and template copying) goes through:
`read(doc) -> (markdown, etag)`, `write(doc, markdown, if_match, access) -> (markdown, etag)` and
`etag(doc)`, the ETag shown in document metadata. `doc` is a document row (the columns of
`access.DOC_COLUMNS`: id, workspace_id, seq, ...).

One ETag scheme per document, whichever route hands it out: `etag(doc)` is the ETag `read(doc)`
would answer at that moment, and an `If-Match` on it is honoured by `write` exactly as one from
`read` (docs/api.md, "Document content").

`TextContent`, the simple backend here, keeps the markdown in `documents.markdown`; its ETag is
the content revision (`documents.seq`), so a stale `If-Match` is 412. The collaboration feature
installs a Yjs-backed backend under the same key; it merges stale bases instead.

New documents are created with their initial markdown written straight into
`documents.markdown` (in the creating transaction); a Yjs backend seeds its CRDT state from
that column the first time it opens a document that has none.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from mdsync import clock
from mdsync.api.errors import NotFound, PreconditionFailed
from mdsync.db import Database, Tx
from mdsync.sync import changes


class ContentBackend(Protocol):
    async def read(self, doc: Any) -> tuple[str, str]:
        """(markdown, etag) of the document now."""

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        """Replace the content with `markdown` (based on the state served as `if_match`, when
        given) and answer the resulting (markdown, etag)."""

    async def etag(self, doc: Any) -> str:
        """The ETag `read(doc)` would answer now (for document metadata), as good for If-Match."""


def revision_etag(doc_id: str, seq: int) -> str:
    """The ETag of content revision `seq` (quoted, as HTTP wants it)."""
    return f'"{doc_id[:8]}.{seq}"'


def etag_matches(if_match: str | None, current: str) -> bool:
    """`If-Match` absent, `*`, or naming the current ETag (weak or strong, quoted or not)."""
    if if_match is None:
        return True
    wanted = _bare(current)
    return any(part.strip() == "*" or _bare(part) == wanted for part in if_match.split(","))


def _bare(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def store_markdown(tx: Tx, doc_id: str, markdown: str) -> int:
    """Write a document's markdown (content or projection): size, revision, updated_at, and the
    change-feed upsert, in the caller's transaction. Returns the new revision."""
    row = tx.one("UPDATE documents SET markdown = ?, size = ?, seq = seq + 1, updated_at = ?"
                 " WHERE id = ? AND deleted_at IS NULL RETURNING seq, workspace_id",
                 (markdown, len(markdown.encode("utf-8")), clock.iso(), doc_id))
    if row is None:
        raise NotFound("no such document")
    changes.record(tx, row["workspace_id"], "document", doc_id, "upsert")
    return row["seq"]


class TextContent:
    """Markdown stored as-is in documents.markdown; If-Match must name the current revision."""

    def __init__(self, db: Database):
        self.db = db

    async def read(self, doc: Any) -> tuple[str, str]:
        row = await self.db.one("SELECT markdown, seq FROM documents WHERE id = ?", (doc["id"],))
        if row is None:
            raise NotFound("no such document")
        return row["markdown"], revision_etag(doc["id"], row["seq"])

    async def etag(self, doc: Any) -> str:
        return revision_etag(doc["id"], doc["seq"])

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        doc_id = doc["id"]

        def replace(tx: Tx) -> int:
            seq = tx.value("SELECT seq FROM documents WHERE id = ?", (doc_id,))
            if seq is None:
                raise NotFound("no such document")
            if not etag_matches(if_match, revision_etag(doc_id, seq)):
                raise PreconditionFailed("the document changed since that ETag; GET it again")
            return store_markdown(tx, doc_id, markdown)

        seq = await self.db.write(replace)
        return markdown, revision_etag(doc_id, seq)


CONTENT: web.AppKey[Any] = web.AppKey("content", object)
