"""Accounts and sign-in: passwords, tokens, sessions, throttling, and the /auth and /me routes."""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """The sign-in service at app[AUTH], also the request authenticator (with its cache of
    principals, auth/principals.py), and the /auth and /me routes; the revocations watcher
    (auth/revocations.py); password-hashing threads end at cleanup."""
    import functools

    from mdsync.api.routing import AUTHENTICATOR, add_routes
    from mdsync.appkeys import DB
    from mdsync.auth import revocations
    from mdsync.auth.routes import AUTH, routes
    from mdsync.auth.service import AuthService
    from mdsync.cluster import CLUSTER
    from mdsync.config import ensure_secret
    from mdsync.hooks import HOOKS, call_each

    hooks = app[HOOKS]
    auth = AuthService(app[DB], settings, ensure_secret(settings), hooks, app[CLUSTER])
    app[AUTH] = auth
    app[AUTHENTICATOR] = auth
    add_routes(app, routes)
    # principals cached for a second (auth/principals.py) are forgotten when a revocation comes in,
    # also from another process (this process's own changes empty the cache at their commit)
    hooks.sessions_revoked.append(auth.principals.clear)
    # credentials ended and access changed, by this process or another (the admin CLI), reach the
    # live sockets, streams and tickets through the same hooks (once the database is open)
    revocations.install(app, app[DB], functools.partial(call_each, hooks.sessions_revoked),
                        functools.partial(call_each, hooks.access_changed))

    async def hashing(app: web.Application):
        yield
        auth.close()

    app.cleanup_ctx.append(hashing)
