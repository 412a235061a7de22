"""Bad input on every auth endpoint: malformed JSON, wrong types, missing fields, huge bodies,
unicode edge cases, wrong content types. Every answer is problem+json naming the field, never a
stack trace, and the server keeps serving."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from mdsync.app import create_app
from tests.builders import PASSWORD, register

pytestmark = pytest.mark.both_engines

PROBLEM = "application/problem+json"
MB = 1024 * 1024

# every auth endpoint that takes a body: path, method, a valid body
BODY_ENDPOINTS = [
    ("POST", "/api/v1/auth/register", {"email": "new@example.com", "password": PASSWORD, "name": "New"}),
    ("POST", "/api/v1/auth/login", {"email": "new@example.com", "password": PASSWORD}),
    ("POST", "/api/v1/auth/refresh", {"refresh_token": "mdr_x"}),
    ("POST", "/api/v1/auth/setup", {"setup_token": "t", "email": "r@example.com", "password": PASSWORD, "name": "R"}),
    ("PATCH", "/api/v1/me", {"name": "Someone"}),
    ("POST", "/api/v1/me/password", {"current_password": PASSWORD, "new_password": "another password"}),
    ("POST", "/api/v1/me/tokens", {"name": "script"}),
]
REQUIRED = {
    "/api/v1/auth/register": {"email", "password", "name"},
    "/api/v1/auth/login": {"email", "password"},
    "/api/v1/auth/refresh": {"refresh_token"},
    "/api/v1/auth/setup": {"setup_token", "email", "password", "name"},
    "/api/v1/me": set(),
    "/api/v1/me/password": {"current_password", "new_password"},
    "/api/v1/me/tokens": {"name"},
}
ids = [f"{m} {p}" for m, p, _ in BODY_ENDPOINTS]


@pytest.fixture
async def account(client):
    return await register(client)


async def check_problem(resp, status: int, slug: str) -> dict:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM, text
    assert "Traceback" not in text and 'File "' not in text
    body = json.loads(text)
    assert body["type"] == f"urn:mdsync:error:{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


def fields(body: dict) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


async def still_serving(client) -> None:
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("method, path, good", BODY_ENDPOINTS, ids=ids)
@pytest.mark.parametrize("raw", [b"{", b'{"email": }', b"not json", b"{'single': 'quotes'}", b"\xff\xfe\x00garbage",
                                 b"[" * 100_000 + b"]" * 100_000])
async def test_malformed_json(client, account, method, path, good, raw):
    resp = await client.request(method, path, data=raw, headers={**account.headers, "Content-Type": "application/json"})
    body = await check_problem(resp, 422, "validation")
    assert fields(body) == {"body"}
    await still_serving(client)


@pytest.mark.parametrize("method, path, good", BODY_ENDPOINTS, ids=ids)
@pytest.mark.parametrize("payload", ["[]", '"a string"', "42", "null", "true"])
async def test_body_must_be_an_object(client, account, method, path, good, payload):
    resp = await client.request(method, path, data=payload, headers={**account.headers, "Content-Type": "application/json"})
    body = await check_problem(resp, 422, "validation")
    assert fields(body) == {"body"}


@pytest.mark.parametrize("method, path, good", BODY_ENDPOINTS, ids=ids)
async def test_missing_fields_are_each_named(client, account, method, path, good):
    required = REQUIRED[path]
    resp = await client.request(method, path, json={}, headers=account.headers)
    if not required:  # PATCH /me with nothing to change is a no-op
        assert resp.status == 200
        return
    body = await check_problem(resp, 422, "validation")
    assert fields(body) == required
    # an empty body counts as {} (with or without a content type)
    resp = await client.request(method, path, data=b"", headers=account.headers)
    assert fields(await check_problem(resp, 422, "validation")) == required


@pytest.mark.parametrize("method, path, good", BODY_ENDPOINTS, ids=ids)
@pytest.mark.parametrize("wrong", [12345678, 1.5, True, ["a", "list"], {"an": "object"}])
async def test_wrong_types_name_the_field(client, account, method, path, good, wrong):
    for field in good:
        resp = await client.request(method, path, json={**good, field: wrong}, headers=account.headers)
        body = await check_problem(resp, 422, "validation")
        assert field in {f.split(".")[0] for f in fields(body)}, (field, body)
        assert body["detail"].startswith(field) or field in body["detail"]
    await still_serving(client)


@pytest.mark.parametrize("method, path, good", BODY_ENDPOINTS, ids=ids)
async def test_null_for_required_fields(client, account, method, path, good):
    for field in REQUIRED[path]:
        resp = await client.request(method, path, json={**good, field: None}, headers=account.headers)
        assert field in fields(await check_problem(resp, 422, "validation"))


@pytest.mark.parametrize("method, path, good", BODY_ENDPOINTS, ids=ids)
async def test_ten_megabyte_body_is_413(client, account, method, path, good):
    huge = json.dumps({**good, "name": "x" * (10 * MB)}).encode()
    resp = await client.request(method, path, data=huge, headers={**account.headers, "Content-Type": "application/json"})
    body = await check_problem(resp, 413, "too-large")
    assert "bytes" in body["detail"]
    await still_serving(client)


async def test_ten_megabyte_chunked_body_is_413(client):
    async def chunks():
        for _ in range(10):
            yield b" " * MB

    resp = await client.post("/api/v1/auth/login", data=chunks(), headers={"Content-Type": "application/json"})
    await check_problem(resp, 413, "too-large")
    await still_serving(client)


async def test_a_body_just_under_the_limit_is_read(client):
    padding = " " * (MB - 200)
    raw = ('{"email": "nobody@example.com", "password": "wrong password!"' + padding + "}").encode()
    resp = await client.post("/api/v1/auth/login", data=raw, headers={"Content-Type": "application/json"})
    await check_problem(resp, 401, "unauthenticated")


@pytest.mark.parametrize("method, path, good", BODY_ENDPOINTS, ids=ids)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "application/xml"])
async def test_wrong_content_type_is_415(client, account, method, path, good, content_type):
    resp = await client.request(method, path, data=json.dumps(good).encode(),
                                headers={**account.headers, "Content-Type": content_type})
    await check_problem(resp, 415, "unsupported-media-type")


async def test_json_with_charset_and_without_content_type_is_accepted(client):
    account = await register(client)
    for headers in ({"Content-Type": "application/json; charset=utf-8"}, {}):
        resp = await client.post("/api/v1/auth/login", headers=headers, skip_auto_headers=["Content-Type"],
                                 data=json.dumps({"email": account.email, "password": PASSWORD}).encode())
        assert resp.status == 200, await resp.text()


# -- unicode -----------------------------------------------------------------------------------
BAD_NAMES = {
    "nul": "Ada\x00Lovelace",
    "newline": "Ada\nLovelace",
    "escape": "Ada\x1b[31m",
    "c1 control": "Ada\x85Lovelace",
    "delete": "Ada\x7f",
    "rtl override": "Ada\u202eecalevoL",
    "rtl isolate": "\u2067Ada",
    "lone surrogate": "Ada\ud800",
    "10 000 characters": "a" * 10_000,
    "501 characters": "a" * 501,
    "only spaces": "     ",
    "empty": "",
}
GOOD_NAMES = {
    "emoji": "Ada 🦄👩🏽‍💻",
    "rtl mark in arabic": "\u0622\u062f\u0627\u200f",
    "combining accents": "Jose\u0301",
    "cjk": "艾达",
    "500 characters": "é" * 500,
    "trimmed": "  Ada  ",
}
BAD_EMAILS = {
    "nul": "ada\x00@example.com",
    "rtl override": "ada\u202e@example.com",
    "zero-width space": "ad\u200ba@example.com",
    "space inside": "ada lovelace@example.com",
    "no at": "ada.example.com",
    "no domain dot": "ada@localhost",
    "two ats": "ada@home@example.com",
    "lone surrogate": "ada\udc00@example.com",
    "too long": "a" * 400 + "@example.com",
    "empty": "",
}


def encoded(payload: dict) -> bytes:
    # json.dumps escapes surrogates as \udXXX, the way a client would send them
    return json.dumps(payload).encode()


@pytest.mark.parametrize("label", list(BAD_NAMES))
async def test_bad_names_are_422_naming_the_field(client, label):
    account = await register(client)
    name = BAD_NAMES[label]
    for method, path, good, field in [
        ("POST", "/api/v1/auth/register", {"email": "n@example.com", "password": PASSWORD}, "name"),
        ("PATCH", "/api/v1/me", {}, "name"),
        ("POST", "/api/v1/me/tokens", {}, "name"),
    ]:
        resp = await client.request(method, path, data=encoded({**good, field: name}),
                                    headers={**account.headers, "Content-Type": "application/json"})
        body = await check_problem(resp, 422, "validation")
        assert fields(body) == {field}
    me = await (await client.get("/api/v1/me", headers=account.headers)).json()
    assert me["name"] == "Test User"
    tokens = await (await client.get("/api/v1/me/tokens", headers=account.headers)).json()
    assert tokens["items"] == []
    await still_serving(client)


@pytest.mark.parametrize("label", list(GOOD_NAMES))
async def test_good_unicode_names_round_trip(client, label):
    name = GOOD_NAMES[label]
    account = await register(client, name=name)
    me = await (await client.get("/api/v1/me", headers=account.headers)).json()
    assert me["name"] == name.strip()


@pytest.mark.parametrize("label", list(BAD_EMAILS))
async def test_bad_emails_are_422_naming_the_field(client, label):
    account = await register(client)
    email = BAD_EMAILS[label]
    for method, path, good in [
        ("POST", "/api/v1/auth/register", {"password": PASSWORD, "name": "N"}),
        ("POST", "/api/v1/auth/login", {"password": PASSWORD}),
        ("PATCH", "/api/v1/me", {}),
    ]:
        resp = await client.request(method, path, data=encoded({**good, "email": email}),
                                    headers={**account.headers, "Content-Type": "application/json"})
        assert fields(await check_problem(resp, 422, "validation")) == {"email"}
    assert (await (await client.get("/api/v1/me", headers=account.headers)).json())["email"] == account.email


async def test_unicode_emails_are_one_account_per_spelling(client):
    composed, decomposed = "jos\u00e9@example.com", "jose\u0301@example.com"
    account = await register(client, email=composed)
    resp = await client.post("/api/v1/auth/register", json={"email": decomposed, "password": PASSWORD, "name": "J"})
    await check_problem(resp, 409, "conflict")
    assert (await client.post("/api/v1/auth/login", json={"email": decomposed, "password": PASSWORD})).status == 200
    assert account.email == composed
    emoji = await register(client, email="ada🦄@example.com")
    assert emoji.email == "ada🦄@example.com"


@pytest.mark.parametrize("depth", [10, 900, 990, 5000])
async def test_deep_nesting_with_a_surrogate_is_422(client, depth):
    raw = b'{"email": "a@example.com", "password": "xxxxxxxxxx", "name": "N", "x": ' + b"[" * depth + \
        b'"\\ud800"' + b"]" * depth + b"}"
    resp = await client.post("/api/v1/auth/register", data=raw, headers={"Content-Type": "application/json"})
    await check_problem(resp, 422, "validation")
    await still_serving(client)


@pytest.mark.parametrize("field", ["password", "device_name"])
async def test_lone_surrogates_anywhere_are_422(client, field):
    payload = {"email": "s@example.com", "password": PASSWORD, "name": "S", field: "pass\ud83dword"}
    resp = await client.post("/api/v1/auth/register", data=encoded(payload), headers={"Content-Type": "application/json"})
    assert fields(await check_problem(resp, 422, "validation")) == {field}
    # a proper surrogate pair (an emoji escaped as \ud83d\ude00) is just text
    payload[field] = "pass\U0001f600word"
    resp = await client.post("/api/v1/auth/register", data=encoded(payload), headers={"Content-Type": "application/json"})
    assert resp.status == 201, await resp.text()


async def test_nul_and_huge_passwords(client):
    resp = await client.post("/api/v1/auth/register", json={"email": "p@example.com", "password": "x" * 5000, "name": "P"})
    assert fields(await check_problem(resp, 422, "validation")) == {"password"}
    resp = await client.post("/api/v1/auth/register", json={"email": "p@example.com", "password": "nul\x00inside!", "name": "P"})
    assert resp.status == 201  # a password is opaque: any text the user can type twice
    assert (await client.post("/api/v1/auth/login", json={"email": "p@example.com", "password": "nul\x00inside!"})).status == 200
    assert (await client.post("/api/v1/auth/login", json={"email": "p@example.com", "password": "nul"})).status == 401


# -- endpoints without a body --------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}])
async def test_endpoints_without_a_body_accept_an_empty_one(client, headers):
    account = await register(client)
    other = await (await client.post("/api/v1/auth/login", json={"email": account.email, "password": PASSWORD})).json()
    token = await (await client.post("/api/v1/me/tokens", headers=account.headers, json={"name": "t"})).json()
    sessions = await (await client.get("/api/v1/auth/sessions", headers=account.headers, data=b"")).json()
    other_id = next(s["id"] for s in sessions["items"] if not s["current"])
    h = {**account.headers, **headers}
    assert (await client.get("/api/v1/me", headers=h, data=b"")).status == 200
    assert (await client.get("/api/v1/me/tokens", headers=h, data=b"")).status == 200
    assert (await client.delete(f"/api/v1/me/tokens/{token['id']}", headers=h, data=b"")).status == 204
    assert (await client.delete(f"/api/v1/auth/sessions/{other_id}", headers=h, data=b"")).status == 204
    assert (await client.post("/api/v1/auth/logout", headers=h, data=b"")).status == 204
    assert (await client.get("/api/v1/me", headers=bearer_of(other))).status == 401


def bearer_of(pair: dict) -> dict:
    return {"Authorization": f"Bearer {pair['access_token']}"}


async def test_unknown_fields_are_ignored(client):
    resp = await client.post("/api/v1/auth/register", json={"email": "u@example.com", "password": PASSWORD, "name": "U",
                                                            "is_admin": True, "id": "chosen"})
    assert resp.status == 201
    user = (await resp.json())["user"]
    assert user["is_admin"] is False and user["id"] != "chosen"


# -- routing errors and the internal error path --------------------------------------------------
async def test_unknown_path_and_wrong_method_are_problems(client):
    await check_problem(await client.get("/api/v1/no-such-thing"), 404, "not-found")
    resp = await client.put("/api/v1/me", json={})
    await check_problem(resp, 405, "method-not-allowed")
    assert "PATCH" in resp.headers["Allow"]


async def test_an_unexpected_error_is_an_internal_problem_without_a_trace(aiohttp_client, settings):
    app = create_app(settings)

    async def broken(request):  # stands in for any bug in any handler
        raise RuntimeError("secret internals: /etc/passwd, password=hunter2")

    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    resp = await client.get("/broken")
    body = await check_problem(resp, 500, "internal")
    text = json.dumps(body)
    assert "hunter2" not in text and "RuntimeError" not in text and "secret internals" not in text
    assert body["request_id"] == resp.headers["X-Request-Id"]
    await still_serving(client)


async def test_handler_raising_http_exceptions_become_problems(aiohttp_client, settings):
    app = create_app(settings)

    async def teapot(request):
        raise web.HTTPTooManyRequests(headers={"Retry-After": "7"})

    app.router.add_get("/busy", teapot)
    client = await aiohttp_client(app)
    resp = await client.get("/busy")
    await check_problem(resp, 429, "rate-limited")
    assert resp.headers["Retry-After"] == "7"


# -- plumbing every answer shares: request id, security headers, CORS ------------------------------
async def test_every_answer_has_a_request_id_and_security_headers(client):
    for resp in (await client.get("/healthz"), await client.get("/api/v1/me"),
                 await client.post("/api/v1/auth/login", data=b"{")):
        assert len(resp.headers["X-Request-Id"]) >= 16
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    resp = await client.get("/api/v1/me", headers={"X-Request-Id": "trace-42"})
    assert resp.headers["X-Request-Id"] == "trace-42"
    assert (await resp.json())["request_id"] == "trace-42"
    resp = await client.get("/healthz", headers={"X-Request-Id": "bad id\u00e9 with spaces"})
    assert resp.headers["X-Request-Id"] != "bad id\u00e9 with spaces"


async def test_cors_allows_only_configured_origins(make_client):
    client = await make_client(cors__origins=["tauri://localhost", "http://tauri.localhost"])
    preflight = {"Origin": "tauri://localhost", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    resp = await client.options("/api/v1/auth/login", headers=preflight)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "tauri://localhost"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    resp = await client.post("/api/v1/auth/login", headers={"Origin": "http://tauri.localhost"},
                             json={"email": "x@example.com", "password": "wrong password!"})
    assert resp.status == 401  # errors carry the CORS headers too, or the browser hides them
    assert resp.headers["Access-Control-Allow-Origin"] == "http://tauri.localhost"
    assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]

    resp = await client.options("/api/v1/auth/login", headers={**preflight, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


# -- the shared pagination helper -------------------------------------------------------------------
@pytest.mark.parametrize("query, field", [
    ("limit=abc", "limit"), ("limit=0", "limit"), ("limit=-5", "limit"),
    ("cursor=%25%25%25", "cursor"), ("cursor=" + "W1tb" * 1500, "cursor"),  # "[[[" nested far too deep
    ("cursor=__________", "cursor"),
])
async def test_bad_list_parameters_are_422(client, query, field):
    account = await register(client)
    resp = await client.get(f"/api/v1/workspaces?{query}", headers=account.headers)
    assert fields(await check_problem(resp, 422, "validation")) == {field}


async def test_limit_is_clamped_to_200(client):
    account = await register(client)
    resp = await client.get("/api/v1/workspaces?limit=100000", headers=account.headers)
    assert resp.status == 200
    assert (await resp.json())["next_cursor"] is None


async def test_a_compressed_body_is_limited_by_its_expanded_size(client):
    import gzip

    bomb = gzip.compress(b'{"email": "' + b" " * (50 * MB) + b'"}')  # ~50 KB on the wire, 50 MB expanded
    assert len(bomb) < MB
    resp = await client.post("/api/v1/auth/login", data=bomb,
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    await check_problem(resp, 413, "too-large")
    await still_serving(client)
