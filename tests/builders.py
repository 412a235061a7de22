"""Build the state a test starts from, through the public API where practical, so tests double as
examples: settings for a test server, accounts, workspaces with members, folders, documents, share
links, attachments. Each helper asserts its request succeeded, so a test fails at the step that
broke. What the API cannot make (a document written straight into the database, an older schema,
forged tokens) is here too, named as such.

    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    editor = await join(client, owner, ws, "editor")
    doc = await document(client, owner, ws, "Notes", markdown="# Hi\\n")

Reading back what the server holds (database rows, the tree, content) is tests/readers.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import io
import json
import uuid
import zipfile
from pathlib import Path

import aiohttp

from mdsync import clock, config
from mdsync.appkeys import DB
from mdsync.db import connect
from mdsync.db.migrate import available
from mdsync.workspaces import service as workspaces
from tests import engines

API = "/api/v1"
PASSWORD = "correct horse battery"

# argon2 at full cost takes ~100 ms per hash; tests use the cheapest valid parameters
FAST_AUTH = {"auth.argon2_time_cost": 1, "auth.argon2_memory_cost": 1024, "auth.argon2_parallelism": 1}
# tests never reach a real AI provider: unless a test points them at its fake upstream, the AI
# base URLs are a loopback port nothing listens on (a call there is a 502, never traffic out)
NO_AI_UPSTREAM = {"ai.openai.base_url": "http://127.0.0.1:9/v1", "ai.anthropic.base_url": "http://127.0.0.1:9"}


def make_settings(data_dir: Path, **overrides) -> config.Settings:
    """Settings for a test server: open registration, cheap hashing; `overrides` use dotted keys
    with `__` for dots (`auth__registration="invite"`)."""
    values = {"server.data_dir": data_dir, "auth.registration": "open", **FAST_AUTH, **NO_AI_UPSTREAM,
              "database.url": engines.database_url(data_dir)}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return config.load(None, environ={}, overrides=values)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- accounts --------------------------------------------------------------------------------------
class Account:
    """A registered user as a test sees it: ids, tokens, and ready-made headers."""

    def __init__(self, pair: dict, password: str):
        self.user = pair["user"]
        self.id = pair["user"]["id"]
        self.email = pair["user"]["email"]
        self.access_token = pair["access_token"]
        self.refresh_token = pair["refresh_token"]
        self.password = password

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)


async def register(client, email: str | None = None, name: str = "Test User", password: str = PASSWORD,
                   **extra) -> Account:
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    resp = await client.post("/api/v1/auth/register",
                             json={"email": email, "password": password, "name": name, **extra})
    assert resp.status == 201, await resp.text()
    return Account(await resp.json(), password)


# -- workspaces and members ------------------------------------------------------------------------
async def expiring_token(client, account: Account, seconds: float) -> str:
    """A personal access token of `account` that expires in `seconds`."""
    expires = clock.now() + datetime.timedelta(seconds=seconds)
    resp = await client.post("/api/v1/me/tokens", json={"name": "short", "expires_at": expires.isoformat()},
                             headers=account.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["token"]


async def make_workspace(client, owner: Account, name: str = "Team") -> str:
    resp = await client.post(f"{API}/workspaces", json={"name": name}, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def invite(client, inviter: Account, ws: str, role: str, **extra) -> dict:
    resp = await client.post(f"{API}/workspaces/{ws}/invitations", json={"role": role, **extra}, headers=inviter.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def join(client, owner: Account, ws: str, role: str, name: str = "Member") -> Account:
    """A new user who joined `ws` with `role` (invited by `owner`, registered with the token)."""
    invitation = await invite(client, owner, ws, role)
    return await register(client, name=name, invitation=invitation["token"])


# -- folders, documents, share links ---------------------------------------------------------------
async def folder(client, who, ws, name, parent_id=None, **extra) -> str:
    resp = await client.post(f"{API}/workspaces/{ws}/folders", json={"name": name, "parent_id": parent_id, **extra},
                             headers=who.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def document(client, who, ws, title="Doc", **extra) -> dict:
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": title, **extra}, headers=who.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def owned_workspace(client, name="Team") -> tuple[Account, str]:
    """(owner, workspace id): a new user's new workspace."""
    owner = await register(client, name="Owner")
    return owner, await make_workspace(client, owner, name)


async def owned_document(client, markdown="# Title\n\nhello world\n") -> tuple[Account, str, str]:
    """(owner, workspace id, document id): a new user's new workspace with one document."""
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, "Doc", markdown=markdown)
    return owner, ws, doc["id"]


async def share(client, who, doc_id, **body) -> dict:
    resp = await client.post(f"{API}/documents/{doc_id}/share-links", json=body, headers=who.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def make_document(app, owner_id: str, *, markdown: str = "", members: dict[str, str] | None = None,
                        workspace_id: str | None = None, content_model: str = "text") -> tuple[str, str]:
    """(workspace id, document id): a document in a new (or the given) workspace owned by `owner_id`,
    with `members` {user id: role} added, written straight into the database (for tests that hold
    an app rather than a client, and documents without an initial Yjs state)."""
    db = app[DB]

    def create(tx):
        ws_id = workspace_id or workspaces.insert_workspace(tx, "Collab " + uuid.uuid4().hex[:6], owner_id)["id"]
        doc_id = str(uuid.uuid4())
        now = clock.iso()
        tx.execute("INSERT INTO documents (id, workspace_id, title, content_model, markdown, size, created_by,"
                   " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (doc_id, ws_id, "Doc", content_model, markdown, len(markdown.encode()), owner_id, now, now))
        for user_id, role in (members or {}).items():
            workspaces.add_member(tx, ws_id, user_id, role, actor_id=owner_id)
        return ws_id, doc_id

    return await db.write(create)


# -- attachments -----------------------------------------------------------------------------------
# sample files: a PNG by its signature, and two kinds of active content a browser would run
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"


async def upload_multipart(client, who, ws, data: bytes, filename: str, document_id: str | None = None,
                           status: int = 201) -> dict:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    if document_id:
        form.add_field("document_id", document_id)
    resp = await client.post(f"{API}/workspaces/{ws}/attachments", data=form, headers=who.headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def upload_raw(client, who, ws, data: bytes, filename: str | None = None, status: int = 201, **params) -> dict:
    if filename is not None:
        params["filename"] = filename
    resp = await client.post(f"{API}/workspaces/{ws}/attachments", data=data, params=params,
                             headers={**who.headers, "Content-Type": "application/octet-stream"})
    assert resp.status == status, await resp.text()
    return await resp.json()


# -- import zips ----------------------------------------------------------------------------------
def make_zip(entries: dict[str, bytes | str], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data.encode() if isinstance(data, str) else data)
    return buf.getvalue()


async def import_zip(client, who, ws, data: bytes, *, multipart: bool = False, expect: int = 200) -> dict:
    """`POST …/import` of `data`, as application/zip or a multipart form; the answer's JSON."""
    if multipart:
        form = aiohttp.FormData()
        form.add_field("file", data, filename="vault.zip", content_type="application/zip")
        resp = await client.post(f"{API}/workspaces/{ws}/import", data=form, headers=who.headers)
    else:
        resp = await client.post(f"{API}/workspaces/{ws}/import", data=data,
                                 headers={**who.headers, "Content-Type": "application/zip"})
    body = await resp.json()
    assert resp.status == expect, body
    return body


# -- what the API never makes ----------------------------------------------------------------------
def older_database(data_dir: Path) -> int:
    """A database migrated to all but the newest migration (as an older mdsync left it); returns
    the version it is at."""
    migrations = available()
    data_dir.mkdir(parents=True)
    conn = connect(data_dir / "mdsync.db")
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "applied_at TEXT NOT NULL) STRICT")
    for m in migrations[:-1]:
        conn.executescript(f"BEGIN;\n{m.sql}\n;INSERT INTO schema_migrations VALUES ({m.version}, '{m.name}', "
                           "'2026-01-01T00:00:00.000000Z');COMMIT;")
    conn.close()
    return migrations[-2].version


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def bad_tokens(account: Account) -> dict[str, str]:
    """{label: token} of tokens the server must refuse, made from `account`'s real ones: tampered,
    unsigned (`alg: none`), signed with another key, a refresh token, garbage."""
    header, payload, sig = account.access_token.split(".")
    claims = json.loads(_unb64(payload))
    other = {**claims, "sub": str(uuid.uuid4())}
    # signed with a key of our own making: the server's key is not guessable from outside
    wrong_key = hashlib.sha256(b"not the server's key").digest()
    signing = f"{header}.{_b64(json.dumps(other).encode())}"
    forged = f"{signing}.{_b64(hmac.new(wrong_key, signing.encode(), hashlib.sha256).digest())}"
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return {
        "tampered claims": f"{header}.{_b64(json.dumps(other).encode())}.{sig}",
        "tampered signature": f"{header}.{payload}.{sig[:-2]}{'AA' if not sig.endswith('AA') else 'BB'}",
        "alg none": f"{none_header}.{_b64(json.dumps(claims).encode())}.",
        "alg none with signature": f"{none_header}.{payload}.{sig}",
        "wrong key": forged,
        "refresh as access": account.refresh_token,
        "garbage": "not-a-token",
        "unknown pat": "mds_" + "A" * 43,
        "long": "a" * 6000,  # (over 8 KiB the HTTP parser refuses the header line itself: 400)
    }
