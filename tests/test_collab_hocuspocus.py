"""`GET /ws/hocuspocus`: the Hocuspocus provider protocol, many documents per socket.

The interop tests drive the real npm `@hocuspocus/provider` 4 from Node
(tests/interop/hocuspocus_scenario.mjs, bounded in time); the others use `HPClient`
(tests/hpclient.py), a small Hocuspocus client over aiohttp, for what a provider cannot do
on purpose (garbage, tickets, frames inspected one by one).

This file is also the authorization table of the route (tests/test_authz_matrix.py NOT_A_ROW):
per document, a good token → Authenticated read-write (editor and up) or readonly (viewer,
commenter, read-scoped PAT); no / bad token → PermissionDenied `unauthenticated`; an id of
another workspace or no document → `not-found`; access lost while attached → `forbidden`.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from pycrdt import Doc, Text

from mdsync.collab import hocuspocus as hp
from mdsync.collab import protocol as p
from mdsync.collab.rooms import ROOMS
from tests.builders import make_document, make_settings, register
from tests.hpclient import HPClient
from tests.nodeclients import needs_node, run_node
from tests.readers import doc_text_in_db, settings_rows

pytestmark = pytest.mark.both_engines

SCRIPT = "hocuspocus_scenario.mjs"


def urls(client) -> dict:
    base = f"ws://{client.server.host}:{client.server.port}"
    return {"url": f"{base}/ws/hocuspocus", "yurl": f"{base}/ws/docs"}


# -- the real provider ------------------------------------------------------------------------
@needs_node
async def test_providers_on_shared_sockets_converge_with_each_other_and_y_websocket(client):
    app = client.server.app
    alice, bob, yuri = await register(client), await register(client), await register(client)
    ws_id, d1 = await make_document(app, alice.id, markdown="# Shared\n",
                                    members={bob.id: "editor", yuri.id: "editor"})
    _, d2 = await make_document(app, alice.id, markdown="second\n", workspace_id=ws_id)
    result = await run_node(SCRIPT, "converge", {
        **urls(client), "docs": [d1, d2], "tokenA": alice.access_token, "tokenB": bob.access_token,
        "tokenY": yuri.access_token, "edits": 400, "seed": 11}, timeout=90)
    assert result["seeded"] == "# Shared\n"
    d1_text = result["d1"]["a"]
    assert d1_text == result["d1"]["b"] == result["d1"]["y"] == result["d1"]["s"] == result["late"]
    assert result["d2"]["a"] == result["d2"]["b"]
    for tag in ("a9.", "b9.", "y9.", "s9."):
        assert tag in d1_text
    assert "A9." in result["d2"]["a"] and "B9." in result["d2"]["a"]
    assert result["scopes"] == ["read-write"] * 5
    assert result["unsynced"] == [0] * 5               # every change acknowledged by SyncStatus
    assert result["awarenessA"] == ["A", "B", "Y"]      # presence crosses both protocols
    assert result["sockets"] == 2  # two clients, one socket each (A's: 2 documents, 3 providers)
    rooms = app[ROOMS]
    for doc_id, text in ((d1, d1_text), (d2, result["d2"]["a"])):
        room = rooms.loaded(doc_id)
        assert room.text() == text
        await room.drain()
        assert await doc_text_in_db(app, doc_id) == text


@needs_node
async def test_one_socket_refusals_are_per_document(client):
    app = client.server.app
    me, stranger, owner = await register(client), await register(client), await register(client)
    _, mine = await make_document(app, me.id, markdown="mine\n")
    _, foreign = await make_document(app, stranger.id, markdown="secret of another workspace\n")
    _, viewed = await make_document(app, owner.id, markdown="read only\n", members={me.id: "viewer"})
    result = await run_node(SCRIPT, "mixed", {
        **urls(client), "token": me.access_token, "mine": mine, "foreign": foreign, "viewerDoc": viewed,
        "missing": str(uuid.uuid4())})
    assert result["denied"] == {"mine": None, "viewer": None, "foreign": "not-found", "missing": "not-found"}
    assert result["scopes"] == {"mine": "read-write", "viewer": "readonly", "foreign": None, "missing": None}
    assert result["texts"]["foreign"] == ""  # nothing of the other workspace reached the socket
    assert result["texts"]["mine"].startswith("MINE-EDIT ")
    assert result["unsynced"]["mine"] == 0
    assert result["unsynced"]["viewer"] > 0, json.dumps(result["trace"])  # SyncStatus(false): the edit was not applied
    assert result["fresh"] == {"mine": "MINE-EDIT mine\n", "viewer": "read only\n"}
    rooms = app[ROOMS]
    assert rooms.loaded(viewed).text() == "read only\n"
    await rooms.loaded(mine).drain()
    assert await doc_text_in_db(app, mine) == "MINE-EDIT mine\n"
    assert await doc_text_in_db(app, viewed) == "read only\n"
    assert rooms.stats.readonly_dropped >= 1


@needs_node
async def test_bad_tokens_are_refused_unauthenticated(client):
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="private\n")
    forged = alice.access_token[:-4] + ("AAAA" if not alice.access_token.endswith("AAAA") else "BBBB")
    result = await run_node(SCRIPT, "denied", {**urls(client), "doc": doc_id, "tokens": ["", "garbage", forged]})
    assert [r["denied"] for r in result["results"]] == ["unauthenticated"] * 3
    assert all(r["text"] == "" and r["scope"] is None for r in result["results"])


async def test_garbage_closes_only_that_socket(client):
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="hello\n")
    good, bad = await HPClient.connect(client), await HPClient.connect(client)
    for c in (good, bad):
        await c.open(doc_id, alice.access_token)
        await c.until(lambda c=c: str(c.text(doc_id)) == "hello\n", "sync")
    garbage = app[ROOMS].stats.garbage_frames
    await bad.ws.send_bytes(b"\x05\xff\xff")  # a routing key longer than the frame
    await bad.until(lambda: bad._reader.done(), "close")
    assert bad.close_code == 1002
    assert app[ROOMS].stats.garbage_frames == garbage + 1
    # the other socket on the same document goes on
    acks = good.statuses(doc_id).count(1)
    await good.edit(doc_id, 0, "still ")
    await good.until(lambda: good.statuses(doc_id).count(1) == acks + 1, "ack")
    assert app[ROOMS].loaded(doc_id).text() == "still hello\n"
    # an unknown message type of an attached document is garbage too
    await good.send(doc_id, bytes((42,)))
    await good.until(lambda: good._reader.done(), "close")
    assert good.close_code == 1002
    # a text frame
    third = await HPClient.connect(client)
    await third.ws.send_str("hello")
    await third.until(lambda: third._reader.done(), "close")
    assert third.close_code == 1003


async def test_tickets_and_personal_tokens_and_scopes(client):
    app = client.server.app
    alice, viewer = await register(client), await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="x\n", members={viewer.id: "viewer"})
    resp = await client.post(f"/api/v1/documents/{doc_id}/ws-ticket", headers=alice.headers)
    ticket = (await resp.json())["ticket"]
    resp = await client.post("/api/v1/me/tokens", json={"name": "ro", "scopes": ["read"]}, headers=alice.headers)
    read_pat = (await resp.json())["token"]
    resp = await client.post("/api/v1/me/tokens", json={"name": "rw"}, headers=alice.headers)
    write_pat = (await resp.json())["token"]
    c = await HPClient.connect(client)
    # one socket, one document under several routing keys (the provider's sessionAwareness)
    keys = {f"{doc_id}\0{name}": token for name, token in
            (("ticket", ticket), ("read", read_pat), ("write", write_pat), ("viewer", viewer.access_token))}
    for key, token in keys.items():
        await c.open(key, token)
    for key in keys:
        await c.until(lambda key=key: c.auth(key) is not None and str(c.text(key)) == "x\n", key)
    scopes = {key.split("\0")[1]: c.auth(key) for key in keys}
    assert scopes == {"ticket": (hp.AUTH_OK, "read-write"), "read": (hp.AUTH_OK, "readonly"),
                      "write": (hp.AUTH_OK, "read-write"), "viewer": (hp.AUTH_OK, "readonly")}
    # a ticket is spent by its first use
    again = f"{doc_id}\0again"
    await c.open(again, ticket, sync=False)
    await c.until(lambda: c.auth(again) is not None, "second ticket use")
    assert c.auth(again) == (hp.AUTH_DENIED, "unauthenticated")
    # read-only keys: their edits are answered SyncStatus 0 and do not land; writers' land
    ro, rw = f"{doc_id}\0read", f"{doc_id}\0write"
    await c.edit(ro, 0, "RO ")
    await c.edit(rw, 0, "RW ")
    await c.until(lambda: 0 in c.statuses(ro) and c.statuses(rw).count(1) >= 2, "acks")
    assert app[ROOMS].loaded(doc_id).text() == "RW x\n"
    # the writer's edit reached the other keys of the same socket
    await c.until(lambda: str(c.text(f"{doc_id}\0viewer")) == "RW x\n", "fan-out to the viewer key")
    await c.close()


async def test_lost_access_and_revoked_session_refuse_only_their_documents(client):
    app = client.server.app
    owner, bob = await register(client), await register(client)
    ws_a, doc_a = await make_document(app, owner.id, markdown="a\n", members={bob.id: "editor"})
    _, doc_b = await make_document(app, bob.id, markdown="b\n")
    c = await HPClient.connect(client)
    await c.open(doc_a, bob.access_token)
    await c.open(doc_b, bob.access_token)
    await c.until(lambda: str(c.text(doc_a)) == "a\n" and str(c.text(doc_b)) == "b\n", "sync")
    resp = await client.delete(f"/api/v1/workspaces/{ws_a}/members/{bob.id}", headers=owner.headers)
    assert resp.status == 204
    await c.until(lambda: c.auth(doc_a) == (hp.AUTH_DENIED, "forbidden"), "refusal of doc a")
    acks = c.statuses(doc_b).count(1)
    await c.edit(doc_a, 0, "LOST ")
    await c.edit(doc_b, 0, "kept ")
    await c.until(lambda: c.statuses(doc_b).count(1) == acks + 1, "ack on doc b")
    rooms = app[ROOMS]
    assert rooms.loaded(doc_b).text() == "kept b\n"
    assert "LOST" not in rooms.loaded(doc_a).text()
    assert [conn.document_id for conn in rooms.connections() if conn.user_id == bob.id] == [doc_b]
    # signing out ends every document of that session on the socket, and the socket stays open
    resp = await client.post("/api/v1/auth/logout", headers=bob.headers)
    assert resp.status == 204
    await c.until(lambda: c.auth(doc_b) == (hp.AUTH_DENIED, "unauthenticated"), "refusal of doc b")
    assert not c._reader.done()
    assert rooms.connections(doc_b) == []
    await c.close()


async def test_frames_before_auth_wait_and_close_detaches(client):
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="q\n")
    c = await HPClient.connect(client)
    # no Auth: nothing of the document is sent, nothing lands, the socket stays open
    c.docs[doc_id] = Doc()
    await c.send(doc_id, p.sync_step1(b"\x00"))
    await c.edit(doc_id, 0, "nope ")
    await asyncio.sleep(0.2)
    assert c.inbox.get(doc_id) in (None, [])
    assert app[ROOMS].loaded(doc_id) is None
    # Auth, then a step 1 and an update sent without waiting: applied in order once accepted
    c.docs[doc_id] = Doc()
    await c.open(doc_id, alice.access_token, sync=False)
    await c.send(doc_id, p.sync_step1(b"\x00"))
    await c.until(lambda: str(c.text(doc_id)) == "q\n", "sync")
    assert c.auth(doc_id) == (hp.AUTH_OK, "read-write")
    await c.until(lambda: c.statuses(doc_id) == [1], "the ack of the answer to the server's step 1")
    await c.edit(doc_id, 2, "yes")
    await c.until(lambda: c.statuses(doc_id) == [1, 1], "ack")
    assert app[ROOMS].loaded(doc_id).text() == "q\nyes"
    # Close (7) takes the document off the socket
    await c.send(doc_id, bytes((hp.MSG_CLOSE,)))
    await c.until(lambda: app[ROOMS].connections(doc_id) == [], "detach")
    assert not c._reader.done()
    await c.close()


async def test_prefixed_frame_built_once_per_broadcast():
    prefix = hp._Prefix("doc")
    framed = p.ws_frame(p.update_message(b"\x01\x02"))
    out = prefix.frame(framed)
    assert out == p.ws_frame(p.varbytes(b"doc") + p.update_message(b"\x01\x02"))
    assert prefix.frame(framed) is out  # the next peer of the same broadcast: no new bytes
    big = p.ws_frame(b"\x00\x02" + p.varbytes(b"x" * 70000))
    assert hp._payload(big) == b"\x00\x02" + p.varbytes(b"x" * 70000)


async def test_only_a_silent_socket_is_pinged(make_client):
    # the provider reconnects after 30 s without a message: a socket that sends nothing (a provider
    # without awareness) is pinged; one that keeps talking (awareness renewals) is not
    client = await make_client(collab__hocuspocus_ping_seconds=0.2)
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="idle\n")
    silent, chatty = await HPClient.connect(client), await HPClient.connect(client)
    for c in (silent, chatty):
        await c.open(doc_id, alice.access_token)
    async with asyncio.timeout(10):
        while silent.pings < 3:
            await chatty.send(doc_id, p.awareness_message([(chatty.docs[doc_id].client_id, 1, "{}")]))
            await asyncio.sleep(0.05)
    assert chatty.pings == 0
    assert not silent._reader.done()
    acks = silent.statuses(doc_id).count(1)
    await silent.edit(doc_id, 0, "awake ")
    await silent.until(lambda: silent.statuses(doc_id).count(1) == acks + 1, "ack after the pongs")
    await silent.close()
    await chatty.close()


async def test_document_over_the_size_limit_is_closed_alone(make_client):
    client = await make_client(limits__max_document_bytes=4096)
    app = client.server.app
    alice = await register(client)
    ws_id, big = await make_document(app, alice.id, markdown="big\n")
    _, small = await make_document(app, alice.id, markdown="small\n", workspace_id=ws_id)
    c = await HPClient.connect(client)
    for key in (big, small):
        await c.open(key, alice.access_token)
    await c.until(lambda: str(c.text(big)) == "big\n" and str(c.text(small)) == "small\n", "sync")
    await c.until(lambda: c.statuses(big) == [1] and c.statuses(small) == [1], "first acks")
    await c.edit(big, 0, "x" * 8000)
    await c.until(lambda: any(kind == hp.MSG_CLOSE for kind, _ in c.inbox[big]), "Close of the big document")
    assert c.statuses(big) == [1, 0]
    assert app[ROOMS].loaded(big).text() == "big\n"
    # the socket and its other document go on
    await c.edit(small, 0, "still ")
    await c.until(lambda: c.statuses(small) == [1, 1], "ack on the other document")
    assert app[ROOMS].loaded(small).text() == "still small\n"
    assert [conn.document_id for conn in app[ROOMS].connections() if conn.user_id == alice.id] == [small]
    await c.close()


async def test_sigterm_closes_with_1012_and_keeps_every_acked_edit(server_process):
    """A real `mdsync serve`: SIGTERM closes the Hocuspocus socket with 1012 (the provider
    reconnects to the next process) after every acknowledged edit of its documents is stored."""
    import aiohttp

    from tests.builders import PASSWORD

    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open"})
    async with aiohttp.ClientSession(server.base) as http:
        resp = await http.post("/api/v1/auth/register",
                               json={"email": f"t{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "name": "T"})
        token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        ws_id = (await (await http.post("/api/v1/workspaces", json={"name": "W"}, headers=headers)).json())["id"]
        docs = []
        for title in ("one", "two"):
            resp = await http.post(f"/api/v1/workspaces/{ws_id}/documents", json={"title": title}, headers=headers)
            docs.append((await resp.json())["id"])
        c = await HPClient.connect(http)
        for doc_id in docs:
            await c.open(doc_id, token)
        await c.until(lambda: all(c.statuses(d) == [1] for d in docs), "sync", timeout=10)
        for i in range(20):
            for n, doc_id in enumerate(docs):
                await c.edit(doc_id, len(str(c.text(doc_id))), f"{n}.{i};")
        await c.until(lambda: all(c.statuses(d).count(1) == 21 for d in docs), "acks", timeout=10)
        code = await asyncio.get_running_loop().run_in_executor(None, server.terminate)
        assert code == 0
        await c.until(lambda: c._reader.done(), "close", timeout=10)
        assert c.close_code == 1012

    settings = make_settings(server.data_dir)
    for n, doc_id in enumerate(docs):
        doc = Doc()
        for (state,) in settings_rows(settings, "SELECT state FROM doc_snapshots WHERE document_id = ?", (doc_id,)):
            doc.apply_update(state)
        for (data,) in settings_rows(settings, "SELECT data FROM doc_updates WHERE document_id = ? ORDER BY seq",
                                     (doc_id,)):
            doc.apply_update(data)
        assert str(doc.get("markdown", type=Text)) == "".join(f"{n}.{i};" for i in range(20))


async def test_role_lowered_while_attached_makes_that_document_read_only(client):
    app = client.server.app
    owner, bob = await register(client), await register(client)
    ws_id, doc_id = await make_document(app, owner.id, markdown="r\n", members={bob.id: "editor"})
    c = await HPClient.connect(client)
    await c.open(doc_id, bob.access_token)
    await c.until(lambda: c.statuses(doc_id) == [1], "sync")
    resp = await client.patch(f"/api/v1/workspaces/{ws_id}/members/{bob.id}", json={"role": "viewer"},
                              headers=owner.headers)
    assert resp.status == 200, await resp.text()
    room = app[ROOMS].loaded(doc_id)
    await c.until(lambda: all(conn.read_only for conn in room.conns), "read-only")
    await c.edit(doc_id, 0, "late ")
    await c.until(lambda: c.statuses(doc_id) == [1, 0], "ack 0")
    assert room.text() == "r\n"
    assert not c._reader.done()
    await c.close()


async def test_sync_status_is_sent_only_after_the_commit_in_order(make_client):
    # a long group-commit window: an acknowledgement sent on receipt would come 0.3 s early
    client = await make_client(collab__flush_delay_seconds=0.3)
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="s\n")
    c = await HPClient.connect(client)
    await c.open(doc_id, alice.access_token)
    await c.until(lambda: c.statuses(doc_id) == [1], "sync")
    for n in range(5):
        await c.edit(doc_id, len(str(c.text(doc_id))), f"e{n};")
    await _each_ack_finds_its_edit_stored(app, c, doc_id, timeout=10)
    await c.close()


async def _each_ack_finds_its_edit_stored(app, c, doc_id: str, timeout: float) -> None:
    """Until all five edits (`e0;`…`e4;` after `s\n`) are acknowledged: whatever has been
    acknowledged is in the database at the moment its SyncStatus arrives."""
    seen = 1
    async with asyncio.timeout(timeout):
        while seen < 6:
            if len(c.statuses(doc_id)) > seen:
                seen = len(c.statuses(doc_id))
                stored = await doc_text_in_db(app, doc_id)
                assert stored.startswith("s\n" + "".join(f"e{n};" for n in range(seen - 1))), stored
            await asyncio.sleep(0)
    assert c.statuses(doc_id) == [1] * 6


async def test_sync_status_waits_out_a_lost_postgresql_writer_connection(make_client, engine):
    """PostgreSQL: the writer's connection dies in the middle of a batch holding a burst's log rows
    (its backend terminated, as a server restart or failover would): the batch fails, the writer
    reconnects, the rows are written again, and each SyncStatus still comes only once its edit is
    committed — nothing acknowledged is missing, nothing is logged twice."""
    if engine != "postgresql":
        pytest.skip("SQLite has no server connection to lose")
    import time

    import psycopg

    from mdsync.appkeys import DB

    client = await make_client(collab__flush_delay_seconds=0.05)
    app = client.server.app
    db = app[DB]
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="s\n")
    c = await HPClient.connect(client)
    await c.open(doc_id, alice.access_token)
    await c.until(lambda: c.statuses(doc_id) == [1], "sync")
    errors_before = app[ROOMS].stats.flush_errors
    # hold the writer so that the burst's rows and the fatal statement share one batch
    held = db.submit(lambda tx: time.sleep(0.8))
    await asyncio.sleep(0.1)  # the writer has taken it, alone
    for n in range(5):
        await c.edit(doc_id, len(str(c.text(doc_id))), f"e{n};")
    await asyncio.sleep(0.3)  # accepted, and the first rows handed to the (held) writer
    lost = db.submit(lambda tx: tx.execute("SELECT pg_terminate_backend(pg_backend_pid())"))
    await held
    with pytest.raises(psycopg.OperationalError):
        await lost
    await _each_ack_finds_its_edit_stored(app, c, doc_id, timeout=15)
    assert app[ROOMS].stats.flush_errors > errors_before  # the lost batch's rows did fail once
    assert await doc_text_in_db(app, doc_id) == "s\n" + "".join(f"e{n};" for n in range(5))
    await c.close()


async def test_an_update_whose_log_write_fails_is_acknowledged_once_a_snapshot_holds_it(client, monkeypatch, engine):
    import sqlite3

    import psycopg

    from mdsync.collab import store

    # the engine's own error for a row the log refuses (a unique or foreign-key clash)
    refused = sqlite3.IntegrityError if engine == "sqlite" else psycopg.errors.UniqueViolation

    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="f\n")
    c = await HPClient.connect(client)
    await c.open(doc_id, alice.access_token)
    await c.until(lambda: c.statuses(doc_id) == [1], "sync")
    append = store.append
    failed = []

    def refuse_once(tx, document_id, rows):
        if not failed:
            failed.append(rows)
            raise refused("simulated: these rows never reach the log")
        return append(tx, document_id, rows)

    monkeypatch.setattr(store, "append", refuse_once)
    await c.edit(doc_id, 0, "kept ")
    await c.until(lambda: c.statuses(doc_id) == [1, 1], "ack after the snapshot")
    assert failed
    assert await doc_text_in_db(app, doc_id) == "kept f\n"
    await c.close()
