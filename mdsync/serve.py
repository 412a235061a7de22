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
from aiohttp.web_protocol import RequestHandler

from mdsync import logs
from mdsync.app import create_app
from mdsync.auth.routes import AUTH
from mdsync.auth.setup_token import NEW_TOKEN_COMMAND, minute
from mdsync.config import Settings

log = logging.getLogger("mdsync.serve")
# The longest request line (and header line) read: aiohttp's 8 KiB default would refuse a long
# search query (`GET /api/v1/search?q=…`) with a bare 400 before the route could answer it (422).
MAX_REQUEST_LINE = 64 * 1024


class _HeadTimeoutHandler(RequestHandler):
    """aiohttp's connection handler with a header timeout, which aiohttp lacks: a request's line
    and headers must arrive whole within `server.header_timeout` seconds of their first byte (the
    first request's: of the connection's start), or the connection is closed. Without it a client
    trickling header bytes (slowloris) holds a connection as long as the idle timeout allows.
    Request bodies, responses, WebSockets and long polls are not concerned: the clock runs only
    while no request is in progress; `server.idle_timeout` (aiohttp's keep-alive timeout) bounds
    the wait for the next request on a kept-alive connection."""

    def __init__(self, *args, header_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head()

    def data_received(self, data: bytes) -> None:
        requests = self._request_count
        super().data_received(data)
        if self._upgraded or self._request_count != requests:
            self._disarm_head()  # a whole head arrived (or the connection is a WebSocket now)
        elif data and self._head_timer is None and not self._request_in_progress and not self._messages:
            self._arm_head()  # the first bytes of the next request: its head has header_timeout

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head()
        super().connection_lost(exc)

    def _arm_head(self) -> None:
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_expired)

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not (self._upgraded or self._request_in_progress or self._messages):
            self.force_close()


class _Server(web.Server):
    header_timeout = 20.0

    def __call__(self) -> RequestHandler:
        return _HeadTimeoutHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose connections get a header timeout (_HeadTimeoutHandler)."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs):
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        server.header_timeout = self._header_timeout
        return server


FAILED_START_CLEANUP = 10  # seconds


def _first_admin_banner(settings: Settings, token: str | None, pending) -> str | None:
    """What a server without users prints: how to create the first admin, with the setup token
    this process made (`token`; `pending` is its row), or where and when the valid one another
    process made was printed (`pending` alone: only that process could print the token). None
    once the server has users."""
    if pending is None:
        return None
    cli = f"--data-dir {settings.data_dir}"
    lines = ["mdsync: this server has no users yet. Create the first admin with either:",
             f"  mdsync users create you@example.com --admin {cli}"]
    if token is not None:
        lines += [f'  or POST /api/v1/auth/setup with {{"setup_token": "{token}", "email": …, "password": …, "name": …}}',
                  f"  (the setup token works once, on any node of this database, until {minute(pending['expires_at'])};",
                  f"  `{NEW_TOKEN_COMMAND} {cli}` prints a new one instead)"]
    else:
        lines += [f"  or POST /api/v1/auth/setup with the setup token {pending['made_by']} printed at"
                  f" {minute(pending['created_at'])}",
                  "  (in that process's output: the database keeps only its hash; it works once, on any node of this"
                  f" database, until {minute(pending['expires_at'])}).",
                  f"  Out of reach? `{NEW_TOKEN_COMMAND} {cli}` prints a new one, and the earlier one stops working."]
    return "\n".join(lines)


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = _Runner(app, access_log_class=logs.AccessLogger, handle_signals=False,
                     shutdown_timeout=settings.server.shutdown_timeout, max_line_size=MAX_REQUEST_LINE,
                     keepalive_timeout=settings.server.idle_timeout, header_timeout=settings.server.header_timeout)
    # handlers first: a SIGTERM that arrives while starting still means "stop cleanly", not death
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = False
    try:
        await runner.setup()  # opens the database and applies migrations (on_startup)
        # asked before the socket opens: between binding and the ready line nothing may await,
        # so the ready line is out before /healthz can answer anyone
        setup_token = await app[AUTH].prepare_setup()
        banner = _first_admin_banner(settings, setup_token, await app[AUTH].pending_setup())
        site = web.TCPSite(runner, settings.server.host, settings.server.port,
                           shutdown_timeout=settings.server.shutdown_timeout, reuse_address=True)
        await site.start()
        host, port = settings.server.host, settings.server.port
        if port == 0:
            port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 (the only way to learn an ephemeral port)
        if banner:
            print(banner, flush=True)
        # everything imported and built at start lives as long as the process: move it out of the
        # collector's reach, so a full collection under load scans only what requests allocate
        gc.freeze()
        print(f"mdsync listening on http://{host}:{port}", flush=True)
        started = True
        await stop.wait()
        log.info("shutting down")
    finally:
        # stop accepting, run shutdown hooks, let in-flight requests finish, close the database;
        # after a failed start only what had started is stopped, within a bound, so the error that
        # stopped the start is reported and the process ends
        try:
            await asyncio.wait_for(runner.cleanup(), None if started else FAILED_START_CLEANUP)
        except TimeoutError:
            log.error("what had started did not stop within %d s", FAILED_START_CLEANUP)
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
