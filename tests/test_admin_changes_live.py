"""Admin commands run in another process against a running server's data dir (`mdsync users
disable | reset-password | delete`, `mdsync workspaces remove-member` or a role change with
`add-member`) reach that server's live connections as the same change over HTTP would: its
sockets on /ws/docs and /ws/hocuspocus close (4401 / 4403) or turn read-only, its SSE streams end
or get the change, its unspent tickets stop working — within the server's revocation poll
(auth/revocations.py, half a second), waited for here with a bound of a few seconds.

Everything is real: a `mdsync serve` child process, the CLI as another child process, sockets and
streams over TCP.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import aiohttp
import pytest

from mdsync.collab import hocuspocus as hp
from tests.builders import Account, register
from tests.hpclient import HPClient
from tests.processes import MDSYNC, ServerProcess, subprocess_env
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

API = "/api/v1"
EVENTS = f"{API}/sync/events"
REACH = 6.0  # bound of every wait below: the server acts within ~0.5 s (feed: ~1.5 s) of the commit


@pytest.fixture
def server(server_process) -> ServerProcess:
    # one per test: a server lives on its test's engine and database (tests/engines.py)
    return server_process(env={"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_AUTH__ACCESS_TOKEN_TTL": "3600",
                               "MDSYNC_AUTH__REGISTER_ATTEMPTS_PER_ADDRESS": "1000"})


async def cli(server: ServerProcess, *args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *MDSYNC, *args, "--data-dir", str(server.data_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=subprocess_env(server.data_dir))
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


class Live:
    """Everything `member` holds open on the server: a y-websocket socket, a Hocuspocus socket,
    an SSE stream, an unspent ticket — and the owner's view to check what lands."""

    def __init__(self, http, owner: Account, member: Account, ws_id: str, doc_id: str):
        self.http, self.owner, self.member, self.ws_id, self.doc_id = http, owner, member, ws_id, doc_id

    async def open(self) -> None:
        self.ydoc = await YClient.connect(self.http, self.doc_id, self.member.access_token)
        await self.ydoc.wait_synced()
        self.hocus = await HPClient.connect(self.http)
        await self.hocus.open(self.doc_id, self.member.access_token)
        await self.hocus.until(lambda: self.hocus.statuses(self.doc_id) == [1], "hocuspocus sync", timeout=REACH)
        resp = await self.http.post(f"{API}/documents/{self.doc_id}/ws-ticket", headers=self.member.headers)
        assert resp.status == 201, await resp.text()
        self.ticket = (await resp.json())["ticket"]
        self.sse = await self.http.get(EVENTS, params={"since": "now"}, headers=self.member.headers)
        assert self.sse.status == 200
        self.events: list[dict] = []
        self.sse_done = asyncio.ensure_future(self._read_sse())

    async def _read_sse(self) -> None:
        async for line in self.sse.content:
            text = line.decode()
            if text.startswith("data: "):
                self.events.append(json.loads(text[6:]))

    async def sse_ends(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self.sse_done), REACH)
            return True
        except TimeoutError:
            return False

    async def ticket_close_code(self) -> int | None:
        c = await YClient.connect(self.http, self.doc_id, self.ticket)
        return await c.wait_closed(REACH)

    async def text(self) -> str:
        resp = await self.http.get(f"{API}/documents/{self.doc_id}/content", headers=self.owner.headers)
        return await resp.text()

    async def close(self) -> None:
        self.sse.close()
        self.sse_done.cancel()
        await self.ydoc.close()
        await self.hocus.ws.close()


async def setup(http: aiohttp.ClientSession, server: ServerProcess) -> Live:
    owner, member = await register(http), await register(http)
    resp = await http.post(f"{API}/workspaces", json={"name": f"Live {uuid.uuid4().hex[:6]}"}, headers=owner.headers)
    ws_id = (await resp.json())["id"]
    resp = await http.post(f"{API}/workspaces/{ws_id}/documents", json={"title": "Shared"}, headers=owner.headers)
    doc_id = (await resp.json())["id"]
    await cli(server, "workspaces", "add-member", ws_id, member.email, "--role", "editor")
    live = Live(http, owner, member, ws_id, doc_id)
    await live.open()
    return live


@pytest.mark.parametrize("command", [
    ["users", "disable", "{email}"],
    ["users", "reset-password", "{email}", "--password-stdin"],
    ["users", "delete", "{email}", "--yes"],
])
async def test_ending_a_users_credentials_from_the_cli_closes_their_connections(server, command):
    async with aiohttp.ClientSession(server.base) as http:
        live = await setup(http, server)
        try:
            await cli(server, *[part.format(email=live.member.email) for part in command],
                      stdin="a brand new password\n")
            assert await live.ydoc.wait_closed(REACH) == 4401
            await live.hocus.until(lambda: live.hocus.auth(live.doc_id) == (hp.AUTH_DENIED, "unauthenticated"),
                                   "hocuspocus refusal", timeout=REACH)
            assert await live.sse_ends()
            assert await live.ticket_close_code() == 4401
        finally:
            await live.close()


async def test_removing_a_member_from_the_cli_closes_their_sockets_and_tells_their_stream(server):
    async with aiohttp.ClientSession(server.base) as http:
        live = await setup(http, server)
        try:
            await cli(server, "workspaces", "remove-member", live.ws_id, live.member.email)
            assert await live.ydoc.wait_closed(REACH) == 4403
            await live.hocus.until(lambda: live.hocus.auth(live.doc_id) == (hp.AUTH_DENIED, "forbidden"),
                                   "hocuspocus refusal", timeout=REACH)
            # the stream goes on (the session is fine) and says the workspace is gone for them
            async with asyncio.timeout(REACH):
                while ("workspace", "delete") not in [(e["entity"], e["op"]) for e in live.events]:
                    await asyncio.sleep(0.05)
            assert await live.ticket_close_code() == 4404
        finally:
            await live.close()


async def test_lowering_a_role_from_the_cli_makes_the_sockets_read_only(server):
    async with aiohttp.ClientSession(server.base) as http:
        live = await setup(http, server)
        try:
            await cli(server, "workspaces", "add-member", live.ws_id, live.member.email, "--role", "viewer")
            await asyncio.sleep(REACH / 2)  # no signal to wait for: a read-only socket stays open
            live.ydoc.insert(0, "Y-LATE ")
            acks = live.hocus.statuses(live.doc_id)
            await live.hocus.edit(live.doc_id, 0, "H-LATE ")
            await live.hocus.until(lambda: len(live.hocus.statuses(live.doc_id)) == len(acks) + 1, "ack",
                                   timeout=REACH)
            assert live.hocus.statuses(live.doc_id)[-1] == 0   # not applied
            await asyncio.sleep(0.5)
            assert "LATE" not in await live.text()
            assert live.ydoc.close_code is None and not live.hocus._reader.done()
        finally:
            await live.close()


async def test_deleting_a_user_from_the_cli_tells_the_other_members_feed(server):
    async with aiohttp.ClientSession(server.base) as http:
        owner, member = await register(http), await register(http)
        resp = await http.post(f"{API}/workspaces", json={"name": "Feed"}, headers=owner.headers)
        ws_id = (await resp.json())["id"]
        await cli(server, "workspaces", "add-member", ws_id, member.email, "--role", "editor")
        resp = await http.get(f"{API}/sync/changes", params={"since": "now"}, headers=owner.headers)
        cursor = (await resp.json())["cursor"]
        await cli(server, "users", "delete", member.email, "--yes")
        resp = await http.get(f"{API}/sync/changes", params={"since": cursor}, headers=owner.headers)
        changes = [(c["entity"], c["id"], c["op"]) for c in (await resp.json())["changes"]]
        assert changes == [("member", member.id, "delete")]
        resp = await http.get(f"{API}/workspaces/{ws_id}/members", headers=owner.headers)
        assert member.id not in [m["user_id"] for m in (await resp.json())["items"]]


async def test_revocation_rows_are_trimmed_once_every_server_has_acted_on_them(client, monkeypatch):
    from mdsync import clock
    from mdsync.appkeys import DB
    from mdsync.auth import revocations

    monkeypatch.setattr(revocations, "TRIM_EVERY", 0.0)
    db = client.server.app[DB]
    ada = await register(client)
    resp = await client.post(f"{API}/auth/logout", headers=ada.headers)
    assert resp.status == 204
    assert await db.value("SELECT count(*) FROM revocations") == 1
    clock.advance(revocations.KEEP_SECONDS + 1)
    async with asyncio.timeout(10):
        while await db.value("SELECT count(*) FROM revocations"):
            await asyncio.sleep(0.1)
