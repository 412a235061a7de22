"""Thinning of automatic versions: the pure policy on a synthetic 90-day history of 10 000
versions, then the same history in a real database pruned by `mdsync versions prune` (a real
subprocess) and by the server's periodic task. Named, restore and import versions are never
removed; every removal is a `delete` in the change feed."""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from mdsync import clock
from mdsync.appkeys import DB
from mdsync.versions import policy
from tests.builders import document, make_workspace, register
from tests.processes import MDSYNC
from tests.processes import subprocess_env as cli_env
from tests.readers import db_rows

pytestmark = pytest.mark.both_engines

API = "/api/v1"


def synthetic_history(now: datetime, count: int = 10_000, days: int = 90, seed: int = 7) -> list[tuple[str, str]]:
    """`count` automatic versions over `days`, in editing sessions (bursts of versions minutes
    apart) rather than uniformly; none within 10 minutes of the 24 h and 7 d boundaries, so a
    prune run a few seconds after `now` names the same versions."""
    rand = random.Random(seed)
    edges = [now - policy.KEEP_ALL, now - policy.HOURLY_UNTIL]
    out: list[tuple[str, str]] = []
    while len(out) < count:
        at = now - timedelta(seconds=rand.uniform(60, days * 86400))
        for _ in range(rand.randint(1, 40)):  # a session: versions a few minutes apart
            at += timedelta(seconds=rand.uniform(30, 900))
            if at >= now - timedelta(seconds=30) or any(abs((at - e).total_seconds()) < 600 for e in edges):
                continue
            out.append((str(uuid.UUID(int=rand.getrandbits(128))), clock.iso(at)))
            if len(out) == count:
                break
    rand.shuffle(out)
    return out


def expected_kept(history: list[tuple[str, str]], now: datetime) -> set[str]:
    """The policy restated with datetimes and explicit groups (independent of policy.py's code)."""
    parsed = [(clock.parse(created), vid) for vid, created in history]
    kept = {vid for at, vid in parsed if now - at < timedelta(hours=24)}

    def newest_per(bucket, tier_test):
        groups = sorted(parsed, key=lambda p: bucket(p[0]))
        for _, members in itertools.groupby(groups, key=lambda p: bucket(p[0])):
            at, vid = max(members)
            if tier_test(now - at):
                kept.add(vid)

    newest_per(lambda t: (t.year, t.month, t.day, t.hour), lambda age: timedelta(hours=24) <= age < timedelta(days=7))
    newest_per(lambda t: (t.year, t.month, t.day), lambda age: age >= timedelta(days=7))
    return kept


def test_policy_keeps_exactly_what_it_names():
    now = datetime(2026, 11, 29, 16, 30, tzinfo=UTC)
    history = synthetic_history(now)
    assert len(history) == 10_000
    kept = policy.keep(history, now)
    assert kept == expected_kept(history, now)
    removed = policy.thin(history, now)
    assert len(removed) + len(kept) == 10_000 and not set(removed) & kept
    # the shape: everything of the last day, at most one per hour for a week, one per day after
    ages = {vid: now - clock.parse(created) for vid, created in history}
    day = [v for v in kept if ages[v] < timedelta(hours=24)]
    week = [v for v in kept if timedelta(hours=24) <= ages[v] < timedelta(days=7)]
    old = [v for v in kept if ages[v] >= timedelta(days=7)]
    assert len(day) == sum(1 for a in ages.values() if a < timedelta(hours=24))
    assert len(week) <= 6 * 24 + 1 and len(old) <= 84
    by_day = {}
    for vid in old:
        by_day.setdefault(dict(history)[vid][:10], []).append(vid)
    assert all(len(v) == 1 for v in by_day.values())
    # monotone: thinning what it kept removes nothing more, now or an hour later
    kept_history = [(v, c) for v, c in history if v in kept]
    assert policy.keep(kept_history, now) == kept
    later = now + timedelta(hours=1)
    assert policy.keep(kept_history, later) == policy.keep(history, later)


def test_policy_edges():
    now = datetime(2026, 11, 29, 12, 30, tzinfo=UTC)
    at = lambda **kw: clock.iso(now - timedelta(**kw))  # noqa: E731
    # two in one hour, 2 days ago: the newer stays
    assert policy.keep([("a", at(days=2, minutes=25)), ("b", at(days=2, minutes=5))], now) == {"b"}
    # an hour bucket straddling the 24 h line: the older one goes, the younger is kept anyway
    assert policy.keep([("old", at(hours=24, minutes=5)), ("young", at(hours=23, minutes=58))], now) == {"young"}
    # a lone version of any age is kept
    assert policy.keep([("x", at(days=80))], now) == {"x"}
    assert policy.keep([], now) == set()


async def insert_history(client, doc_id: str, history: list[tuple[str, str]], others: list[tuple[str, str, str]]):
    """Rows straight into the versions table (a 90-day past cannot be typed in a test)."""
    def insert(tx):
        ws = tx.value("SELECT workspace_id FROM documents WHERE id = ?", (doc_id,))
        tx.executemany("INSERT INTO versions (id, document_id, workspace_id, created_at, kind, label, authors, size,"
                       " markdown, state) VALUES (?, ?, ?, ?, ?, ?, '[]', 1, 'x', ?)",
                       [(vid, doc_id, ws, created, "auto", None, b"\x00") for vid, created in history]
                       + [(vid, doc_id, ws, created, kind, "kept", b"\x00") for vid, created, kind in others])
    await client.server.app[DB].write(insert)


def kept_ids(client, doc_id: str) -> set[str]:
    return {r[0] for r in db_rows(client, "SELECT id FROM versions WHERE document_id = ?", (doc_id,))}


async def test_cli_prune_removes_exactly_the_policys_choice(make_client, tmp_path):
    data = tmp_path / "prune-data"
    client = await make_client(data_dir=data)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, markdown="x")
    other = await document(client, owner, ws, markdown="y")
    now = clock.now()
    history = synthetic_history(now)
    rand = random.Random(3)
    others = [(str(uuid.uuid4()), clock.iso(now - timedelta(days=rand.uniform(1.5, 89), seconds=i)), kind)
              for i, kind in enumerate(["named", "restore", "import"] * 40)]
    await insert_history(client, doc["id"], history, others)
    # a second document's few old versions are thinned on their own
    small = [(str(uuid.uuid4()), clock.iso(now - timedelta(days=30, minutes=m))) for m in (1, 2, 3)]
    await insert_history(client, other["id"], small, [])
    expected = expected_kept(history, now) | {vid for vid, _, _ in others}
    removed = {vid for vid, _ in history} - expected

    dry = await asyncio.to_thread(subprocess.run, [*MDSYNC, "versions", "prune", "--dry-run"],
                                  env=cli_env(data), capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert lines[-1] == f"would remove {len(removed) + 2} automatic versions"
    assert {line.split()[2] for line in lines[:-1]} == removed | {small[1][0], small[2][0]}
    assert len(kept_ids(client, doc["id"])) == 10_000 + len(others)  # nothing removed

    feed_before = client.server.app[DB]
    run = await asyncio.to_thread(subprocess.run, [*MDSYNC, "versions", "prune"],
                                  env=cli_env(data), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout.strip().splitlines()
    assert out[-1] == f"removed {len(removed) + 2} automatic versions"
    assert {line.split()[1] for line in out[:-1]} == removed | {small[1][0], small[2][0]}
    assert kept_ids(client, doc["id"]) == expected
    assert kept_ids(client, other["id"]) == {small[0][0]}  # the newest of that day
    # every named/restore/import version survived; every removal is in the change feed
    deletes = {r["entity_id"] for r in await feed_before.all(
        "SELECT entity_id FROM changes WHERE entity = 'version' AND op = 'delete'")}
    assert deletes == removed | {small[1][0], small[2][0]}
    again = await asyncio.to_thread(subprocess.run, [*MDSYNC, "versions", "prune"],
                                    env=cli_env(data), capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == "nothing to prune"
    # the API lists what is left, newest first, across pages
    seen, cursor = [], None
    for _ in range(100):
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        resp = await client.get(f"{API}/documents/{doc['id']}/versions", params=params, headers=owner.headers)
        body = await resp.json()
        seen += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert {v["id"] for v in seen} == expected
    stamps = [(v["created_at"], v["id"]) for v in seen]
    assert stamps == sorted(stamps, reverse=True)


async def test_periodic_task_prunes(make_client):
    # a history long enough that the server deletes in several batches
    client = await make_client(versions__prune_interval_seconds=0.2)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, markdown="x")
    now = clock.now()
    history = synthetic_history(now, count=2000, days=60, seed=9)
    named = ("11111111-0000-4000-8000-000000000000", clock.iso(now - timedelta(days=10, minutes=9)), "named")
    await insert_history(client, doc["id"], history, [named])
    expected = expected_kept(history, now) | {named[0]}
    assert len(history) - len(expected) > 2 * 500
    db = client.server.app[DB]

    async def left():
        return {r["id"] for r in await db.all("SELECT id FROM versions WHERE document_id = ?", (doc["id"],))}

    deadline = asyncio.get_running_loop().time() + 20
    while await left() != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert await left() == expected
