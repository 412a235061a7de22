"""The sync client's HTTP (mdsync/syncclient/http.py) against small local servers: the proxy from
the environment (`no_proxy` honoured), redirects followed for GET only and the token kept from
another host, 502-504 retried a bounded number of times. (Kept-alive connections, TLS and an
unreachable server: tests/test_sync_client.py, against a real mdsync.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import pytest
from aiohttp import web

from mdsync.syncclient import http as client_http


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


def call(fn, *args, **kw):
    return asyncio.to_thread(fn, *args, **kw)


async def test_the_proxy_from_the_environment_is_used_unless_no_proxy_names_the_server(monkeypatch):
    seen: list[tuple[str, dict[str, str]]] = []
    accepted = 0

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A forward proxy that answers every request itself, keeping the connection."""
        nonlocal accepted
        accepted += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                seen.append((head[0], {k.lower(): v for k, v in (line.split(": ", 1) for line in head[1:] if line)}))
                body = json.dumps({"items": [], "via": "proxy"}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def workspaces(request: web.Request) -> web.Response:
        return web.json_response({"items": [], "via": "direct"})

    app = web.Application()
    app.router.add_get("/api/v1/workspaces", workspaces)
    relay = await asyncio.start_server(proxy, "127.0.0.1", 0)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                 "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://sync%20user:p%40ss@127.0.0.1:{relay.sockets[0].getsockname()[1]}")
    try:
        async with serving(app) as port:
            api = client_http.Api("http://notes.example.test", "mds_t")
            for _ in range(2):
                assert (await call(api.json, "GET", "/workspaces"))["via"] == "proxy"
            await call(api.close)
            assert accepted == 1  # kept alive through the proxy too
            assert [line for line, _ in seen] == ["GET http://notes.example.test/api/v1/workspaces HTTP/1.1"] * 2
            headers = seen[0][1]
            assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"sync user:p@ss").decode()
            assert headers["authorization"] == "Bearer mds_t"

            monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
            api = client_http.Api(f"http://127.0.0.1:{port}", "mds_t")
            assert (await call(api.json, "GET", "/workspaces"))["via"] == "direct"
            await call(api.close)
            assert len(seen) == 2
    finally:
        relay.close()
        await relay.wait_closed()


async def test_redirects_are_followed_for_get_only_and_the_token_stays_on_its_host(monkeypatch):
    async def here(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/api/v1/there")

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/api/v1/there")

    async def there(request: web.Request) -> web.Response:
        return web.json_response({"authorization": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_route("*", "/api/v1/here", here)
    app.router.add_get("/api/v1/away", away)
    app.router.add_get("/api/v1/there", there)
    async with serving(app) as port:
        api = client_http.Api(f"http://127.0.0.1:{port}", "mds_t")
        try:
            assert await call(api.json, "GET", "/here") == {"authorization": "Bearer mds_t"}
            assert await call(api.json, "GET", "/away") == {"authorization": None}  # another host: no token
            with pytest.raises(client_http.HttpError) as refused:
                await call(api.json, "POST", "/here", {"a": 1})
            assert refused.value.status == 307
        finally:
            await call(api.close)


async def test_502_to_504_are_retried_a_bounded_number_of_times(monkeypatch):
    monkeypatch.setattr(client_http, "BACKOFF", 0)
    calls = {"flaky": 0, "down": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["flaky"] += 1
        if calls["flaky"] <= 2:
            return web.Response(status=502)
        return web.json_response({"ok": True})

    async def down(request: web.Request) -> web.Response:
        calls["down"] += 1
        return web.json_response({"detail": "maintenance"}, status=503)

    app = web.Application()
    app.router.add_post("/api/v1/flaky", flaky)
    app.router.add_get("/api/v1/down", down)
    async with serving(app) as port:
        api = client_http.Api(f"http://127.0.0.1:{port}", "mds_t")
        try:
            assert await call(api.json, "POST", "/flaky", {"a": 1}) == {"ok": True}
            assert calls["flaky"] == 3
            with pytest.raises(client_http.HttpError, match="503 maintenance"):
                await call(api.json, "GET", "/down")
            assert calls["down"] == client_http.RETRIES + 1
            assert not api.down  # the server answered: not unreachable
        finally:
            await call(api.close)
