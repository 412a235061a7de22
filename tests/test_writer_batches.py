"""Long jobs never hold the single database writer (which commits live edits within 1 s).

A large import: the archive is read, decompressed and prepared off the writer, rows go in as
bounded batches that nobody sees, and one short final switch makes the whole import visible at
once (or, on failure, none of it ever is). Purging a big deleted workspace: its documents go a
few at a time. Observed through ordering, not clocks: other writes commit between the long job's
batches (an unrelated row's rowid falls inside the import's range; an unrelated job sees the
workspace half purged)."""

from __future__ import annotations

import asyncio

import pytest

from mdsync import clock
from mdsync.appkeys import DB
from mdsync.workspaces.service import WORKSPACES
from tests.builders import document, import_zip, make_workspace, make_zip, owned_workspace
from tests.readers import db_rows, tree

pytestmark = pytest.mark.both_engines

API = "/api/v1"
NOTES = 3000


def _vault() -> bytes:
    return make_zip({f"notes/n{i:05d}.md": f"# Note {i}\n\n" + ("lorem ipsum dolor " * 200) for i in range(NOTES)})


async def test_other_writes_commit_while_a_large_import_runs_and_readers_see_all_or_nothing(client):
    owner, ws = await owned_workspace(client)
    other = await make_workspace(client, owner, "Other")
    importing = asyncio.ensure_future(import_zip(client, owner, ws, _vault()))
    side: list[tuple[str, bool]] = []   # (document id, the import was still running when it committed)
    seen_counts: set[int] = set()
    for n in range(5000):  # bounded; ends with the import
        if importing.done():
            break
        doc = await document(client, owner, other, f"side {n}")
        side.append((doc["id"], not importing.done()))
        seen_counts.add(len((await tree(client, owner, ws))["documents"]))
    counts = await importing
    assert counts["documents"] == NOTES
    # readers saw none of the import, then all of it: never a part
    assert seen_counts <= {0, NOTES}
    # when each row was written: the clock of the writer job that inserted it (jobs run one after
    # the other in the one writer; PostgreSQL has no rowid, and the import's publishing UPDATE
    # rewrites its rows' xmin and ctid)
    rows = db_rows(client, "SELECT id, workspace_id, created_at FROM documents")
    imported = [r["created_at"] for r in rows if r["workspace_id"] == ws]
    assert len(imported) == NOTES
    written = {r["id"]: r["created_at"] for r in rows}
    during = [doc_id for doc_id, running in side if running and min(imported) < written[doc_id] < max(imported)]
    assert during, "no other write committed between the import's first and last row"
    assert len((await tree(client, owner, other))["documents"]) == len(side)


async def test_an_import_whose_workspace_goes_away_midway_leaves_nothing(client):
    owner, ws = await owned_workspace(client)
    db = client.app[DB]
    before = await db.value("SELECT count(*) FROM documents")
    importing = asyncio.ensure_future(client.post(f"{API}/workspaces/{ws}/import", data=_vault(),
                                                  headers={**owner.headers, "Content-Type": "application/zip"}))
    deleted = False
    for _ in range(5000):  # bounded: until the import's first batch is committed (staged, unseen)
        if importing.done():
            break
        if await db.value("SELECT count(*) FROM documents") > before:
            resp = await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)
            assert resp.status == 204
            deleted = True
            break
        await asyncio.sleep(0.01)
    resp = await importing
    assert deleted, "the import never had a batch committed before it ended"
    assert resp.status == 404, await resp.text()
    # nothing of it anywhere: the staged rows and their hidden workspace are gone
    assert await db.value("SELECT count(*) FROM documents") == before
    assert await db.value("SELECT count(*) FROM folders") == 0
    assert await db.value("SELECT count(*) FROM workspaces WHERE id <> ?", (ws,)) == 0


async def test_purging_a_big_workspace_lets_other_writes_in_between(client):
    owner, ws = await owned_workspace(client)
    counts = await import_zip(client, owner, ws, _vault())
    assert counts["documents"] == NOTES
    assert (await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)).status == 204
    clock.advance(client.app[WORKSPACES].purge_grace_seconds + 1)
    db = client.app[DB]

    def probe(tx):  # an unrelated write job: what does it see of the purge?
        tx.execute("UPDATE users SET name = name WHERE id = ?", (owner.id,))
        return tx.value("SELECT count(*) FROM documents WHERE workspace_id = ?", (ws,))

    purging = asyncio.ensure_future(client.app[WORKSPACES].purge_expired())
    seen = []
    for _ in range(5000):  # bounded; ends with the purge
        if purging.done():
            break
        seen.append(await db.write(probe))
    assert await purging == 1
    assert any(0 < n < NOTES for n in seen), "no other write committed while the purge was under way"
    assert await db.value("SELECT count(*) FROM documents") == 0
    assert await db.value("SELECT count(*) FROM workspaces WHERE id = ?", (ws,)) == 0
