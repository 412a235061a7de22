"""Export and import of a workspace as a zip of markdown (docs/api.md "Export and import").

- `archive.py`  the zip layout both directions share: file names, YAML front matter, entry paths
  that are safe to accept, attachment link rewriting.
- `export.py`   writes a workspace into a zip as it reads it (never whole in memory), for the
  HTTP route (streamed to the response through a thread) and `mdsync export`.
- `sources.py`  what an import reads: a zip, or (the CLI) a folder of `.md` files.
- `importer.py` validates all of an archive first, then creates its folders and documents in one
  transaction.
- `routes.py`   the two routes.
"""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """The export and import routes (they use the content backends, attachments and the
    `document_imported` hooks)."""
    from mdsync.api.routing import add_routes
    from mdsync.transfer.routes import routes

    add_routes(app, routes)
