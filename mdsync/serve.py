"""`mdsync serve`: run the app until SIGTERM/SIGINT, then shut down gracefully.

The ready line (`mdsync listening on http://HOST:PORT`) is printed and flushed after the socket
is bound and before /healthz first answers. On a signal: stop accepting, let in-flight requests
finish, run the app's shutdown hooks (rooms flush, sockets close with 1012), close the database.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from mdsync import logs
from mdsync.app import create_app
from mdsync.auth.routes import AUTH
from mdsync.config import Settings

log = logging.getLogger("mdsync.serve")
# The longest request line (and header line) read: aiohttp's 8 KiB default would refuse a long
# search query (`GET /api/v1/search?q=…`) with a bare 400 before the route could answer it (422).
MAX_REQUEST_LINE = 64 * 1024


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log_class=logs.AccessLogger, handle_signals=False,
                           shutdown_timeout=settings.server.shutdown_timeout, max_line_size=MAX_REQUEST_LINE)
    # handlers first: a SIGTERM that arrives while starting still means "stop cleanly", not death
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()  # opens the database and applies migrations (on_startup)
        # asked before the socket opens: between binding and the ready line nothing may await,
        # so the ready line is out before /healthz can answer anyone
        setup_token = await app[AUTH].prepare_setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port,
                           shutdown_timeout=settings.server.shutdown_timeout, reuse_address=True)
        await site.start()
        host, port = settings.server.host, settings.server.port
        if port == 0:
            port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 (the only way to learn an ephemeral port)
        if setup_token:
            print("mdsync: this server has no users yet. Create the first admin with either:\n"
                  f"  mdsync users create you@example.com --admin --data-dir {settings.data_dir}\n"
                  f"  or POST /api/v1/auth/setup with {{\"setup_token\": \"{setup_token}\", \"email\": …, "
                  "\"password\": …, \"name\": …}\n"
                  "  (the setup token works once, until this process stops)", flush=True)
        # everything imported and built at start lives as long as the process: move it out of the
        # collector's reach, so a full collection under load scans only what requests allocate
        gc.freeze()
        print(f"mdsync listening on http://{host}:{port}", flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        # stop accepting, run shutdown hooks, let in-flight requests finish, close the database
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def run(settings: Settings) -> None:
    logs.configure(settings.log.level, settings.log.format)
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(settings))
    sys.stdout.flush()
