"""HTTP routes of accounts and sign-in (docs/api.md "Auth and accounts")."""

from __future__ import annotations

from aiohttp import web

from mdsync import clock
from mdsync.api.errors import ValidationFailed
from mdsync.api.pagination import page
from mdsync.api.routing import PRINCIPAL, Routes, json_response
from mdsync.auth import models as m
from mdsync.auth import store
from mdsync.auth.service import AuthService

routes = Routes("auth")
AUTH: web.AppKey[AuthService] = web.AppKey("auth", AuthService)


def _svc(request: web.Request) -> AuthService:
    return request.app[AUTH]


def _ua(request: web.Request) -> str | None:
    return request.headers.get("User-Agent")


@routes.post("/api/v1/auth/register", "Create an account", auth="none", body=m.RegisterIn,
             response=m.TokenPairOut, status=201)
async def register(request: web.Request, body: m.RegisterIn) -> web.Response:
    svc = _svc(request)
    pair = await svc.register(body.email, body.password, body.name, body.invitation,
                              svc.client_address(request), _ua(request), body.device_name)
    return web.json_response(pair, status=201)


@routes.post("/api/v1/auth/login", "Sign in with email and password", auth="none", body=m.LoginIn,
             response=m.TokenPairOut)
async def login(request: web.Request, body: m.LoginIn) -> web.Response:
    svc = _svc(request)
    pair = await svc.login(body.email, body.password, body.device_name, svc.client_address(request), _ua(request))
    return web.json_response(pair)


@routes.post("/api/v1/auth/refresh", "Trade a refresh token for a new token pair", auth="none",
             body=m.RefreshIn, response=m.TokenPairOut)
async def refresh(request: web.Request, body: m.RefreshIn) -> web.Response:
    svc = _svc(request)
    return web.json_response(await svc.refresh(body.refresh_token, svc.client_address(request)))


@routes.post("/api/v1/auth/logout", "Sign out this session", status=204, write_scope=False)
async def logout(request: web.Request) -> web.Response:
    await _svc(request).logout(request[PRINCIPAL])
    return web.Response(status=204)


@routes.post("/api/v1/auth/setup", "Create the first admin with the one-time setup token", auth="none",
             body=m.SetupIn, response=m.TokenPairOut, status=201)
async def setup(request: web.Request, body: m.SetupIn) -> web.Response:
    svc = _svc(request)
    pair = await svc.setup(body.setup_token, body.email, body.password, body.name,
                           svc.client_address(request), _ua(request))
    return web.json_response(pair, status=201)


def _after(after) -> tuple[str, str] | None:
    """A list cursor of sessions or tokens: the [created_at, id] of the last row served."""
    if after is None:
        return None
    if not (isinstance(after, list) and len(after) == 2 and all(isinstance(v, str) for v in after)):
        raise ValidationFailed.field("cursor", "is not a cursor this server issued")
    return after[0], after[1]


@routes.get("/api/v1/auth/sessions", "The caller's signed-in devices", response=m.SessionList)
async def list_sessions(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    p = page(request)
    rows = await store.list_sessions(_svc(request).db, principal.user_id, _after(p.after), p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["created_at"], r["id"]],
                                      shape=lambda r: {**dict(r), "current": r["id"] == principal.session_id}))


@routes.delete("/api/v1/auth/sessions/{session_id}", "Sign out one device", status=204)
async def revoke_session(request: web.Request) -> web.Response:
    await _svc(request).revoke_session(request[PRINCIPAL], request.match_info["session_id"])
    return web.Response(status=204)


@routes.get("/api/v1/me", "The caller's profile", response=m.UserOut)
async def me(request: web.Request) -> web.Response:
    p = request[PRINCIPAL]  # its user row was read for this request (authentication): no second read
    return json_response(store.user_json({"id": p.user_id, "email": p.email, "name": p.name,
                                          "is_admin": p.is_admin, "created_at": p.user_created_at}))


@routes.patch("/api/v1/me", "Change name or email (the email with current_password)", body=m.ProfileIn,
               response=m.UserOut)
async def update_me(request: web.Request, body: m.ProfileIn) -> web.Response:
    return web.json_response(await _svc(request).update_profile(request[PRINCIPAL], body.name, body.email,
                                                                body.current_password))


@routes.post("/api/v1/me/password", "Change password (signs out other sessions, revokes personal access tokens)",
             body=m.PasswordIn, status=204)
async def change_password(request: web.Request, body: m.PasswordIn) -> web.Response:
    svc = _svc(request)
    await svc.change_password(request[PRINCIPAL], body.current_password, body.new_password,
                              svc.client_address(request))
    return web.Response(status=204)


@routes.get("/api/v1/me/tokens", "The caller's personal access tokens", response=m.ApiTokenList)
async def list_tokens(request: web.Request) -> web.Response:
    p = page(request)
    rows = await store.list_api_tokens(_svc(request).db, request[PRINCIPAL].user_id, _after(p.after),
                                      p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["created_at"], r["id"]], shape=store.api_token_json))


@routes.post("/api/v1/me/tokens", "Create a personal access token (shown once; needs the password unless"
             " signed in within auth.recent_sign_in_seconds)", body=m.TokenIn,
             response=m.ApiTokenCreated, status=201)
async def create_token(request: web.Request, body: m.TokenIn) -> web.Response:
    expires_at = None
    if body.expires_at is not None:
        if body.expires_at <= clock.now():
            raise ValidationFailed.field("expires_at", "must be in the future")
        expires_at = clock.iso(body.expires_at)
    created = await _svc(request).create_api_token(request[PRINCIPAL], body.name, body.scopes, expires_at,
                                                   body.password)
    return web.json_response(created, status=201)


@routes.delete("/api/v1/me/tokens/{token_id}", "Revoke a personal access token", status=204)
async def delete_token(request: web.Request) -> web.Response:
    await _svc(request).delete_api_token(request[PRINCIPAL], request.match_info["token_id"])
    return web.Response(status=204)
