"""Nothing grows without bound (issue 14, item 8): the change feed keeps
`sync.changes_retention_days` of rows and answers an older cursor 410 (read the tree again) rather
than a page with a silent gap; documents in the trash longer than `documents.trash_retention_days`
are purged (a `delete` in the feed), and trashed folders left empty with them; a trashed folder,
empty or not, can be restored. Time moves through the injectable clock, the sweep is run by hand."""

from __future__ import annotations

import pytest

from mdsync import clock
from mdsync.appkeys import DB
from mdsync.ops import retention
from tests.builders import document, folder, make_workspace, register
from tests.readers import tree

pytestmark = pytest.mark.both_engines

API = "/api/v1"
DAY = 86400


async def advance(client, who, seconds: float) -> None:
    """Let time pass, then sign in again (access tokens last 15 minutes)."""
    clock.advance(seconds)
    resp = await client.post(f"{API}/auth/login", json={"email": who.email, "password": who.password})
    assert resp.status == 200, await resp.text()
    who.access_token = (await resp.json())["access_token"]


async def feed(client, who, **params):
    return await client.get(f"{API}/sync/changes", params=params, headers=who.headers)


async def test_change_feed_rows_past_retention_go_and_an_older_cursor_is_410(make_client):
    client = await make_client(sync__changes_retention_days=2, documents__trash_retention_days=0)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    start = (await (await feed(client, owner, since="now")).json())["cursor"]
    await folder(client, owner, ws, "Old")
    after_old = (await (await feed(client, owner, since=start)).json())["cursor"]
    await advance(client, owner, 3 * DAY)
    new_folder = await folder(client, owner, ws, "New")
    await retention.sweep(client.app)
    # the cursor from before the trimmed rows: 410, telling the client what to do
    resp = await feed(client, owner, since=start)
    assert resp.status == 410
    problem = await resp.json()
    assert problem["type"] == "urn:mdsync:error:gone" and "tree" in problem["detail"]
    sse = await client.get(f"{API}/sync/events", params={"since": start}, headers=owner.headers)
    assert sse.status == 410
    # a cursor at or after the trimmed range still reads on, without a gap
    page = await (await feed(client, owner, since=after_old)).json()
    assert [(c["entity"], c["id"]) for c in page["changes"]] == [("folder", new_folder)]
    # the recipe: a fresh cursor, the tree, then on from that cursor
    assert (await feed(client, owner, since="now")).status == 200
    assert [f["name"] for f in (await tree(client, owner, ws))["folders"]] == ["Old", "New"]
    old_rows = await client.app[DB].value("SELECT count(*) FROM changes WHERE at < ?", (clock.iso_in(-2 * DAY),))
    assert old_rows == 0


async def test_the_trash_is_purged_after_its_retention(make_client):
    client = await make_client(documents__trash_retention_days=30)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    gone_folder = await folder(client, owner, ws, "Gone")
    old = await document(client, owner, ws, "Old", folder_id=gone_folder, markdown="old\n")
    assert (await client.delete(f"{API}/folders/{gone_folder}", headers=owner.headers)).status == 204
    await advance(client, owner, 20 * DAY)
    recent = await document(client, owner, ws, "Recent")
    assert (await client.delete(f"{API}/documents/{recent['id']}", headers=owner.headers)).status == 204
    cursor = (await (await feed(client, owner, since="now")).json())["cursor"]
    await advance(client, owner, 11 * DAY)  # `old` has been in the trash 31 days, `recent` 11
    await retention.sweep(client.app)
    assert (await client.get(f"{API}/documents/{old['id']}", headers=owner.headers)).status == 404
    assert (await client.get(f"{API}/documents/{recent['id']}", headers=owner.headers)).status == 200
    trash = await (await client.get(f"{API}/workspaces/{ws}/trash", headers=owner.headers)).json()
    assert [d["id"] for d in trash["items"]] == [recent["id"]]
    page = await (await feed(client, owner, since=cursor)).json()
    assert [(c["entity"], c["id"], c["op"]) for c in page["changes"]] == [("document", old["id"], "delete")]
    # the folder it was trashed with, now empty, went too
    trashed = await (await client.get(f"{API}/workspaces/{ws}/trash/folders", headers=owner.headers)).json()
    assert trashed["items"] == []
    assert (await client.post(f"{API}/folders/{gone_folder}/restore", headers=owner.headers)).status == 404


async def test_a_trashed_folder_comes_back_empty_or_with_what_was_trashed_with_it(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    empty = await folder(client, owner, ws, "Empty")
    parent = await folder(client, owner, ws, "Parent")
    child = await folder(client, owner, ws, "Child", parent_id=parent)
    inside = await document(client, owner, ws, "Inside", folder_id=child)
    earlier = await document(client, owner, ws, "Trashed before", folder_id=child)
    assert (await client.delete(f"{API}/documents/{earlier['id']}", headers=owner.headers)).status == 204
    clock.advance(5)
    for fid in (empty, parent):
        assert (await client.delete(f"{API}/folders/{fid}", headers=owner.headers)).status == 204
    listed = await (await client.get(f"{API}/workspaces/{ws}/trash/folders", headers=owner.headers)).json()
    assert {f["id"] for f in listed["items"]} == {empty, parent, child}
    assert all(f["deleted_at"] for f in listed["items"])
    # an empty trashed folder can be restored
    resp = await client.post(f"{API}/folders/{empty}/restore", headers=owner.headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["deleted_at"] is None
    assert [f["name"] for f in (await tree(client, owner, ws))["folders"]] == ["Empty"]
    # a subfolder comes back with its trashed parent, and with what that delete trashed
    resp = await client.post(f"{API}/folders/{child}/restore", headers=owner.headers)
    assert resp.status == 200
    t = await tree(client, owner, ws)
    assert {f["id"] for f in t["folders"]} == {empty, parent, child}
    assert [d["id"] for d in t["documents"]] == [inside["id"]]  # not the one trashed on its own before
