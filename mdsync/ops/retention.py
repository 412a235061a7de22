"""The retention sweep: one periodic task (every `workspaces.purge_interval` seconds, and once
at start) that removes what is only kept for a while:

- deleted workspaces past `workspaces.purge_grace_seconds` (workspaces/service.py),
- documents in the trash longer than `documents.trash_retention_days`, and trashed folders left
  empty (documents/service.py `purge_trash`: each a `delete` in the change feed),
- change-feed rows older than `sync.changes_retention_days` (sync/changes.py `trim`: a cursor
  older than what is kept is answered 410, docs/api.md "Change feed").

Each step works in short writer jobs, so a sweep never stalls live edits.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from mdsync.appkeys import DB, SETTINGS
from mdsync.config import Settings
from mdsync.documents.service import DOCUMENTS
from mdsync.sync import changes
from mdsync.workspaces.service import WORKSPACES

log = logging.getLogger("mdsync.retention")


async def sweep(app: web.Application) -> None:
    """One pass of every step; a failing step is logged and the others still run."""
    settings: Settings = app[SETTINGS]
    steps = (("purging deleted workspaces", app[WORKSPACES].purge_expired),
             ("purging the trash", lambda: app[DOCUMENTS].purge_trash(settings.documents.trash_retention_days)),
             ("trimming the change feed", lambda: changes.trim_old(app[DB], settings.sync.changes_retention_days)))
    for what, step in steps:
        try:
            await step()
        except Exception:
            log.exception("retention sweep: %s failed", what)


def install(app: web.Application, settings: Settings) -> None:
    """Run the sweep while the app runs (after the database's cleanup context)."""
    async def run() -> None:
        while True:
            await sweep(app)
            await asyncio.sleep(settings.workspaces.purge_interval)

    async def sweeper(app: web.Application):
        task = asyncio.create_task(run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(sweeper)
