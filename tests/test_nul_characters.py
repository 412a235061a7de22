"""NUL characters (U+0000), one rule on both engines (docs/api.md "Conventions"): PostgreSQL text
cannot hold a NUL, SQLite's can, and no answer may depend on which one runs.

- A NUL in a path or query parameter names nothing: the answer an unknown id or malformed
  parameter gets (404, or 422 where the shape is checked), never a 500.
- A NUL in a JSON body's string, a markdown body or an imported markdown file is 422 `validation`
  naming the field, and nothing is stored (a password excepted: only its hash is kept).
- A NUL a Yjs client types is stored as U+FFFD in the markdown (projection, search, versions).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from mdsync.appkeys import DB
from tests.builders import document, import_zip, join, make_zip, owned_workspace
from tests.hpclient import HPClient
from tests.readers import content
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

API = "/api/v1"
NUL_MESSAGE = "must not contain NUL characters"


async def answer(resp) -> tuple[int, str | None]:
    """(status, problem type) of an answer."""
    text = await resp.text()
    assert resp.status != 500, text
    if resp.content_type == "application/problem+json":
        return resp.status, json.loads(text)["type"]
    return resp.status, None


async def problem(resp, status: int) -> dict:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/problem+json", text
    return json.loads(text)


@pytest.fixture
async def world(client):
    owner, ws = await owned_workspace(client)
    member = await join(client, owner, ws, "editor")
    doc = await document(client, owner, ws, "Notes", markdown="# Notes\n\nplain text\n")
    return owner, member, ws, doc["id"]


PATHS = [  # (method, path with {id} where the NUL goes, JSON body)
    ("GET", "/documents/{id}", None),
    ("PATCH", "/documents/{id}", {"title": "x"}),
    ("DELETE", "/documents/{id}", None),
    ("GET", "/documents/{id}/content", None),
    ("GET", "/documents/{id}/versions", None),
    ("GET", "/workspaces/{id}", None),
    ("GET", "/workspaces/{id}/tree", None),
    ("GET", "/workspaces/{id}/documents", None),
    ("PATCH", "/folders/{id}", {"name": "x"}),
    ("GET", "/versions/{id}", None),
    ("GET", "/comments/{id}", None),
    ("GET", "/attachments/{id}/meta", None),
    ("GET", "/share/{id}", None),
    ("GET", "/documents/{doc}/grants/{id}", None),
    ("PUT", "/documents/{doc}/grants/{id}", {"role": "viewer"}),
    ("DELETE", "/documents/{doc}/grants/{id}", None),
    ("DELETE", "/workspaces/{ws}/members/{id}", None),
    ("DELETE", "/documents/{doc}/share-links/{id}", None),
]


@pytest.mark.parametrize("method, path, body", PATHS, ids=[f"{m} {p}" for m, p, _ in PATHS])
async def test_a_nul_in_a_path_id_is_an_unknown_id(client, world, method, path, body):
    owner, _, ws, doc = world
    url = API + path.replace("{doc}", doc).replace("{ws}", ws)
    unknown = await answer(await client.request(method, url.replace("{id}", "no-such-id"), json=body,
                                                headers=owner.headers))
    assert unknown[0] in (404, 422)
    for spelled in ("a%00b", "%00", "no-such-id%00"):
        resp = await client.request(method, url.replace("{id}", spelled), json=body, headers=owner.headers)
        assert await answer(resp) == unknown, spelled
    # nothing changed
    assert (await content(client, owner, doc))[0] == "# Notes\n\nplain text\n"


async def test_a_nul_in_a_socket_documents_id_is_an_unknown_document(client, world):
    owner, *_ = world
    for document_id in ("no-such-id", "a%00b"):
        peer = await YClient.connect(client, document_id, owner.access_token)
        assert await peer.wait_closed() == 4404
        await peer.close()


async def test_a_nul_in_a_hocuspocus_document_name_is_not_found(client, world):
    """The Hocuspocus socket names documents in its messages: a name holding a NUL is refused
    `not-found` like any unknown one, and the socket's other documents go on."""
    owner, _, _, doc = world
    peer = await HPClient.connect(client)
    try:
        for name, answer_ in (("no-such-id", (1, "not-found")), ("a\x00b", (1, "not-found")),
                              (doc, (2, "read-write"))):
            await peer.open(name, owner.access_token)
            await peer.until(lambda name=name: peer.auth(name), f"the Auth answer for {name!r}")
            assert peer.auth(name) == answer_
        assert peer.close_code is None
    finally:
        await peer.close()


QUERIES = [  # (path, parameter)
    ("/workspaces/{ws}/documents", "folder_id"),
    ("/workspaces/{ws}/documents", "kind"),
    ("/workspaces/{ws}/documents", "cursor"),
    ("/workspaces/{ws}/documents", "limit"),
    ("/workspaces/{ws}/trash", "cursor"),
    ("/documents/{doc}/versions", "cursor"),
    ("/documents/{doc}/comments", "cursor"),
    ("/search", "workspace_id"),
    ("/documents/{doc}/content", "share"),
    ("/changes", "cursor"),
]


@pytest.mark.parametrize("path, name", QUERIES, ids=[f"{p}?{n}" for p, n in QUERIES])
async def test_a_nul_in_a_query_parameter_is_an_unknown_or_malformed_one(client, world, path, name):
    owner, _, ws, doc = world
    url = API + path.replace("{doc}", doc).replace("{ws}", ws)
    extra = "&q=plain" if path == "/search" else ""
    unknown = await answer(await client.get(f"{url}?{name}=no-such-id{extra}", headers=owner.headers))
    for spelled in ("a%00b", "%00"):
        resp = await client.get(f"{url}?{name}={spelled}{extra}", headers=owner.headers)
        assert await answer(resp) == unknown, spelled


async def test_a_search_for_a_nul_finds_nothing_and_fails_nothing(client, world):
    owner, *_ = world
    for q in ("%00", "plain%00", "pla%00in"):
        resp = await client.get(f"{API}/search?q={q}", headers=owner.headers)
        assert resp.status in (200, 422), await resp.text()


BODIES = [  # (method, path, body, field)
    ("POST", "/workspaces", {"name": "a\x00b"}, "name"),
    ("POST", "/workspaces/{ws}/documents", {"title": "a\x00b"}, "title"),
    ("POST", "/workspaces/{ws}/documents", {"title": "t", "markdown": "# a\x00b\n"}, "markdown"),
    ("POST", "/workspaces/{ws}/documents", {"title": "t", "folder_id": "a\x00b"}, "folder_id"),
    ("POST", "/workspaces/{ws}/folders", {"name": "a\x00b"}, "name"),
    ("PATCH", "/documents/{doc}", {"folder_id": "\x00"}, "folder_id"),
    ("POST", "/documents/{doc}/comments", {"body": "nul \x00 inside"}, "body"),
    ("POST", "/documents/{doc}/comments", {"body": "b", "anchor": {"quote": "plain\x00"}}, "anchor.quote"),
    ("POST", "/documents/{doc}/versions", {"label": "v\x00"}, "label"),
    ("POST", "/workspaces/{ws}/invitations", {"role": "viewer", "email": "a\x00@example.com"}, "email"),
    ("POST", "/me/tokens", {"name": "t", "scopes": ["read\x00"]}, "scopes.0"),
]


@pytest.mark.parametrize("method, path, body, field", BODIES, ids=[f"{m} {p} {f}" for m, p, _, f in BODIES])
async def test_a_nul_in_a_json_string_is_422_naming_the_field(client, world, method, path, body, field):
    owner, _, ws, doc = world
    before = await client.get(f"{API}/workspaces/{ws}/tree", headers=owner.headers)
    resp = await client.request(method, API + path.replace("{doc}", doc).replace("{ws}", ws), json=body,
                                headers=owner.headers)
    found = await problem(resp, 422)
    assert found["type"] == "urn:mdsync:error:validation"
    assert found["errors"] == [{"field": field, "message": NUL_MESSAGE}]
    after = await client.get(f"{API}/workspaces/{ws}/tree", headers=owner.headers)
    assert await after.json() == await before.json()  # nothing stored


async def test_a_nul_in_a_json_key_is_422(client, world):
    owner, *_ = world
    resp = await client.post(f"{API}/workspaces", json={"name": "ok", "x\x00": 1}, headers=owner.headers)
    assert (await problem(resp, 422))["errors"] == [{"field": "body", "message": NUL_MESSAGE}]


async def test_a_password_may_hold_a_nul(client):
    """A password is opaque (only its hash is stored): any text the user can type twice."""
    pair = {"email": "nul@example.com", "password": "nul\x00inside!"}
    assert (await client.post(f"{API}/auth/register", json={**pair, "name": "N"})).status == 201
    assert (await client.post(f"{API}/auth/login", json=pair)).status == 200


@pytest.mark.parametrize("markdown", ["a\x00b", "\x00", "# Title\n\n" + "x" * 1000 + "\x00\n"])
async def test_a_nul_in_a_markdown_body_is_422_and_nothing_is_stored(client, world, markdown):
    owner, member, _, doc = world
    before, etag = await content(client, owner, doc)
    for headers in ({}, {"If-Match": etag}):
        resp = await client.put(f"{API}/documents/{doc}/content", data=markdown.encode(),
                                headers={**member.headers, "Content-Type": "text/markdown", **headers})
        found = await problem(resp, 422)
        assert found["errors"] == [{"field": "body", "message": NUL_MESSAGE}]
    assert await content(client, owner, doc) == (before, etag)


@pytest.mark.parametrize("multipart", [False, True])
async def test_a_nul_in_an_imported_markdown_file_is_422_and_nothing_is_imported(client, world, multipart):
    owner, _, ws, _ = world
    before = await (await client.get(f"{API}/workspaces/{ws}/tree", headers=owner.headers)).json()
    data = make_zip({"fine.md": "# Fine\n", "notes/typed.md": "a\x00b\n"})
    found = await import_zip(client, owner, ws, data, multipart=multipart, expect=422)
    assert found["errors"] == [{"field": "file", "message": f"notes/typed.md {NUL_MESSAGE}"}]
    assert await (await client.get(f"{API}/workspaces/{ws}/tree", headers=owner.headers)).json() == before


async def test_a_nul_typed_in_yjs_is_stored_as_u_fffd(make_client):
    """A Yjs client types a NUL: the Yjs state keeps it, the markdown stored from it (projection,
    change feed, search, versions) holds U+FFFD instead, the same on both engines."""
    client = await make_client(collab__projection_debounce=0.1, collab__projection_max_delay=0.5)
    owner, ws = await owned_workspace(client)
    doc = (await document(client, owner, ws, "Typed", markdown="start\n"))["id"]
    peer = await YClient.connect(client, doc, owner.access_token)
    await peer.wait_synced()
    peer.insert(0, "zebra\x00quagga ")
    expected = "zebra\ufffdquagga start\n"
    db = client.app[DB]

    async def stored() -> str | None:
        return await db.value("SELECT markdown FROM documents WHERE id = ?", (doc,))

    async with asyncio.timeout(10):
        while await stored() != expected:
            await asyncio.sleep(0.02)
    assert str(peer.text) == "zebra\x00quagga start\n"  # the Yjs text keeps what was typed

    resp = await client.get(f"{API}/documents/{doc}", headers=owner.headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["size"] == len(expected.encode())

    resp = await client.get(f"{API}/search?q=quagga", headers=owner.headers)
    assert resp.status == 200, await resp.text()
    assert [hit["document_id"] for hit in (await resp.json())["items"]] == [doc]

    resp = await client.post(f"{API}/documents/{doc}/versions", json={"label": "typed"}, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    version = await resp.json()
    resp = await client.get(f"{API}/versions/{version['id']}", headers=owner.headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["markdown"] == expected
    assert (await content(client, owner, doc))[0] == expected
    await peer.close()
