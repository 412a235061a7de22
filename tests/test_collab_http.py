"""Collaboration over HTTP: REST content writes against real npm y-websocket clients (stale-ETag
merge while typing, a current-ETag write arriving as a small edit), Yjs over HTTP
(`GET/POST /documents/{id}/yjs`), presence, bad input, authorization, and the projection stored
by a real `mdsync serve` on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
from pycrdt import Doc, Text

from mdsync.appkeys import DB
from mdsync.collab import protocol as p
from mdsync.collab.rooms import ROOMS
from tests.builders import PASSWORD, bearer, document, join, make_settings, make_workspace, owned_document, register
from tests.nodeclients import needs_node, run_node
from tests.readers import content, settings_rows
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

API = "/api/v1"


@pytest.fixture
async def client(make_client):
    return await make_client(collab__room_grace_seconds=0.2)


def bases(client) -> dict:
    host = f"{client.server.host}:{client.server.port}"
    return {"url": f"ws://{host}/ws/docs", "http": f"http://{host}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- REST content writes with real npm clients -------------------------------------------------
@needs_node
async def test_stale_put_while_an_npm_client_types_keeps_both_edits(client):
    owner, _, doc_id = await owned_document(client, "# Notes 😀\n\nan obsolete line\n\n")
    result = await run_node("put_merge.mjs", "stale", {**bases(client), "doc": doc_id, "token": owner.access_token},
                            timeout=60)
    put = result["put"]
    assert put["status"] == 200, put
    final = result["get"]
    assert final == result["a"] == result["fresh"]
    # the REST edit: a new first line, a word removed from the base it read
    assert final.startswith("REST-EDIT\n# Notes 😀\n\nan line\n\n")
    assert "obsolete" not in final
    # the live typist's edits: every token, in order, none lost and none doubled, including those
    # typed between the GET and the PUT (which the PUT's body did not contain)
    assert final == "REST-EDIT\n# Notes 😀\n\nan line\n\n" + "".join(result["typed"])
    assert any(token not in result["base"] for token in result["typed"][:len(result["typed"]) // 2])
    room = client.server.app[ROOMS].loaded(doc_id)
    assert room is None or room.text() == final


@needs_node
@pytest.mark.parametrize("line", ["the quick fox\n", "the quick 😀 fox — ünïcödé 中文\n"])
async def test_put_with_current_etag_reaches_an_npm_client_as_a_small_edit(client, line):
    # (UTF-16 in JS, UTF-8 offsets in pycrdt, code points in Python: the edit lands where meant)
    markdown = "# Title 😀\n\n" + "A paragraph of text that stays as it is.\n" * 100 + line
    owner, _, doc_id = await owned_document(client, markdown)
    result = await run_node("put_merge.mjs", "diff", {**bases(client), "doc": doc_id, "token": owner.access_token,
                                                      "from": "quick ", "to": "quick brown "})
    assert result["put"]["status"] == 200
    assert result["a"] == markdown.replace("quick ", "quick brown ")
    # one Y.Text event: retain up to the word, insert it; nothing of the document deleted
    assert len(result["deltas"]) == 1
    delta = result["deltas"][0]
    assert [op for op in delta if "retain" not in op] == [{"insert": "brown "}]
    assert not any("delete" in op for op in delta)
    assert len(result["updates"]) == 1 and result["updates"][0] < 100 < len(markdown)


# -- Yjs over HTTP -----------------------------------------------------------------------------
async def test_post_yjs_reaches_a_connected_client_and_get_yjs_returns_what_is_missing(client):
    owner, _, doc_id = await owned_document(client, "# Shared\n" + "base text\n" * 200)
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    # a device without a socket: whole state first
    resp = await client.get(f"{API}/documents/{doc_id}/yjs", headers=owner.headers)
    assert resp.status == 200 and resp.content_type == "application/octet-stream"
    whole = await resp.read()
    device = Doc()
    device.apply_update(whole)
    text = device.get("markdown", type=Text)
    assert str(text) == str(live.text)
    # the live client types; the device asks for what it lacks by state vector
    live.insert(0, "LIVE ")
    room = client.server.app[ROOMS].loaded(doc_id)
    assert await eventually(lambda: room.text().startswith("LIVE "))
    resp = await client.get(f"{API}/documents/{doc_id}/yjs", params={"sv": b64(device.get_state())},
                            headers=owner.headers)
    missing = await resp.read()
    assert resp.status == 200 and missing == room.doc.get_update(device.get_state())
    assert len(missing) < len(whole) // 10
    device.apply_update(missing)
    assert str(text) == room.text()
    # the device edits offline and posts its update: the live client has it at once
    before = device.get_state()
    text.insert(len(str(text).encode()), "from the device\n")
    update = device.get_update(before)
    received = live.received_updates
    resp = await client.post(f"{API}/documents/{doc_id}/yjs", data=update,
                             headers={**owner.headers, "Content-Type": "application/octet-stream"})
    assert resp.status == 204
    assert await eventually(lambda: live.received_updates > received, timeout=2)
    assert str(live.text).endswith("from the device\n")
    # persisted (the log holds it) and read back over REST
    assert (await content(client, owner, doc_id))[0] == str(live.text)
    rows = await client.server.app[DB].value("SELECT count(*) FROM doc_updates WHERE document_id = ? AND data = ?",
                                             (doc_id, update))
    assert rows == 1
    await live.close()


async def test_yjs_bad_input_is_a_clear_4xx_and_changes_nothing(make_client):
    client = await make_client(limits__max_document_bytes=4096)
    owner, _, doc_id = await owned_document(client, "steady\n")
    db = client.server.app[DB]
    count = "SELECT count(*) FROM doc_updates WHERE document_id = ?"
    await client.get(f"{API}/documents/{doc_id}/yjs", headers=owner.headers)  # loads (and seeds) it
    rows_before = await db.value(count, (doc_id,))
    url = f"{API}/documents/{doc_id}/yjs"
    for garbage in (b"\xff\xff\xff\xff\xff", b"not a yjs update at all", b""):
        resp = await client.post(url, data=garbage, headers=owner.headers)
        assert resp.status == 422, garbage
        problem = await resp.json()
        assert problem["type"] == "urn:mdsync:error:validation" and problem["errors"][0]["field"] == "body"
    resp = await client.post(url, data=b"\x00" * 5000, headers=owner.headers)
    assert resp.status == 413
    for sv in ("!!!not-base64!!!", b64(b"\xff\xff\xff")):
        resp = await client.get(url, params={"sv": sv}, headers=owner.headers)
        assert resp.status == 422, sv
        assert (await resp.json())["errors"][0]["field"] == "sv"
    assert await db.value(count, (doc_id,)) == rows_before
    assert (await content(client, owner, doc_id))[0] == "steady\n"


async def test_yjs_and_presence_permissions(client):
    owner, ws, doc_id = await owned_document(client, "x\n")
    viewer = await join(client, owner, ws, "viewer", "Vera")
    outsider = await register(client)
    other_ws = await make_workspace(client, outsider)
    other_doc = (await document(client, outsider, other_ws, "Theirs"))["id"]
    url = f"{API}/documents/{doc_id}/yjs"
    update = Doc()
    update.get("markdown", type=Text).insert(0, "viewer write ")
    assert (await client.get(url, headers=viewer.headers)).status == 200
    assert (await client.get(f"{API}/documents/{doc_id}/presence", headers=viewer.headers)).status == 200
    resp = await client.post(url, data=update.get_update(), headers=viewer.headers)
    assert resp.status == 403
    for method, path in (("GET", url), ("POST", url), ("GET", f"{API}/documents/{doc_id}/presence"),
                         ("GET", f"{API}/documents/{doc_id}/content")):
        resp = await client.request(method, path, data=update.get_update() if method == "POST" else None,
                                    headers=outsider.headers)
        assert resp.status == 404, (method, path)
    # the owner of one workspace cannot reach another's document either
    resp = await client.post(f"{API}/documents/{other_doc}/yjs", data=update.get_update(), headers=owner.headers)
    assert resp.status == 404
    assert (await content(client, owner, doc_id))[0] == "x\n"


async def test_presence_lists_connected_users_from_their_tokens(client):
    owner, ws, doc_id = await owned_document(client, "")
    viewer = await join(client, owner, ws, "viewer", "Vera")
    a1 = await YClient.connect(client, doc_id, owner.access_token)
    a2 = await YClient.connect(client, doc_id, owner.access_token)
    v = await YClient.connect(client, doc_id, viewer.access_token)
    for c in (a1, a2, v):
        await c.wait_synced()
    # an awareness claim to be someone else changes nothing
    await v.set_awareness(json.dumps({"user": {"name": "Owner", "id": owner.id}}))
    resp = await client.get(f"{API}/documents/{doc_id}/presence", headers=owner.headers)
    assert resp.status == 200
    items = sorted((await resp.json())["items"], key=lambda i: i["name"])
    assert items == [
        {"user_id": owner.id, "name": "Owner", "connections": 2, "read_only": False},
        {"user_id": viewer.id, "name": "Vera", "connections": 1, "read_only": True},
    ]
    for c in (a1, a2, v):
        await c.close()
    rooms = client.server.app[ROOMS]
    assert await eventually(lambda: not rooms.presence(doc_id))
    resp = await client.get(f"{API}/documents/{doc_id}/presence", headers=owner.headers)
    assert (await resp.json())["items"] == []


# -- a real server: SIGTERM stores the projection -------------------------------------------------
async def test_sigterm_stores_the_projection(server_process, tmp_path):
    server = server_process(env={
        "MDSYNC_AUTH__REGISTRATION": "open",
        # neither the debounce nor the room's grace period can store it before the SIGTERM does
        "MDSYNC_COLLAB__PROJECTION_DEBOUNCE": "60", "MDSYNC_COLLAB__PROJECTION_MAX_DELAY": "2.0",
        "MDSYNC_COLLAB__ROOM_GRACE_SECONDS": "60"})
    async with aiohttp.ClientSession(server.base) as http:
        resp = await http.post(f"{API}/auth/register",
                               json={"email": "sig@example.com", "password": PASSWORD, "name": "Sig"})
        token = (await resp.json())["access_token"]
        resp = await http.post(f"{API}/workspaces", json={"name": "W"}, headers=bearer(token))
        ws = (await resp.json())["id"]
        resp = await http.post(f"{API}/workspaces/{ws}/documents", json={"title": "D", "markdown": "start\n"},
                               headers=bearer(token))
        doc_id = (await resp.json())["id"]
        sock = await http.ws_connect(f"/ws/docs/{doc_id}?token={token}", max_msg_size=64 << 20)
        live = YClient(sock)
        await sock.send_bytes(p.sync_step1(live.doc.get_state()))
        await live.wait_synced()
        live.insert(len("start\n"), "typed just before SIGTERM\n")
        for _ in range(100):  # bounded: the server has the edit (its room answers it live)
            resp = await http.get(f"{API}/documents/{doc_id}/content", headers=bearer(token))
            if "typed just before" in await resp.text():
                break
            await asyncio.sleep(0.02)
        code = await asyncio.to_thread(server.terminate)
        assert code == 0, server.rest_of_output()
        await live.close()
    [row] = settings_rows(make_settings(server.data_dir), "SELECT markdown, size FROM documents WHERE id = ?", (doc_id,))
    assert tuple(row) == ("start\ntyped just before SIGTERM\n", len("start\ntyped just before SIGTERM\n"))
