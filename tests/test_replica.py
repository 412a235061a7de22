"""Continuous replication with the real litestream binary to a real S3-compatible server (moto on
127.0.0.1), and the restore drill: everything written through the API is there after
`mdsync restore --from-replica` into a fresh data dir and `mdsync serve` from it — also when the
supervised litestream is killed mid-way and restarted by the supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid

import aiohttp
import pytest
from pycrdt import Doc, Text

from mdsync.ops import replica
from tests.builders import PASSWORD
from tests.processes import cli
from tests.s3server import S3Server

BUCKET = "mdsync-replica"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


def replica_env(s3: S3Server, path: str, **extra) -> dict[str, str]:
    return {"MDSYNC_REPLICA__URL": s3.replica_url(BUCKET, path), "MDSYNC_AUTH__REGISTRATION": "open",
            **s3.credentials(), **extra}


class Writer:
    """Builds state through the API and remembers what was acknowledged: users, each with a
    workspace and a document with markdown."""

    def __init__(self):
        self.users: dict[str, dict] = {}

    async def user(self, http: aiohttp.ClientSession, base: str) -> dict:
        email = f"drill-{uuid.uuid4().hex[:10]}@example.com"
        async with http.post(f"{base}/api/v1/auth/register",
                             json={"email": email, "password": PASSWORD, "name": "Drill"}) as resp:
            assert resp.status == 201, await resp.text()
            pair = await resp.json()
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        record = {"email": email, "id": pair["user"]["id"]}
        async with http.post(f"{base}/api/v1/workspaces", json={"name": f"ws of {email}"}, headers=headers) as resp:
            if resp.status == 201:  # workspaces and documents exist: put them in the drill too
                ws = await resp.json()
                markdown = f"# Notes of {email}\n\n- written {uuid.uuid4()}\n"
                async with http.post(f"{base}/api/v1/workspaces/{ws['id']}/documents",
                                     json={"title": "Drill", "markdown": markdown}, headers=headers) as doc_resp:
                    assert doc_resp.status == 201, await doc_resp.text()
                    doc = await doc_resp.json()
                async with http.get(f"{base}/api/v1/documents/{doc['id']}/content", headers=headers) as got:
                    stored = await got.text()
                record.update(workspace=ws["id"], document=doc["id"], markdown=stored)
                await self._edit_over_yjs(http, base, headers, record)
        self.users[email] = record
        return record

    async def _edit_over_yjs(self, http, base, headers, record) -> None:
        """With real-time editing in: one more edit as a Yjs update; the expected state is then
        the Y.Text('markdown') of the document, and its markdown the same text."""
        url = f"{base}/api/v1/documents/{record['document']}/yjs"
        async with http.get(url, headers=headers) as resp:
            if resp.status != 200:
                return
            state = await resp.read()
        doc = Doc()
        doc.apply_update(state)
        before = doc.get_state()
        text = doc.get("markdown", type=Text)
        text += f"\nedited over Yjs {uuid.uuid4().hex[:8]}\n"
        async with http.post(url, data=doc.get_update(before), headers={**headers,
                             "Content-Type": "application/octet-stream"}) as resp:
            assert resp.status == 204, await resp.text()
        record["yjs_text"] = str(text)
        record["markdown"] = str(text)

    async def verify(self, http: aiohttp.ClientSession, base: str, emails=None) -> None:
        for email in emails if emails is not None else self.users:
            record = self.users[email]
            async with http.post(f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}) as resp:
                assert resp.status == 200, f"{email} missing after restore: {await resp.text()}"
                headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            async with http.get(f"{base}/api/v1/me", headers=headers) as resp:
                assert (await resp.json())["id"] == record["id"]
            if "document" in record:
                async with http.get(f"{base}/api/v1/documents/{record['document']}/content",
                                    headers=headers) as resp:
                    assert resp.status == 200
                    assert await resp.text() == record["markdown"]
            if "yjs_text" in record:
                async with http.get(f"{base}/api/v1/documents/{record['document']}/yjs", headers=headers) as resp:
                    doc = Doc()
                    doc.apply_update(await resp.read())
                assert str(doc.get("markdown", type=Text)) == record["yjs_text"]


async def readyz(http: aiohttp.ClientSession, base: str) -> dict:
    async with http.get(f"{base}/readyz") as resp:
        return (await resp.json())["checks"]


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def replicated(http, base) -> bool:
    state = (await readyz(http, base))["replica"]
    return state["running"] and state["local_txid"] > 0 and state["replicated_txid"] >= state["local_txid"]


async def restore_and_verify(tmp_path, s3, path: str, writer: Writer, server_process) -> None:
    fresh = tmp_path / f"restored-{uuid.uuid4().hex[:6]}"
    result = cli(fresh, "restore", "--from-replica", env=replica_env(s3, path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    doctor = cli(fresh, "doctor", env=replica_env(s3, path))
    assert doctor.returncode == 0, doctor.stdout
    assert "PASS  database" in doctor.stdout and "PASS  replica" in doctor.stdout
    # serve the restored copy (without replicating it again) and read everything back via the API
    server = server_process(fresh, env={"MDSYNC_AUTH__REGISTRATION": "open"})
    async with aiohttp.ClientSession() as http:
        await writer.verify(http, server.base)
    assert server.terminate() == 0


async def test_restore_drill_end_to_end(tmp_path, s3, server_process):
    path = f"drill-{uuid.uuid4().hex[:6]}"
    server = server_process(tmp_path / "live", env=replica_env(s3, path))
    writer = Writer()
    async with aiohttp.ClientSession() as http:
        state = await wait_for(lambda: readyz(http, server.base), 10, "readyz")
        assert state["replica"]["running"] and state["replica"]["pid"]
        for _ in range(5):
            await writer.user(http, server.base)
        assert all("yjs_text" in r for r in writer.users.values()), "documents and their Yjs state are in the drill"
        # the contract: a commit reaches the replica within 5 s, while the server keeps running
        await wait_for(lambda: replicated(http, server.base), 5, "the replica to catch up")
        assert (await readyz(http, server.base))["replica"]["lag_seconds"] < 5
        async with http.get(f"{server.base}/metrics") as resp:
            text = await resp.text()
        assert "mdsync_replica_up 1.0" in text and "mdsync_replica_lag_seconds" in text
        assert s3.keys(BUCKET, path), "nothing was uploaded to the bucket"
        # a restore from the live replica already holds those users
        copy = tmp_path / "while-running"
        result = cli(copy, "restore", "--from-replica", env=replica_env(s3, path))
        assert result.returncode == 0, result.stderr
        listed = cli(copy, "users", "list").stdout
        assert all(email in listed for email in writer.users)
        # restoring over the live data dir is refused while its server runs, even with --force
        result = cli(tmp_path / "live", "restore", "--from-replica", "--force", env=replica_env(s3, path))
        assert result.returncode == 1 and "stop it before restoring" in result.stderr
        # one more write right before SIGTERM: the final sync must carry it
        await writer.user(http, server.base)
    assert server.terminate() == 0
    await restore_and_verify(tmp_path, s3, path, writer, server_process)


async def test_restore_drill_with_litestream_killed_midway(tmp_path, s3, server_process):
    path = f"killed-{uuid.uuid4().hex[:6]}"
    server = server_process(tmp_path / "live", env=replica_env(s3, path))
    writer = Writer()
    async with aiohttp.ClientSession() as http:
        first = (await wait_for(lambda: readyz(http, server.base), 10, "readyz"))["replica"]
        for _ in range(3):
            await writer.user(http, server.base)
        os.kill(first["pid"], signal.SIGKILL)
        # writes go on while litestream is down; the supervisor restarts it
        for _ in range(3):
            await writer.user(http, server.base)

        async def restarted():
            state = (await readyz(http, server.base))["replica"]
            return state if state["running"] and state["pid"] != first["pid"] else None

        state = await wait_for(restarted, 15, "litestream to be restarted")
        assert state["restarts"] >= 1
        for _ in range(2):
            await writer.user(http, server.base)
        await wait_for(lambda: replicated(http, server.base), 10, "the replica to catch up after the restart")
        async with http.get(f"{server.base}/metrics") as resp:
            assert "mdsync_replica_restarts_total 1.0" in await resp.text()
    assert server.terminate() == 0
    assert not (tmp_path / "live" / "litestream.pid").exists()
    await restore_and_verify(tmp_path, s3, path, writer, server_process)


async def test_restored_server_keeps_replicating_to_the_same_replica(tmp_path, s3, server_process):
    """After a restore, serving the restored copy with the same replica.url goes on replicating."""
    path = f"again-{uuid.uuid4().hex[:6]}"
    writer = Writer()
    server = server_process(tmp_path / "one", env=replica_env(s3, path))
    async with aiohttp.ClientSession() as http:
        await writer.user(http, server.base)
    assert server.terminate() == 0
    two = tmp_path / "two"
    assert cli(two, "restore", "--from-replica", env=replica_env(s3, path)).returncode == 0
    server = server_process(two, env=replica_env(s3, path))
    async with aiohttp.ClientSession() as http:
        await writer.user(http, server.base)
        await wait_for(lambda: replicated(http, server.base), 10, "the replica to catch up")
    assert server.terminate() == 0
    await restore_and_verify(tmp_path, s3, path, writer, server_process)


def test_restore_refuses_a_live_data_dir_and_a_missing_replica(tmp_path, s3):
    data = tmp_path / "data"
    assert cli(data, "migrate").returncode == 0
    result = cli(data, "restore", "--from-replica", env=replica_env(s3, "nothing-here"))
    assert result.returncode == 1 and "refusing to overwrite" in result.stderr
    empty = tmp_path / "empty"
    result = cli(empty, "restore", "--from-replica", env=replica_env(s3, f"none-{uuid.uuid4().hex[:6]}"))
    assert result.returncode == 1 and "litestream restore failed" in result.stderr
    assert not (empty / "mdsync.db").exists()
    result = cli(empty, "restore", "--from-replica")
    assert result.returncode == 1 and "replica.url" in result.stderr


def test_litestream_environment_drops_aws_ca_bundle(monkeypatch):
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    env = replica.child_env()
    assert "AWS_CA_BUNDLE" not in env and env["AWS_ACCESS_KEY_ID"] == "key"
    assert os.access(replica.litestream_binary(), os.X_OK)


def test_lag_is_the_age_of_the_oldest_unreplicated_commit(tmp_path):
    from tests.builders import make_settings

    settings = make_settings(tmp_path, replica__url="s3://b/p")
    sup = replica.Supervisor(settings, binary="/bin/true")
    sup.proc = type("P", (), {"returncode": None, "pid": 1})()  # "running" for the arithmetic
    sup.observe(5, 5, now=100.0)
    assert sup.lag_seconds(now=100.5) == 0.0
    sup.observe(7, 5, now=101.0)
    sup.observe(9, 6, now=102.0)
    assert sup.lag_seconds(now=102.5) == pytest.approx(1.5)  # txid 7 first seen at 101
    sup.observe(9, 7, now=103.0)
    assert sup.lag_seconds(now=103.0) == pytest.approx(1.0)  # now txid 9, seen at 102
    sup.observe(9, 9, now=104.0)
    assert sup.lag_seconds(now=104.0) == 0.0
    sup.proc = None  # litestream down: the lag grows from the last time it was caught up
    assert sup.lag_seconds(now=110.0) == pytest.approx(6.0)


async def test_restore_as_of_a_timestamp(tmp_path, s3, server_process):
    path = f"pitr-{uuid.uuid4().hex[:6]}"
    server = server_process(tmp_path / "live", env=replica_env(s3, path))
    before, after = Writer(), Writer()
    async with aiohttp.ClientSession() as http:
        await before.user(http, server.base)
        await wait_for(lambda: replicated(http, server.base), 10, "the replica to catch up")
        await asyncio.sleep(1.5)
        moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await asyncio.sleep(1.5)
        await after.user(http, server.base)
        await wait_for(lambda: replicated(http, server.base), 10, "the replica to catch up")
    assert server.terminate() == 0
    restored = tmp_path / "as-of"
    result = cli(restored, "restore", "--from-replica", "--timestamp", moment, env=replica_env(s3, path))
    assert result.returncode == 0, result.stderr + result.stdout
    listed = cli(restored, "users", "list").stdout
    assert all(email in listed for email in before.users)
    assert not any(email in listed for email in after.users)
    # a timestamp is for the replica only
    result = cli(tmp_path / "x", "restore", "--from-file", str(tmp_path / "f.tar"), "--timestamp", moment)
    assert result.returncode == 1 and "--from-replica only" in result.stderr


async def test_readyz_reports_a_replica_that_cannot_upload(tmp_path, server_process):
    from tests.processes import free_port

    dead = f"s3://nowhere/db?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1&forcePathStyle=true"
    server = server_process(tmp_path / "live", env={"MDSYNC_REPLICA__URL": dead, "MDSYNC_REPLICA__MAX_LAG": "1",
                                                    "MDSYNC_REPLICA__SHUTDOWN_TIMEOUT": "2",
                                                    "MDSYNC_AUTH__REGISTRATION": "open"})
    writer = Writer()
    async with aiohttp.ClientSession() as http:
        await writer.user(http, server.base)

        async def unready():
            async with http.get(f"{server.base}/readyz") as resp:
                body = await resp.json()
                return body if resp.status == 503 else None

        body = await wait_for(unready, 15, "/readyz to report the replica behind")
        state = body["checks"]["replica"]
        assert state["ok"] is False and state["running"] is True and state["lag_seconds"] > 1
        assert body["checks"]["database"]["ok"] is True
        async with http.get(f"{server.base}/metrics") as resp:
            text = await resp.text()
        lag = float(re.search(r"^mdsync_replica_lag_seconds (\S+)$", text, re.M).group(1))
        assert lag > 1
    assert server.terminate() == 0, server.rest_of_output()
