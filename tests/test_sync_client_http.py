"""The sync client's HTTP (mdsync/syncclient/http.py) against small local servers: the proxy from
the environment (`no_proxy` honoured), redirects followed for GET only and the token kept from
another host, 502-504 retried a bounded number of times, 429 and 503 after their Retry-After (capped),
a create sent again only after a refusal. (Kept-alive connections, TLS and an
unreachable server: tests/test_sync_client.py, against a real mdsync.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import time

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


async def test_429_and_503_wait_what_retry_after_asks_capped_and_say_so():
    calls = {"busy": 0, "hours": 0, "date": 0, "odd": 0}
    sleeps: list[float] = []
    notices: list[str] = []

    async def busy(request: web.Request) -> web.Response:  # the database timed out twice
        calls["busy"] += 1
        if calls["busy"] <= 2:
            return web.json_response({"detail": "the database did not answer in time"}, status=503,
                                     headers={"Retry-After": "5"})
        return web.json_response({"ok": True})

    async def hours(request: web.Request) -> web.Response:  # misconfigured: come back tomorrow
        calls["hours"] += 1
        return web.json_response({"detail": "maintenance"}, status=503, headers={"Retry-After": "86400"})

    async def date(request: web.Request) -> web.Response:  # Retry-After as an HTTP date
        calls["date"] += 1
        if calls["date"] == 1:
            return web.json_response({"detail": "slow down"}, status=429,
                                     headers={"Retry-After": email.utils.formatdate(time.time() + 10, usegmt=True)})
        return web.json_response({"ok": True})

    async def odd(request: web.Request) -> web.Response:  # neither seconds nor a date: the backoff
        calls["odd"] += 1
        if calls["odd"] == 1:
            return web.json_response({"detail": "busy"}, status=503, headers={"Retry-After": "soon"})
        return web.json_response({"ok": True})

    app = web.Application()
    for name, handler in (("busy", busy), ("hours", hours), ("date", date), ("odd", odd)):
        app.router.add_get(f"/api/v1/{name}", handler)
    async with serving(app) as port:
        api = client_http.Api(f"http://127.0.0.1:{port}", "mds_t", notify=notices.append, sleep=sleeps.append)
        try:
            assert await call(api.json, "GET", "/busy") == {"ok": True}
            assert calls["busy"] == 3 and sleeps == [5, 5]
            assert notices == ["server busy (503), retrying in 5 s"] * 2

            sleeps.clear()
            with pytest.raises(client_http.HttpError, match="503 maintenance") as spent:
                await call(api.json, "GET", "/hours")
            assert spent.value.status == 503  # the attempts spent: the answer, as for any refusal
            assert calls["hours"] == client_http.RETRIES + 1
            assert sleeps == [client_http.RETRY_AFTER_MAX] * client_http.RETRIES

            sleeps.clear()
            assert await call(api.json, "GET", "/date") == {"ok": True}
            assert calls["date"] == 2 and len(sleeps) == 1 and 5 < sleeps[0] <= 10
            assert notices[-1].startswith("rate limited (429), retrying in ")

            sleeps.clear()
            assert await call(api.json, "GET", "/odd") == {"ok": True}
            assert calls["odd"] == 2 and sleeps == []  # the backoff's first retry is at once
        finally:
            await call(api.close)


async def test_a_create_is_sent_again_after_a_refusal_only():
    calls = {"refused": 0, "gateway": 0}
    sleeps: list[float] = []

    async def refused(request: web.Request) -> web.Response:
        calls["refused"] += 1
        if calls["refused"] == 1:
            return web.json_response({"detail": "slow down"}, status=429, headers={"Retry-After": "3"})
        return web.json_response({"id": "d1"}, status=201)

    async def gateway(request: web.Request) -> web.Response:  # the upstream may have created it
        calls["gateway"] += 1
        return web.Response(status=504, text="gateway timeout")

    app = web.Application()
    app.router.add_post("/api/v1/refused", refused)
    app.router.add_post("/api/v1/gateway", gateway)
    async with serving(app) as port:
        api = client_http.Api(f"http://127.0.0.1:{port}", "mds_t", sleep=sleeps.append)
        try:
            assert await call(api.json, "POST", "/refused", {"title": "a"}, creates=True) == {"id": "d1"}
            assert calls["refused"] == 2 and sleeps == [3]
            with pytest.raises(client_http.HttpError) as failed:
                await call(api.json, "POST", "/gateway", {"title": "a"}, creates=True)
            assert failed.value.status == 504 and calls["gateway"] == 1
        finally:
            await call(api.close)
