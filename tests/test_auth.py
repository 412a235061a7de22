"""Accounts and sign-in over real HTTP (docs/api.md "Auth and accounts"): every flow end to end,
forged and stale tokens, disabled users, throttling, personal access tokens and the audit log.

The server keeps who is behind a session or token for a second (mdsync/auth/principals.py): its
own changes reach the very next request, another process's within a second (waited for here with
a bound of a few seconds, OTHER_PROCESS)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
import time
from datetime import timedelta

import jwt
import pytest

from mdsync import clock
from mdsync.appkeys import DB
from mdsync.auth.routes import AUTH
from mdsync.db import run_offline
from tests.builders import PASSWORD, bearer, register
from tests.processes import cli_async
from tests.waiting import eventually

pytestmark = pytest.mark.both_engines

PROBLEM = "application/problem+json"
OTHER_PROCESS = 5.0  # bound for a change made by another process (the server sees it within ~1 s)


async def problem(resp, status: int, slug: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body = await resp.json()
    assert body["type"] == f"urn:mdsync:error:{slug}"
    assert body["status"] == status
    return body


async def login(client, email: str, password: str = PASSWORD, **extra):
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password, **extra})


async def refresh(client, token: str):
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def me_status(client, token: str) -> int:
    resp = await client.get("/api/v1/me", headers=bearer(token))
    return resp.status


async def me_status_soon(client, token: str, expected: int) -> int:
    """The status of GET /me once it is `expected`, or after OTHER_PROCESS seconds of asking."""
    statuses = []

    async def check() -> bool:
        statuses.append(await me_status(client, token))
        return statuses[-1] == expected

    await eventually(check, timeout=OTHER_PROCESS, interval=0.05)
    return statuses[-1]


async def audit_actions(client) -> list[str]:
    rows = await client.app[DB].all("SELECT action FROM audit_log ORDER BY id")
    return [row["action"] for row in rows]


# -- registration ------------------------------------------------------------------------------
async def test_register_open_answers_the_token_pair(client):
    resp = await client.post("/api/v1/auth/register",
                             json={"email": "Ada@Example.com", "password": PASSWORD, "name": " Ada "})
    assert resp.status == 201
    body = await resp.json()
    assert set(body) >= {"user", "access_token", "refresh_token", "expires_in"}
    assert body["expires_in"] == 900
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["name"] == "Ada"
    assert body["user"]["is_admin"] is False
    assert await me_status(client, body["access_token"]) == 200
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["typ"] == "access" and claims["sub"] == body["user"]["id"]
    assert claims["exp"] - claims["iat"] == 900
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"


async def test_register_same_email_in_other_case_is_a_conflict(client):
    await register(client, email="grace@example.com")
    resp = await client.post("/api/v1/auth/register",
                             json={"email": "GRACE@example.com", "password": PASSWORD, "name": "G"})
    await problem(resp, 409, "conflict")


async def test_register_short_password_names_the_field(client):
    resp = await client.post("/api/v1/auth/register",
                             json={"email": "a@example.com", "password": "short", "name": "A"})
    body = await problem(resp, 422, "validation")
    assert body["errors"][0]["field"] == "password"


@pytest.mark.parametrize("invitation", [None, "not-a-real-invitation"])
async def test_register_closed_is_forbidden(make_client, invitation):
    client = await make_client(auth__registration="closed")
    payload = {"email": "a@example.com", "password": PASSWORD, "name": "A"}
    if invitation:
        payload["invitation"] = invitation
    await problem(await client.post("/api/v1/auth/register", json=payload), 403, "forbidden")
    assert await client.app[DB].value("SELECT count(*) FROM users") == 0


async def test_register_invite_mode_needs_an_invitation(make_client):
    client = await make_client(auth__registration="invite")
    resp = await client.post("/api/v1/auth/register",
                             json={"email": "a@example.com", "password": PASSWORD, "name": "A"})
    await problem(resp, 403, "forbidden")
    resp = await client.post("/api/v1/auth/register",
                             json={"email": "a@example.com", "password": PASSWORD, "name": "A",
                                   "invitation": "made-up"})
    assert resp.status in (404, 410), await resp.text()  # an unknown invitation never creates a user
    assert await client.app[DB].value("SELECT count(*) FROM users") == 0


# -- login and the same answer for unknown emails ----------------------------------------------
async def test_login_answers_a_new_session(client):
    account = await register(client)
    resp = await login(client, account.email.upper(), device_name="laptop")
    assert resp.status == 200
    body = await resp.json()
    assert body["user"]["id"] == account.id
    assert body["refresh_token"] != account.refresh_token
    sessions = await (await client.get("/api/v1/auth/sessions", headers=bearer(body["access_token"]))).json()
    assert "laptop" in [s["device_name"] for s in sessions["items"]]


async def test_unknown_email_and_wrong_password_get_the_same_answer(client):
    account = await register(client)
    wrong = await problem(await login(client, account.email, "not the password"), 401, "unauthenticated")
    unknown = await problem(await login(client, "nobody@example.com", "not the password"), 401, "unauthenticated")
    wrong.pop("request_id", None)
    unknown.pop("request_id", None)
    assert wrong == unknown


async def test_login_rehashes_when_the_argon2_parameters_change(make_client, tmp_path):
    data = tmp_path / "shared-data"
    before = await make_client(data_dir=data)
    account = await register(before)
    old_hash = await before.app[DB].value("SELECT password_hash FROM users WHERE id = ?", (account.id,))
    assert "t=1" in old_hash
    after = await make_client(data_dir=data, auth__argon2_time_cost=2)
    assert (await login(after, account.email)).status == 200
    new_hash = await after.app[DB].value("SELECT password_hash FROM users WHERE id = ?", (account.id,))
    assert new_hash != old_hash and "t=2" in new_hash
    assert (await login(after, account.email)).status == 200
    await problem(await login(after, account.email, "wrong password!"), 401, "unauthenticated")


async def test_password_hashing_runs_off_the_loop_at_a_lower_priority():
    import os
    import threading

    from mdsync.auth.passwords import Passwords

    passwords = Passwords(time_cost=1, memory_cost=1024, parallelism=1)
    try:
        hashed = await passwords.hash(PASSWORD)
        assert await passwords.verify(hashed, PASSWORD)
        workers = [t for t in threading.enumerate() if t.name.startswith("argon2")]
        assert workers and threading.current_thread() not in workers
        if hasattr(os, "getpriority") and sys.platform == "linux":
            base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            assert all(os.getpriority(os.PRIO_PROCESS, t.native_id) > base for t in workers)
    finally:
        passwords.close()


def test_a_hash_in_progress_does_not_keep_a_stopping_process_alive():
    """A registration the shutdown gave up on may still be hashing: the process exits anyway
    (a ThreadPoolExecutor's threads would be joined at exit, for as long as the hash takes)."""
    import subprocess

    child = """
import asyncio, threading
from mdsync.auth.passwords import Passwords

async def main():
    passwords = Passwords(time_cost=1_000_000, memory_cost=1024, parallelism=1)  # hours of hashing
    asyncio.get_running_loop().create_task(passwords.hash("x"))
    while not any(t.name.startswith("argon2") for t in threading.enumerate()):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    passwords.close()
    print("leaving", flush=True)

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "leaving\n", done.stderr


# -- refresh, reuse, logout ----------------------------------------------------------------------
async def test_refresh_rotates_and_spends_the_old_token(client):
    account = await register(client)
    resp = await refresh(client, account.refresh_token)
    assert resp.status == 200
    pair = await resp.json()
    assert pair["refresh_token"] != account.refresh_token
    assert pair["user"]["id"] == account.id
    assert await me_status(client, pair["access_token"]) == 200
    # and the new one refreshes again
    assert (await refresh(client, pair["refresh_token"])).status == 200


async def test_replayed_refresh_token_revokes_the_whole_family(client):
    account = await register(client)
    other = await (await login(client, account.email, device_name="phone")).json()
    first = await (await refresh(client, account.refresh_token)).json()
    second = await (await refresh(client, first["refresh_token"])).json()

    # the spent original comes back: someone holds a copy
    await problem(await refresh(client, account.refresh_token), 401, "unauthenticated")
    # every token of that family is dead: the newest refresh token and the access tokens
    await problem(await refresh(client, second["refresh_token"]), 401, "unauthenticated")
    assert await me_status(client, second["access_token"]) == 401
    assert await me_status(client, first["access_token"]) == 401
    assert await me_status(client, account.access_token) == 401
    # the user's other device is another family and keeps working
    assert await me_status(client, other["access_token"]) == 200
    assert (await refresh(client, other["refresh_token"])).status == 200
    assert "session.reuse_detected" in await audit_actions(client)


async def test_unknown_refresh_token_is_401(client):
    await problem(await refresh(client, "mdr_never-issued"), 401, "unauthenticated")


async def test_expired_session_cannot_refresh(client):
    account = await register(client)
    clock.advance(2592000 + 10)
    await problem(await refresh(client, account.refresh_token), 401, "unauthenticated")


async def test_logout_ends_this_session_only(client):
    account = await register(client)
    other = await (await login(client, account.email)).json()
    resp = await client.post("/api/v1/auth/logout", headers=account.headers)
    assert resp.status == 204
    assert await resp.read() == b""
    assert await me_status(client, account.access_token) == 401
    await problem(await refresh(client, account.refresh_token), 401, "unauthenticated")
    assert await me_status(client, other["access_token"]) == 200


# -- sessions ---------------------------------------------------------------------------------------
async def test_sessions_list_marks_current_and_revoke_is_immediate(client):
    account = await register(client, device_name="desktop")
    phone = await (await login(client, account.email, device_name="phone")).json()
    resp = await client.get("/api/v1/auth/sessions", headers=account.headers)
    assert resp.status == 200
    listing = await resp.json()
    assert listing["next_cursor"] is None
    by_device = {s["device_name"]: s for s in listing["items"]}
    assert set(by_device) == {"desktop", "phone"}
    assert by_device["desktop"]["current"] is True
    assert by_device["phone"]["current"] is False
    assert set(by_device["phone"]) >= {"id", "device_name", "user_agent", "created_at", "last_used_at", "current"}

    resp = await client.delete(f"/api/v1/auth/sessions/{by_device['phone']['id']}", headers=account.headers)
    assert resp.status == 204
    # the other device's access token stops at once, and so does its refresh token
    assert await me_status(client, phone["access_token"]) == 401
    await problem(await refresh(client, phone["refresh_token"]), 401, "unauthenticated")
    assert await me_status(client, account.access_token) == 200
    listing = await (await client.get("/api/v1/auth/sessions", headers=account.headers)).json()
    assert [s["device_name"] for s in listing["items"]] == ["desktop"]
    # revoking it again, or a session that is not the caller's: 404
    resp = await client.delete(f"/api/v1/auth/sessions/{by_device['phone']['id']}", headers=account.headers)
    await problem(resp, 404, "not-found")
    stranger = await register(client)
    resp = await client.delete(f"/api/v1/auth/sessions/{by_device['desktop']['id']}", headers=stranger.headers)
    await problem(resp, 404, "not-found")
    assert await me_status(client, account.access_token) == 200


# -- profile and password ----------------------------------------------------------------------
async def test_me_and_profile_changes(client):
    account = await register(client, email="ada@example.com", name="Ada")
    taken = await register(client, email="grace@example.com")
    resp = await client.get("/api/v1/me", headers=account.headers)
    assert resp.status == 200
    me = await resp.json()
    assert set(me) == {"id", "email", "name", "is_admin", "created_at"}
    assert (me["id"], me["email"], me["name"], me["is_admin"]) == (account.id, "ada@example.com", "Ada", False)

    resp = await client.patch("/api/v1/me", json={"name": "Ada L.", "email": "Lovelace@Example.com",
                                                  "current_password": PASSWORD}, headers=account.headers)
    assert resp.status == 200
    assert (await resp.json())["email"] == "lovelace@example.com"
    me = await (await client.get("/api/v1/me", headers=account.headers)).json()
    assert (me["name"], me["email"]) == ("Ada L.", "lovelace@example.com")

    resp = await client.patch("/api/v1/me", json={"email": "GRACE@example.com", "current_password": PASSWORD},
                              headers=account.headers)
    await problem(resp, 409, "conflict")
    assert (await (await client.get("/api/v1/me", headers=account.headers)).json())["email"] == "lovelace@example.com"
    assert (await login(client, "lovelace@example.com")).status == 200
    assert (await login(client, taken.email)).status == 200


async def test_password_change_ends_other_sessions_and_keeps_this_one(client):
    account = await register(client)
    other = await (await login(client, account.email)).json()
    resp = await client.post("/api/v1/me/password", headers=account.headers,
                             json={"current_password": "wrong password", "new_password": "a new password"})
    await problem(resp, 403, "forbidden")
    resp = await client.post("/api/v1/me/password", headers=account.headers,
                             json={"current_password": PASSWORD, "new_password": "short"})
    body = await problem(resp, 422, "validation")
    assert body["errors"][0]["field"] == "new_password"
    assert await me_status(client, other["access_token"]) == 200  # nothing changed yet

    resp = await client.post("/api/v1/me/password", headers=account.headers,
                             json={"current_password": PASSWORD, "new_password": "a new password"})
    assert resp.status == 204
    assert await me_status(client, other["access_token"]) == 401
    await problem(await refresh(client, other["refresh_token"]), 401, "unauthenticated")
    assert await me_status(client, account.access_token) == 200
    assert (await refresh(client, account.refresh_token)).status == 200
    await problem(await login(client, account.email), 401, "unauthenticated")
    assert (await login(client, account.email, "a new password")).status == 200


# -- personal access tokens ---------------------------------------------------------------------
async def create_pat(client, account, **body):
    resp = await client.post("/api/v1/me/tokens", headers=account.headers, json={"name": "script", **body})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_pat_is_shown_once_and_stored_only_as_its_hash(client, settings):
    account = await register(client)
    created = await create_pat(client, account)
    token = created["token"]
    assert token.startswith("mds_") and len(token) > 30
    assert created["scopes"] == ["read", "write"]
    assert token.startswith(created["prefix"])
    assert await me_status(client, token) == 200

    listing = await (await client.get("/api/v1/me/tokens", headers=account.headers)).json()
    assert [t["id"] for t in listing["items"]] == [created["id"]]
    assert "token" not in listing["items"][0]
    assert token not in json.dumps(listing)

    stored = await client.app[DB].value("SELECT token_hash FROM api_tokens WHERE id = ?", (created["id"],))
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    await client.app[DB].write(lambda tx: None)  # let every queued write land
    raw = b"".join(p.read_bytes() for p in settings.data_dir.iterdir() if p.name.startswith("mdsync.db"))
    assert token.encode() not in raw
    assert token[len(created["prefix"]):].encode() not in raw
    assert account.refresh_token.encode() not in raw


async def test_read_scope_pat_cannot_write(client):
    account = await register(client)
    token = (await create_pat(client, account, scopes=["read"]))["token"]
    assert (await client.get("/api/v1/me", headers=bearer(token))).status == 200
    assert (await client.get("/api/v1/me/tokens", headers=bearer(token))).status == 200
    resp = await client.patch("/api/v1/me", headers=bearer(token), json={"name": "Mallory"})
    await problem(resp, 403, "forbidden")
    resp = await client.post("/api/v1/me/tokens", headers=bearer(token), json={"name": "escalate"})
    await problem(resp, 403, "forbidden")
    resp = await client.post("/api/v1/me/password", headers=bearer(token),
                             json={"current_password": PASSWORD, "new_password": "another password"})
    await problem(resp, 403, "forbidden")
    assert (await (await client.get("/api/v1/me", headers=account.headers)).json())["name"] == "Test User"


async def test_pat_expiry_and_delete(client):
    account = await register(client)
    expires = (clock.now() + timedelta(hours=1)).isoformat()
    expiring = await create_pat(client, account, expires_at=expires)
    lasting = await create_pat(client, account)
    assert await me_status(client, expiring["token"]) == 200
    clock.advance(3600 + 1)
    account = await (await login(client, account.email)).json()  # the old access token expired too
    assert await me_status(client, expiring["token"]) == 401
    assert await me_status(client, lasting["token"]) == 200

    resp = await client.delete(f"/api/v1/me/tokens/{lasting['id']}", headers=bearer(account["access_token"]))
    assert resp.status == 204
    assert await me_status(client, lasting["token"]) == 401
    resp = await client.delete(f"/api/v1/me/tokens/{lasting['id']}", headers=bearer(account["access_token"]))
    await problem(resp, 404, "not-found")


async def test_pat_last_used_at_is_kept_to_the_minute(client):
    account = await register(client)
    pat = await create_pat(client, account)

    async def last_used() -> str | None:
        listing = await (await client.get("/api/v1/me/tokens", headers=account.headers)).json()
        return next(t["last_used_at"] for t in listing["items"] if t["id"] == pat["id"])

    async def settled(previous: str | None) -> str | None:  # the touch is a queued write
        for _ in range(100):
            if (now := await last_used()) != previous:
                return now
            await asyncio.sleep(0.01)
        return previous

    assert await last_used() is None
    assert await me_status(client, pat["token"]) == 200
    first = await settled(None)
    assert first is not None
    clock.advance(30)
    assert await me_status(client, pat["token"]) == 200
    await asyncio.sleep(0.1)
    assert await last_used() == first  # within the minute: not written again
    clock.advance(31)
    assert await me_status(client, pat["token"]) == 200
    second = await settled(first)
    assert second is not None and second > first


async def test_pat_of_another_user_cannot_be_deleted(client):
    owner = await register(client)
    pat = await create_pat(client, owner)
    stranger = await register(client)
    await problem(await client.delete(f"/api/v1/me/tokens/{pat['id']}", headers=stranger.headers), 404, "not-found")
    assert await me_status(client, pat["token"]) == 200


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "scopes": ["write"]}, "scopes"),
    ({"name": "x", "scopes": ["admin"]}, "scopes.0"),
    ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "x", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
    ({"name": "   "}, "name"),
])
async def test_pat_bad_requests_name_the_field(client, body, field):
    account = await register(client)
    resp = await client.post("/api/v1/me/tokens", headers=account.headers, json=body)
    problem_body = await problem(resp, 422, "validation")
    assert field in [e["field"] for e in problem_body["errors"]]
    assert (await (await client.get("/api/v1/me/tokens", headers=account.headers)).json())["items"] == []


# -- first admin ---------------------------------------------------------------------------------
async def test_setup_creates_the_first_admin_once(make_client):
    client = await make_client(auth__registration="invite")
    token = await client.app[AUTH].prepare_setup()  # what `mdsync serve` prints on a fresh server
    assert token
    payload = {"email": "root@example.com", "password": PASSWORD, "name": "Root"}
    await problem(await client.post("/api/v1/auth/setup", json={**payload, "setup_token": "guess"}), 403, "forbidden")
    resp = await client.post("/api/v1/auth/setup", json={**payload, "setup_token": token})
    assert resp.status == 201
    body = await resp.json()
    assert body["user"]["is_admin"] is True
    assert await me_status(client, body["access_token"]) == 200
    resp = await client.post("/api/v1/auth/setup", json={**payload, "email": "two@example.com", "setup_token": token})
    await problem(resp, 409, "conflict")
    assert await client.app[DB].value("SELECT count(*) FROM users") == 1
    assert "admin.setup" in await audit_actions(client)


async def test_setup_is_a_conflict_once_users_exist(client):
    await register(client)
    assert await client.app[AUTH].prepare_setup() is None
    resp = await client.post("/api/v1/auth/setup", json={"setup_token": "anything", "email": "r@example.com",
                                                         "password": PASSWORD, "name": "R"})
    await problem(resp, 409, "conflict")


async def two_nodes(make_client, data_dir) -> tuple:
    """Two servers on one database, as several nodes behind a load balancer are (on SQLite: two
    processes on one data dir)."""
    return await make_client(data_dir=data_dir), await make_client(data_dir=data_dir)


async def test_a_setup_token_one_node_printed_works_once_on_another(make_client, tmp_path):
    """The setup token is the database's, not the process's: node B accepts the token node A
    printed, once; B makes no competing token at its start but says where the valid one came from."""
    a, b = await two_nodes(make_client, tmp_path / "shared")
    token = await a.app[AUTH].prepare_setup(maker="node A")   # what node A prints
    assert token
    assert await b.app[AUTH].prepare_setup(maker="node B") is None
    pending = await b.app[AUTH].pending_setup()   # what node B prints instead of a token
    assert pending["made_by"] == "node A"
    assert pending["expires_at"] > clock.iso()
    admin = {"email": "root@example.com", "password": PASSWORD, "name": "Root"}
    resp = await b.post("/api/v1/auth/setup", json={**admin, "setup_token": token})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["user"]["is_admin"] is True
    for node in (a, b):
        resp = await node.post("/api/v1/auth/setup", json={**admin, "email": "two@example.com", "setup_token": token})
        await problem(resp, 409, "conflict")
    assert await a.app[DB].value("SELECT count(*) FROM users") == 1
    # only its hash was ever stored, and it is spent
    assert await a.app[DB].value("SELECT count(*) FROM setup_token") == 0
    assert await a.app[AUTH].pending_setup() is None


async def test_setups_racing_on_two_nodes_create_one_admin(make_client, tmp_path, monkeypatch):
    """Six setups with the one token, spread over two nodes at once: one admin, five 409. Each
    transaction is held open a moment after its user's insert, so the two nodes' transactions
    overlap (on PostgreSQL, without the token's row lock both would count no user and commit)."""
    from mdsync.auth import store

    a, b = await two_nodes(make_client, tmp_path / "shared")
    token = await a.app[AUTH].prepare_setup()
    racers = [a, b] * 3

    def insert_then_linger(*args, original=store.insert_user, **kwargs):
        row = original(*args, **kwargs)
        time.sleep(0.3)   # in the writer thread, inside the transaction
        return row

    monkeypatch.setattr(store, "insert_user", insert_then_linger)

    async def setup(node, n):
        resp = await node.post("/api/v1/auth/setup", json={"setup_token": token, "email": f"admin{n}@example.com",
                                                           "password": PASSWORD, "name": f"Admin {n}"})
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(setup(node, n) for n, node in enumerate(racers)))
    assert sorted(statuses) == [201, 409, 409, 409, 409, 409], statuses
    assert await a.app[DB].value("SELECT count(*) FROM users") == 1
    assert (await audit_actions(a)).count("admin.setup") == 1


async def test_an_expired_setup_token_is_refused_and_the_next_start_makes_a_new_one(make_client):
    client = await make_client(auth__setup_token_ttl=600)
    auth = client.app[AUTH]
    token = await auth.prepare_setup()
    admin = {"email": "root@example.com", "password": PASSWORD, "name": "Root"}
    clock.advance(601)
    assert await auth.pending_setup() is None
    body = await problem(await client.post("/api/v1/auth/setup", json={**admin, "setup_token": token}), 403, "forbidden")
    assert "expired" in body["detail"] and "mdsync users setup-token" in body["detail"]
    fresh = await auth.prepare_setup()   # a node starting now: the expired token is no reason to wait
    assert fresh and fresh != token
    await problem(await client.post("/api/v1/auth/setup", json={**admin, "setup_token": token}), 403, "forbidden")
    resp = await client.post("/api/v1/auth/setup", json={**admin, "setup_token": fresh})
    assert resp.status == 201, await resp.text()


# -- forged, stale and misused tokens ------------------------------------------------------------
def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_and_stale_tokens_are_401(client, settings):
    account = await register(client)
    token = account.access_token
    claims = jwt.decode(token, options={"verify_signature": False})
    header, payload, signature = token.split(".")
    tampered_sig = f"{header}.{payload}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    tampered_claims = f"{header}.{_b64({**claims, 'sub': 'someone-else'})}.{signature}"
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    other_secret = jwt.encode(claims, "another server's secret, long enough for HS256", algorithm="HS256")
    real_key = client.app[AUTH].access._key  # noqa: SLF001 — sign exactly as the server would, but with typ=refresh
    wrong_type = jwt.encode({**claims, "typ": "refresh"}, real_key, algorithm="HS256")
    no_type = jwt.encode({k: v for k, v in claims.items() if k != "typ"}, real_key, algorithm="HS256")
    hs512 = jwt.encode(claims, real_key * 2, algorithm="HS512")
    secret_file = (settings.data_dir / "secret").read_text().strip()
    raw_secret = jwt.encode(claims, secret_file, algorithm="HS256")  # the file's secret is not the key itself

    padded = f"{header}.{payload}.{signature}="
    junk = f"{header}.{payload}.{signature[:20]}!{signature[21:]}"
    four_parts = f"{token}.{signature}"
    huge = f"{header}.{payload}{'A' * 5000}.{signature}"
    alg_none_signed = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"
    for bad in (tampered_sig, tampered_claims, alg_none, alg_none_signed, other_secret, wrong_type, no_type, hs512,
                raw_secret, padded, junk, four_parts, huge, account.refresh_token, "garbage", "a.b.c", token + " x"):
        resp = await client.get("/api/v1/me", headers=bearer(bad))
        await problem(resp, 401, "unauthenticated")
    for header_value in ("", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", f"Token {token}"):
        resp = await client.get("/api/v1/me", headers={"Authorization": header_value} if header_value else {})
        await problem(resp, 401, "unauthenticated")
    assert await me_status(client, token) == 200
    # the tokens are standard JWTs: a JWT library verifies ours, and we accept its HS256 encoding
    assert jwt.decode(token, real_key, algorithms=["HS256"])["sid"] == claims["sid"]
    assert await me_status(client, jwt.encode(claims, real_key, algorithm="HS256")) == 200

    clock.advance(900 + 1)
    await problem(await client.get("/api/v1/me", headers=account.headers), 401, "unauthenticated")
    # the refresh token still works after the access token expired
    assert (await refresh(client, account.refresh_token)).status == 200


async def test_refresh_endpoint_refuses_an_access_token(client):
    account = await register(client)
    await problem(await refresh(client, account.access_token), 401, "unauthenticated")
    assert await me_status(client, account.access_token) == 200


# -- disabled users (admin CLI on the data dir of the running server) ----------------------------


async def test_disabled_user_is_locked_out_within_a_second(client, settings):
    account = await register(client)
    pat = await create_pat(client, account)
    assert await me_status(client, pat["token"]) == 200   # both known to the server
    code, out = await cli_async(settings.data_dir, "users", "disable", account.email)
    assert code == 0, out
    # sign-in and refresh read the database: refused at once
    await problem(await refresh(client, account.refresh_token), 401, "unauthenticated")
    await problem(await login(client, account.email), 401, "unauthenticated")
    assert await me_status_soon(client, account.access_token, 401) == 401
    assert await me_status_soon(client, pat["token"], 401) == 401

    code, out = await cli_async(settings.data_dir, "users", "enable", account.email)
    assert code == 0, out
    assert (await login(client, account.email)).status == 200
    assert await me_status_soon(client, pat["token"], 200) == 200
    # the sessions that the disable ended stay ended
    assert await me_status(client, account.access_token) == 401


async def test_disabled_flag_alone_stops_every_token_within_a_second(client, settings):
    # whoever sets disabled_at (another admin tool, a future endpoint) need not also end sessions
    account = await register(client)
    pat = await create_pat(client, account)
    assert await me_status(client, pat["token"]) == 200
    # another process's connection, beside the server's
    run_offline(settings, lambda tx: tx.execute(
        "UPDATE users SET disabled_at = '2026-01-01T00:00:00.000000Z' WHERE id = ?", (account.id,)))
    assert await me_status_soon(client, account.access_token, 401) == 401
    assert await me_status_soon(client, pat["token"], 401) == 401
    await problem(await refresh(client, account.refresh_token), 401, "unauthenticated")
    await problem(await login(client, account.email), 401, "unauthenticated")


async def test_user_created_by_cli_can_sign_in_at_once(client, settings):
    code, out = await cli_async(settings.data_dir, "users", "create", "cli@example.com", "--name", "From CLI",
                          "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0, out
    resp = await login(client, "cli@example.com")
    assert resp.status == 200
    assert (await resp.json())["user"]["name"] == "From CLI"


# -- who is behind a token, kept for a second (auth/principals.py) -------------------------------
@pytest.fixture
def cached_for_an_hour(client, monkeypatch):
    """The server keeps what it read of sessions and tokens an hour instead of a second: only its
    forgetting them on a change can make the change visible to the requests below."""
    monkeypatch.setattr(client.app[AUTH].principals, "ttl", 3600.0)


async def test_every_revocation_over_http_stops_a_known_token_at_the_very_next_request(client, cached_for_an_hour):
    account = await register(client, device_name="desktop")
    phone = await (await login(client, account.email, device_name="phone")).json()
    laptop = await (await login(client, account.email, device_name="laptop")).json()
    tablet = await (await login(client, account.email, device_name="tablet")).json()
    pat, script = await create_pat(client, account), await create_pat(client, account)
    everyone = [account.access_token, phone["access_token"], laptop["access_token"], tablet["access_token"],
                pat["token"], script["token"]]
    assert [await me_status(client, token) for token in everyone] == [200] * 6   # all known now

    # sign-out
    assert (await client.post("/api/v1/auth/logout", headers=bearer(laptop["access_token"]))).status == 204
    assert await me_status(client, laptop["access_token"]) == 401
    # a device signed out from another
    listing = await (await client.get("/api/v1/auth/sessions", headers=account.headers)).json()
    phone_id = next(s["id"] for s in listing["items"] if s["device_name"] == "phone")
    assert (await client.delete(f"/api/v1/auth/sessions/{phone_id}", headers=account.headers)).status == 204
    assert await me_status(client, phone["access_token"]) == 401
    # a deleted personal access token
    assert (await client.delete(f"/api/v1/me/tokens/{pat['id']}", headers=account.headers)).status == 204
    assert await me_status(client, pat["token"]) == 401
    assert [await me_status(client, t) for t in (account.access_token, tablet["access_token"], script["token"])] \
        == [200, 200, 200]
    # a password change: every other session and every token
    resp = await client.post("/api/v1/me/password", headers=account.headers,
                             json={"current_password": PASSWORD, "new_password": "a new password"})
    assert resp.status == 204
    assert await me_status(client, tablet["access_token"]) == 401
    assert await me_status(client, script["token"]) == 401
    assert await me_status(client, account.access_token) == 200


async def test_account_changes_in_the_server_reach_the_very_next_request(client, cached_for_an_hour):
    from mdsync.auth import admin

    account = await register(client, name="Ada")
    pat = await create_pat(client, account)
    db = client.app[DB]
    for token in (account.access_token, pat["token"]):
        me = await (await client.get("/api/v1/me", headers=bearer(token))).json()
        assert (me["name"], me["is_admin"]) == ("Ada", False)
    resp = await client.patch("/api/v1/me", json={"name": "Ada L."}, headers=account.headers)
    assert resp.status == 200
    # the admin CLI's jobs, run by this process (as an admin endpoint would)
    await db.write(lambda tx: admin.set_admin(tx, account.id, True, via="test"))
    for token in (account.access_token, pat["token"]):
        me = await (await client.get("/api/v1/me", headers=bearer(token))).json()
        assert (me["name"], me["is_admin"]) == ("Ada L.", True)
    await db.write(lambda tx: admin.set_disabled(tx, account.id, True, via="test"))
    assert await me_status(client, account.access_token) == 401
    assert await me_status(client, pat["token"]) == 401


async def test_the_admin_cli_disabling_a_user_stops_a_known_token(client, settings, cached_for_an_hour):
    # another process: the revocation it writes reaches the server through its watcher
    account = await register(client)
    pat = await create_pat(client, account)
    assert [await me_status(client, t) for t in (account.access_token, pat["token"])] == [200, 200]
    code, out = await cli_async(settings.data_dir, "users", "disable", account.email)
    assert code == 0, out
    assert await me_status_soon(client, account.access_token, 401) == 401
    assert await me_status_soon(client, pat["token"], 401) == 401


def test_the_principals_kept_are_bounded_and_a_read_overlapping_a_change_is_not_kept():
    from mdsync.auth.principals import Principals

    kept = Principals(ttl=3600.0, size=3)
    for key in ("a", "b", "c", "d"):
        kept.put(key, kept.generation, key.upper())
    assert len(kept) == 3 and kept.get("a") is None and kept.get("d")[1] == "D"   # the oldest went
    before = kept.generation
    kept.clear()   # a change committed while "e" was being read
    assert kept.put("e", before, "E")[1] == "E"   # answers this request
    assert kept.get("e") is None and len(kept) == 0   # and is not kept for the next
    stale = Principals(ttl=0.0)
    stale.put("x", stale.generation, "X")
    assert stale.get("x") is None


async def test_a_profile_changed_by_another_process_shows_within_a_second(client, settings):
    account = await register(client, name="Ada")
    pat = await create_pat(client, account)
    for token in (account.access_token, pat["token"]):
        assert (await (await client.get("/api/v1/me", headers=bearer(token))).json())["name"] == "Ada"
    run_offline(settings, lambda tx: tx.execute("UPDATE users SET name = 'Grace', is_admin = 1 WHERE id = ?",
                                                (account.id,)))
    for token in (account.access_token, pat["token"]):
        async def shows() -> bool:
            me = await (await client.get("/api/v1/me", headers=bearer(token))).json()
            return (me["name"], me["is_admin"]) == ("Grace", True)
        assert await eventually(shows, timeout=OTHER_PROCESS, interval=0.05)


# -- throttling ------------------------------------------------------------------------------------
async def test_failed_logins_lock_the_account_for_a_while(client):
    account = await register(client)
    bystander = await register(client)
    for _ in range(5):
        await problem(await login(client, account.email, "wrong password!"), 401, "unauthenticated")
    resp = await login(client, account.email)  # even the right password waits now
    await problem(resp, 429, "rate-limited")
    retry_after = int(resp.headers["Retry-After"])
    assert 0 < retry_after <= 15 * 60
    assert (await login(client, bystander.email)).status == 200
    clock.advance(15 * 60 + 1)
    assert (await login(client, account.email)).status == 200


async def test_a_parallel_burst_of_guesses_gets_no_more_than_the_limit(client):
    account = await register(client)
    answers = await asyncio.gather(*(login(client, account.email, f"guess number {n}") for n in range(20)))
    statuses = sorted(resp.status for resp in answers)
    assert statuses.count(401) == 5, statuses
    assert statuses.count(429) == 15, statuses
    await problem(await login(client, account.email), 429, "rate-limited")


async def test_guessing_the_current_password_is_throttled_too(client):
    account = await register(client)
    for n in range(5):
        resp = await client.post("/api/v1/me/password", headers=account.headers,
                                 json={"current_password": f"guess {n}!!", "new_password": "a new password"})
        await problem(resp, 403, "forbidden")
    resp = await client.post("/api/v1/me/password", headers=account.headers,
                             json={"current_password": PASSWORD, "new_password": "a new password"})
    await problem(resp, 429, "rate-limited")
    assert "Retry-After" in resp.headers
    await problem(await login(client, account.email), 429, "rate-limited")
    clock.advance(15 * 60 + 1)
    account_headers = (await (await login(client, account.email)).json())["access_token"]
    resp = await client.post("/api/v1/me/password", headers=bearer(account_headers),
                             json={"current_password": PASSWORD, "new_password": "a new password"})
    assert resp.status == 204


async def test_successful_login_resets_the_failure_count(client):
    account = await register(client)
    for _ in range(4):
        await login(client, account.email, "wrong password!")
    assert (await login(client, account.email)).status == 200
    for _ in range(4):
        await login(client, account.email, "wrong password!")
    assert (await login(client, account.email)).status == 200


async def test_one_address_is_throttled_across_accounts(make_client):
    client = await make_client(auth__login_attempts_per_address=3)
    for n in range(3):
        await problem(await login(client, f"nobody{n}@example.com"), 401, "unauthenticated")
    resp = await login(client, "nobody9@example.com")
    await problem(resp, 429, "rate-limited")
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    # another client address (through the trusted local proxy) is not held back
    resp = await client.post("/api/v1/auth/login", headers={"X-Forwarded-For": "203.0.113.7"},
                             json={"email": "nobody@example.com", "password": PASSWORD})
    await problem(resp, 401, "unauthenticated")
    clock.advance(61)
    await problem(await login(client, "nobody@example.com"), 401, "unauthenticated")


async def test_registration_and_refresh_are_throttled_per_address(make_client):
    client = await make_client(auth__register_attempts_per_address=2, auth__refresh_attempts_per_address=2)
    account = await register(client)
    await register(client)
    resp = await client.post("/api/v1/auth/register",
                             json={"email": "third@example.com", "password": PASSWORD, "name": "T"})
    await problem(resp, 429, "rate-limited")
    assert "Retry-After" in resp.headers
    token = account.refresh_token
    for _ in range(2):
        resp = await refresh(client, token)
        assert resp.status == 200
        token = (await resp.json())["refresh_token"]
    resp = await refresh(client, token)
    await problem(resp, 429, "rate-limited")
    assert "Retry-After" in resp.headers
    clock.advance(61)
    assert (await refresh(client, token)).status == 200  # throttled, not spent


# -- audit ---------------------------------------------------------------------------------------
async def test_audit_log_records_sign_ins_tokens_and_passwords(client):
    account = await register(client)
    await login(client, account.email)
    await login(client, account.email, "wrong password!")
    await login(client, "ghost@example.com", "wrong password!")
    pat = await create_pat(client, account)
    await client.post("/api/v1/me/password", headers=account.headers,
                      json={"current_password": PASSWORD, "new_password": "a new password"})
    rows = await client.app[DB].all("SELECT action, actor_id, target_id, ip, detail FROM audit_log ORDER BY id")
    actions = [row["action"] for row in rows]
    for expected in ("user.register", "login", "login.failed", "token.create", "user.password_change"):
        assert expected in actions
    failed = [row for row in rows if row["action"] == "login.failed"]
    assert [row["actor_id"] for row in failed] == [account.id, None]
    assert all(row["ip"] == "127.0.0.1" for row in failed)
    created = next(row for row in rows if row["action"] == "token.create")
    assert created["target_id"] == pat["id"]
    assert all(pat["token"] not in (row["detail"] or "") for row in rows)
    assert all(PASSWORD not in (row["detail"] or "") for row in rows)
