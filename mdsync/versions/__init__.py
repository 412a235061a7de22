"""Version history (docs/api.md "Versions", docs/architecture.md "Versions").

policy.py (which automatic versions thinning keeps: a pure function) · textdiff.py (the unified
diff of two markdowns) · store.py (SQL)
· service.py (`app[VERSIONS]`: record, list, read, diff, restore, prune; `record_import` for the
import feature) · scheduler.py (automatic versions from the rooms' update stream, the periodic
prune) · routes.py (HTTP).
"""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """The service at app[VERSIONS], its routes, and the automatic versions following the rooms
    (after collab's install) with the periodic prune."""
    import asyncio

    from mdsync.api.routing import add_routes
    from mdsync.appkeys import DB
    from mdsync.hooks import HOOKS
    from mdsync.versions import textdiff
    from mdsync.versions.routes import routes
    from mdsync.versions.scheduler import Scheduler
    from mdsync.versions.service import VERSIONS, Versions

    versions = Versions(app, app[DB])
    app[VERSIONS] = versions
    cfg = settings.versions
    scheduler = Scheduler(versions, cfg.idle_seconds, cfg.max_interval_seconds, cfg.prune_interval_seconds)
    hooks = app[HOOKS]
    hooks.room_update.append(versions.bursts.on_update)
    hooks.room_close.append(scheduler.on_room_close)
    add_routes(app, routes)

    async def tasks(app: web.Application):
        running = [asyncio.create_task(scheduler.run_auto()), asyncio.create_task(scheduler.run_prune())]
        yield
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        textdiff.shutdown()

    app.cleanup_ctx.append(tasks)
