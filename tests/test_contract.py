"""The cross-cutting sentences of docs/api.md "Conventions", each checked over every route it applies
to, enumerated from app[ROUTE_TABLES] — a route added later by any feature is covered (or the
test names it as missing) without touching this file.

- creates answer 201 with `id` at the top level;
- lists answer `{items, next_cursor}`, `limit` defaults to 50, above 200 is clamped;
- names, titles and labels of 10 000 characters are 422 naming the field, and nothing changes;
- an endpoint without a documented body accepts an empty one, with or without Content-Type;
- malformed JSON is 422 naming `body`; a 2 MB JSON body is 413;
- expired, tampered, alg:none, wrongly signed and refresh-as-access tokens are 401 on every
  authenticated route;
- ids from another workspace are 404 (never 403, never that workspace's data);
- no error carries a stack trace.

Where a rule does not apply to a route the exception is listed, with the reason, next to it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from mdsync import clock
from mdsync.api.routing import RouteSpec
from mdsync.appkeys import ROUTE_TABLES, SETTINGS
from mdsync.db import read_only
from tests.builders import PASSWORD, Account, bad_tokens, bearer, make_settings, register

pytestmark = pytest.mark.both_engines

PROBLEM = "application/problem+json"
TRACE = re.compile(r"Traceback|File \"|\.py\", line|site-packages")
MB = 1024 * 1024
NAME_FIELDS = {"name", "title", "label", "device_name"}


@pytest.fixture
async def client(make_client):
    # many registrations and logins per test: lift the per-address throttles
    # rooms opened by REST writes close (and store their projection) soon, so settle() is short
    return await make_client(auth__register_attempts_per_address=100_000, auth__login_attempts_per_address=100_000,
                             collab__room_grace_seconds=0.1)


def specs_of(client) -> list[RouteSpec]:
    return [spec for table in client.app[ROUTE_TABLES] for spec in table.specs]


async def problem(resp, status: int, slug: str | None = None) -> dict:
    text = await resp.text()
    assert resp.status == status, f"{resp.method} {resp.url.path}: {resp.status} {text[:300]}"
    assert resp.content_type == PROBLEM, text[:300]
    assert not TRACE.search(text), text
    body = json.loads(text)
    if slug:
        assert body["type"] == f"urn:mdsync:error:{slug}", body
    assert body["status"] == status
    return body


# -- a world: one owner with one of everything a path can name, built through the API ---------------
@dataclass
class World:
    client: Any
    owner: Account
    member: Account
    ids: dict[str, str] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)  # titles/names unique to this world (leak check)

    async def call(self, method: str, path: str, **kw):
        headers = kw.pop("headers", self.owner.headers)
        return await self.client.request(method, path, headers=headers, **kw)

    async def ok(self, method: str, path: str, status: int, **kw) -> dict:
        resp = await self.call(method, path, **kw)
        assert resp.status == status, await resp.text()
        return await resp.json() if resp.status != 204 else {}

    # fresh targets, for destructive calls (so one check does not change what the next one sees)
    async def fresh(self, name: str) -> str:
        tag = uuid.uuid4().hex[:6]
        ws = self.ids["ws"]
        if name == "ws":
            return (await self.ok("POST", "/api/v1/workspaces", 201, json={"name": f"WS {tag}"}))["id"]
        if name == "folder":
            return (await self.ok("POST", f"/api/v1/workspaces/{ws}/folders", 201, json={"name": f"F {tag}"}))["id"]
        if name in ("doc", "document_id"):
            return (await self.ok("POST", f"/api/v1/workspaces/{ws}/documents", 201,
                                  json={"title": f"D {tag}", "markdown": "x"}))["id"]
        if name == "link":
            return (await self.ok("POST", f"/api/v1/documents/{self.ids['doc']}/share-links", 201,
                                  json={"role": "viewer"}))["id"]
        if name == "version":
            return (await self.ok("POST", f"/api/v1/documents/{self.ids['doc']}/versions", 201,
                                  json={"label": f"V {tag}"}))["id"]
        if name == "invitation":
            return (await self.ok("POST", f"/api/v1/workspaces/{ws}/invitations", 201, json={"role": "viewer"}))["id"]
        if name == "token_id":
            return (await self.ok("POST", "/api/v1/me/tokens", 201, json={"name": f"T {tag}"}))["id"]
        if name == "session_id":
            await self.client.post("/api/v1/auth/login", json={"email": self.owner.email, "password": PASSWORD})
            sessions = await self.ok("GET", "/api/v1/auth/sessions", 200)
            return next(s["id"] for s in sessions["items"] if not s["current"])
        if name == "user":
            return (await join(self, "commenter")).id
        if name == "token":
            return (await self.ok("POST", f"/api/v1/documents/{self.ids['doc']}/share-links", 201,
                                  json={"role": "viewer"}))["token"]
        if name == "comment":
            return (await self.ok("POST", f"/api/v1/documents/{self.ids['doc']}/comments", 201,
                                  json={"body": f"Comment {tag}"}))["id"]
        if name == "provider":  # an AI provider with a key set (the key to remove)
            await self.ok("PUT", f"/api/v1/workspaces/{ws}/ai/keys/openai", 204, json={"api_key": f"sk-{tag}"})
            return "openai"
        if name == "attachment":
            return (await self.ok("POST", f"/api/v1/workspaces/{ws}/attachments", 201, data=b"attached bytes",
                                  params={"filename": f"a-{tag}.txt", "document_id": self.ids["doc"]},
                                  headers={**self.owner.headers, "Content-Type": "application/octet-stream"}))["id"]
        raise AssertionError(f"no factory for path parameter {{{name}}}: add one to World.fresh")


async def join(world: World, role: str) -> Account:
    person = await register(world.client, name=f"Member {uuid.uuid4().hex[:4]}")
    inv = await world.ok("POST", f"/api/v1/workspaces/{world.ids['ws']}/invitations", 201, json={"role": role})
    resp = await world.client.post("/api/v1/invitations/accept", json={"token": inv["token"]}, headers=person.headers)
    assert resp.status == 200, await resp.text()
    return person


async def build_world(client, label: str = "A") -> World:
    owner = await register(client, name=f"Owner {label}")
    w = World(client, owner, owner)
    tag = f"{label}-{uuid.uuid4().hex[:8]}"
    w.texts = [f"Space {tag}", f"Folder {tag}", f"Doc {tag}", f"secret body {tag}", f"Version {tag}"]
    w.ids["ws"] = (await w.ok("POST", "/api/v1/workspaces", 201, json={"name": w.texts[0]}))["id"]
    w.member = await join(w, "editor")
    w.ids["user"] = w.member.id
    w.ids["folder"] = (await w.ok("POST", f"/api/v1/workspaces/{w.ids['ws']}/folders", 201,
                                  json={"name": w.texts[1]}))["id"]
    doc = await w.ok("POST", f"/api/v1/workspaces/{w.ids['ws']}/documents", 201,
                     json={"title": w.texts[2], "markdown": w.texts[3], "folder_id": w.ids["folder"]})
    w.ids["doc"] = w.ids["document_id"] = doc["id"]
    link = await w.ok("POST", f"/api/v1/documents/{doc['id']}/share-links", 201, json={"role": "viewer"})
    w.ids["link"], w.ids["token"] = link["id"], link["token"]
    w.ids["version"] = (await w.ok("POST", f"/api/v1/documents/{doc['id']}/versions", 201,
                                   json={"label": w.texts[4]}))["id"]
    w.ids["provider"] = "openai"
    w.ids["invitation"] = await w.fresh("invitation")
    w.ids["token_id"] = await w.fresh("token_id")
    w.ids["session_id"] = await w.fresh("session_id")
    if any("{attachment}" in spec.path for spec in specs_of(client)):  # once the attachments feature is in
        w.ids["attachment"] = await w.fresh("attachment")
    w.texts.append(f"Comment {tag}")
    w.ids["comment"] = (await w.ok("POST", f"/api/v1/documents/{doc['id']}/comments", 201,
                                   json={"body": w.texts[-1]}))["id"]
    await w.ok("PUT", f"/api/v1/documents/{doc['id']}/grants/{w.member.id}", 200, json={"role": "viewer"})
    await settle(client)
    return w


@pytest.fixture
async def world(client) -> World:
    """This file's world (it replaces tests/conftest.py's `world` of every role here)."""
    return await build_world(client)


async def settle(client, timeout: float = 8.0) -> None:
    """Wait until background writes (markdown projections, room closes) have stopped, so a
    snapshot taken next changes only because of the request under test."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # quiet for longer than the projection debounce (and its 0.1 s sweep grid)
    quiet = int(client.server.app[SETTINGS].collab.projection_debounce / 0.25) + 2
    last, stable = snapshot(client), 0
    while loop.time() < deadline and stable < quiet:
        await asyncio.sleep(0.25)
        now = snapshot(client)
        stable = stable + 1 if now == last else 0
        last = now


def fill(path: str, ids: dict[str, str]) -> str:
    def value(m: re.Match) -> str:
        return ids[m.group(1)]
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", value, path)


def params(path: str) -> list[str]:
    return re.findall(r"\{([^}:]+)(?::[^}]*)?\}", path)


# A valid JSON body for every route that takes one; a route added without an entry here fails
# test_every_json_route_has_a_valid_body, which is what makes the checks below cover it.
def valid_body(world: World, spec: RouteSpec) -> dict:
    tag = uuid.uuid4().hex[:6]
    bodies = {
        ("POST", "/api/v1/auth/register"): {"email": f"n-{tag}@example.com", "password": PASSWORD, "name": "New"},
        ("POST", "/api/v1/auth/login"): {"email": world.owner.email, "password": PASSWORD, "device_name": "laptop"},
        ("POST", "/api/v1/auth/refresh"): {"refresh_token": world.owner.refresh_token},
        ("POST", "/api/v1/auth/setup"): {"setup_token": "not-the-token", "email": f"s-{tag}@example.com",
                                         "password": PASSWORD, "name": "Root"},
        ("PATCH", "/api/v1/me"): {"name": "Renamed"},
        ("POST", "/api/v1/me/password"): {"current_password": PASSWORD, "new_password": PASSWORD},
        ("POST", "/api/v1/me/tokens"): {"name": f"token {tag}"},
        ("POST", "/api/v1/workspaces"): {"name": f"Space {tag}"},
        ("PATCH", "/api/v1/workspaces/{ws}"): {"name": f"Space {tag}"},
        ("POST", "/api/v1/workspaces/{ws}/transfer"): {"user_id": world.member.id},
        ("PATCH", "/api/v1/workspaces/{ws}/members/{user}"): {"role": "viewer"},
        ("POST", "/api/v1/workspaces/{ws}/invitations"): {"role": "viewer"},
        ("POST", "/api/v1/invitations/accept"): {"token": "not-a-token"},
        ("POST", "/api/v1/workspaces/{ws}/folders"): {"name": f"Folder {tag}"},
        ("PATCH", "/api/v1/folders/{folder}"): {"name": f"Folder {tag}"},
        ("POST", "/api/v1/workspaces/{ws}/documents"): {"title": f"Doc {tag}"},
        ("PATCH", "/api/v1/documents/{doc}"): {"title": f"Doc {tag}"},
        ("PUT", "/api/v1/documents/{doc}/grants/{user}"): {"role": "commenter"},
        ("POST", "/api/v1/documents/{doc}/share-links"): {"role": "viewer"},
        ("POST", "/api/v1/documents/{doc}/versions"): {"label": f"Version {tag}"},
        ("POST", "/api/v1/documents/{doc}/comments"): {"body": f"Comment {tag}"},
        ("PATCH", "/api/v1/comments/{comment}"): {"body": f"Edited {tag}"},
        # a raw-body route: a JSON body is stored as the file's bytes (named "file")
        ("POST", "/api/v1/workspaces/{ws}/attachments"): {"note": f"attached {tag}"},
        ("PUT", "/api/v1/workspaces/{ws}/ai/keys/{provider}"): {"api_key": f"sk-{tag}"},
        ("PUT", "/api/v1/workspaces/{ws}/ai/limits"): {"tokens_per_month": 1000},
    }
    return bodies[(spec.method, spec.path)]


def test_every_json_route_has_a_valid_body(settings):
    from mdsync.app import create_app

    app = create_app(settings)
    world = World(None, None, None, ids={})  # type: ignore[arg-type]
    missing = []
    for table in app[ROUTE_TABLES]:
        for spec in table.specs:
            if spec.body is not None:
                try:
                    valid_body(world, spec)
                except KeyError:
                    missing.append(f"{spec.method} {spec.path}")
                except AttributeError:
                    pass  # the body needs a real world; it exists
    assert missing == []


# -- snapshots: "nothing changes" --------------------------------------------------------------------
# Rows that change on any authenticated request, not because of what it asked for: a session's
# last use is bookkeeping, not user data.
VOLATILE = {"sessions", "sqlite_sequence", "changes_head"}  # the last two: each engine's sequence bookkeeping
TABLES = {"sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
          "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"}


def table_rows(settings) -> dict[str, list[tuple]]:
    """Every row of every table of the server's database (either engine), read afresh."""
    with read_only(settings) as tx:
        return {t: [tuple(row) for row in tx.all(f'SELECT * FROM "{t}"')]
                for t in (r[0] for r in tx.all(TABLES[tx.engine])) if not t.startswith("_")}


def snapshot(client) -> dict[str, list]:
    return {t: sorted(map(repr, rows)) for t, rows in table_rows(client.app[SETTINGS]).items() if t not in VOLATILE}


def diff(before: dict, after: dict) -> dict:
    return {t: (len(before.get(t, [])), len(after.get(t, []))) for t in set(before) | set(after)
            if before.get(t) != after.get(t)}


# -- creates: 201 with `id` at the top level -------------------------------------------------------
# 201s whose answer is not a created resource with an id, as docs/api.md documents them:
NOT_RESOURCE_CREATES = {
    ("POST", "/api/v1/auth/register"),  # → {user, access_token, refresh_token, expires_in}
    ("POST", "/api/v1/auth/setup"),     # same shape as register
    ("POST", "/api/v1/documents/{document_id}/ws-ticket"),  # → {ticket}: a capability, not a resource
}


async def test_creates_answer_201_with_a_top_level_id(client, world):
    creates = [s for s in specs_of(client) if s.status == 201 and (s.method, s.path) not in NOT_RESOURCE_CREATES]
    assert len(creates) >= 7
    for spec in creates:
        assert spec.method == "POST", f"{spec.method} {spec.path}: creates are POSTs"
        resp = await world.call("POST", fill(spec.path, world.ids), json=valid_body(world, spec))
        text = await resp.text()
        assert resp.status == 201, f"{spec.path}: {resp.status} {text[:300]}"
        body = json.loads(text)
        assert isinstance(body.get("id"), str) and body["id"], f"{spec.path}: no top-level id in {body}"


# -- lists -------------------------------------------------------------------------------------------
def list_specs(client) -> list[RouteSpec]:
    return [s for s in specs_of(client) if s.method == "GET" and s.response is not None
            and "items" in s.response.model_fields and (s.method, s.path) not in ONE_PAGE_LISTS]


# Lists documented as one page without a cursor:
ONE_PAGE_LISTS = {("GET", "/api/v1/documents/{doc}/presence"),  # "(one page, no cursor)"
                  ("GET", "/api/v1/ai/models"),  # docs/api.md: `{items}`, the whole list
                  ("GET", "/api/v1/ai/usage"),   # docs/api.md: `{items}` of the date range asked for
                  ("GET", "/api/v1/search")}  # `{items}` only, the best matches (limit clamped: test_search.py)


async def populate(world: World, spec: RouteSpec, n: int) -> None:
    """At least `n` items in the list `spec` answers (for the owner, in world's workspace)."""
    ws, doc = world.ids["ws"], world.ids["doc"]
    path = spec.path
    for i in range(n):
        if path == "/api/v1/auth/sessions":
            await world.client.post("/api/v1/auth/login", json={"email": world.owner.email, "password": PASSWORD})
        elif path == "/api/v1/me/tokens":
            await world.fresh("token_id")
        elif path == "/api/v1/workspaces":
            await world.fresh("ws")
        elif path == "/api/v1/workspaces/{ws}/members":
            await join(world, "viewer")
        elif path == "/api/v1/workspaces/{ws}/invitations":
            await world.fresh("invitation")
        elif path in ("/api/v1/workspaces/{ws}/documents", "/api/v1/workspaces/{ws}/templates",
                      "/api/v1/workspaces/{ws}/context", "/api/v1/workspaces/{ws}/trash"):
            kind = {"templates": "template", "context": "context"}.get(path.rsplit("/", 1)[1], "note")
            d = await world.ok("POST", f"/api/v1/workspaces/{ws}/documents", 201, json={"title": f"L{i}", "kind": kind})
            if path.endswith("/trash"):
                await world.ok("DELETE", f"/api/v1/documents/{d['id']}", 204)
        elif path == "/api/v1/workspaces/{ws}/trash/folders":
            f = await world.ok("POST", f"/api/v1/workspaces/{ws}/folders", 201, json={"name": f"F{i}"})
            await world.ok("DELETE", f"/api/v1/folders/{f['id']}", 204)
        elif path == "/api/v1/documents/{doc}/grants":
            person = await join(world, "viewer")
            await world.ok("PUT", f"/api/v1/documents/{doc}/grants/{person.id}", 200, json={"role": "editor"})
        elif path == "/api/v1/documents/{doc}/share-links":
            await world.fresh("link")
        elif path == "/api/v1/documents/{doc}/versions":
            await world.fresh("version")
        elif path == "/api/v1/documents/{doc}/attachments":
            await world.fresh("attachment")
        elif path == "/api/v1/documents/{doc}/comments":
            await world.fresh("comment")
        else:
            raise AssertionError(f"GET {path} is a list: teach populate() how to fill it")


async def test_lists_answer_items_and_next_cursor_with_limit_default_50_and_clamp_200(client, world):
    lists = list_specs(client)
    assert len(lists) >= 10
    for spec in lists:
        url = fill(spec.path, world.ids)
        await populate(world, spec, 51)
        body = await world.ok("GET", url, 200)
        assert set(body) >= {"items", "next_cursor"}, f"{spec.path}: {list(body)}"
        assert len(body["items"]) == 50 and body["next_cursor"], f"{spec.path}: default page {len(body['items'])}"
        # the cursor continues where the first page ended, without repeats
        rest = await world.ok("GET", url, 200, params={"cursor": body["next_cursor"]})
        first_ids = {json.dumps(i, sort_keys=True) for i in body["items"]}
        assert rest["items"] and not first_ids & {json.dumps(i, sort_keys=True) for i in rest["items"]}, spec.path
        one = await world.ok("GET", url, 200, params={"limit": "1"})
        assert len(one["items"]) == 1 and one["next_cursor"], spec.path
        big = await world.ok("GET", url, 200, params={"limit": "100000"})  # clamped, not refused
        assert 51 <= len(big["items"]) <= 200, spec.path
        for bad in ("0", "-1", "abc", "1.5"):
            resp = await world.call("GET", url, params={"limit": bad})
            assert {e["field"] for e in (await problem(resp, 422, "validation"))["errors"]} == {"limit"}, spec.path
        resp = await world.call("GET", url, params={"cursor": "%%%not-a-cursor"})
        await problem(resp, 422, "validation")


async def test_limit_above_200_is_clamped_to_200(client, world):
    ws = world.ids["ws"]
    for i in range(201):
        await world.ok("POST", f"/api/v1/workspaces/{ws}/documents", 201, json={"title": f"N{i}"})
    body = await world.ok("GET", f"/api/v1/workspaces/{ws}/documents", 200, params={"limit": "500"})
    assert len(body["items"]) == 200 and body["next_cursor"]


# -- names, titles, labels -----------------------------------------------------------------------------
def name_fields(spec: RouteSpec) -> list[str]:
    return [n for n in spec.body.model_fields if n in NAME_FIELDS] if spec.body else []


def test_every_name_like_field_is_known():
    """A body field called *name/*title/*label that NAME_FIELDS does not list would escape the
    10 000-character check below."""
    import tempfile
    from pathlib import Path

    from mdsync.app import create_app
    from tests.builders import make_settings

    app = create_app(make_settings(Path(tempfile.mkdtemp())))
    odd = {f"{s.path}:{n}" for t in app[ROUTE_TABLES] for s in t.specs if s.body
           for n in s.body.model_fields if re.search(r"(name|title|label)$", n) and n not in NAME_FIELDS}
    assert odd == set()


async def test_ten_thousand_character_names_are_422_naming_the_field_and_change_nothing(client, world):
    routes = [(s, f) for s in specs_of(client) for f in name_fields(s)]
    assert len(routes) >= 10
    for value in ("x" * 10_000, "   ", "a" * 501):
        for spec, name in routes:
            if name == "device_name" and value != "x" * 10_000:
                continue  # not a name in the sense of docs/api.md "Conventions": up to 200 characters, blank allowed
            url = fill(spec.path, world.ids)
            body = {**valid_body(world, spec), name: value}
            before = snapshot(client)
            resp = await world.call(spec.method, url, json=body)
            got = await problem(resp, 422, "validation")
            assert {e["field"] for e in got["errors"]} == {name}, (spec.path, got)
            assert diff(before, snapshot(client)) == {}, f"{spec.method} {spec.path} changed data"


# -- empty bodies -------------------------------------------------------------------------------------
# success statuses that differ from the route's documented one for a reason unrelated to the body
EMPTY_BODY_STATUS = {
    ("POST", "/api/v1/workspaces/{ws}/leave"): 409,            # the owner is its only owner
    ("POST", "/api/v1/workspaces/{ws}/restore"): 409,          # the workspace is not deleted
    ("POST", "/api/v1/documents/{doc}/restore"): 200,
    ("POST", "/api/v1/auth/logout"): 204,
    ("POST", "/api/v1/workspaces/{ws}/import"): 422,            # documented body: a zip (raw)
    ("GET", "/api/v1/ai/openai/v1/models"): 409,               # no AI key is configured in these tests
    ("GET", "/api/v1/ai/anthropic/v1/models"): 409,
    ("GET", "/api/v1/workspaces/{ws}/ai/keys/{provider}"): 404,  # no key is set
    ("GET", "/api/v1/search"): 422,                             # `q` is required
}


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
async def test_endpoints_without_a_body_accept_an_empty_one(client, world, content_type):
    bodiless = [s for s in specs_of(client) if s.body is None and s.raw_body is None]
    assert len(bodiless) > 20
    for spec in bodiless:
        ids = dict(world.ids)
        names = params(spec.path)
        if spec.method != "GET" and names:  # destructive: a fresh target inside the world's containers
            ids[names[-1]] = await world.fresh(names[-1])
            if "/grants/" in spec.path:  # a grant to remove
                await world.ok("PUT", fill("/api/v1/documents/{doc}/grants/{user}", ids), 200, json={"role": "viewer"})
        headers = dict(world.owner.headers)
        if spec.path == "/api/v1/auth/logout":  # its own session, not the world's
            pair = await (await client.post("/api/v1/auth/login",
                                            json={"email": world.owner.email, "password": PASSWORD})).json()
            headers = bearer(pair["access_token"])
        if content_type:
            headers["Content-Type"] = content_type
        if spec.path.startswith("/api/v1/ai/"):  # the paying workspace (the owner may have made more by now)
            headers["X-Mdsync-Workspace"] = ids["ws"]
        query = {"from": ids["version"], "to": "current"} if spec.path.endswith("/diff") else None  # required
        resp = await client.request(spec.method, fill(spec.path, ids), data=b"", headers=headers, params=query,
                                    skip_auto_headers=["Content-Type"])
        if spec.raw_response == "text/event-stream":
            text = b""  # a stream stays open by design: its status is the answer
            resp.close()
        else:
            text = await resp.read()
        # a plain GET of a socket path is not an upgrade: 400, as a problem
        expected = 400 if spec.path.startswith("/ws/") else EMPTY_BODY_STATUS.get((spec.method, spec.path), spec.status)
        assert resp.status == expected, f"{spec.method} {spec.path} [{content_type}]: {resp.status} {text[:300]!r}"


# -- malformed JSON, oversized JSON --------------------------------------------------------------------
async def test_malformed_json_is_422_naming_body_everywhere(client, world):
    routes = [s for s in specs_of(client) if s.body is not None]
    for spec in routes:
        for raw in (b"{broken", b'{"a": }', b"\xff\xfe", b"[1,", b"nul"):
            before = snapshot(client)
            resp = await world.call(spec.method, fill(spec.path, world.ids), data=raw,
                                    headers={**world.owner.headers, "Content-Type": "application/json"})
            got = await problem(resp, 422, "validation")
            assert [e["field"] for e in got["errors"]] == ["body"], (spec.path, got)
            assert diff(before, snapshot(client)) == {}, spec.path


async def test_two_megabyte_json_bodies_are_413_everywhere(client, world):
    routes = [s for s in specs_of(client) if s.body is not None]
    for spec in routes:
        body = {**valid_body(world, spec), "padding": "x" * (2 * MB)}
        before = snapshot(client)
        resp = await world.call(spec.method, fill(spec.path, world.ids), json=body)
        await problem(resp, 413, "too-large")
        assert diff(before, snapshot(client)) == {}, spec.path
    assert (await client.get("/healthz")).status == 200


async def test_raw_bodies_over_their_limit_are_413(make_client):
    client = await make_client(limits__max_document_bytes=64 * 1024, limits__max_import_bytes=64 * 1024,
                               limits__max_upload_bytes=64 * 1024, limits__max_body_bytes=64 * 1024)
    world = await build_world(client)
    raw = [s for s in specs_of(client) if s.raw_body is not None]
    assert raw
    for spec in raw:
        before = snapshot(client)
        resp = await world.call(spec.method, fill(spec.path, world.ids), data=b"x" * (2 * MB),
                                headers={**world.owner.headers, "Content-Type": spec.raw_body})
        await problem(resp, 413, "too-large")
        assert diff(before, snapshot(client)) == {}, spec.path
    content = await world.call("GET", f"/api/v1/documents/{world.ids['doc']}/content")
    assert world.texts[3] in await content.text()


# -- bad tokens ----------------------------------------------------------------------------------------


async def test_bad_tokens_are_401_on_every_authenticated_route(client, world):
    account = world.owner
    authed = [s for s in specs_of(client) if s.auth == "user"]
    assert len(authed) > 40
    tokens = bad_tokens(account)
    # a revoked session's access token, and an expired one (the clock moved past `exp`)
    login = await (await client.post("/api/v1/auth/login", json={"email": account.email, "password": PASSWORD})).json()
    assert (await client.post("/api/v1/auth/logout", headers=bearer(login["access_token"]))).status == 204
    tokens["logged out"] = login["access_token"]
    before = snapshot(client)
    for label, token in tokens.items():
        for spec in authed:
            resp = await client.request(spec.method, fill(spec.path, world.ids), headers=bearer(token), json={})
            await problem(resp, 401, "unauthenticated")
    clock.advance(client.app[SETTINGS].auth.access_token_ttl + 1)
    for spec in authed:
        resp = await client.request(spec.method, fill(spec.path, world.ids), headers=account.headers, json={})
        await problem(resp, 401, "unauthenticated")
    assert diff(before, snapshot(client)) == {}
    # the authorization scheme itself
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", account.access_token, "Token " + account.access_token):
        resp = await client.get("/api/v1/me", headers={"Authorization": header})
        await problem(resp, 401, "unauthenticated")


async def test_a_bad_token_on_an_optional_route_is_401_not_anonymous(client, world):
    """A share link opens without an account, but a token that is presented must be good: a
    client whose token went bad learns so instead of silently reading as nobody."""
    optional = [s for s in specs_of(client) if s.auth == "optional"]
    for spec in optional:
        url = fill(spec.path, world.ids)
        assert (await client.get(url)).status < 500  # anonymous: whatever the route allows
        for label, token in bad_tokens(world.owner).items():
            resp = await client.request(spec.method, url, headers=bearer(token))
            await problem(resp, 401, "unauthenticated")


# -- ids from another workspace ------------------------------------------------------------------------
# Path parameters that are not workspace-scoped ids:
NOT_WORKSPACE_IDS = {
    "token",  # a share token is a capability: whoever holds it reads (GET /share/{token})
    "provider",  # an AI provider's name (openai, anthropic), the same in every workspace
}
# Routes whose answer to a stranger's id is not 404, with the reason:
CROSS_EXCEPTIONS = {
    ("GET", "/ws/docs/{document_id}"),  # a socket: refused with close code 4404 (tests/test_collab_relay.py)
}


async def test_ids_from_another_workspace_are_404_and_show_nothing(client):
    mine = await build_world(client, "mine")
    theirs = await build_world(client, "theirs")
    routes = [s for s in specs_of(client) if s.auth == "user" and params(s.path)
              and (s.method, s.path) not in CROSS_EXCEPTIONS]
    assert len(routes) > 30
    for spec in routes:
        names = [n for n in params(spec.path) if n not in NOT_WORKSPACE_IDS]
        if not names:
            continue
        # every id theirs; then each id theirs alone inside my own ids (a mixed path)
        variants = [{**mine.ids, **{n: theirs.ids[n] for n in names}}]
        if len(names) > 1:
            variants += [{**mine.ids, n: theirs.ids[n]} for n in names]
        for ids in variants:
            before = snapshot(client)
            body = valid_body(mine, spec) if spec.body else None
            query = {"from": ids["version"], "to": "current"} if spec.path.endswith("/diff") else None
            if spec.raw_body:
                resp = await mine.call(spec.method, fill(spec.path, ids), data=b"\x00\x00", params=query,
                                       headers={**mine.owner.headers, "Content-Type": spec.raw_body})
            else:
                resp = await mine.call(spec.method, fill(spec.path, ids), json=body, params=query)
            text = await resp.text()
            assert resp.status == 404, f"{spec.method} {fill(spec.path, ids)}: {resp.status} {text[:300]}"
            await problem(resp, 404, "not-found")
            for secret in theirs.texts:
                assert secret not in text
            assert diff(before, snapshot(client)) == {}, f"{spec.method} {spec.path} changed data"


async def test_ids_from_another_workspace_in_bodies_and_queries_answer_as_unknown_ids(client):
    """References inside bodies and queries (a folder, template, parent, version or user of another
    workspace) get exactly the answer an id that exists nowhere gets: 404, or 422 naming the field
    — never 403, never a word of the other workspace, and nothing changes."""
    mine = await build_world(client, "mine")
    theirs = await build_world(client, "theirs")
    ws, doc, folder = mine.ids["ws"], mine.ids["doc"], mine.ids["folder"]
    cases = [
        ("POST", f"/api/v1/workspaces/{ws}/documents", "body", {"title": "x", "folder_id": "folder"}),
        ("POST", f"/api/v1/workspaces/{ws}/documents", "body", {"title": "x", "template_id": "doc"}),
        ("POST", f"/api/v1/workspaces/{ws}/folders", "body", {"name": "x", "parent_id": "folder"}),
        ("PATCH", f"/api/v1/folders/{folder}", "body", {"parent_id": "folder"}),
        ("PATCH", f"/api/v1/documents/{doc}", "body", {"folder_id": "folder"}),
        ("POST", f"/api/v1/workspaces/{ws}/transfer", "body", {"user_id": "owner"}),
        ("GET", f"/api/v1/documents/{doc}/diff", "params", {"from": "version", "to": "current"}),
        ("GET", f"/api/v1/documents/{doc}/diff", "params", {"from": mine.ids["version"], "to": "version"}),
        ("GET", f"/api/v1/workspaces/{ws}/documents", "params", {"folder_id": "folder"}),
        ("GET", "/api/v1/search", "params", {"q": "secret", "workspace_id": "ws"}),
    ]
    theirs_ids = {**theirs.ids, "owner": theirs.owner.id}
    for method, url, where, template in cases:
        answers = []
        for source in (theirs_ids, {k: str(uuid.uuid4()) for k in theirs_ids}):
            values = {k: source.get(v, v) if isinstance(v, str) else v for k, v in template.items()}
            before = snapshot(client)
            resp = await mine.call(method, url, **{"json" if where == "body" else "params": values})
            text = await resp.text()
            # a list filtered by a folder the caller cannot see is simply empty
            empty_list = resp.status == 200 and method == "GET" and json.loads(text).get("items") == []
            assert resp.status in (404, 422) or empty_list, f"{method} {url} {values}: {resp.status} {text[:300]}"
            for secret in theirs.texts:
                assert secret not in text
            assert diff(before, snapshot(client)) == {}, f"{method} {url}"
            got = json.loads(text)
            answers.append((resp.status, got.get("type"), got.get("errors"), got.get("items")))
        assert answers[0] == answers[1], f"{method} {url} {template}: another workspace's id is told apart: {answers}"


# -- secrets: never in the log, never raw in the database ----------------------------------------------
async def test_no_token_or_password_in_the_log_or_the_database(server_process, tmp_path):
    """A full flow against a real `mdsync serve` logging at debug level: register, log in, refresh,
    personal access tokens, sockets opened with ?token= (JWT, PAT, ticket), a share link read,
    an invitation accepted, a password change, the first-admin setup. Not one token or password
    value appears in the server's output (except the setup token in the one startup banner that
    exists to hand it to the operator), and none is stored raw in any file of the data dir."""
    import aiohttp

    server = server_process(env={"MDSYNC_LOG__LEVEL": "debug", "MDSYNC_AUTH__REGISTRATION": "open"})
    banner = "".join(server.output)
    setup_token = re.search(r'"setup_token": "([^"]+)"', banner).group(1)
    secrets: dict[str, str] = {"setup token": setup_token}
    api = server.url("/api/v1")
    async with aiohttp.ClientSession() as http:
        async def call(method, path, status, **kw):
            async with http.request(method, api + path, **kw) as resp:
                body = await resp.read()
                assert resp.status == status, (path, resp.status, body[:300])
                return json.loads(body) if body and resp.content_type.endswith("json") else {}

        admin_password, pw, pw2 = "admin password 1", "user password 11", "user password 22"
        secrets.update({"admin password": admin_password, "password": pw, "new password": pw2})
        admin = await call("POST", "/auth/setup", 201, json={"setup_token": setup_token, "email": "root@example.com",
                                                            "password": admin_password, "name": "Root"})
        user = await call("POST", "/auth/register", 201, json={"email": "u@example.com", "password": pw, "name": "U"})
        login = await call("POST", "/auth/login", 200, json={"email": "u@example.com", "password": pw})
        await call("POST", "/auth/login", 401, json={"email": "u@example.com", "password": "wrong " + pw})
        refreshed = await call("POST", "/auth/refresh", 200, json={"refresh_token": login["refresh_token"]})
        # the spent refresh token presented again: refused (and the family revoked)
        await call("POST", "/auth/refresh", 401, json={"refresh_token": login["refresh_token"]})
        h = bearer(user["access_token"])
        pat = await call("POST", "/me/tokens", 201, headers=h, json={"name": "cli"})
        await call("GET", "/me", 200, headers=bearer(pat["token"]))
        ws = (await call("POST", "/workspaces", 201, headers=h, json={"name": "W"}))["id"]
        doc = (await call("POST", f"/workspaces/{ws}/documents", 201, headers=h, json={"title": "D", "markdown": "x"}))["id"]
        link = await call("POST", f"/documents/{doc}/share-links", 201, headers=h, json={"role": "viewer"})
        await call("GET", f"/share/{link['token']}", 200)
        inv = await call("POST", f"/workspaces/{ws}/invitations", 201, headers=h, json={"role": "editor"})
        await call("POST", "/invitations/accept", 200, headers=bearer(admin["access_token"]), json={"token": inv["token"]})
        inv2 = await call("POST", f"/workspaces/{ws}/invitations", 201, headers=h, json={"role": "viewer"})
        invited = await call("POST", "/auth/register", 201, json={"email": "i@example.com", "password": pw, "name": "I",
                                                                  "invitation": inv2["token"]})
        ticket = (await call("POST", f"/documents/{doc}/ws-ticket", 201, headers=h))["ticket"]
        for token in (user["access_token"], pat["token"], ticket):
            async with http.ws_connect(server.url(f"/ws/docs/{doc}?token={token}")) as sock:
                msg = await sock.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY
        async with http.ws_connect(server.url(f"/ws/docs/{doc}?token={ticket}")) as sock:  # spent: refused
            await sock.receive(timeout=10)
            assert sock.close_code == 4401
        await call("GET", "/me", 401, headers=bearer(refreshed["refresh_token"]))  # refresh as access
        await call("POST", "/me/password", 204, headers=h, json={"current_password": pw, "new_password": pw2})
        secrets.update({
            "access token": user["access_token"], "refresh token": login["refresh_token"],
            "refreshed access": refreshed["access_token"], "refreshed refresh": refreshed["refresh_token"],
            "admin access": admin["access_token"], "admin refresh": admin["refresh_token"],
            "pat": pat["token"], "share token": link["token"], "invitation": inv["token"],
            "invitation 2": inv2["token"], "invited refresh": invited["refresh_token"], "ticket": ticket,
        })
    assert server.terminate() == 0
    log = server.rest_of_output()
    assert "GET /api/v1/me" in log or "/api/v1/me" in log, "the access log was not on: this test would prove nothing"
    log_without_banner = log.replace(banner, "")
    leaked = [label for label, value in secrets.items() if value in log_without_banner]
    assert leaked == [], f"secrets in the server log: {leaked}"
    stored = b"".join(f.read_bytes() for f in server.data_dir.rglob("*") if f.is_file())
    # and the database's rows (on PostgreSQL they are not in the data dir)
    stored += repr(table_rows(make_settings(server.data_dir))).encode()
    assert b"u@example.com" in stored, "the database was not read: this test would prove nothing"
    raw = [label for label, value in secrets.items() if value.encode() in stored]
    assert raw == [], f"stored raw in the data dir: {raw}"


MALFORMED_FORMS = [
    ("multipart/form-data", b"garbage"),                                   # no boundary
    ("multipart/form-data; boundary=zz", b"garbage"),                      # no starting boundary
    ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: bad\x00\r\n\r\nxx\r\n--zz--\r\n"),
    ("multipart/form-data; boundary=zz",
     b"--zz\r\nContent-Disposition: form-data; name=file\r\nX: " + b"y" * 100_000 + b"\r\n\r\nxx\r\n--zz--\r\n"),
    ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data; name=file\r\n\r\nxx"),  # cut off
]


async def test_malformed_multipart_bodies_are_4xx_problems_on_every_body_route(client, world):
    """Every route that reads a body, sent broken multipart forms: a 4xx problem (never a 500),
    nothing changes, the server goes on."""
    routes = [s for s in specs_of(client) if s.body is not None or s.raw_body is not None]
    for spec in routes:
        await settle(client)  # a room an earlier route opened stores its projection when it closes
        for ctype, data in MALFORMED_FORMS:
            for attempt in (1, 2):
                before = snapshot(client)
                resp = await world.call(spec.method, fill(spec.path, world.ids), data=data,
                                        headers={**world.owner.headers, "Content-Type": ctype})
                text = await resp.text()
                assert 400 <= resp.status < 500, f"{spec.method} {spec.path} [{data[:30]!r}]: {resp.status} {text[:300]}"
                await problem(resp, resp.status)
                changed = diff(before, snapshot(client))
                if not changed:
                    break
                # a room an earlier route opened (POST …/yjs loads it before reading the update) may
                # have closed meanwhile and stored its projection: once more, after the quiet
                await settle(client)
            assert changed == {}, spec.path
    assert (await client.get("/healthz")).status == 200
