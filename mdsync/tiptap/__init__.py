"""TipTap documents (content model `tiptap`, `Y.XmlFragment('default')`) read and written as
markdown.

- `yxml.py`: the Yjs XML tree ↔ ProseMirror JSON, as y-prosemirror maps them.
- `render.py`: JSON → markdown, the way @tiptap/markdown writes it.
- `parse.py`: markdown → JSON in TipTap's node and mark names.
- `blockdiff.py`: markdown written into a live fragment as a block diff; deterministic seeds.
- `schema.py`: the known node and mark names and the guard that counts unknown ones.
- `content.py`: the `ContentBackend` of content model `tiptap` (built by `content_backend`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from mdsync.config import Settings
    from mdsync.db import Database
    from mdsync.tiptap.content import YjsTipTapContent


def content_backend(app: web.Application, settings: Settings, db: Database) -> YjsTipTapContent:
    """The `ContentBackend` of content model `tiptap` (app.py puts it in `app[CONTENT]`), with its
    projection, seed and schema guard (unknown names counted in
    `mdsync_tiptap_unknown_names_total`). Call after the room manager is installed."""
    from mdsync.collab import yjs_content
    from mdsync.collab.rooms import ROOMS
    from mdsync.ops.metrics import METRICS
    from mdsync.tiptap.content import TipTapInYjs, YjsTipTapContent
    from mdsync.tiptap.schema import Guard, Schema

    unknown = app[METRICS].counter("mdsync_tiptap_unknown_names_total",
                                   "Node or mark names outside the configured TipTap schema met in a document"
                                   " (each name counted once per document; their text is kept)", ["kind"])
    guard = Guard(lambda kind: unknown.labels(kind).inc())
    model = TipTapInYjs(Schema.with_extras(settings.tiptap.extra_nodes, settings.tiptap.extra_marks), guard)
    return yjs_content(app, settings, lambda states, heads, on_result: YjsTipTapContent(
        db, app[ROOMS], states, heads, model, on_result))
