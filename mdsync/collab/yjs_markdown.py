"""How a content model keeps its markdown in a Yjs document: the one thing the Yjs content
backends (content.py) and served states (states.py) need to know about a model.

- `snapshot(doc, size)`: what the markdown is made from, taken synchronously (the caller reads
  the document's ETag in the same step, so the two describe one instant); `size` is about the
  bytes of the document's state (a small one may be read at once, a large one copied).
- `render(snapshot)`: the markdown of that snapshot (awaitable: a large TipTap document is
  rendered in a worker thread, off the event loop), a NUL typed into Yjs as U+FFFD (`nul_free`).
- `seed(markdown)`: the deterministic Yjs state of a new document holding `markdown` (the same
  bytes for the same markdown on every server, so two seeds merge into one copy).

`TextInYjs` (content model `text`, `Y.Text('markdown')`) is here; `tiptap.content.TipTapInYjs`
is the other.
"""

from __future__ import annotations

from typing import Any, Protocol

from pycrdt import Doc, Text

from mdsync.collab.room import TEXT_NAME, seed_update


def nul_free(markdown: str) -> str:
    """Markdown made from Yjs text, as it is served and stored. A Yjs client can type a NUL
    character, which PostgreSQL text cannot hold and a REST write may not send (docs/api.md
    "Conventions"): it becomes U+FFFD, as CommonMark reads a NUL, on both engines. The Yjs state
    keeps the NUL (it is bytes)."""
    return markdown.replace("\x00", "\ufffd") if "\x00" in markdown else markdown


class YjsMarkdown(Protocol):
    name: str

    def snapshot(self, doc: Doc, size: int = 0) -> Any:
        """What `render` needs, read now (synchronously)."""

    async def render(self, snapshot: Any, document_id: str | None = None) -> str:
        """The markdown of a snapshot (`nul_free`)."""

    async def seed(self, markdown: str) -> bytes:
        """The deterministic first Yjs state of a document holding `markdown`."""


class TextInYjs:
    """Content model `text`: the markdown is the text of `Y.Text('markdown')`."""

    name = "text"

    def snapshot(self, doc: Doc, size: int = 0) -> str:
        return str(doc.get(TEXT_NAME, type=Text))

    async def render(self, snapshot: str, document_id: str | None = None) -> str:
        return nul_free(snapshot)

    async def seed(self, markdown: str) -> bytes:
        return seed_update(markdown)


TEXT = TextInYjs()
