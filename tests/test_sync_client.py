"""`mdsync sync DIR` (docs/sync.md) against a real `mdsync serve` on 127.0.0.1, the CLI as a
subprocess, and live npm yjs + y-websocket clients (tests/interop/sync_live.mjs) editing the
same documents: initial pull, a second pass that writes nothing, offline edits merged by CRDT,
renames, moves and deletes both ways, read-only documents, bad input and exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.builders import PASSWORD
from tests.nodeclients import needs_node, run_node
from tests.processes import MDSYNC, ROOT, ServerProcess, subprocess_env

API = "/api/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sync") / "data"
    data_dir.mkdir()
    proc = ServerProcess(data_dir, {"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_AUTH__ACCESS_TOKEN_TTL": "3600",
                                    "MDSYNC_AUTH__REGISTER_ATTEMPTS_PER_ADDRESS": "1000",
                                    "MDSYNC_LIMITS__MAX_DOCUMENT_BYTES": "200000"})
    proc.start()
    yield proc
    proc.kill()


class User:
    """A registered user on the real server: a session, a PAT, a workspace of their own."""

    def __init__(self, server: ServerProcess, http: aiohttp.ClientSession, access: str):
        self.server, self.http, self.access = server, http, access
        self.pat = ""
        self.ws = ""

    def url(self, path: str) -> str:
        return self.server.url(API + path)

    async def call(self, method: str, path: str, expect: int | None = None, headers: dict | None = None, **kw):
        headers = {"Authorization": f"Bearer {self.access}", **(headers or {})}
        async with self.http.request(method, self.url(path), headers=headers, **kw) as resp:
            body = await resp.read()
            assert expect is None or resp.status == expect, (resp.status, body[:500])
            if resp.content_type == "application/json" or resp.content_type.endswith("+json"):
                return json.loads(body)
            return body

    async def content(self, doc_id: str) -> str:
        return (await self.call("GET", f"/documents/{doc_id}/content", 200)).decode()

    async def doc(self, title: str, folder_id: str | None = None, markdown: str = "") -> str:
        created = await self.call("POST", f"/workspaces/{self.ws}/documents", 201,
                                  json={"title": title, "folder_id": folder_id, "markdown": markdown})
        return created["id"]

    async def folder(self, name: str, parent_id: str | None = None) -> str:
        return (await self.call("POST", f"/workspaces/{self.ws}/folders", 201,
                                json={"name": name, "parent_id": parent_id}))["id"]

    async def tree(self) -> dict:
        return await self.call("GET", f"/workspaces/{self.ws}/tree", 200)

    async def cursor(self) -> str:
        return (await self.call("GET", "/sync/changes", 200, params={"since": "now"}))["cursor"]

    async def changes_since(self, cursor: str) -> list[dict]:
        page = await self.call("GET", "/sync/changes", 200, params={"since": cursor, "limit": 200})
        return [c for c in page["changes"] if c["workspace_id"] == self.ws]


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def new_user(server, http, workspace: str | None = "Notes", scopes=("read", "write"), invitation=None) -> User:
    import uuid
    body = {"email": f"u-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD, "name": "Writer"}
    if invitation:
        body["invitation"] = invitation
    async with http.post(server.url(f"{API}/auth/register"), json=body) as resp:
        assert resp.status == 201, await resp.text()
        pair = await resp.json()
    user = User(server, http, pair["access_token"])
    user.pat = (await user.call("POST", "/me/tokens", 201, json={"name": "sync", "scopes": list(scopes)}))["token"]
    if workspace:
        user.ws = (await user.call("POST", "/workspaces", 201, json={"name": workspace}))["id"]
    return user


def run_sync(directory: Path, *args: str, token: str | None = None, server: ServerProcess | None = None,
             workspace: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    argv = [*MDSYNC, "sync", str(directory), *args]
    if server is not None:
        argv += ["--server", server.base]
    if workspace is not None:
        argv += ["--workspace", workspace]
    env = subprocess_env(directory)
    env.pop("MDSYNC_SERVER__DATA_DIR", None)
    if token is not None:
        env["MDSYNC_TOKEN"] = token
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def actions(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in root.rglob("*.md")
            if ".mdsync" not in p.relative_to(root).parts}


async def wait_content(user: User, doc_id: str, check, what: str, timeout: float = 10) -> str:
    text = ""
    for _ in range(int(timeout / 0.1)):
        text = await user.content(doc_id)
        if check(text):
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: {text!r}")


# -- initial pull, idempotence, binding ------------------------------------------------------------
async def test_initial_pull_places_every_document_as_the_export_names_it_and_a_second_run_writes_nothing(
        server, http, tmp_path):
    user = await new_user(server, http)
    top = await user.folder("Projects")
    sub = await user.folder("Ünïcødé 日本", top)
    expected_ids = []
    for i in range(300):
        expected_ids.append(await user.doc(f"Note {i:03}", [None, top, sub][i % 3], f"# Note {i}\n\nbody {i} ✓\n"))
    _specials = {  # documents the sync must carry (their ids are not needed)
        "dup": [await user.doc("Same", top, "first\n"), await user.doc("Same", top, "second\n")],
        "slash": await user.doc("a/b: c?", None, "slashes\n"),
        "unicode": await user.doc("Café ☕ 日本語", sub, "naïve — ünïcode\n"),
        "empty": await user.doc("Empty", None, ""),
    }
    root = tmp_path / "notes"
    result = run_sync(root, "--json", token=user.pat, server=server, workspace="Notes")
    assert result.returncode == 0, result.stderr + result.stdout
    got = files(root)
    assert len(got) == 305
    assert got["Projects/Same.md"] == "first\n" and got["Projects/Same (2).md"] == "second\n"
    assert got["a_b_ c_.md"] == "slashes\n"
    assert got["Projects/Ünïcødé 日本/Café ☕ 日本語.md"] == "naïve — ünïcode\n"
    assert got["Empty.md"] == ""
    tree = await user.tree()
    paths = {a["path"] for a in actions(result) if a["action"] == "pull"}
    assert paths == set(got)
    contents = [await user.content(d["id"]) for d in tree["documents"]]
    assert sorted(got.values()) == sorted(contents)  # every file equals GET …/content, none twice
    for i, doc_id in enumerate(expected_ids[:12]):
        folder = ["", "Projects/", "Projects/Ünïcødé 日本/"][i % 3]
        assert got[f"{folder}Note {i:03}.md"] == await user.content(doc_id)
    assert (root / ".mdsync" / "state.db").is_file()
    assert user.pat not in "".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())

    cursor = await user.cursor()
    again = run_sync(root, "--json", token=user.pat)  # server and workspace come from DIR/.mdsync
    assert again.returncode == 0, again.stderr
    assert actions(again) == []
    assert await user.changes_since(cursor) == []  # nothing was written on the server
    assert files(root) == got


async def test_exit_codes_token_refused_usage_and_a_directory_bound_elsewhere(server, http, tmp_path):
    user = await new_user(server, http, "Mine")
    await user.doc("Kept", None, "kept\n")
    root = tmp_path / "d"
    missing = run_sync(root, server=server, workspace="Mine")
    assert missing.returncode == 2 and "MDSYNC_TOKEN" in missing.stderr
    refused = run_sync(root, token="mds_not_a_token_at_all_xxxxxxxxxxxxxxxx", server=server, workspace="Mine")
    assert refused.returncode == 3 and "refused" in refused.stderr
    assert run_sync(root, token=user.pat, server=server, workspace="Mine").returncode == 0
    other_ws = (await user.call("POST", "/workspaces", 201, json={"name": "Other"}))["id"]
    bound = run_sync(root, token=user.pat, workspace=other_ws)
    assert bound.returncode == 2 and "bound to workspace" in bound.stderr
    token_file = tmp_path / "token"
    token_file.write_text(user.pat + "\n")
    assert run_sync(root, "--token-file", str(token_file)).returncode == 0
    await user.call("DELETE", f"/me/tokens/{(await user.call('GET', '/me/tokens', 200))['items'][0]['id']}", 204)
    revoked = run_sync(root, token=user.pat)
    assert revoked.returncode == 3
    assert (root / "Kept.md").read_text() == "kept\n"  # files kept


# -- offline merge with a live client --------------------------------------------------------------
def ws_url(server: ServerProcess) -> str:
    return server.base.replace("http://", "ws://") + "/ws/docs"


@needs_node
async def test_offline_edits_merge_with_a_live_clients_edits(server, http, tmp_path):
    user = await new_user(server, http)
    doc_id = await user.doc("Plan", None, "First paragraph here.\n\nSecond paragraph.\n\nThird paragraph ends.\n")
    root = tmp_path / "plan"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    path = root / "Plan.md"
    # the CLI is stopped; a live client edits paragraph 3 while the file's paragraph 1 changes
    live = asyncio.create_task(run_node("sync_live.mjs", "edit", {
        "url": ws_url(server), "doc": doc_id, "token": user.access, "after": "Third paragraph",
        "insert": " (LIVE)", "expect": ["LOCAL EDIT"]}, timeout=60))
    await wait_content(user, doc_id, lambda t: "(LIVE)" in t, "the live edit on the server")
    path.write_text(path.read_text().replace("First paragraph", "First LOCAL EDIT paragraph"))
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert [a["action"] for a in actions(result)] == ["merge"]
    expected = "First LOCAL EDIT paragraph here.\n\nSecond paragraph.\n\nThird paragraph (LIVE) ends.\n"
    assert path.read_text() == expected
    assert await wait_content(user, doc_id, lambda t: t == expected, "merged on the server") == expected
    assert (await live)["text"] == expected  # the live client got the offline edit too

    # both edit one sentence: both texts present, no conflict markers, no copies
    live = asyncio.create_task(run_node("sync_live.mjs", "edit", {
        "url": ws_url(server), "doc": doc_id, "token": user.access, "after": "Second",
        "insert": " remote-words", "expect": ["local-words"]}, timeout=60))
    await wait_content(user, doc_id, lambda t: "remote-words" in t, "the live edit on the server")
    path.write_text(path.read_text().replace("Second paragraph", "Second paragraph local-words"))
    assert run_sync(root, token=user.pat).returncode == 0
    merged = path.read_text()
    assert "remote-words" in merged and "local-words" in merged
    assert "<<<<" not in merged and "====" not in merged and merged.count("Second") == 1
    assert sorted(files(root)) == ["Plan.md"]
    assert await wait_content(user, doc_id, lambda t: t == merged, "merged on the server") == merged
    assert (await live)["text"] == merged


# -- creates, renames, moves and deletes both ways -------------------------------------------------
async def test_creates_renames_moves_and_deletes_both_ways(server, http, tmp_path):
    user = await new_user(server, http)
    arch = await user.folder("Archive")
    a = await user.doc("Alpha", None, "alpha text\n")
    b = await user.doc("Beta", None, "beta text\n")
    c = await user.doc("Gamma", None, "gamma text\n")
    d = await user.doc("Delta", arch, "delta text\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0

    # here: a new file in a new directory, a rename, a move, a delete
    (root / "Ideas").mkdir()
    (root / "Ideas" / "Fresh.md").write_text("fresh text\n")
    (root / "Alpha.md").rename(root / "Alpha renamed.md")
    (root / "Beta.md").rename(root / "Archive" / "Beta.md")
    (root / "Gamma.md").unlink()
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    kinds = sorted(x["action"] for x in actions(result))
    assert kinds == ["create", "create", "delete", "move", "rename"], actions(result)
    tree = await user.tree()
    by_id = {x["id"]: x for x in tree["documents"]}
    assert by_id[a]["title"] == "Alpha renamed" and by_id[b]["folder_id"] == arch and c not in by_id
    ideas = next(f for f in tree["folders"] if f["name"] == "Ideas")
    fresh = next(x for x in tree["documents"] if x["title"] == "Fresh")
    assert fresh["folder_id"] == ideas["id"] and await user.content(fresh["id"]) == "fresh text\n"
    trash = await user.call("GET", f"/workspaces/{user.ws}/trash", 200)
    assert c in json.dumps(trash)  # to the trash, not purged

    # there: a rename, a move out of the folder, a delete
    await user.call("PATCH", f"/documents/{a}", 200, json={"title": "Alpha again"})
    await user.call("PATCH", f"/documents/{d}", 200, json={"folder_id": None})
    await user.call("DELETE", f"/documents/{fresh['id']}", 204)
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    got = files(root)
    assert got["Alpha again.md"] == "alpha text\n" and got["Delta.md"] == "delta text\n"
    assert "Ideas/Fresh.md" not in got and "Alpha renamed.md" not in got and "Archive/Delta.md" not in got
    assert (root / ".mdsync" / "trash" / "Ideas" / "Fresh.md").read_text() == "fresh text\n"
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []


async def test_delete_here_versus_edit_there_keeps_the_edit(server, http, tmp_path):
    user = await new_user(server, http)
    doc_id = await user.doc("Shared", None, "one\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    (root / "Shared.md").unlink()
    await user.call("PUT", f"/documents/{doc_id}/content", 200, data="one\ntwo from there\n",
                    headers={"Content-Type": "text/markdown"})
    assert run_sync(root, token=user.pat).returncode == 0
    assert (root / "Shared.md").read_text() == "one\ntwo from there\n"
    assert (await user.call("GET", f"/documents/{doc_id}", 200))["deleted_at"] is None

    # deleted there, edited here: restored with the edit
    await user.call("DELETE", f"/documents/{doc_id}", 204)
    (root / "Shared.md").write_text("one\ntwo from there\nthree from here\n")
    assert run_sync(root, token=user.pat).returncode == 0
    assert (await user.call("GET", f"/documents/{doc_id}", 200))["deleted_at"] is None
    assert await user.content(doc_id) == "one\ntwo from there\nthree from here\n"


# -- read-only, dry run, bad input -----------------------------------------------------------------
async def test_a_viewers_files_are_read_only_and_their_edits_are_kept_not_sent(server, http, tmp_path):
    owner = await new_user(server, http, "Team")
    doc_id = await owner.doc("Handbook", None, "rules\n")
    invitation = await owner.call("POST", f"/workspaces/{owner.ws}/invitations", 201, json={"role": "viewer"})
    viewer = await new_user(server, http, None, invitation=invitation["token"])
    root = tmp_path / "v"
    assert run_sync(root, token=viewer.pat, server=server, workspace=owner.ws).returncode == 0
    path = root / "Handbook.md"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    os.chmod(path, 0o644)
    path.write_text("rules\nmy scribble\n")
    result = run_sync(root, token=viewer.pat)
    assert result.returncode == 1 and "Handbook.md" in result.stderr and "read-only" in result.stderr
    assert path.read_text() == "rules\nmy scribble\n"  # kept
    assert await owner.content(doc_id) == "rules\n"   # never sent


async def test_dry_run_prints_the_plan_and_changes_nothing(server, http, tmp_path):
    user = await new_user(server, http)
    doc_id = await user.doc("Plan", None, "v1\n")
    fresh = tmp_path / "fresh"
    dry = run_sync(fresh, "--dry-run", token=user.pat, server=server, workspace="Notes")
    assert dry.returncode == 0 and "Plan.md" in dry.stdout
    assert not fresh.exists()
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    (root / "Plan.md").write_text("v2 here\n")
    (root / "New.md").write_text("new\n")
    cursor = await user.cursor()
    dry = run_sync(root, "--dry-run", "--json", token=user.pat)
    assert dry.returncode == 0, dry.stderr
    assert {(x["action"], x["path"]) for x in actions(dry)} == {("push", "Plan.md"), ("create", "New.md")}
    assert all(x["dry_run"] for x in actions(dry))
    assert await user.changes_since(cursor) == [] and await user.content(doc_id) == "v1\n"
    real = run_sync(root, "--json", token=user.pat)  # the dry run left the state as it was
    assert {(x["action"], x["path"]) for x in actions(real)} == {("push", "Plan.md"), ("create", "New.md")}
    assert await wait_content(user, doc_id, lambda t: t == "v2 here\n", "pushed") == "v2 here\n"


async def test_bad_input_is_named_and_the_rest_syncs(server, http, tmp_path):
    user = await new_user(server, http)
    doc_id = await user.doc("Good", None, "good\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    (root / "Latin1.md").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / "Huge.md").write_text("x" * 300_000 + "\n")
    (root / "Good.md").write_text("good\nbetter\n")
    (root / "CRLF.md").write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    (root / "  .md").write_text("a title the server refuses (blank)\n")
    result = run_sync(root, token=user.pat)
    assert result.returncode == 1
    assert "  .md: 422" in result.stderr and "title" in result.stderr
    assert "Latin1.md: not UTF-8" in result.stderr and "Huge.md: 413" in result.stderr
    assert await wait_content(user, doc_id, lambda t: t == "good\nbetter\n", "the good edit") == "good\nbetter\n"
    tree = await user.tree()
    crlf = next(x for x in tree["documents"] if x["title"] == "CRLF")
    assert await user.content(crlf["id"]) == "line one\nline two\n"  # LF and no BOM on the server
    assert (root / "CRLF.md").read_bytes() == b"\xef\xbb\xbfline one\r\nline two\r\n"  # kept here
    assert {x["title"] for x in tree["documents"]} == {"Good", "CRLF"}
    assert (root / "Latin1.md").exists() and (root / "Huge.md").exists()


# -- watch -----------------------------------------------------------------------------------------
def wait_file(path: Path, check, what: str, proc: subprocess.Popen, timeout: float = 15) -> str:
    import time
    text = ""
    for _ in range(int(timeout / 0.05)):
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if check(text):
            return text
        assert proc.poll() is None, f"mdsync sync --watch exited {proc.returncode}: {proc.stderr.read()}"
        time.sleep(0.05)
    raise AssertionError(f"{what}: {text!r}")


@needs_node
async def test_watch_pushes_saves_and_pulls_live_edits_until_sigterm(server, http, tmp_path):
    import signal
    user = await new_user(server, http)
    doc_id = await user.doc("Live", None, "alpha\n\nbeta\n")
    root = tmp_path / "w"
    env = subprocess_env(root)
    env["MDSYNC_TOKEN"] = user.pat
    proc = subprocess.Popen([*MDSYNC, "sync", str(root), "--watch", "--server", server.base, "--workspace", "Notes"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = root / "Live.md"
        await asyncio.to_thread(wait_file, path, lambda t: t == "alpha\n\nbeta\n", "the initial pull", proc)
        live = asyncio.create_task(run_node("sync_live.mjs", "edit", {
            "url": ws_url(server), "doc": doc_id, "token": user.access, "after": "beta",
            "insert": " REMOTE", "expect": ["LOCAL"]}, timeout=60))
        # a live edit reaches the file
        await asyncio.to_thread(wait_file, path, lambda t: "REMOTE" in t, "the live edit in the file", proc)
        # an editor's save through a temp file and a rename reaches the live client
        tmp = root / ".Live.md.swp"
        tmp.write_text(path.read_text().replace("alpha", "alpha LOCAL"))
        os.replace(tmp, path)
        result = await live
        assert result["text"] == "alpha LOCAL\n\nbeta REMOTE\n"
        assert await wait_content(user, doc_id, lambda t: t == result["text"], "on the server") == result["text"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        assert path.read_text() == "alpha LOCAL\n\nbeta REMOTE\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- resumable after kill -9 -----------------------------------------------------------------------
def killed_after(root: Path, token: str, lines: int, *args: str) -> int:
    """Run a pass with --json and SIGKILL it once it printed `lines` actions; how many it printed."""
    env = subprocess_env(root)
    env["MDSYNC_TOKEN"] = token
    proc = subprocess.Popen([*MDSYNC, "sync", str(root), "--json", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = 0
    try:
        for _ in proc.stdout:
            seen += 1
            if seen >= lines:
                break
    finally:
        proc.kill()
        proc.wait()
    return seen


async def test_kill_9_during_the_initial_pull_and_a_push_then_a_rerun_converges(server, http, tmp_path):
    import random
    rng = random.Random(18)
    user = await new_user(server, http)
    sub = await user.folder("Sub")
    ids = [await user.doc(f"D{i:03}", sub if i % 2 else None, f"doc {i}\n") for i in range(500)]
    root = tmp_path / "w"
    assert run_sync(root, "--dry-run", token=user.pat, server=server, workspace="Notes").returncode == 0
    # bind, then kill the initial pull at 10 random points
    first = killed_after(root, user.pat, rng.randint(1, 40), "--server", server.base, "--workspace", "Notes")
    assert first > 0
    for point in sorted(rng.sample(range(1, 60), 9)):
        killed_after(root, user.pat, point)
    assert run_sync(root, token=user.pat).returncode == 0
    got = files(root)
    assert len(got) == 500 and all(got[f"{'Sub/' if i % 2 else ''}D{i:03}.md"] == f"doc {i}\n" for i in range(500))
    assert len((await user.tree())["documents"]) == 500  # nothing created twice

    # 100 edits, the push killed at 10 random points
    for i in range(100):
        path = root / f"{'Sub/' if i % 2 else ''}D{i:03}.md"
        path.write_text(path.read_text() + f"edit {i}\n")
    for point in sorted(rng.sample(range(1, 12), 10)):
        killed_after(root, user.pat, point)
    assert run_sync(root, token=user.pat).returncode == 0
    for i in range(100):
        assert await user.content(ids[i]) == f"doc {i}\nedit {i}\n"  # each edit once, none doubled
    got = files(root)
    assert all(got[f"{'Sub/' if i % 2 else ''}D{i:03}.md"] == f"doc {i}\nedit {i}\n" for i in range(100))
    assert len((await user.tree())["documents"]) == 500
    final = run_sync(root, "--json", token=user.pat)
    assert final.returncode == 0 and actions(final) == []


# -- attachments -----------------------------------------------------------------------------------
async def test_attachments_both_ways_byte_identical(server, http, tmp_path):
    import hashlib
    user = await new_user(server, http)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
    other = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    first = await user.call("POST", f"/workspaces/{user.ws}/attachments", 201, params={"filename": "pic.png"}, data=png)
    second = await user.call("POST", f"/workspaces/{user.ws}/attachments", 201, params={"filename": "pic.png"}, data=other)
    await user.doc("Page", None, f"![pic](/api/v1/attachments/{first['id']})\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    att = root / "_attachments"
    assert (att / "pic.png").read_bytes() == png and (att / "pic (2).png").read_bytes() == other
    assert (root / "Page.md").read_text() == f"![pic](/api/v1/attachments/{first['id']})\n"  # the stable link

    blob = os.urandom(20000)
    (att / "data.bin").write_bytes(blob)
    (att / "pic (2).png").unlink()
    await user.call("DELETE", f"/attachments/{first['id']}", 204)
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert sorted(a["action"] for a in actions(result)) == ["create", "delete", "trash"]
    assert (root / ".mdsync" / "trash" / "_attachments" / "pic.png").read_bytes() == png
    await user.call("GET", f"/attachments/{second['id']}/meta", 404)
    changes = await user.call("GET", "/sync/changes", 200, params={"limit": 200})
    uploaded = [c["id"] for c in changes["changes"] if c["entity"] == "attachment" and c["workspace_id"] == user.ws
                and c["id"] not in (first["id"], second["id"])]
    meta = await user.call("GET", f"/attachments/{uploaded[0]}/meta", 200)
    assert meta["name"] == "data.bin" and meta["sha256"] == hashlib.sha256(blob).hexdigest()
    assert await user.call("GET", f"/attachments/{uploaded[0]}", 200) == blob
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []


async def test_removal_from_the_workspace_is_exit_3_and_the_files_are_kept(server, http, tmp_path):
    owner = await new_user(server, http, "Team")
    await owner.doc("Shared", None, "shared\n")
    invitation = await owner.call("POST", f"/workspaces/{owner.ws}/invitations", 201, json={"role": "editor"})
    editor = await new_user(server, http, None, invitation=invitation["token"])
    root = tmp_path / "e"
    assert run_sync(root, token=editor.pat, server=server, workspace="Team").returncode == 0
    me = await editor.call("GET", "/me", 200)
    await owner.call("DELETE", f"/workspaces/{owner.ws}/members/{me['id']}", 204)
    removed = run_sync(root, token=editor.pat)
    assert removed.returncode == 3 and "no longer reachable" in removed.stderr
    assert (root / "Shared.md").read_text() == "shared\n"


async def test_a_first_sync_into_a_non_empty_folder_never_overwrites(server, http, tmp_path):
    user = await new_user(server, http)
    doc_id = await user.doc("Notes", None, "server text\n")
    root = tmp_path / "w"
    root.mkdir()
    (root / "Notes.md").write_text("my own text\n")
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    assert (root / "Notes.md").read_text() == "my own text\n"          # kept, and became a document
    assert (root / "Notes (2).md").read_text() == "server text\n"
    titles = sorted(d["title"] for d in (await user.tree())["documents"])
    assert titles == ["Notes", "Notes"] and await user.content(doc_id) == "server text\n"


async def test_a_tiptap_documents_local_edit_is_merged_into_its_fragment_with_a_remote_edit(server, http, tmp_path):
    user = await new_user(server, http)
    rich = (await user.call("POST", f"/workspaces/{user.ws}/documents", 201, json={
        "title": "Rich", "content_model": "tiptap",
        "markdown": "# Rich\n\nfirst paragraph\n\nsecond *one*\n\nthird **bold** paragraph\n"}))["id"]
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    path = root / "Rich.md"
    assert path.read_text() == await user.content(rich)
    assert os.access(path, os.W_OK)  # no longer written read-only: TipTap documents are pushed too
    # offline: a colleague edits the third paragraph while the file's first one changes
    remote = (await user.content(rich)).replace("third **bold** paragraph", "third **bold** paragraph REMOTE")
    await user.call("PUT", f"/documents/{rich}/content", 200, data=remote, headers={"Content-Type": "text/markdown"})
    path.write_text(path.read_text().replace("first paragraph", "first paragraph LOCAL"))
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert [(a["action"], a["path"]) for a in actions(result)] == [("merge", "Rich.md")]
    content = await user.content(rich)
    assert "first paragraph LOCAL" in content and "third **bold** paragraph REMOTE" in content
    assert content.count("first paragraph") == 1 and "second *one*" in content
    assert path.read_text() == content
    # the Yjs state is a fragment edited in place: the other blocks are not rebuilt
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []


@needs_node
async def test_a_tiptap_documents_file_edit_merges_with_a_live_tiptap_editor(server, http, tmp_path):
    user = await new_user(server, http)
    rich = (await user.call("POST", f"/workspaces/{user.ws}/documents", 201, json={
        "title": "Rich", "content_model": "tiptap", "markdown": "# Rich\n\nfirst paragraph\n\nthird paragraph\n"}))["id"]
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    path = root / "Rich.md"
    # the CLI is stopped; a live TipTap editor types at the end of the last paragraph
    live = asyncio.create_task(run_node("sync_live.mjs", "tiptap_edit", {
        "url": ws_url(server), "doc": rich, "token": user.access, "block": 2, "insert": " LIVE",
        "expect": ["LOCAL"]}, timeout=60))
    await wait_content(user, rich, lambda t: "LIVE" in t, "the live edit on the server")
    path.write_text(path.read_text().replace("first paragraph", "first paragraph LOCAL"))
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    expected = "# Rich\n\nfirst paragraph LOCAL\n\nthird paragraph LIVE"
    assert await user.content(rich) == expected and path.read_text() == expected
    assert (await live)["text"].strip() == expected  # the editor got the file's edit, its own kept


async def test_a_save_while_a_merge_is_written_back_loses_nothing(server, http, tmp_path, monkeypatch):
    from mdsync.syncclient import engine
    from mdsync.syncclient.report import Report
    user = await new_user(server, http)
    doc_id = await user.doc("Race", None, "one\n\ntwo\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    cursor = await user.cursor()
    await user.call("PUT", f"/documents/{doc_id}/content", 200, data="one\n\ntwo remote\n",
                    headers={"Content-Type": "text/markdown"})
    for _ in range(100):  # the feed names the document within 2 s (docs/api.md)
        if any(c["id"] == doc_id for c in await user.changes_since(cursor)):
            break
        await asyncio.sleep(0.05)
    pull = engine.Pass.pull_update

    def pull_then_the_user_saves(self, doc, replica):
        pull(self, doc, replica)
        path = root / "Race.md"
        if "saved" not in path.read_text():  # the editor saves just as the merged text is about to be written
            path.write_text(path.read_text().replace("one", "one saved"))

    monkeypatch.setattr(engine.Pass, "pull_update", pull_then_the_user_saves)
    code = await asyncio.to_thread(engine.sync_once, root.resolve(), None, None, user.pat, Report(quiet=True))
    assert code == 0
    assert (root / "Race.md").read_text() == "one saved\n\ntwo remote\n"
    assert await wait_content(user, doc_id, lambda t: t == "one saved\n\ntwo remote\n", "merged") == "one saved\n\ntwo remote\n"


def test_the_sync_token_in_the_environment_is_not_a_server_setting(tmp_path):
    from mdsync import config
    settings = config.load(None, environ={"MDSYNC_TOKEN": "mds_x", "MDSYNC_SERVER__DATA_DIR": str(tmp_path)})
    assert settings.server.data_dir == tmp_path  # `mdsync serve` still starts with MDSYNC_TOKEN exported


async def test_a_server_down_when_the_pass_starts_is_retried(server_process, http, tmp_path):
    import threading
    data_dir = tmp_path / "data"
    env = {"MDSYNC_AUTH__REGISTRATION": "open"}
    first = server_process(data_dir, env)
    port = first.base.rsplit(":", 1)[1]
    user = await new_user(first, http)
    doc_id = await user.doc("Up", None, "up\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=first, workspace="Notes").returncode == 0
    (root / "Up.md").write_text("up\nedited while the server was down\n")
    assert first.terminate() == 0
    later: list = []
    restart = threading.Timer(1.0, lambda: later.append(server_process(data_dir, env, ["--port", port])))
    restart.start()
    try:
        result = await asyncio.to_thread(run_sync, root, token=user.pat)
    finally:
        restart.join()
    assert result.returncode == 0, result.stderr
    user.server = later[0]
    assert await wait_content(user, doc_id, lambda t: "edited while" in t, "pushed after the retry")


# -- creates are recorded before they are sent -----------------------------------------------------
CRASH_AROUND_CREATE = """
import os, sys
from pathlib import Path
from mdsync.syncclient import engine, http
from mdsync.syncclient.report import Report
real = http.Api.json
def json(self, method, path, payload=None, **kw):
    if method == "POST" and path.endswith("/documents") and sys.argv[2] == "before":
        os._exit(9)   # killed before the POST left
    answer = real(self, method, path, payload, **kw)
    if method == "POST" and path.endswith("/documents"):
        os._exit(9)   # killed after the server created it, before the answer was recorded
    return answer
http.Api.json = json
engine.sync_once(Path(sys.argv[1]), None, None, os.environ["MDSYNC_TOKEN"], Report())
"""


def crash_around_create(root: Path, token: str, when: str) -> int:
    import sys
    env = subprocess_env(root)
    env.pop("MDSYNC_SERVER__DATA_DIR", None)
    env["MDSYNC_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", CRASH_AROUND_CREATE, str(root), when], env=env, cwd=ROOT,
                          capture_output=True, timeout=120).returncode


async def test_a_create_killed_after_its_post_is_adopted_not_duplicated(server, http, tmp_path):
    user = await new_user(server, http)
    await user.folder("Sub")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    (root / "Sub" / "New.md").write_text("brand new\n")
    assert crash_around_create(root, user.pat, "after") == 9
    assert [d["title"] for d in (await user.tree())["documents"]] == ["New"]  # the server has it
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert [(a["action"], a["path"]) for a in actions(result)] == [("create", "Sub/New.md")]
    assert "adopted" in actions(result)[0]["detail"]
    tree = await user.tree()
    assert [d["title"] for d in tree["documents"]] == ["New"]  # exactly one
    assert files(root) == {"Sub/New.md": "brand new\n"}
    # edits after the adoption go to that document
    (root / "Sub" / "New.md").write_text("brand new\nand edited\n")
    assert run_sync(root, token=user.pat).returncode == 0
    assert await user.content(tree["documents"][0]["id"]) == "brand new\nand edited\n"

    # killed before the POST left: the record matches nothing, the file is created (once)
    (root / "Other.md").write_text("other\n")
    assert crash_around_create(root, user.pat, "before") == 9
    assert len((await user.tree())["documents"]) == 1
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert [(a["action"], a["path"], a["detail"]) for a in actions(result)] == [("create", "Other.md", None)]
    assert sorted(d["title"] for d in (await user.tree())["documents"]) == ["New", "Other"]
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []


async def test_a_create_killed_after_its_post_then_its_file_renamed_here_is_adopted_and_renamed(server, http, tmp_path):
    user = await new_user(server, http)
    sub = await user.folder("Sub")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    (root / "New.md").write_text("brand new\n")
    assert crash_around_create(root, user.pat, "after") == 9
    [created] = (await user.tree())["documents"]
    (root / "New.md").rename(root / "Sub" / "Renamed.md")  # before the next pass
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert [(a["action"], a["path"]) for a in actions(result)] == [("create", "New.md"),
                                                                   ("rename", "New.md → Sub/Renamed.md")]
    # the document created, renamed and moved as its file was: not a second one from the renamed file
    assert [(d["id"], d["title"], d["folder_id"]) for d in (await user.tree())["documents"]] == [
        (created["id"], "Renamed", sub)]
    assert files(root) == {"Sub/Renamed.md": "brand new\n"}
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []
    (root / "Sub" / "Renamed.md").write_text("brand new\nedited\n")
    assert run_sync(root, token=user.pat).returncode == 0
    assert await user.content(created["id"]) == "brand new\nedited\n"


async def test_a_create_killed_after_its_post_then_edited_on_both_sides_is_adopted_and_merged(server, http, tmp_path):
    user = await new_user(server, http)
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    (root / "New.md").write_text("first line\n\nsecond line\n")
    assert crash_around_create(root, user.pat, "after") == 9
    [created] = (await user.tree())["documents"]
    # before the next pass: edited on the server (the text sent is no longer what it holds) ...
    await user.call("PUT", f"/documents/{created['id']}/content", 200,
                    data="first line from there\n\nsecond line\n\nthird from there\n",
                    headers={"Content-Type": "text/markdown"})
    # ... another device creates a document of the same name from other text ...
    other = await user.doc("New", None, "another device's text\n")
    # ... and the file is edited here
    (root / "New.md").write_text("first line\n\nsecond line edited here\n")
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    adopted = [a for a in actions(result) if a["action"] == "create"]
    assert [(a["path"], a["detail"]) for a in adopted] == [
        ("New.md", "adopted: created by a pass that stopped before recording it")]
    # the document this client created, no third one; both edits in it; the other device's untouched
    assert sorted(d["id"] for d in (await user.tree())["documents"]) == sorted([created["id"], other])
    merged = "first line from there\n\nsecond line edited here\n\nthird from there\n"
    assert await user.content(created["id"]) == merged
    assert await user.content(other) == "another device's text\n"
    assert sorted(files(root).values()) == sorted([merged, "another device's text\n"])
    assert files(root)["New.md"] == merged
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []

    # killed before the POST left, while another device created that name and it was edited: not
    # adopted (created from other text), the file is created
    (root / "Later.md").write_text("mine\n")
    assert crash_around_create(root, user.pat, "before") == 9
    theirs = await user.doc("Later", None, "theirs\n")
    await user.call("PUT", f"/documents/{theirs}/content", 200, data="theirs\nedited\n",
                    headers={"Content-Type": "text/markdown"})
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert [(a["path"], a["detail"]) for a in actions(result) if a["action"] == "create"] == [("Later.md", None)]
    later = [d["id"] for d in (await user.tree())["documents"] if d["title"] == "Later"]
    assert len(later) == 2 and theirs in later
    assert await user.content(theirs) == "theirs\nedited\n"
    assert await user.content(next(i for i in later if i != theirs)) == "mine\n"


async def test_a_document_purged_remotely_while_edited_here_is_created_again_with_the_local_text(server, http, tmp_path):
    user = await new_user(server, http)
    doc_id = await user.doc("Keep", None, "original\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    (root / "Keep.md").write_text("original\nedited here\n")
    await user.call("DELETE", f"/documents/{doc_id}", 204, params={"permanent": "true"})
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert ("create", "Keep.md") in [(a["action"], a["path"]) for a in actions(result)]
    await user.call("GET", f"/documents/{doc_id}", 404)
    tree = await user.tree()
    assert [d["title"] for d in tree["documents"]] == ["Keep"] and tree["documents"][0]["id"] != doc_id
    assert await user.content(tree["documents"][0]["id"]) == "original\nedited here\n"
    assert files(root) == {"Keep.md": "original\nedited here\n"}
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []


# -- the server dying mid-pass ---------------------------------------------------------------------
async def test_the_server_dying_mid_pass_fails_the_rest_by_name_and_the_next_pass_completes(
        server_process, http, tmp_path):
    data_dir = tmp_path / "data"
    env = {"MDSYNC_AUTH__REGISTRATION": "open"}
    first = server_process(data_dir, env)
    port = first.base.rsplit(":", 1)[1]
    user = await new_user(first, http)
    ids = [await user.doc(f"D{i:03}", None, f"doc {i}\n\nlast line\n") for i in range(150)]
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=first, workspace="Notes").returncode == 0
    for i in range(0, 150, 2):  # local edits to the even ones, remote edits to every third one
        path = root / f"D{i:03}.md"
        path.write_text(path.read_text().replace(f"doc {i}", f"doc {i} local"))
    for i in range(0, 150, 3):
        await user.call("PUT", f"/documents/{ids[i]}/content", 200, data=f"doc {i}\n\nlast line remote\n",
                        headers={"Content-Type": "text/markdown"})
    for i in range(3):
        (root / f"New {i}.md").write_text(f"new {i}\n")
    env_cli = subprocess_env(root)
    env_cli.pop("MDSYNC_SERVER__DATA_DIR", None)
    env_cli["MDSYNC_TOKEN"] = user.pat
    proc = subprocess.Popen([*MDSYNC, "sync", str(root), "--json"], env=env_cli, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for n, _ in enumerate(proc.stdout):
            if n >= 4:
                break
        assert first.terminate() == 0  # the server goes away five actions into the pass
        out, err = await asyncio.to_thread(proc.communicate, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    failed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failed = [a for a in failed if a["action"] == "error"]
    assert failed and all("unreachable" in a["detail"] for a in failed)
    assert all(a["path"] in err for a in failed)  # each named in the summary

    second = server_process(data_dir, env, ["--port", port])
    user.server = second
    result = run_sync(root, token=user.pat)
    assert result.returncode == 0, result.stderr
    got = files(root)
    for i in range(150):
        expected = f"doc {i}{' local' if i % 2 == 0 else ''}\n\nlast line{' remote' if i % 3 == 0 else ''}\n"
        assert got[f"D{i:03}.md"] == expected, i
        assert await user.content(ids[i]) == expected, i
    titles = sorted(d["title"] for d in (await user.tree())["documents"])
    assert titles == sorted([f"D{i:03}" for i in range(150)] + [f"New {i}" for i in range(3)])  # none twice
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []


# -- directories -----------------------------------------------------------------------------------
async def test_a_directory_renamed_moved_or_deleted_here_is_one_folder_change_on_the_server(server, http, tmp_path):
    import shutil
    user = await new_user(server, http)
    old = await user.folder("Old")
    inner = await user.folder("Inner", old)
    a = await user.doc("A", old, "a\n")
    c = await user.doc("C", inner, "c\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    os.rename(root / "Old", root / "New")
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert [(x["action"], x["path"]) for x in actions(result)] == [("rename", "Old/ → New/")]
    tree = await user.tree()
    assert sorted((f["id"], f["name"]) for f in tree["folders"]) == sorted([(old, "New"), (inner, "Inner")])
    assert {d["id"]: d["folder_id"] for d in tree["documents"]} == {a: old, c: inner}
    assert files(root) == {"New/A.md": "a\n", "New/Inner/C.md": "c\n"} and not (root / "Old").exists()

    (root / "Parent").mkdir()
    os.rename(root / "New", root / "Parent" / "New")
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    tree = await user.tree()
    parent = next(f for f in tree["folders"] if f["name"] == "Parent")
    assert next(f for f in tree["folders"] if f["id"] == old)["parent_id"] == parent["id"]
    assert files(root) == {"Parent/New/A.md": "a\n", "Parent/New/Inner/C.md": "c\n"}
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []

    # renamed and moved on the server: the files move, the old directories go once empty
    await user.call("PATCH", f"/folders/{old}", 200, json={"name": "Renamed", "parent_id": None})
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert files(root) == {"Renamed/A.md": "a\n", "Renamed/Inner/C.md": "c\n"}
    assert not (root / "Parent" / "New").exists() and (root / "Parent").is_dir()
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []
    os.rename(root / "Renamed", root / "Parent" / "New")
    assert run_sync(root, token=user.pat).returncode == 0

    shutil.rmtree(root / "Parent" / "New")
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    tree = await user.tree()
    assert [f["name"] for f in tree["folders"]] == ["Parent"] and tree["documents"] == []
    assert not (root / "Parent" / "New").exists()
    again = run_sync(root, "--json", token=user.pat)
    assert again.returncode == 0 and actions(again) == []


# -- progress --------------------------------------------------------------------------------------
def test_the_progress_bar_line():
    from mdsync.syncclient.report import bar_line
    assert bar_line(0, 300, 0, 0.0, width=10) == "[----------]   0/300 documents · 0.0 MB · 0 documents/s"
    assert bar_line(150, 300, 2_500_000, 3.0, width=10) == "[#####-----] 150/300 documents · 2.5 MB · 50 documents/s"
    assert bar_line(300, 300, 5_000_000, 2.0, width=10).startswith("[##########] 300/300")


async def test_the_initial_pull_draws_a_bar_on_a_terminal_only(server, http, tmp_path):
    import pty
    import select
    user = await new_user(server, http)
    for i in range(5):
        await user.doc(f"P{i}", None, f"p {i}\n")
    piped = run_sync(tmp_path / "piped", token=user.pat, server=server, workspace="Notes")
    assert piped.returncode == 0
    assert sorted(piped.stdout.splitlines()) == [f"↓ P{i}.md" for i in range(5)]
    assert "documents/s" not in piped.stderr and "\r" not in piped.stderr + piped.stdout

    master, slave = pty.openpty()
    env = subprocess_env(tmp_path / "tty")
    env.pop("MDSYNC_SERVER__DATA_DIR", None)
    env["MDSYNC_TOKEN"] = user.pat
    proc = subprocess.Popen([*MDSYNC, "sync", str(tmp_path / "tty"), "--server", server.base, "--workspace", "Notes"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        for _ in range(600):  # at most 60 s
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"5/5 documents" in seen and b"documents/s" in seen
    assert b"P0.md" not in proc.stdout.read()  # the bar counts the pulled documents
    for quiet in ("-q", "--json"):
        assert run_sync(tmp_path / quiet, quiet, token=user.pat, server=server, workspace="Notes").stderr == ""


async def test_a_pass_reads_only_the_files_whose_mtime_or_size_changed(server, http, tmp_path, monkeypatch):
    from mdsync.syncclient import engine
    from mdsync.syncclient.report import Report
    user = await new_user(server, http)
    ids = [await user.doc(f"F{i}", None, f"file {i}\n") for i in range(20)]
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    read = engine.Pass.read
    reads: list[str] = []

    def counted(self, rel):
        reads.append(rel)
        return read(self, rel)

    monkeypatch.setattr(engine.Pass, "read", counted)
    assert await asyncio.to_thread(engine.sync_once, root.resolve(), None, None, user.pat, Report(quiet=True)) == 0
    assert reads == []
    (root / "F3.md").write_text("file X\n")  # the same size: its mtime tells
    assert await asyncio.to_thread(engine.sync_once, root.resolve(), None, None, user.pat, Report(quiet=True)) == 0
    assert reads == ["F3.md"] and await user.content(ids[3]) == "file X\n"


async def test_an_offline_edit_merges_the_same_way_past_the_etag_retention(server_process, http, tmp_path):
    # the client merges by Yjs state vectors, never by ETag: how long it stayed offline is no matter
    first = server_process(tmp_path / "data", {"MDSYNC_AUTH__REGISTRATION": "open",
                                               "MDSYNC_SYNC__ETAG_RETENTION_DAYS": "0.00001"})  # under a second
    user = await new_user(first, http)
    doc_id = await user.doc("Old", None, "one\n\ntwo\n\nthree\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=first, workspace="Notes").returncode == 0
    async with http.get(user.url(f"/documents/{doc_id}/content"), headers={"Authorization": f"Bearer {user.access}"}) as resp:
        etag = resp.headers["ETag"]  # what a PUT-based client would have kept
    await user.call("PUT", f"/documents/{doc_id}/content", 200, data="one\n\ntwo\n\nthree remote\n",
                    headers={"Content-Type": "text/markdown"})
    (root / "Old.md").write_text("one local\n\ntwo\n\nthree\n")
    await asyncio.sleep(2)
    # the served state of the ETag the file was synced at is gone: a PUT based on it is refused now
    await user.call("PUT", f"/documents/{doc_id}/content", 412, data="x\n",
                    headers={"Content-Type": "text/markdown", "If-Match": etag})
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0, result.stderr
    assert (root / "Old.md").read_text() == await user.content(doc_id) == "one local\n\ntwo\n\nthree remote\n"


async def test_watch_pushes_a_save_of_tracked_files_without_a_full_pass(server, http, tmp_path, monkeypatch):
    from mdsync.syncclient import engine, watch
    from mdsync.syncclient.report import Report
    user = await new_user(server, http)
    doc_id = await user.doc("Quick", None, "one\n\ntwo\n")
    root = tmp_path / "w"
    assert run_sync(root, token=user.pat, server=server, workspace="Notes").returncode == 0
    await user.call("PUT", f"/documents/{doc_id}/content", 200, data="one\n\ntwo remote\n",
                    headers={"Content-Type": "text/markdown"})
    (root / "Quick.md").write_text("one saved\n\ntwo\n")
    (root / "New.md").write_text("new\n")
    report = Report(as_json=True)
    api = engine.Api(server.base, user.pat)
    # a file no document has yet needs the full pass (nothing is done here)
    assert not await asyncio.to_thread(watch.sync_files, root.resolve(), api, report, {"Quick.md", "New.md"})
    assert (root / "Quick.md").read_text() == "one saved\n\ntwo\n"
    tree_reads = []
    real = engine.Api.json

    def json_(self, method, path, payload=None, **kw):
        tree_reads.extend([path] if path.endswith("/tree") else [])
        return real(self, method, path, payload, **kw)

    monkeypatch.setattr(engine.Api, "json", json_)
    assert await asyncio.to_thread(watch.sync_files, root.resolve(), api, report, {"Quick.md"})
    assert tree_reads == []
    assert (root / "Quick.md").read_text() == await user.content(doc_id) == "one saved\n\ntwo remote\n"
    # a document the feed names: pulled alone, unless its place changed (then the tree decides)
    await user.call("PUT", f"/documents/{doc_id}/content", 200, data="one saved\n\ntwo remote again\n",
                    headers={"Content-Type": "text/markdown"})
    assert await asyncio.to_thread(watch.sync_files, root.resolve(), api, report, set(), {doc_id})
    assert tree_reads == [] and (root / "Quick.md").read_text() == "one saved\n\ntwo remote again\n"
    await user.call("PATCH", f"/documents/{doc_id}", 200, json={"title": "Renamed"})
    assert not await asyncio.to_thread(watch.sync_files, root.resolve(), api, report, set(), {doc_id})
    assert not await asyncio.to_thread(watch.sync_files, root.resolve(), api, report, set(), {"unknown-id"})
    api.close()
    result = run_sync(root, "--json", token=user.pat)
    assert result.returncode == 0
    assert sorted((a["action"], a["path"]) for a in actions(result)) == [("create", "New.md"),
                                                                         ("move", "Quick.md → Renamed.md")]


# -- kept-alive connections ------------------------------------------------------------------------
class CountingProxy:
    """A TCP relay on 127.0.0.1 in front of the server: counts the connections clients open,
    and can cut them all (as a server's idle timeout or restart does)."""

    def __init__(self, target: str):
        self.target_port = int(target.rsplit(":", 1)[1])
        self.accepted = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> CountingProxy:
        self.server = await asyncio.start_server(self.relay, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        self.cut()
        await self.server.wait_closed()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()
                self.writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()


async def test_a_pull_of_many_documents_reuses_a_few_connections(server, http, tmp_path):
    from mdsync.syncclient.engine import CONCURRENCY
    user = await new_user(server, http)
    texts = {f"Doc {i}": f"# Doc {i}\n\nbody {i}\n" for i in range(40)}
    for title, text in texts.items():
        await user.doc(title, None, text)
    tiptap = await user.call("POST", f"/workspaces/{user.ws}/documents", 201,
                             json={"title": "Rich", "content_model": "tiptap", "markdown": "# Rich\n\nbold **x**\n"})
    root = tmp_path / "w"
    async with CountingProxy(server.base) as proxy:
        result = await asyncio.to_thread(run_sync, root, "--json", "--server", proxy.base, "--workspace", "Notes",
                                         token=user.pat)
        assert result.returncode == 0, result.stderr
        # without keep-alive: a connection per request, two a document (86); now one per fetching thread
        # and one for the pass
        assert proxy.accepted <= CONCURRENCY + 1, proxy.accepted
    got = files(root)
    assert {k: v for k, v in got.items() if k != "Rich.md"} == {f"{t}.md": v for t, v in texts.items()}
    assert got["Rich.md"] == await user.content(tiptap["id"])


async def test_a_kept_alive_connection_the_server_closed_is_replaced_without_a_retry(
        server_process, http, tmp_path, monkeypatch):
    import urllib3

    from mdsync.syncclient import http as client_http
    data_dir = tmp_path / "data"
    env = {"MDSYNC_AUTH__REGISTRATION": "open"}
    first = server_process(data_dir, env)
    port = first.base.rsplit(":", 1)[1]
    user = await new_user(first, http)
    doc_id = await user.doc("Kept", None, "kept\n")
    monkeypatch.setattr(client_http, "RETRIES", 0)  # a failed attempt is an error: no retry hides one
    one_thread = ThreadPoolExecutor(1)  # connections are kept per thread

    def call(fn, *args):
        return asyncio.get_running_loop().run_in_executor(one_thread, fn, *args)

    async with CountingProxy(first.base) as proxy:
        api = client_http.Api(proxy.base, user.pat)
        try:
            for _ in range(3):
                assert await call(api.bytes, "GET", f"/documents/{doc_id}/yjs")
            assert proxy.accepted == 1
            # the server restarted between two requests: the idle connection is gone
            assert first.terminate() == 0
            proxy.target_port = int(port)
            second = server_process(data_dir, env, ["--port", port])
            assert second.base.endswith(f":{port}")
            proxy.cut()
            await asyncio.sleep(0.2)
            assert (await call(api.json, "GET", "/workspaces"))["items"]
            assert proxy.accepted == 2
            # closed once the request is on its way (the check before sending saw nothing): sent again, once
            proxy.cut()
            await asyncio.sleep(0.2)
            monkeypatch.setattr(urllib3.connectionpool, "is_connection_dropped", lambda conn: False)
            assert (await call(api.json, "GET", "/workspaces"))["items"]
            assert proxy.accepted == 3
            assert not api.down
        finally:
            await call(api.close)
            one_thread.shutdown()


async def test_watch_saves_reuse_the_kept_alive_connections(server, http, tmp_path):
    import signal
    user = await new_user(server, http)
    doc_id = await user.doc("Saved", None, "save 0\n")
    root = tmp_path / "w"
    env = subprocess_env(root)
    env["MDSYNC_TOKEN"] = user.pat
    async with CountingProxy(server.base) as proxy:
        proc = subprocess.Popen([*MDSYNC, "sync", str(root), "--watch", "--server", proxy.base, "--workspace", "Notes"],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            path = root / "Saved.md"
            await asyncio.to_thread(wait_file, path, lambda t: t == "save 0\n", "the initial pull", proc)
            for i in range(1, 7):
                path.write_text(f"save {i}\n")
                await wait_content(user, doc_id, lambda t, i=i: t == f"save {i}\n", f"save {i} on the server")
                if i == 2:  # the first pass's connection, then the change feed's and the passes' (shared)
                    opened = proxy.accepted
            # a connection per save before: the later saves reuse the kept-alive ones
            assert proxy.accepted == opened, (opened, proxy.accepted)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_an_https_server_is_verified_and_its_connection_kept_alive(tmp_path, monkeypatch):
    import shutil
    import ssl

    from aiohttp import web

    from mdsync.syncclient import http as client_http
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    seen: list[int] = []

    async def workspaces(request: web.Request) -> web.Response:
        seen.append(id(request.transport))
        assert request.headers["Authorization"] == "Bearer mds_t"
        return web.json_response({"items": []})

    app = web.Application()
    app.router.add_get("/api/v1/workspaces", workspaces)
    runner = web.AppRunner(app)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    base = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    monkeypatch.setattr(client_http, "RETRIES", 0)
    one_thread = ThreadPoolExecutor(1)

    def call(fn, *args, **kw):
        return asyncio.get_running_loop().run_in_executor(one_thread, lambda: fn(*args, **kw))

    try:
        untrusted = client_http.Api(base, "mds_t")
        with pytest.raises(client_http.HttpError, match="server unreachable: .*CERTIFICATE_VERIFY_FAILED"):
            await call(untrusted.json, "GET", "/workspaces")
        assert seen == []
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the self-signed certificate trusted
        api = client_http.Api(base, "mds_t")
        for _ in range(3):
            assert await call(api.json, "GET", "/workspaces") == {"items": []}
        assert len(seen) == 3 and len(set(seen)) == 1  # one TLS connection for the three
        await call(api.close)
    finally:
        one_thread.shutdown()
        await runner.cleanup()


# -- a busy server: Retry-After honoured, capped ---------------------------------------------------
@contextlib.asynccontextmanager
async def refusing_front(server: ServerProcess, http: aiohttp.ClientSession, refuse):
    """An HTTP server on 127.0.0.1 in front of the real one: `refuse(request)` answers a request
    itself (a response) or lets it through (None)."""
    async def front(request: web.Request) -> web.StreamResponse:
        answer = refuse(request)
        if answer is not None:
            return answer
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        async with http.request(request.method, server.url(request.rel_url.path_qs), headers=headers,
                                data=await request.read()) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                headers={"Content-Type": resp.headers.get("Content-Type", "application/octet-stream")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_a_busy_server_is_waited_for_capped_and_a_refused_create_is_sent_again_once(
        server, http, tmp_path, capsys):
    from mdsync.syncclient import engine
    from mdsync.syncclient import http as client_http
    from mdsync.syncclient.report import Report
    user = await new_user(server, http)
    await user.doc("Old", None, "old\n")
    root = tmp_path / "w"
    root.mkdir()
    (root / "New.md").write_text("new\n")
    tree_answers = iter(["5", "86400"])  # the database timed out; then a server asking for a day
    creates: list[int] = []

    def refuse(request: web.Request) -> web.Response | None:
        if request.method == "GET" and request.path == f"{API}/workspaces/{user.ws}/tree":
            wait = next(tree_answers, None)
            if wait is not None:
                return web.json_response({"detail": "the database did not answer in time"}, status=503,
                                         headers={"Retry-After": wait})
        if request.method == "POST" and request.path == f"{API}/workspaces/{user.ws}/documents":
            creates.append(1)
            if len(creates) == 1:
                return web.json_response({"detail": "too many requests"}, status=429, headers={"Retry-After": "3"})
        return None

    sleeps: list[float] = []
    report = Report()
    async with refusing_front(server, http, refuse) as front:
        api = client_http.Api(front, user.pat, notify=report.notice, sleep=sleeps.append)
        code = await asyncio.to_thread(engine.sync_once, root.resolve(), front, "Notes", user.pat, report, api=api)
        await asyncio.to_thread(api.close)
    assert code == 0
    assert sleeps == [5, client_http.RETRY_AFTER_MAX, 3]
    assert len(creates) == 2  # refused once, then sent again
    assert sorted(d["title"] for d in (await user.tree())["documents"]) == ["New", "Old"]  # created once
    assert files(root) == {"New.md": "new\n", "Old.md": "old\n"}
    err = capsys.readouterr().err
    assert "… server busy (503), retrying in 5 s" in err
    assert f"… server busy (503), retrying in {client_http.RETRY_AFTER_MAX:.0f} s" in err
    assert "… rate limited (429), retrying in 3 s" in err


async def test_watch_stops_at_sigterm_while_it_waits_out_a_busy_server(server, http, tmp_path):
    # a wait for a busy server's Retry-After (up to 30 s a retry, 4 retries) ends at the signal
    import signal
    user = await new_user(server, http)
    await user.doc("Old", None, "old\n")
    root = tmp_path / "w"
    env = subprocess_env(root)
    env["MDSYNC_TOKEN"] = user.pat

    def busy(request: web.Request) -> web.Response | None:
        if request.path == f"{API}/workspaces/{user.ws}/tree":
            return web.json_response({"detail": "the database did not answer in time"}, status=503,
                                     headers={"Retry-After": "30"})
        return None

    async with refusing_front(server, http, busy) as front:
        proc = subprocess.Popen([*MDSYNC, "sync", str(root), "--watch", "--server", front, "--workspace", "Notes"],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            seen = []
            while not any("server busy (503), retrying in 30 s" in line for line in seen):
                seen.append(await asyncio.to_thread(proc.stderr.readline))
                assert seen[-1] and len(seen) < 20, seen  # the first pass waits out the busy server
            proc.send_signal(signal.SIGTERM)
            # not after the wait and the three more it would make (2 minutes): at the signal
            assert await asyncio.to_thread(proc.wait, 15) == 0
            rest = await asyncio.to_thread(proc.stderr.read)
            assert "stopping" not in rest, rest   # a stop is not reported as a failed pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not (root / "Old.md").exists()  # nothing was pulled: the tree never came
