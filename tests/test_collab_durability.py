"""Durability with a real `mdsync serve` process and real npm y-websocket clients typing:
`kill -9` loses at most the last flush window and SIGTERM loses nothing; after the restart the
reconnecting clients converge with the server (nothing lost, nothing duplicated)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import aiohttp
import pytest
from pycrdt import Doc, Text

from tests.builders import PASSWORD, make_settings
from tests.nodeclients import INTEROP, needs_node, run_node
from tests.readers import settings_rows

pytestmark = [needs_node, pytest.mark.both_engines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def persisted_text(data_dir) -> str:
    """The document text as the database holds it (snapshot + log), read without the server."""
    settings = make_settings(data_dir)
    doc = Doc()
    for (state,) in settings_rows(settings, "SELECT state FROM doc_snapshots"):
        doc.apply_update(state)
    seq = settings_rows(settings, "SELECT COALESCE(MAX(seq), 0) FROM doc_snapshots")[0][0]
    for (data,) in settings_rows(settings, "SELECT data FROM doc_updates WHERE seq > ? ORDER BY seq", (seq,)):
        doc.apply_update(data)
    return str(doc.get("markdown", type=Text))


async def prepare(base: str) -> tuple[str, str, str]:
    """(document id, token A, token B) through the REST API."""
    async with aiohttp.ClientSession(base) as http:
        email = f"d{time.time_ns()}@example.com"
        resp = await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "D"})
        assert resp.status == 201, await resp.text()
        token_a = (await resp.json())["access_token"]
        resp = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        token_b = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token_a}"}
        resp = await http.post("/api/v1/workspaces", json={"name": "Durable"}, headers=headers)
        assert resp.status == 201, await resp.text()
        ws_id = (await resp.json())["id"]
        resp = await http.post(f"/api/v1/workspaces/{ws_id}/documents", json={"title": "Typed"}, headers=headers)
        assert resp.status == 201, await resp.text()
        return (await resp.json())["id"], token_a, token_b


async def type_through(server_process, tmp_path, stop) -> tuple[dict, str, float]:
    port = free_port()
    env = {"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_AUTH__ACCESS_TOKEN_TTL": "3600"}
    data_dir = tmp_path / "data"
    server = server_process(data_dir=data_dir, env=env, args=["--port", str(port)])
    doc_id, token_a, token_b = await prepare(server.base)
    config = {"url": f"ws://127.0.0.1:{port}/ws/docs", "doc": doc_id, "writerA": token_a, "writerB": token_b,
              "typeMs": 3500, "intervalMs": 4, "timeoutMs": 55000}
    node = await asyncio.create_subprocess_exec(
        "node", str(INTEROP / "scenario.mjs"), "durability", json.dumps(config), cwd=INTEROP,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(node.stderr.readline(), 30)
        assert b"typing" in line, line
        await asyncio.sleep(1.6)
        stopped_at = time.time() * 1000
        stop(server)
        persisted = persisted_text(data_dir)
        server_process(data_dir=data_dir, env=env, args=["--port", str(port)])
        out, err = await asyncio.wait_for(node.communicate(), 58)
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in result, (result, err.decode()[-2000:])
    return result, persisted, stopped_at


def expected_text(result: dict) -> str:
    return "".join(f"k{i};" for i in range(result["typed"]))


async def test_kill_9_loses_at_most_the_last_second_and_clients_converge(server_process, tmp_path):
    def kill(server):
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)

    result, persisted, killed_at = await type_through(server_process, tmp_path, kill)
    everything = expected_text(result)
    # after the restart, everybody (and a fresh client) holds exactly what was typed, once
    assert result["text"] == everything
    assert result["fresh"] == everything
    assert result["watcher"] == everything
    # what survived the kill is a prefix of the typing (no hole, no duplicate) ...
    assert everything.startswith(persisted)
    # ... holding at least what the server had relayed a second before it died
    close_at = result["watcherAtClose"]["at"]
    relayed_before = max([n for t, n in result["samples"] if t <= close_at - 1000] or [0])
    assert len(persisted) >= relayed_before > 0
    assert close_at >= killed_at - 200


async def test_sigterm_loses_nothing(server_process, tmp_path):
    def terminate(server):
        assert server.terminate() == 0

    result, persisted, _ = await type_through(server_process, tmp_path, terminate)
    everything = expected_text(result)
    assert result["text"] == result["fresh"] == result["watcher"] == everything
    # every update the server relayed before it closed the sockets (1012) was stored
    relayed = result["watcherAtClose"]["text"]
    assert result["watcherAtClose"]["code"] == 1012  # "server restarting": clients reconnect
    assert len(relayed) > 0
    assert persisted.startswith(relayed) and everything.startswith(persisted)


async def test_tokens_in_socket_urls_are_never_logged(server_process, tmp_path):
    env = {"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_LOG__LEVEL": "debug"}
    server = server_process(env=env)
    doc_id, token_a, _ = await prepare(server.base)
    ws_url = server.base.replace("http://", "ws://") + f"/ws/docs/{doc_id}"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{ws_url}?token={token_a}") as ws:
            await ws.receive(timeout=5)
            await ws.send_bytes(b"\x00\x02\xff")  # garbage: logged as a warning
            await ws.receive(timeout=5)
        async with http.ws_connect(f"{ws_url}?token=secret-looking-garbage-token") as ws:
            msg = await ws.receive(timeout=5)
            assert ws.close_code == 4401, msg
    assert server.terminate() == 0
    output = server.rest_of_output()
    assert "malformed frame" in output
    assert token_a not in output and "secret-looking-garbage-token" not in output


async def test_hocuspocus_saved_means_committed_even_under_kill_9(server_process, tmp_path):
    """The real @hocuspocus/provider types in bursts; inside the callback where its unsynced
    changes reach 0 ("saved") the server is SIGKILLed. After a restart every acknowledged edit is
    there: SyncStatus is sent only after the commit that holds the update. (A long group-commit
    window makes an early acknowledgement lose the burst every time.)"""
    env = {"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_AUTH__ACCESS_TOKEN_TTL": "3600",
           "MDSYNC_COLLAB__FLUSH_DELAY_SECONDS": "0.3"}
    data_dir = tmp_path / "data"
    server = server_process(data_dir=data_dir, env=env)
    doc_id, token, _ = await prepare(server.base)
    result = await run_node("hocuspocus_scenario.mjs", "killAtSaved", {
        "url": server.base.replace("http://", "ws://") + "/ws/hocuspocus", "doc": doc_id, "token": token,
        "serverPid": server.proc.pid, "killAfter": 6, "burst": 12, "seed": 21}, timeout=60)
    assert server.proc.wait(10) == -signal.SIGKILL
    saved = result["saved"]
    assert saved.count(";") == result["typed"]   # the provider held every burst when it said "saved"
    server = server_process(data_dir=data_dir, env=env)
    async with aiohttp.ClientSession(server.base) as http:
        resp = await http.get(f"/api/v1/documents/{doc_id}/content", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
        assert await resp.text() == saved
