"""`mdsync backup --to FILE` and `mdsync restore --from-file FILE`: consistent under a write load,
attachments and the secret carried along, damaged or hostile files refused, and the backup taken
before migrations when `server.backup_before_migrate` is on."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import tarfile
import time
import uuid

import aiohttp

from mdsync.db.migrate import available
from mdsync.ops.backup import read_manifest
from tests.builders import PASSWORD, older_database
from tests.processes import MDSYNC, ROOT, cli, subprocess_env

OPEN = {"MDSYNC_AUTH__REGISTRATION": "open"}


async def signed_up(http, base) -> dict:
    email = f"b-{uuid.uuid4().hex[:8]}@example.com"
    async with http.post(f"{base}/api/v1/auth/register",
                         json={"email": email, "password": PASSWORD, "name": "B"}) as resp:
        assert resp.status == 201
        pair = await resp.json()
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    async with http.post(f"{base}/api/v1/workspaces", json={"name": "load"}, headers=headers) as resp:
        assert resp.status == 201
        ws = (await resp.json())["id"]
    return {"email": email, "headers": headers, "ws": ws, "pair": pair}


def integrity(db_path) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


async def test_backup_under_write_load_holds_every_acknowledged_write(tmp_path, server_process):
    live = tmp_path / "live"
    server = server_process(live, env=OPEN)
    async with aiohttp.ClientSession() as http:
        owner = await signed_up(http, server.base)
        docs_url = f"{server.base}/api/v1/workspaces/{owner['ws']}/documents"
        # some bulk first, so that the copy takes several backup steps
        bulk = "x" * 900_000
        for i in range(12):
            async with http.post(docs_url, json={"title": f"bulk {i}", "markdown": bulk},
                                 headers=owner["headers"]) as resp:
                assert resp.status == 201

        acknowledged: list[tuple[float, str]] = []
        stop = asyncio.Event()

        async def load(worker: int) -> None:
            for n in range(2000):  # bounded in count, and by the stop event in time
                if stop.is_set():
                    return
                async with http.post(docs_url, json={"title": f"w{worker}-{n}", "markdown": f"# {worker}/{n}\n"},
                                     headers=owner["headers"]) as resp:
                    assert resp.status == 201
                    acknowledged.append((time.monotonic(), (await resp.json())["id"]))

        workers = [asyncio.create_task(load(w)) for w in range(4)]
        await asyncio.sleep(0.5)
        began = time.monotonic()
        before = {doc for at, doc in acknowledged if at < began}
        backup_file = tmp_path / "under-load.tar"
        proc = await asyncio.create_subprocess_exec(
            *MDSYNC, "backup", "--to", str(backup_file), "--data-dir", str(live), env=subprocess_env(live),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        during = len(acknowledged)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 60)
    assert proc.returncode == 0, err.decode()
    assert "database:" in err.decode(), "no progress output"
    assert len(before) > 10 and during > len(before), "the load was not running during the backup"

    restored = tmp_path / "restored"
    result = cli(restored, "restore", "--from-file", str(backup_file))
    assert result.returncode == 0, result.stderr + result.stdout
    assert integrity(restored / "mdsync.db") == ["ok"]
    doctor = cli(restored, "doctor")
    assert doctor.returncode == 0 and "PASS  database" in doctor.stdout, doctor.stdout

    server.terminate()
    again = server_process(restored, env=OPEN)
    async with aiohttp.ClientSession() as http:
        # the owner's session survives: the secret came back with the backup
        async with http.get(f"{again.base}/api/v1/workspaces/{owner['ws']}/tree", headers=owner["headers"]) as resp:
            assert resp.status == 200, await resp.text()
            present = {doc["id"] for doc in (await resp.json())["documents"]}
    missing = before - present
    assert not missing, f"{len(missing)} writes acknowledged before the backup began are missing"


def test_backup_carries_attachments_and_restore_puts_them_back(tmp_path):
    data = tmp_path / "data"
    assert cli(data, "migrate").returncode == 0
    files = data / "files" / "ab" / "cd"
    files.mkdir(parents=True)
    payload = bytes(range(256)) * 4000
    (files / "blob-1").write_bytes(payload)
    (data / "files" / "top.txt").write_text("hello")
    result = cli(data, "backup", "--to", str(tmp_path / "b.tar.gz"))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "b.tar.gz")
    assert manifest["format"] == "mdsync-backup" and manifest["files"]["count"] == 2
    assert manifest["schema_version"] == max(m.version for m in available())
    assert (tmp_path / "b.tar.gz").stat().st_mode & 0o077 == 0, "a backup holds secrets: owner-only"

    restored = tmp_path / "restored"
    result = cli(restored, "restore", "--from-file", str(tmp_path / "b.tar.gz"))
    assert result.returncode == 0, result.stderr
    assert (restored / "files" / "ab" / "cd" / "blob-1").read_bytes() == payload
    assert (restored / "files" / "top.txt").read_text() == "hello"
    assert "PASS  database" in result.stdout and "PASS  migrations" in result.stdout

    # a second restore into the same dir is refused; --force moves the current data aside
    result = cli(restored, "restore", "--from-file", str(tmp_path / "b.tar.gz"))
    assert result.returncode == 1 and "refusing to overwrite" in result.stderr
    (restored / "files" / "top.txt").write_text("changed after the backup")
    result = cli(restored, "restore", "--from-file", str(tmp_path / "b.tar.gz"), "--force")
    assert result.returncode == 0, result.stderr
    assert (restored / "files" / "top.txt").read_text() == "hello"
    aside = [p for p in restored.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "files" / "top.txt").read_text() == "changed after the backup"
    assert (aside[0] / "mdsync.db").exists()


def _rewrite(src, dest, change):
    """Copy a backup tar, letting `change(name, data)` alter members (None drops one)."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read() if member.isfile() else None
            result = change(member.name, data)
            if result is None:
                continue
            name, data = result
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_damaged_or_hostile_backups_are_refused_and_nothing_is_written(tmp_path):
    data = tmp_path / "data"
    assert cli(data, "migrate").returncode == 0
    good = tmp_path / "good.tar"
    assert cli(data, "backup", "--to", str(good)).returncode == 0

    def flip(name, blob):
        if name == "mdsync.db":
            blob = bytearray(blob)
            blob[-100] ^= 0xFF
            return name, bytes(blob)
        return name, blob

    def escaping(bad):
        _rewrite(good, bad, lambda n, b: (n, b))
        with tarfile.open(bad, "a") as tar:
            info = tarfile.TarInfo("files/../../evil")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))

    cases = {
        "damaged": (lambda bad: _rewrite(good, bad, flip), "checksum"),
        "escaping": (escaping, "refusing backup member"),
        "not-a-backup": (lambda bad: _rewrite(good, bad, lambda n, b: None if n == "manifest.json" else (n, b)),
                         "not an mdsync backup"),
    }
    for label, (make, message) in cases.items():
        bad = tmp_path / f"{label}.tar"
        make(bad)
        target = tmp_path / f"target-{label}"
        result = cli(target, "restore", "--from-file", str(bad))
        assert result.returncode == 1, (label, result.stdout)
        assert message in result.stderr, (label, result.stderr)
        assert not (target / "mdsync.db").exists()
        assert not (tmp_path / "evil").exists()
        leftovers = [p.name for p in target.iterdir()] if target.exists() else []
        assert not [p for p in leftovers if p.startswith(".restore-")], leftovers

    result = cli(tmp_path / "x", "restore", "--from-file", str(tmp_path / "nope.tar"))
    assert result.returncode == 1 and "no backup file" in result.stderr
    result = cli(tmp_path / "x", "backup", "--to", str(tmp_path / "y.tar"))
    assert result.returncode == 1 and "nothing to back up" in result.stderr


def test_backup_before_migrate(tmp_path, server_process):
    # mdsync migrate
    data = tmp_path / "cli"
    old = older_database(data)
    result = cli(data, "migrate", env={"MDSYNC_SERVER__BACKUP_BEFORE_MIGRATE": "true"})
    assert result.returncode == 0, result.stderr
    backups = list((data / "backups").glob("pre-migrate-*.tar"))
    assert len(backups) == 1 and "backed up the database before migrating" in result.stdout
    assert read_manifest(backups[0])["schema_version"] == old
    result = cli(data, "migrate", env={"MDSYNC_SERVER__BACKUP_BEFORE_MIGRATE": "true"})
    assert len(list((data / "backups").glob("*.tar"))) == 1, "nothing pending: no new backup"

    # mdsync serve
    data = tmp_path / "serve"
    older_database(data)
    server = server_process(data, env={"MDSYNC_SERVER__BACKUP_BEFORE_MIGRATE": "true"})
    assert server.terminate() == 0
    backups = list((data / "backups").glob("pre-migrate-*.tar"))
    assert len(backups) == 1 and read_manifest(backups[0])["schema_version"] == old
    doctor = cli(data, "doctor")
    assert "PASS  migrations" in doctor.stdout

    # off (the default): no backup
    data = tmp_path / "off"
    older_database(data)
    assert cli(data, "migrate").returncode == 0
    assert not (data / "backups").exists()
