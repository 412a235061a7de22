"""Attachments (docs/api.md "Attachments"): files uploaded into a workspace, stored by a backend.

storage.py   the storage protocol (put, open, delete, url, exists) and `open_storage(settings)`
local.py     backend: files under data_dir/files/, named by id, written atomically
s3.py        backend: an S3-compatible bucket through aiobotocore
sniff.py     the content type from the first bytes (and the name where the bytes say little)
signing.py   signed `?exp=&sig=` URLs (HMAC with the server secret)
links.py     links to attachments in markdown, found and rewritten in linear time
service.py   uploads, reads, deletes, purge hooks, the share-link filter (SQL inside)
routes.py    the HTTP routes
"""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """The service and its storage (readiness check, leftover uploads cleared at start), its
    routes, and its hooks: signed links in shared documents, files removed with purged documents
    and workspaces."""
    import asyncio

    from mdsync.api.routing import add_routes
    from mdsync.appkeys import DB, READINESS
    from mdsync.attachments.routes import routes
    from mdsync.attachments.service import ATTACHMENTS, Attachments
    from mdsync.attachments.signing import Signer
    from mdsync.attachments.storage import clear_incoming, open_storage
    from mdsync.config import ensure_secret
    from mdsync.hooks import HOOKS

    storage = open_storage(settings)
    signer = Signer(ensure_secret(settings), settings.public_url, settings.storage.signed_url_ttl)
    svc = Attachments(app[DB], settings, storage, signer)
    app[ATTACHMENTS] = svc
    app[READINESS]["storage"] = storage.check
    hooks = app[HOOKS]
    hooks.share_filters.append(svc.share_filter)
    hooks.workspace_purge.append(svc.workspace_purged)
    hooks.document_purge.append(svc.document_purged)
    add_routes(app, routes)

    async def close_storage(app: web.Application):
        await asyncio.to_thread(clear_incoming, settings)  # leftovers of uploads a crash cut short
        yield
        await storage.close()

    app.cleanup_ctx.append(close_storage)

