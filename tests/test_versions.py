"""Version history over the API: automatic versions at the idle gap with their authors, named
versions, list/read/diff/restore, the change feed, permissions and bad input. Edits arrive as
real Yjs updates over the document socket (tests/yclient.py); the npm clients are in
tests/test_versions_interop.py."""

from __future__ import annotations

import asyncio
import difflib

import pytest

from mdsync.appkeys import DB
from mdsync.collab.rooms import ROOMS
from mdsync.versions.service import VERSIONS, record_import
from tests.builders import document, join, make_settings, make_workspace, register, share
from tests.readers import settings_rows
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

API = "/api/v1"
IDLE = 0.4


@pytest.fixture
async def client(make_client):
    return await make_client(versions__idle_seconds=IDLE, versions__max_interval_seconds=600,
                             collab__room_grace_seconds=0.2)


@pytest.fixture
async def team(client):
    owner = await register(client, name="Olive Owner")
    ws = await make_workspace(client, owner)
    editor = await join(client, owner, ws, "editor", "Eddie Editor")
    viewer = await join(client, owner, ws, "viewer", "Vera Viewer")
    return owner, editor, viewer, ws


async def versions(client, who, doc_id, **params) -> dict:
    resp = await client.get(f"{API}/documents/{doc_id}/versions", params=params, headers=who.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def named(client, who, doc_id, label="Milestone") -> dict:
    resp = await client.post(f"{API}/documents/{doc_id}/versions", json={"label": label}, headers=who.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def version(client, who, vid) -> dict:
    resp = await client.get(f"{API}/versions/{vid}", headers=who.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def live_text(client, doc_id) -> str:
    async with client.server.app[ROOMS].use(doc_id) as room:
        return room.text()


async def type_into(client, who, doc_id, pieces, at_end=True) -> YClient:
    """Connect as `who`, type `pieces` one update each, leave the socket open (caller closes)."""
    y = await YClient.connect(client, doc_id, who.access_token)
    await y.wait_synced()
    for piece in pieces:
        y.insert(len(str(y.text)) if at_end else 0, piece)
        await asyncio.sleep(0.01)
    return y


async def wait_versions(client, who, doc_id, count, timeout=10.0) -> list[dict]:
    items: list[dict] = []

    async def check():
        nonlocal items
        items = (await versions(client, who, doc_id))["items"]
        return len(items) >= count

    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"{len(items)} versions, wanted {count}"
        await asyncio.sleep(0.05)
    return items


async def test_auto_version_after_idle_gap_with_both_authors(client, team):
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="# Plan\n")
    a = await type_into(client, owner, doc["id"], ["\nowner was here"])
    b = await type_into(client, editor, doc["id"], ["\neditor too"])
    items = await wait_versions(client, viewer, doc["id"], 1)
    assert len(items) == 1
    auto = items[0]
    assert auto["kind"] == "auto" and auto["label"] is None
    assert {x["id"] for x in auto["authors"]} == {owner.id, editor.id}
    assert {x["name"] for x in auto["authors"]} == {"Olive Owner", "Eddie Editor"}
    body = await version(client, viewer, auto["id"])
    assert body["markdown"] == await live_text(client, doc["id"]) == "# Plan\n\nowner was here\neditor too"
    assert body["size"] == len(body["markdown"].encode())
    # nothing changes: no more versions however long we wait
    await asyncio.sleep(IDLE * 4)
    assert len((await versions(client, viewer, doc["id"]))["items"]) == 1
    # the editor alone edits again: the next version names only them
    b.insert(0, "> ")
    items = await wait_versions(client, viewer, doc["id"], 2)
    assert [x["id"] for x in items[0]["authors"]] == [editor.id]
    # an edit undone inside one burst changes nothing: no version
    a.insert(0, "tmp")
    await asyncio.sleep(0.05)
    del a.text[0:3]
    await asyncio.sleep(IDLE * 4)
    assert len((await versions(client, viewer, doc["id"]))["items"]) == 2
    await a.close()
    await b.close()


async def test_opening_a_document_without_editing_makes_no_version(client, team):
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="# Seeded from markdown\n")
    y = await YClient.connect(client, doc["id"], editor.access_token)  # loads and seeds the room
    await y.wait_synced()
    assert str(y.text) == "# Seeded from markdown\n"
    await asyncio.sleep(IDLE * 4)
    assert (await versions(client, owner, doc["id"]))["items"] == []
    await y.close()


async def test_continuous_editing_still_gets_versions(make_client):
    client = await make_client(versions__idle_seconds=30, versions__max_interval_seconds=0.5)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, markdown="start\n")
    y = await type_into(client, owner, doc["id"], [])
    loop = asyncio.get_running_loop()
    stop = loop.time() + 1.8
    while loop.time() < stop:  # never idle for even 0.1 s
        y.insert(len(str(y.text)), "k")
        await asyncio.sleep(0.05)
    items = (await versions(client, owner, doc["id"]))["items"]
    assert len(items) >= 2, "continuous editing must produce versions every max_interval"
    assert all(v["kind"] == "auto" and [a["id"] for a in v["authors"]] == [owner.id] for v in items)
    await y.close()


async def test_version_taken_after_room_closed(client, team):
    # the room unloads (grace 0.2 s) before the idle gap: the version still comes, from its last state
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="x")
    y = await type_into(client, editor, doc["id"], ["yz"])
    await y.close()
    items = await wait_versions(client, owner, doc["id"], 1)
    assert (await version(client, owner, items[0]["id"]))["markdown"] == "xyz"
    assert [a["id"] for a in items[0]["authors"]] == [editor.id]


async def test_named_versions_list_and_read(client, team):
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="one\n")
    first = await named(client, editor, doc["id"], "  First draft  ")
    assert first["kind"] == "named" and first["label"] == "First draft" and first["id"]
    assert first["created_by"] == editor.id and first["document_id"] == doc["id"]
    y = await type_into(client, owner, doc["id"], ["two\n"])
    await eventually(lambda: client.server.app[ROOMS].loaded(doc["id"]).text() == "one\ntwo\n")
    second = await named(client, owner, doc["id"], "Second")
    assert [a["id"] for a in second["authors"]] == [owner.id]
    got = await version(client, viewer, second["id"])
    assert got["markdown"] == "one\ntwo\n" and got["label"] == "Second"
    assert (await version(client, viewer, first["id"]))["markdown"] == "one\n"
    # newest first, paged
    page1 = await versions(client, viewer, doc["id"], limit=1)
    assert [v["id"] for v in page1["items"]] == [second["id"]] and page1["next_cursor"]
    page2 = await versions(client, viewer, doc["id"], limit=1, cursor=page1["next_cursor"])
    assert [v["id"] for v in page2["items"]] == [first["id"]] and page2["next_cursor"] is None
    assert set(page2["items"][0]) >= {"id", "created_at", "kind", "label", "authors", "size"}
    await y.close()


async def test_diff_matches_difflib(client, team):
    owner, editor, viewer, ws = team
    text1 = "# Title\n\nalpha\nbeta\ngamma\n" + "".join(f"line {i}\n" for i in range(40))
    doc = await document(client, owner, ws, markdown=text1)
    v1 = await named(client, owner, doc["id"], "v1")
    room_text = text1.replace("beta", "BETA").replace("line 30\n", "") + "tail é😀\n"
    def replace_all(text):  # however the edit is made, the diff is of the markdowns
        del text[0:len(text)]
        text.insert(0, room_text)

    async with client.server.app[ROOMS].use(doc["id"]) as room:
        room.edit(replace_all, owner.id)
    assert await live_text(client, doc["id"]) == room_text
    v2 = await named(client, owner, doc["id"], "v2")
    resp = await client.get(f"{API}/documents/{doc['id']}/diff", params={"from": v1["id"], "to": v2["id"]},
                            headers=viewer.headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    expected = list(difflib.unified_diff(text1.splitlines(keepends=True), room_text.splitlines(keepends=True),
                                         fromfile=f"version/{v1['id']}", tofile=f"version/{v2['id']}"))
    assert body["unified"] == "".join(expected)
    assert body["stats"] == {"added": sum(1 for x in expected[2:] if x.startswith("+")),
                             "removed": sum(1 for x in expected[2:] if x.startswith("-"))}
    assert body["stats"] == {"added": 2, "removed": 2}
    # to=current: the live text
    async with client.server.app[ROOMS].use(doc["id"]) as room:
        room.edit(lambda t: t.insert(0, "NEW\n"), owner.id)
    resp = await client.get(f"{API}/documents/{doc['id']}/diff", params={"from": v2["id"], "to": "current"},
                            headers=viewer.headers)
    body = await resp.json()
    assert body["unified"] == "".join(difflib.unified_diff(
        room_text.splitlines(keepends=True), ("NEW\n" + room_text).splitlines(keepends=True),
        fromfile=f"version/{v2['id']}", tofile="current"))
    assert body["stats"] == {"added": 1, "removed": 0}
    # identical: empty diff
    resp = await client.get(f"{API}/documents/{doc['id']}/diff", params={"from": v1["id"], "to": v1["id"]},
                            headers=viewer.headers)
    assert await resp.json() == {"from": v1["id"], "to": v1["id"], "unified": "", "stats": {"added": 0, "removed": 0}}


async def test_restore_applies_the_difference_and_records_a_restore_version(client, team):
    owner, editor, viewer, ws = team
    original = "# Story\n\nFirst paragraph.\n\nSecond paragraph.\n"
    doc = await document(client, owner, ws, markdown=original)
    v1 = await named(client, owner, doc["id"], "Original")
    watcher = await YClient.connect(client, doc["id"], viewer.access_token)
    await watcher.wait_synced()
    y = await type_into(client, editor, doc["id"], ["\nVandalism!\n"])
    async with client.server.app[ROOMS].use(doc["id"]) as room:
        room.edit(lambda t: t.insert(len("# Story\n\n"), "Rewritten. "), editor.id)
    changed = await live_text(client, doc["id"])
    assert changed != original
    resp = await client.post(f"{API}/versions/{v1['id']}/restore", headers=editor.headers)
    assert resp.status == 200, await resp.text()
    restored_doc = await resp.json()
    assert restored_doc["id"] == doc["id"] and restored_doc["workspace_id"] == ws
    assert await live_text(client, doc["id"]) == original
    # every connected client received it as an ordinary update
    assert await eventually(lambda: str(watcher.text) == original and str(y.text) == original)
    items = (await versions(client, viewer, doc["id"]))["items"]
    assert [v["kind"] for v in items] == ["restore", "named"]
    before = await version(client, viewer, items[0]["id"])
    assert before["markdown"] == changed and before["created_by"] == editor.id
    assert [a["id"] for a in before["authors"]] == [editor.id]
    # the restore is itself an edit by the restorer: the next automatic version names them
    items = await wait_versions(client, viewer, doc["id"], 3)
    assert items[0]["kind"] == "auto" and [a["id"] for a in items[0]["authors"]] == [editor.id]
    assert (await version(client, viewer, items[0]["id"]))["markdown"] == original
    # undo the restore by restoring the restore version
    resp = await client.post(f"{API}/versions/{before['id']}/restore", headers=owner.headers)
    assert resp.status == 200
    assert await live_text(client, doc["id"]) == changed
    await watcher.close()
    await y.close()


async def test_version_events_are_in_the_change_feed(client, team):
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="a")
    resp = await client.get(f"{API}/sync/changes", params={"since": "now"}, headers=viewer.headers)
    cursor = (await resp.json())["cursor"]
    v = await named(client, editor, doc["id"], "Feed")
    resp = await client.get(f"{API}/sync/changes", params={"since": cursor}, headers=viewer.headers)
    feed = await resp.json()
    assert {"entity": "version", "id": v["id"], "op": "upsert"} in [
        {k: c[k] for k in ("entity", "id", "op")} for c in feed["changes"]]


async def test_record_import_for_the_import_feature(client, team):
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="before import")
    made = await record_import(client.server.app, doc["id"], editor.id, "Import of notes.zip")
    assert made["kind"] == "import"
    got = await version(client, viewer, made["id"])
    assert got["markdown"] == "before import" and got["label"] == "Import of notes.zip"


async def test_permissions(client, team):
    owner, editor, viewer, ws = team
    commenter = await join(client, owner, ws, "commenter", "Carl")
    outsider = await register(client)
    doc = await document(client, owner, ws, markdown="secret")
    v = await named(client, owner, doc["id"])
    link = await share(client, owner, doc["id"])
    for who in (viewer, commenter):
        assert (await client.get(f"{API}/versions/{v['id']}", headers=who.headers)).status == 200
        resp = await client.post(f"{API}/documents/{doc['id']}/versions", json={"label": "x"}, headers=who.headers)
        assert resp.status == 403
        assert (await client.post(f"{API}/versions/{v['id']}/restore", headers=who.headers)).status == 403
    # not a member: nothing exists
    assert (await client.get(f"{API}/versions/{v['id']}", headers=outsider.headers)).status == 404
    assert (await client.post(f"{API}/versions/{v['id']}/restore", headers=outsider.headers)).status == 404
    # a share link opens none of these
    link_headers = {**outsider.headers, "X-Mdsync-Share": link["token"]}
    assert (await client.get(f"{API}/versions/{v['id']}", headers=link_headers)).status == 403
    assert (await client.get(f"{API}/documents/{doc['id']}/versions", headers=link_headers)).status == 403
    resp = await client.get(f"{API}/documents/{doc['id']}/diff", params={"from": v["id"], "to": "current"},
                            headers=link_headers)
    assert resp.status == 403


async def test_bad_input(client, team):
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="mine")
    other = await document(client, owner, ws, markdown="other doc")
    v = await named(client, owner, doc["id"])
    v_other = await named(client, owner, other["id"])
    # another workspace's document and version
    stranger = await register(client)
    ws2 = await make_workspace(client, stranger)
    doc2 = await document(client, stranger, ws2, markdown="elsewhere")
    v2 = await named(client, stranger, doc2["id"])

    async def problem(resp, status, field=None):
        assert resp.status == status, await resp.text()
        body = await resp.json()
        assert resp.content_type == "application/problem+json"
        if field:
            assert field in [e["field"] for e in body["errors"]], body
        return body

    url = f"{API}/documents/{doc['id']}/versions"
    await problem(await client.post(url, json={"label": "x" * 10_000}, headers=owner.headers), 422, "label")
    await problem(await client.post(url, json={"label": "   "}, headers=owner.headers), 422, "label")
    await problem(await client.post(url, json={}, headers=owner.headers), 422, "label")
    await problem(await client.post(url, json={"label": 5}, headers=owner.headers), 422, "label")
    await problem(await client.post(url, data=b"{nope", headers={**owner.headers, "Content-Type": "application/json"}),
                  422, "body")
    await problem(await client.get(url, params={"cursor": "garbage!"}, headers=owner.headers), 422, "cursor")
    await problem(await client.get(url, params={"cursor": "WzFd"}, headers=owner.headers), 422, "cursor")  # [1]
    await problem(await client.get(url, params={"limit": "0"}, headers=owner.headers), 422, "limit")
    await problem(await client.get(url, params={"limit": "many"}, headers=owner.headers), 422, "limit")
    # unknown ids
    for bad in ("00000000-0000-0000-0000-000000000000", "nope", "x" * 300):
        await problem(await client.get(f"{API}/versions/{bad}", headers=owner.headers), 404)
        await problem(await client.post(f"{API}/versions/{bad}/restore", headers=owner.headers), 404)
    diff = f"{API}/documents/{doc['id']}/diff"
    await problem(await client.get(diff, params={"from": "nope", "to": "current"}, headers=owner.headers), 404)
    await problem(await client.get(diff, params={"from": v["id"], "to": "nope"}, headers=owner.headers), 404)
    # a version of another document, in this workspace or another, is not one of this document's
    for foreign in (v_other["id"], v2["id"]):
        await problem(await client.get(diff, params={"from": foreign, "to": "current"}, headers=owner.headers), 404)
        await problem(await client.get(diff, params={"from": v["id"], "to": foreign}, headers=owner.headers), 404)
    # ... and another workspace's version is invisible outright
    await problem(await client.get(f"{API}/versions/{v2['id']}", headers=owner.headers), 404)
    await problem(await client.post(f"{API}/versions/{v2['id']}/restore", headers=owner.headers), 404)
    # missing parameters
    await problem(await client.get(diff, params={"to": "current"}, headers=owner.headers), 422, "from")
    await problem(await client.get(diff, params={"from": v["id"]}, headers=owner.headers), 422, "to")
    # nothing changed
    assert len((await versions(client, owner, doc["id"]))["items"]) == 1
    assert await live_text(client, doc["id"]) == "mine"


async def test_pending_burst_is_versioned_at_shutdown(make_client, tmp_path):
    data = tmp_path / "shutdown-data"
    client = await make_client(data_dir=data, versions__idle_seconds=3600)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, markdown="keep ")
    y = await type_into(client, owner, doc["id"], ["me"])
    await eventually(lambda: client.server.app[ROOMS].loaded(doc["id"]).text() == "keep me")
    await y.close()
    db = client.server.app[DB]
    await client.server.app.shutdown()  # SIGTERM path: rooms flush, close hooks run, database open
    rows = await db.all("SELECT kind, markdown, authors FROM versions WHERE document_id = ?", (doc["id"],))
    assert [(r["kind"], r["markdown"]) for r in rows] == [("auto", "keep me")]
    assert owner.id in rows[0]["authors"]
    assert VERSIONS in client.server.app


async def test_restore_with_if_match_keeps_what_others_typed_since(client, team):
    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="Intro.\n\nBody.\n")
    good = await named(client, owner, doc["id"], "Good")
    async with client.server.app[ROOMS].use(doc["id"]) as room:
        room.edit(lambda t: t.insert(0, "Bad "), owner.id)
    resp = await client.get(f"{API}/documents/{doc['id']}/content", headers=editor.headers)
    seen = resp.headers["ETag"]
    assert await resp.text() == "Bad Intro.\n\nBody.\n"
    # after the restorer looked, someone else types into the body
    y = await type_into(client, owner, doc["id"], [" More", " body."])
    await eventually(lambda: client.server.app[ROOMS].loaded(doc["id"]).text().endswith("More body."))
    resp = await client.post(f"{API}/versions/{good['id']}/restore", headers={**editor.headers, "If-Match": seen})
    assert resp.status == 200, await resp.text()
    assert await live_text(client, doc["id"]) == "Intro.\n\nBody.\n More body."
    # without If-Match the live text becomes the version's exactly
    resp = await client.post(f"{API}/versions/{good['id']}/restore", headers=editor.headers)
    assert resp.status == 200
    assert await live_text(client, doc["id"]) == "Intro.\n\nBody.\n"
    assert await eventually(lambda: str(y.text) == "Intro.\n\nBody.\n")
    # an ETag the server never served: 412, nothing restored, no restore version recorded
    before = len((await versions(client, owner, doc["id"]))["items"])
    async with client.server.app[ROOMS].use(doc["id"]) as room:
        room.edit(lambda t: t.insert(0, "Later "), owner.id)
    resp = await client.post(f"{API}/versions/{good['id']}/restore", headers={**editor.headers, "If-Match": '"nope"'})
    assert resp.status == 412
    assert await live_text(client, doc["id"]) == "Later Intro.\n\nBody.\n"
    kinds = [v["kind"] for v in (await versions(client, owner, doc["id"]))["items"]]
    assert kinds.count("restore") == 2 and len(kinds) in (before, before + 1)  # + an automatic one at most
    # ... and the owner's "Later" edit is still credited to them in the next automatic version
    items = await wait_versions(client, viewer, doc["id"], before + 1)
    assert items[0]["kind"] == "auto" and owner.id in [a["id"] for a in items[0]["authors"]]
    await y.close()


async def test_big_diff_matches_difflib_and_leaves_the_server_responsive(client, team):
    owner, editor, viewer, ws = team
    old = "".join(f"line {i} of a long document\n" for i in range(6000))        # ~170 KB: the process pool
    new = old.replace("line 10 ", "LINE 10 ").replace("line 5000 of", "line five thousand of") + "end\n"
    doc = await document(client, owner, ws, markdown=old)
    v1 = await named(client, owner, doc["id"], "old")
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data=new.encode(),
                            headers={**owner.headers, "Content-Type": "text/markdown"})
    assert resp.status == 200
    v2 = await named(client, owner, doc["id"], "new")
    diff = asyncio.ensure_future(client.get(f"{API}/documents/{doc['id']}/diff", params={"from": v1["id"], "to": v2["id"]},
                                            headers=viewer.headers))
    health = await client.get("/healthz")  # answered while the diff is being computed
    assert health.status == 200
    resp = await diff
    body = await resp.json()
    expected = list(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                         fromfile=f"version/{v1['id']}", tofile=f"version/{v2['id']}"))
    assert body["unified"] == "".join(expected)
    assert body["stats"] == {"added": 3, "removed": 2}


async def test_rest_and_http_yjs_writers_are_authors(client, team):
    from pycrdt import Doc, Text

    owner, editor, viewer, ws = team
    doc = await document(client, owner, ws, markdown="start\n")
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data=b"start\nrest line\n",
                            headers={**editor.headers, "Content-Type": "text/markdown"})
    assert resp.status == 200
    # a device without a socket: pull the state, edit locally, push the update
    resp = await client.get(f"{API}/documents/{doc['id']}/yjs", headers=owner.headers)
    local = Doc()
    local.apply_update(await resp.read())
    before = local.get_state()
    local.get("markdown", type=Text).insert(0, "yjs line\n")
    resp = await client.post(f"{API}/documents/{doc['id']}/yjs", data=local.get_update(before),
                             headers={**owner.headers, "Content-Type": "application/octet-stream"})
    assert resp.status == 204, await resp.text()
    items = await wait_versions(client, viewer, doc["id"], 1)
    assert {a["id"] for a in items[0]["authors"]} == {editor.id, owner.id}
    assert (await version(client, viewer, items[0]["id"]))["markdown"] == "yjs line\nstart\nrest line\n"


class _Remote:
    """The few client methods the helpers use, against a real server process."""

    def __init__(self, session, base: str):
        self.session, self.base = session, base

    def post(self, path, **kw):
        return self.session.post(self.base + path, **kw)

    def get(self, path, **kw):
        return self.session.get(self.base + path, **kw)

    def ws_connect(self, path, **kw):
        return self.session.ws_connect(self.base + path, **kw)


async def test_sigterm_versions_the_open_burst(server_process, tmp_path):
    import signal

    import aiohttp

    data = tmp_path / "sigterm-data"
    server = server_process(data_dir=data, env={"MDSYNC_AUTH__REGISTRATION": "open",
                                                "MDSYNC_VERSIONS__IDLE_SECONDS": "3600"})
    async with aiohttp.ClientSession() as session:
        remote = _Remote(session, server.base)
        owner = await register(remote, name="Sig Term")
        ws = await make_workspace(remote, owner)
        doc = await document(remote, owner, ws, markdown="before ")
        y = await YClient.connect(remote, doc["id"], owner.access_token)
        await y.wait_synced()
        y.insert(len(str(y.text)), "after")
        await asyncio.sleep(0.3)  # relayed and logged (well within the 1 s commit bound)
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
        await y.close()
    rows = settings_rows(make_settings(data), "SELECT kind, markdown, authors FROM versions WHERE document_id = ?",
                         (doc["id"],))
    assert [(kind, markdown) for kind, markdown, _ in rows] == [("auto", "before after")]
    assert owner.id in rows[0][2]
