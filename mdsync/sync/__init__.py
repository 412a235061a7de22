"""Multi-device sync: the change feed (long-poll and SSE) and Yjs state over HTTP."""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """The app's feed at app[FEED]: woken by commits (from when the database is open until it
    closes), told of revoked sessions, answering its waiters at shutdown; its routes and metrics."""
    from mdsync.api.routing import add_routes
    from mdsync.appkeys import DB
    from mdsync.hooks import HOOKS
    from mdsync.ops.metrics import METRICS
    from mdsync.sync import changes
    from mdsync.sync.feed import Feed
    from mdsync.sync.routes import FEED, readings, routes

    feed = Feed(app[DB])
    app[FEED] = feed
    hooks = app[HOOKS]
    hooks.sessions_revoked.append(feed.revoke)
    hooks.workspace_purge.append(changes.workspace_purged)
    app[METRICS].read_at_scrape(readings(feed))
    add_routes(app, routes)

    async def change_feed(app: web.Application):
        await feed.start()
        changes.listeners.add(feed.on_commit)
        yield
        await feed.stop()
        changes.listeners.discard(feed.on_commit)

    async def end_streams(app: web.Application) -> None:
        # before aiohttp waits for in-flight requests: long-polls answer, SSE streams end
        feed.close()

    app.cleanup_ctx.append(change_feed)
    app.on_shutdown.append(end_streams)
