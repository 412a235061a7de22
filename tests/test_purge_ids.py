"""Purged content never reaches anyone else (issue 14 item 12): a document S read (its room
loaded), purged with `DELETE ?permanent=true`, and within the room's grace period another
workspace imports a zip whose front matter says `id: "<S>"` — the importer got S's purged text,
persisted, and lost their own. Now a purge evicts the loaded room at once, and an import never
gives a new document the id of a purged one (nor of a live one anywhere)."""

from __future__ import annotations

import pytest

from mdsync.appkeys import DB
from mdsync.collab.rooms import ROOMS
from mdsync.workspaces.service import WORKSPACES
from tests.builders import API, import_zip, make_workspace, make_zip, register
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines


async def documents_of(client, who, ws) -> list[dict]:
    resp = await client.get(f"{API}/workspaces/{ws}/documents", headers=who.headers)
    assert resp.status == 200
    return (await resp.json())["items"]


async def new_document(client, who, ws, markdown: str) -> str:
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": "S", "markdown": markdown},
                             headers=who.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


def zip_claiming(document_id: str, body: str) -> bytes:
    return make_zip({"mine.md": f'---\nid: "{document_id}"\ntitle: "Mine"\n---\n{body}'})


async def test_a_purged_documents_id_and_text_never_reach_another_workspace(make_client):
    client = await make_client(collab__room_grace_seconds=600)  # the room would stay loaded a long time
    alice, mallory = await register(client), await register(client)
    ws_a, ws_m = await make_workspace(client, alice), await make_workspace(client, mallory)
    secret = await new_document(client, alice, ws_a, "the secret text of S\n")
    watcher = await YClient.connect(client, secret, alice.access_token)
    await watcher.wait_synced()
    resp = await client.get(f"{API}/documents/{secret}/content", headers=alice.headers)
    assert await resp.text() == "the secret text of S\n"
    assert client.server.app[ROOMS].loaded(secret) is not None

    resp = await client.delete(f"{API}/documents/{secret}?permanent=true", headers=alice.headers)
    assert resp.status == 204, await resp.text()
    # the room is gone at once (not after its grace period), its socket closed
    assert client.server.app[ROOMS].loaded(secret) is None
    assert await watcher.wait_closed() == 4403

    await import_zip(client, mallory, ws_m, zip_claiming(secret, "my own words\n"))
    [mine] = await documents_of(client, mallory, ws_m)
    assert mine["id"] != secret
    resp = await client.get(f"{API}/documents/{mine['id']}/content", headers=mallory.headers)
    assert await resp.text() == "my own words\n"
    assert (await client.get(f"{API}/documents/{secret}/content", headers=mallory.headers)).status == 404
    # and later too, in any workspace, the purged id stays retired (alice's own import included)
    await import_zip(client, alice, ws_a, zip_claiming(secret, "again\n"))
    [again] = await documents_of(client, alice, ws_a)
    assert again["id"] != secret


async def test_an_import_takes_no_id_a_document_has_anywhere(client):
    alice, mallory = await register(client), await register(client)
    ws_a, ws_m = await make_workspace(client, alice), await make_workspace(client, mallory)
    live = await new_document(client, alice, ws_a, "alice's\n")
    await import_zip(client, mallory, ws_m, zip_claiming(live, "mallory's\n"))
    [mine] = await documents_of(client, mallory, ws_m)
    assert mine["id"] != live
    resp = await client.get(f"{API}/documents/{live}/content", headers=alice.headers)
    assert await resp.text() == "alice's\n"


async def test_a_room_held_while_its_document_is_purged_writes_nothing(client):
    alice = await register(client)
    ws = await make_workspace(client, alice)
    doc = await new_document(client, alice, ws, "x\n")
    rooms = client.server.app[ROOMS]
    async with rooms.use(doc) as room:
        resp = await client.delete(f"{API}/documents/{doc}?permanent=true", headers=alice.headers)
        assert resp.status == 204
        assert rooms.loaded(doc) is None and room.evicted
        room.edit(lambda text: text.insert(0, "late "))  # a holder's edit after the purge
        await room.drain()
    db = client.server.app[DB]
    assert await db.value("SELECT count(*) FROM doc_updates WHERE document_id = ?", (doc,)) == 0
    assert await db.value("SELECT count(*) FROM doc_snapshots WHERE document_id = ?", (doc,)) == 0
    assert rooms.stats.flush_errors == 0


async def test_a_workspace_purge_evicts_its_loaded_rooms(make_client):
    client = await make_client(workspaces__purge_grace_seconds=0, collab__room_grace_seconds=600)
    alice = await register(client)
    ws = await make_workspace(client, alice)
    doc = await new_document(client, alice, ws, "x\n")
    rooms = client.server.app[ROOMS]
    async with rooms.use(doc):
        pass
    assert rooms.loaded(doc) is not None
    resp = await client.delete(f"{API}/workspaces/{ws}", headers=alice.headers)
    assert resp.status in (200, 204), await resp.text()
    assert await client.server.app[WORKSPACES].purge_expired() == 1
    assert await eventually(lambda: rooms.loaded(doc) is None)
