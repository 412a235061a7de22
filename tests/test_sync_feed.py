"""The change feed (docs/api.md "Change feed"): `GET /sync/changes` pages, cursors and long-polls, and
`GET /sync/events` (SSE). Two kinds of callers: one writing, one reading the feed."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import uuid

import aiohttp
import pytest

from mdsync import clock
from mdsync.appkeys import DB, SETTINGS
from mdsync.sync import feed as feed_module
from mdsync.sync.routes import FEED
from mdsync.workspaces.service import WORKSPACES
from tests.builders import bearer, register
from tests.processes import MDSYNC, subprocess_env

pytestmark = pytest.mark.both_engines

CHANGES = "/api/v1/sync/changes"
EVENTS = "/api/v1/sync/events"


# -- building state through the API ----------------------------------------------------------
async def new_workspace(client, owner, name="Team") -> str:
    resp = await client.post("/api/v1/workspaces", json={"name": name}, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def join(client, ws: str, admin, member, role="editor") -> None:
    resp = await client.post(f"/api/v1/workspaces/{ws}/invitations", json={"role": role}, headers=admin.headers)
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["token"]
    resp = await client.post("/api/v1/invitations/accept", json={"token": token}, headers=member.headers)
    assert resp.status in (200, 201), await resp.text()


async def remove(client, ws: str, admin, member) -> None:
    resp = await client.delete(f"/api/v1/workspaces/{ws}/members/{member.id}", headers=admin.headers)
    assert resp.status == 204, await resp.text()


async def rename(client, ws: str, owner, name: str) -> None:
    """One visible change in `ws` (a workspace upsert)."""
    resp = await client.patch(f"/api/v1/workspaces/{ws}", json={"name": name}, headers=owner.headers)
    assert resp.status == 200, await resp.text()


async def new_document(client, ws: str, author, title="Notes") -> str:
    resp = await client.post(f"/api/v1/workspaces/{ws}/documents", json={"title": title, "markdown": "# hi"},
                             headers=author.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def read_token(client, account) -> str:
    """A personal access token with the read scope (enough for the feed)."""
    resp = await client.post("/api/v1/me/tokens", json={"name": "device", "scopes": ["read"]}, headers=account.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["token"]


async def feed(client, account, **params):
    resp = await client.get(CHANGES, params={k: str(v) for k, v in params.items()}, headers=account.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def everything(client, account, since=None, limit=200) -> list[dict]:
    """The caller's whole feed, paged."""
    out = []
    params = {"limit": limit} if since is None else {"limit": limit, "since": since}
    while True:
        page = await feed(client, account, **params)
        out.extend(page["changes"])
        params["since"] = page["cursor"]
        if not page["has_more"]:
            return out


async def until(predicate, timeout=5.0):
    """Wait for a condition the test cannot be told about (a request parked in the server)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def the_feed(client):
    return client.server.app[FEED]


async def parked(client, n: int) -> None:
    """Until `n` requests wait in the feed, each past its first read."""
    await until(lambda: the_feed(client).waiting == n and the_feed(client).parked == n)


# -- reading ---------------------------------------------------------------------------------
async def test_feed_needs_a_signed_in_caller_and_a_read_token_is_enough(client):
    assert (await client.get(CHANGES)).status == 401
    assert (await client.get(EVENTS)).status == 401
    ada = await register(client)
    resp = await client.get(CHANGES, headers=bearer(await read_token(client, ada)))
    assert resp.status == 200
    assert set(await resp.json()) == {"changes", "cursor", "has_more"}


async def test_a_new_workspace_shows_in_its_owners_feed(client):
    ada = await register(client)
    assert (await feed(client, ada))["changes"] == []
    ws = await new_workspace(client, ada)
    page = await feed(client, ada)
    assert page["has_more"] is False
    assert {(c["entity"], c["id"], c["op"]) for c in page["changes"]} >= {("workspace", ws, "upsert"),
                                                                           ("member", ada.id, "upsert")}
    for change in page["changes"]:
        assert change["workspace_id"] == ws
        assert set(change) == {"seq", "workspace_id", "entity", "id", "op", "at"}
        assert change["at"].endswith("Z")
    # the cursor of a page that was not full is where the next page starts: nothing new
    assert (await feed(client, ada, since=page["cursor"]))["changes"] == []


async def test_since_now_answers_the_current_cursor_and_nothing_else(client):
    ada = await register(client)
    ws = await new_workspace(client, ada)
    now = await feed(client, ada, since="now")
    assert now["changes"] == [] and now["has_more"] is False
    await rename(client, ws, ada, "Renamed")
    after = await feed(client, ada, since=now["cursor"])
    assert [(c["entity"], c["op"]) for c in after["changes"]] == [("workspace", "upsert")]
    # `now` ignores wait: it answers at once
    assert (await feed(client, ada, since="now", wait=30))["cursor"] == after["cursor"]


async def test_others_workspaces_never_show(client):
    ada, bob = await register(client), await register(client)
    ws_a = await new_workspace(client, ada, "Ada's")
    ws_b = await new_workspace(client, bob, "Bob's")
    for i in range(3):
        await rename(client, ws_b, bob, f"Bob {i}")
    assert {c["workspace_id"] for c in await everything(client, ada)} == {ws_a}
    assert {c["workspace_id"] for c in await everything(client, bob)} == {ws_b}


async def test_pages_never_skip_or_repeat_a_change(client):
    ada, bob, cy = await register(client), await register(client), await register(client)
    shared = await new_workspace(client, ada, "Shared")
    own = await new_workspace(client, bob, "Bob's")
    await join(client, shared, ada, bob)
    other = await new_workspace(client, cy, "Not Bob's")
    for i in range(40):
        ws, author = [(shared, ada), (own, bob), (other, cy)][i % 3]
        if i % 2:
            await rename(client, ws, author, f"name {i}")
        else:
            await new_document(client, ws, author, f"doc {i}")
    full = await everything(client, bob)
    seqs = [c["seq"] for c in full]
    assert seqs == sorted(set(seqs)), "the feed is in seq order without duplicates"
    assert {c["workspace_id"] for c in full} == {shared, own}
    assert len(full) >= 28
    for limit in (1, 3, 7):
        paged, since, pages = [], None, 0
        while True:
            params = {"limit": limit} if since is None else {"limit": limit, "since": since}
            page = await feed(client, bob, **params)
            assert len(page["changes"]) <= limit
            paged.extend(page["changes"])
            since, pages = page["cursor"], pages + 1
            if not page["has_more"]:
                break
        assert paged == full, f"limit={limit}"
        assert pages >= len(full) // limit


async def test_a_member_of_many_workspaces_gets_one_merged_feed(client, monkeypatch):
    ada = await register(client)
    spaces = [await new_workspace(client, ada, f"W{i}") for i in range(5)]
    for i in range(15):
        await new_document(client, spaces[(i * 3) % 5], ada, f"d{i}")
    whole = await everything(client, ada)
    # past ARMS_PER_QUERY workspaces the merge runs in several statements, merged here
    monkeypatch.setattr(feed_module, "ARMS_PER_QUERY", 2)
    for limit in (1, 4, 200):
        assert await everything(client, ada, limit=limit) == whole
    assert len(whole) >= 15 + 2 * 5 and {c["workspace_id"] for c in whole} == set(spaces)


async def test_changes_written_between_pages_come_exactly_once(client):
    ada = await register(client)
    ws = await new_workspace(client, ada)
    seen, since = [], None
    for i in range(12):
        await rename(client, ws, ada, f"v{i}")
        params = {"limit": 2} if since is None else {"limit": 2, "since": since}
        page = await feed(client, ada, **params)
        seen.extend(page["changes"])
        since = page["cursor"]
    seen.extend(await everything(client, ada, since=since))
    assert seen == await everything(client, ada)


async def test_random_joins_removals_and_writes_page_exactly_by_the_rules(client):
    """A seeded random run: ada owns three workspaces, writes documents, adds and removes bob;
    bob pages with random limits. Each page must be exactly what the rules say for its range:
    the rows addressed to bob, plus the shared rows of the workspaces bob is in when he reads."""
    rng = random.Random(20261129)
    ada, bob = await register(client), await register(client)
    spaces = [await new_workspace(client, ada, f"W{i}") for i in range(3)]
    member = set()
    cursor = (await feed(client, bob, since="now"))["cursor"]
    db = client.server.app[DB]
    pages = 0
    for _ in range(150):
        ws = rng.choice(spaces)
        action = rng.random()
        if action < 0.4:
            await new_document(client, ws, ada)
        elif action < 0.55 and ws not in member:
            await join(client, ws, ada, bob)
            member.add(ws)
        elif action < 0.65 and ws in member:
            await remove(client, ws, ada, bob)
            member.discard(ws)
        else:
            page = await feed(client, bob, since=cursor, limit=rng.randint(1, 5))
            low, high = feed_module.decode_cursor(cursor), feed_module.decode_cursor(page["cursor"])
            rows = await db.all("SELECT seq, workspace_id, user_id FROM changes WHERE seq > ? AND seq <= ? ORDER BY seq",
                                (low, high))
            expected = [r["seq"] for r in rows if r["user_id"] == bob.id
                        or (r["user_id"] is None and r["workspace_id"] in member)]
            assert [c["seq"] for c in page["changes"]] == expected
            assert page["has_more"] == bool(await db.value(
                "SELECT 1 FROM changes WHERE seq > ? AND (user_id = ? OR (user_id IS NULL AND workspace_id IN"
                " (SELECT workspace_id FROM members WHERE user_id = ?))) LIMIT 1", (high, bob.id, bob.id)))
            cursor, pages = page["cursor"], pages + 1
    assert pages > 20


async def test_a_removed_member_gets_one_delete_and_nothing_after(client):
    ada, bob = await register(client), await register(client)
    ws = await new_workspace(client, ada)
    await join(client, ws, ada, bob)
    await rename(client, ws, ada, "Before")
    before = await feed(client, bob, limit=200)
    assert any(c["entity"] == "workspace" and c["op"] == "upsert" for c in before["changes"])
    await remove(client, ws, ada, bob)
    await rename(client, ws, ada, "After")
    after = await everything(client, bob, since=before["cursor"])
    assert [(c["workspace_id"], c["entity"], c["id"], c["op"]) for c in after] == [(ws, "workspace", ws, "delete")]
    # from the beginning too: only what is addressed to them is left of that workspace
    assert [c for c in await everything(client, bob) if c["workspace_id"] == ws and c["op"] == "delete"] \
        == [c for c in after]
    # ada still sees everything of it, bob's removal included
    ada_changes = await everything(client, ada, since=before["cursor"])
    assert ("member", bob.id, "delete") in {(c["entity"], c["id"], c["op"]) for c in ada_changes}


async def test_a_purged_workspace_still_reaches_devices_that_slept_through_its_grace_period(client):
    ada, bob = await register(client), await register(client)
    ws = await new_workspace(client, ada)
    await join(client, ws, ada, bob)
    await new_document(client, ws, ada)
    asleep = (await feed(client, bob, since="now"))["cursor"]        # bob's laptop goes to sleep
    awake = (await feed(client, ada, since="now"))["cursor"]
    assert (await client.delete(f"/api/v1/workspaces/{ws}", headers=ada.headers)).status == 204
    awake = (await feed(client, ada, since=awake))["cursor"]         # ada's device keeps up
    # a month passes (access tokens expire with it: the devices read with personal tokens)
    for account in (ada, bob):
        account.access_token = await read_token(client, account)
    clock.advance(client.server.app[SETTINGS].workspaces.purge_grace_seconds + 60)
    assert await client.server.app[WORKSPACES].purge_expired() == 1
    for account, since in ((bob, asleep), (ada, awake)):
        changes = await everything(client, account, since=since)
        assert [(c["entity"], c["id"], c["op"]) for c in changes] == [("workspace", ws, "delete")]
    # and from the beginning: nothing of the purged workspace but that delete
    assert [(c["entity"], c["op"]) for c in await everything(client, bob)] == [("workspace", "delete")]


# -- long-polling ----------------------------------------------------------------------------
async def test_a_long_poll_returns_as_soon_as_a_change_commits(client):
    ada, bob = await register(client), await register(client)
    ws = await new_workspace(client, ada)
    await join(client, ws, ada, bob)
    cursor = (await feed(client, bob, since="now"))["cursor"]
    poll = asyncio.ensure_future(feed(client, bob, since=cursor, wait=30))
    await parked(client, 1)
    assert not poll.done()
    doc = await new_document(client, ws, ada)
    # returned with the change, so before its 30 s wait ran out (a timeout answers no changes)
    page = await asyncio.wait_for(poll, 10)
    assert [(c["entity"], c["id"], c["op"]) for c in page["changes"]] == [("document", doc, "upsert")]
    assert the_feed(client).waiting == 0


async def test_a_long_poll_that_sees_nothing_answers_after_its_wait(client):
    ada = await register(client)
    await new_workspace(client, ada)
    cursor = (await feed(client, ada, since="now"))["cursor"]
    page = await feed(client, ada, since=cursor, wait=0.3)
    assert page == {"changes": [], "cursor": cursor, "has_more": False}


async def test_a_long_poll_is_not_woken_by_other_workspaces(client):
    ada, bob = await register(client), await register(client)
    ws_a = await new_workspace(client, ada)
    ws_b = await new_workspace(client, bob)
    cursor = (await feed(client, bob, since="now"))["cursor"]
    pollers = [asyncio.ensure_future(feed(client, bob, since=cursor, wait=30)) for _ in range(10)]
    stats = the_feed(client).stats
    await parked(client, 10)
    reads_before = stats.reads
    # a storm in ada's workspace: many commits, none of them bob's business
    for i in range(30):
        await rename(client, ws_a, ada, f"storm {i}")
    assert stats.reads == reads_before, "no poller re-read for changes it cannot see"
    assert not any(p.done() for p in pollers)
    await rename(client, ws_b, bob, "Mine")
    pages = await asyncio.wait_for(asyncio.gather(*pollers), 10)
    assert all([c["workspace_id"] for c in p["changes"]] == [ws_b] for p in pages)
    assert stats.reads - reads_before == 10, "one re-read per poller for one wake"
    metrics = await (await client.get("/metrics")).text()
    assert "mdsync_feed_waiting 0.0" in metrics
    assert f"mdsync_feed_waiter_reads_total {float(stats.reads)}" in metrics


async def test_a_commit_storm_is_one_re_read_per_waiter(client):
    ada = await register(client)
    ws = await new_workspace(client, ada)
    cursor = (await feed(client, ada, since="now"))["cursor"]
    stats = the_feed(client).stats
    pollers = [asyncio.ensure_future(feed(client, ada, since=cursor, wait=30)) for _ in range(5)]
    await parked(client, 5)
    reads_before, passes_before = stats.reads, stats.passes
    # 50 writes in flight at once: group commit folds them into few batches, and each batch's
    # notices into one wake pass
    await asyncio.gather(*(rename(client, ws, ada, f"n{i}") for i in range(50)))
    pages = await asyncio.wait_for(asyncio.gather(*pollers), 10)
    assert all(p["changes"] for p in pages)
    assert stats.passes - passes_before < 50
    assert stats.reads - reads_before <= 5 * (stats.passes - passes_before)


async def test_two_servers_in_one_process_wake_only_their_own_waiters(make_client):
    one, two = await make_client(), await make_client()
    ada, bob = await register(one), await register(two)
    ws_one, ws_two = await new_workspace(one, ada), await new_workspace(two, bob)
    for i in range(20):    # server one's feed runs far ahead of server two's
        await rename(one, ws_one, ada, f"n{i}")
    cursor = (await feed(two, bob, since="now"))["cursor"]
    poll = asyncio.ensure_future(feed(two, bob, since=cursor, wait=30))
    await parked(two, 1)
    await rename(one, ws_one, ada, "elsewhere")
    reads = the_feed(two).stats.reads
    await rename(two, ws_two, bob, "here")       # a lower seq than server one's: still news here
    page = await asyncio.wait_for(poll, 10)
    assert [c["workspace_id"] for c in page["changes"]] == [ws_two]
    assert the_feed(two).stats.reads == reads + 1


async def test_every_member_role_reads_the_feed_and_outsiders_see_nothing(client):
    owner = await register(client)
    ws = await new_workspace(client, owner)
    people = {"owner": owner}
    for role in ("admin", "editor", "commenter", "viewer"):
        people[role] = await register(client)
        await join(client, ws, owner, people[role], role)
    outsider = await register(client)
    cursor = (await feed(client, owner, since="now"))["cursor"]
    doc = await new_document(client, ws, owner)
    for role, account in people.items():
        page = await feed(client, account, since=cursor)
        assert [(c["entity"], c["id"]) for c in page["changes"]] == [("document", doc)], role
    assert await everything(client, outsider) == []


async def test_a_removed_member_waiting_gets_the_delete(client):
    ada, bob = await register(client), await register(client)
    ws = await new_workspace(client, ada)
    await join(client, ws, ada, bob)
    cursor = (await feed(client, bob, since="now"))["cursor"]
    poll = asyncio.ensure_future(feed(client, bob, since=cursor, wait=30))
    await parked(client, 1)
    await remove(client, ws, ada, bob)
    page = await asyncio.wait_for(poll, 10)
    assert [(c["entity"], c["op"]) for c in page["changes"]] == [("workspace", "delete")]


async def test_joining_wakes_a_waiting_newcomer(client):
    ada, bob = await register(client), await register(client)
    ws = await new_workspace(client, ada)
    cursor = (await feed(client, bob, since="now"))["cursor"]
    poll = asyncio.ensure_future(feed(client, bob, since=cursor, wait=30))
    await parked(client, 1)
    await join(client, ws, ada, bob)
    page = await asyncio.wait_for(poll, 10)
    assert {c["workspace_id"] for c in page["changes"]} == {ws}


async def test_a_change_made_by_the_admin_cli_reaches_a_waiting_poll(make_client, tmp_path, monkeypatch):
    monkeypatch.setattr(feed_module, "OTHER_WRITERS_EVERY", 0.2)
    data_dir = tmp_path / "live"
    client = await make_client(data_dir=data_dir)
    ada, bob = await register(client), await register(client)
    ws = await new_workspace(client, ada)
    await join(client, ws, ada, bob)
    cursor = (await feed(client, bob, since="now"))["cursor"]
    poll = asyncio.ensure_future(feed(client, bob, since=cursor, wait=30))
    await parked(client, 1)
    # another process commits: no after-commit callback reaches this server
    done = await asyncio.to_thread(subprocess.run, [*MDSYNC, "workspaces", "remove-member", ws, bob.email,
                                                    "--data-dir", str(data_dir)],
                                   env=subprocess_env(data_dir), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    page = await asyncio.wait_for(poll, 10)
    assert [(c["entity"], c["op"]) for c in page["changes"]] == [("workspace", "delete")]


async def test_a_client_that_goes_away_stops_waiting(client):
    ada = await register(client)
    await new_workspace(client, ada)
    cursor = (await feed(client, ada, since="now"))["cursor"]
    with pytest.raises(asyncio.TimeoutError):
        await client.get(CHANGES, params={"since": cursor, "wait": "30"}, headers=ada.headers,
                         timeout=aiohttp.ClientTimeout(total=0.5))
    await parked(client, 0)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("params, field", [
    ({"since": "garbage"}, "since"),
    ({"since": "ZjE6LTE"}, "since"),          # base64 of "f1:-1": well-formed, not ours
    ({"since": "12"}, "since"),               # a bare seq is not a cursor
    ({"limit": "0"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"wait": "-1"}, "wait"),
    ({"wait": "abc"}, "wait"),
    ({"wait": "nan"}, "wait"),
])
async def test_bad_input_is_a_422_naming_the_parameter(client, params, field):
    ada = await register(client)
    resp = await client.get(CHANGES, params=params, headers=ada.headers)
    assert resp.status == 422, await resp.text()
    problem = await resp.json()
    assert problem["type"] == "urn:mdsync:error:validation"
    assert [e["field"] for e in problem["errors"]] == [field]


async def test_blank_parameters_mean_their_defaults(client):
    ada = await register(client)
    await new_workspace(client, ada)
    resp = await client.get(CHANGES, params={"since": "", "limit": "", "wait": ""}, headers=ada.headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["changes"] == (await feed(client, ada))["changes"] != []


async def test_a_cursor_from_the_future_is_a_422(client):
    ada = await register(client)
    await new_workspace(client, ada)
    ahead = feed_module.encode_cursor(10**9)
    resp = await client.get(CHANGES, params={"since": ahead}, headers=ada.headers)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "since"
    resp = await client.get(EVENTS, headers={**ada.headers, "Last-Event-ID": ahead})
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "Last-Event-ID"


async def test_limit_above_200_and_wait_above_60_are_clamped(client):
    ada = await register(client)
    ws = await new_workspace(client, ada)
    db = client.server.app[DB]
    await db.write(_many_changes, ws, 250)
    # limit is clamped to 200 (not refused); wait above 60 s is clamped to 60 s (not refused):
    # changes are waiting, so the answer is immediate
    page = await feed(client, ada, limit=1000, wait=1000)
    assert len(page["changes"]) == 200 and page["has_more"] is True


def _many_changes(tx, ws: str, n: int) -> None:
    from mdsync.sync import changes
    for _ in range(n):
        changes.record(tx, ws, "document", str(uuid.uuid4()), "upsert")


# -- Server-Sent Events ----------------------------------------------------------------------
async def read_events(resp, count: int, timeout: float = 10.0) -> list[tuple[str | None, str | None, str]]:
    """The next `count` events (id, event, data); comments are skipped."""
    out: list = []
    block: dict = {}
    async def read():
        while len(out) < count:
            line = (await resp.content.readline()).decode()
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if line == "":
                if "data" in block:
                    out.append((block.get("id"), block.get("event"), block["data"]))
                block.clear()
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                block[key] = value[1:] if value.startswith(" ") else value
    await asyncio.wait_for(read(), timeout)
    return out


async def test_sse_delivers_the_same_sequence_as_the_changes_endpoint(client):
    ada, bob = await register(client), await register(client)
    ws = await new_workspace(client, ada)
    await join(client, ws, ada, bob)
    async with client.get(EVENTS, headers=bob.headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await read_events(resp, 2)       # what is already there, from the beginning
        for i in range(5):
            await rename(client, ws, ada, f"live {i}")
        live = await read_events(resp, 5)
    events = first + live
    assert all(kind == "change" for _, kind, _ in events)
    streamed = [json.loads(data) for _, _, data in events]
    full = await everything(client, bob)
    assert streamed == full[:7]
    # each id is a cursor: resuming from it answers what came after
    resumed = await feed(client, bob, since=events[1][0])
    assert resumed["changes"] == full[2:]


async def test_sse_resumes_from_last_event_id(client):
    ada = await register(client)
    ws = await new_workspace(client, ada)
    for i in range(3):
        await rename(client, ws, ada, f"v{i}")
    full = await everything(client, ada)
    async with client.get(EVENTS, headers=ada.headers) as resp:
        events = await read_events(resp, 2)
    last_id = events[-1][0]
    # the reconnecting EventSource sends the URL again (with its old since) and Last-Event-ID
    async with client.get(EVENTS, params={"since": "now"},
                          headers={**ada.headers, "Last-Event-ID": last_id}) as resp:
        rest = await read_events(resp, len(full) - 2)
    assert [json.loads(d) for _, _, d in rest] == full[2:]


async def test_sse_since_now_sends_only_new_changes_and_heartbeats(client, monkeypatch):
    monkeypatch.setattr(feed_module, "HEARTBEAT", 0.2)
    ada = await register(client)
    ws = await new_workspace(client, ada)
    async with client.get(EVENTS, params={"since": "now"}, headers=ada.headers) as resp:
        comments = 0
        while comments < 3:        # the greeting, then heartbeats on a quiet stream
            line = await asyncio.wait_for(resp.content.readline(), 5)
            assert not line.startswith((b"id:", b"data:")), "nothing old is sent"
            comments += line.startswith(b": ")
        await rename(client, ws, ada, "New")
        [(_, kind, data)] = await read_events(resp, 1)
    assert kind == "change" and json.loads(data)["entity"] == "workspace"


async def test_sse_stream_ends_when_its_session_is_revoked(client):
    ada = await register(client)
    await new_workspace(client, ada)
    async with client.get(EVENTS, params={"since": "now"}, headers=ada.headers) as resp:
        await parked(client, 1)
        assert (await client.post("/api/v1/auth/logout", headers=ada.headers)).status == 204
        with pytest.raises(EOFError):
            await read_events(resp, 1)
    assert the_feed(client).waiting == 0


async def test_sse_stream_ends_when_its_access_token_expires(make_client):
    client = await make_client(auth__access_token_ttl=1)
    ada = await register(client)
    async with client.get(EVENTS, params={"since": "now"}, headers=ada.headers) as resp:
        assert resp.status == 200
        # ends by itself (the client comes back with a fresh token and its Last-Event-ID)
        with pytest.raises(EOFError):
            await read_events(resp, 1, timeout=10)
    assert the_feed(client).waiting == 0


# -- the query -------------------------------------------------------------------------------
async def test_pages_are_read_through_the_indexes(client, engine):
    ada = await register(client)
    await new_workspace(client, ada)
    await new_workspace(client, ada, "Second")
    db = client.server.app[DB]
    sql, params = feed_module._merged_query(engine, 0, 10, 51, ada.id, ["a", "b"])
    if engine == "postgresql":
        # a feed PostgreSQL knows to be large, the caller's workspaces a small part of it (with a
        # handful of rows it sorts them, rightly):
        # each arm an ordered index range scan, merged (Merge Append), no sort of the whole range
        def fill(tx):
            tx.execute("INSERT INTO changes (seq, workspace_id, entity, entity_id, op, at, user_id)"
                       " SELECT 1000 + n, CASE n % 100 WHEN 0 THEN 'a' WHEN 1 THEN 'b' ELSE 'c' END, 'document', 'd',"
                       " 'upsert', 't', CASE WHEN n % 7 = 0 THEN ? END FROM generate_series(1, 30000) n", (ada.id,))
            tx.execute("ANALYZE changes")
        await db.write(fill)
        sql, params = feed_module._merged_query(engine, 1000, 31000, 51, ada.id, ["a", "b"])
        plan = " | ".join(row[0] for row in await db.all("EXPLAIN " + sql, params))
        assert plan.count("Index Scan using changes_workspace") == 2, plan
        assert "Scan using changes_user" in plan, plan
        assert "Merge Append" in plan and " Sort  " not in plan and "Bitmap" not in plan, plan
        plan = " | ".join(row[0] for row in await db.all(
            "EXPLAIN " + feed_module.HEAD_AND_WORKSPACES[engine], (ada.id,)))
        assert "members_user" in plan, plan
        return
    plan = " | ".join(row[3] for row in await db.all("EXPLAIN QUERY PLAN " + sql, params))
    assert plan.count("USING INDEX changes_workspace (workspace_id=? AND seq>? AND seq<?)") == 2, plan
    assert "USING INDEX changes_user (user_id=? AND seq>? AND seq<?)" in plan, plan
    assert "MERGE (UNION ALL)" in plan and "TEMP B-TREE" not in plan, plan
    plan = " | ".join(row[3] for row in await db.all(
        "EXPLAIN QUERY PLAN " + feed_module.HEAD_AND_WORKSPACES[engine], (ada.id,)))
    assert "USING INDEX members_user" in plan or "USING COVERING INDEX members_user" in plan, plan


async def test_cursors_stay_valid_when_the_database_moves_to_postgresql(make_client, tmp_path, engine):
    """`mdsync migrate-db`: the feed's head comes along as SQLite had it (sqlite_sequence, which may
    be past the newest row left), so an issued cursor is neither ahead (422) nor stepped over, and
    the next change is numbered after it."""
    if engine == "postgresql":
        pytest.skip("moves a SQLite database to PostgreSQL: once, from the sqlite variant")
    from mdsync.db import database_for
    from mdsync.ops import movedb
    from mdsync.sync import changes as change_log
    from tests import engines, pgserver, prerequisites
    from tests.builders import make_settings

    if pgserver.missing_reason():
        prerequisites.missing(pgserver.missing_reason())
    data_dir = tmp_path / "moving"
    client = await make_client(data_dir=data_dir)
    ada = await register(client)
    ws = await new_workspace(client, ada)
    await rename(client, ws, ada, "Renamed")
    cursor = (await feed(client, ada, since="now"))["cursor"]
    # the newest rows gone (as with a purged workspace): the head stays where it was
    await client.server.app[DB].write(lambda tx: tx.execute("DELETE FROM changes WHERE seq >= ?",
                                                            (feed_module.decode_cursor(cursor) - 1,)))
    assert (await feed(client, ada, since="now"))["cursor"] == cursor
    await client.close()

    url = engines.empty_database_url(data_dir)   # dropped after the test
    movedb.move(data_dir / "mdsync.db", url)
    moved = database_for(make_settings(data_dir, database__url=url))
    await moved.open()
    try:
        since = feed_module.decode_cursor(cursor)
        page = await feed_module.read_page(moved, ada.id, since, 50)
        assert (page.rows, page.cursor) == ([], since)
        await moved.write(change_log.record, ws, "workspace", ws, "upsert")
        page = await feed_module.read_page(moved, ada.id, since, 50)
        assert [json.loads(change)["seq"] for _, change in page.rows] == [since + 1]
    finally:
        await moved.close()


# -- shutdown --------------------------------------------------------------------------------
async def test_streams_and_long_polls_end_cleanly_when_the_server_stops(server_process):
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open"})
    async with aiohttp.ClientSession() as http:
        resp = await http.post(server.url("/api/v1/auth/register"),
                               json={"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"})
        assert resp.status == 201, await resp.text()
        headers = bearer((await resp.json())["access_token"])
        cursor = (await (await http.get(server.url(CHANGES), params={"since": "now"}, headers=headers)).json())["cursor"]
        # `mdsync serve` does not cancel handlers whose client left: the poll notices by itself
        with pytest.raises(asyncio.TimeoutError):
            await http.get(server.url(CHANGES), params={"since": cursor, "wait": "60"}, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=0.5))

        async def waiting() -> str:
            text = await (await http.get(server.url("/metrics"))).text()
            return re.search(r"^mdsync_feed_waiting (\S+)$", text, re.M).group(1)
        for _ in range(100):
            if await waiting() == "0.0":
                break
            await asyncio.sleep(0.05)
        assert await waiting() == "0.0"

        stream = await http.get(server.url(EVENTS), params={"since": "now"}, headers=headers)
        assert stream.status == 200
        assert (await asyncio.wait_for(stream.content.readline(), 5)).startswith(b":")
        poll = asyncio.ensure_future(http.get(server.url(CHANGES), params={"since": cursor, "wait": "60"},
                                              headers=headers))
        await asyncio.sleep(0.3)   # the poll is parked in the server (nothing can tell us from outside)
        exit_code = asyncio.ensure_future(asyncio.to_thread(server.terminate))
        rest = await asyncio.wait_for(stream.read(), 10)       # EOF: the stream ended, not cut
        assert b"data:" not in rest
        answer = await asyncio.wait_for(poll, 10)
        assert answer.status == 200
        assert (await answer.json()) == {"changes": [], "cursor": cursor, "has_more": False}
        assert await exit_code == 0
