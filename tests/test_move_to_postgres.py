"""`mdsync migrate-db --to postgresql://…`: a data dir filled through the API on SQLite, copied into
an empty PostgreSQL database, then served from there — every REST read and every Yjs state equal,
tokens, feed cursors and etags still valid (issue 20 "Moving over")."""

from __future__ import annotations

import json

import pytest
from pycrdt import Doc, Text

from tests import engines, pgserver
from tests.ai_setup import OPENAI
from tests.builders import (API, document, folder, join, make_workspace, register, upload_raw)
from tests.fake_ai_upstream import fake_ai  # noqa: F401
from tests.processes import cli
from tests.prerequisites import requires

pytestmark = requires(pgserver.missing_reason())

CHAT = {"model": "gpt-fake", "max_tokens": 20, "messages": [{"role": "user", "content": "Say hello"}]}


async def _fill(client, fake_ai):
    """Users, a workspace with a member, folders, documents with Yjs history, versions, comments,
    an attachment, AI usage, a share link, a PAT: all through the API."""
    owner = await register(client, name="Owner", email="owner@example.com")
    ws = await make_workspace(client, owner)
    editor = await join(client, owner, ws, "editor")
    sub = await folder(client, owner, ws, "Notes")
    docs = [await document(client, owner, ws, f"Doc {i}", folder_id=sub if i % 2 else None,
                           markdown=f"# Doc {i}\n\nfirst words zebra{i}\n") for i in range(3)]
    etags = {}
    for d in docs:
        for n in range(3):  # Yjs history: several updates per document
            resp = await client.get(f"{API}/documents/{d['id']}/content", headers=owner.headers)
            etag = resp.headers["ETag"]
            resp = await client.put(f"{API}/documents/{d['id']}/content", data=f"# {d['title']}\n\nedit {n}\n",
                                    headers={**owner.headers, "If-Match": etag, "Content-Type": "text/markdown"})
            assert resp.status == 200, await resp.text()
            etags[d["id"]] = resp.headers["ETag"]
        resp = await client.post(f"{API}/documents/{d['id']}/versions", json={"label": "kept"}, headers=owner.headers)
        assert resp.status == 201, await resp.text()
    resp = await client.post(f"{API}/documents/{docs[0]['id']}/comments", json={"body": "nice"},
                             headers=editor.headers)
    assert resp.status == 201, await resp.text()
    await upload_raw(client, owner, ws, b"\x89PNG\r\n\x1a\n" + b"x" * 100, "pic.png", document_id=docs[0]["id"])
    resp = await client.post(f"{API}/documents/{docs[1]['id']}/share-links", json={"role": "viewer"},
                             headers=owner.headers)
    assert resp.status == 201, await resp.text()
    resp = await client.post(f"{API}/me/tokens", json={"name": "sync", "scopes": ["read", "write"]},
                             headers=owner.headers)
    assert resp.status == 201, await resp.text()
    pat = (await resp.json())["token"]
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=owner.headers)
    assert resp.status == 200, await resp.text()
    await resp.read()
    return owner, editor, ws, [d["id"] for d in docs], etags, pat


async def _reads(client, owner, editor, ws, doc_ids) -> dict:
    """Every REST read a client makes of this data, as (status, body) by path."""
    paths = [f"{API}/me", f"{API}/me/tokens", f"{API}/auth/sessions", f"{API}/workspaces", f"{API}/workspaces/{ws}",
             f"{API}/workspaces/{ws}/members", f"{API}/workspaces/{ws}/tree", f"{API}/workspaces/{ws}/documents",
             f"{API}/sync/changes?limit=500", f"{API}/search?q=edit", f"{API}/ai/usage?workspace_id={ws}",
             f"{API}/workspaces/{ws}/ai/limits"]
    for d in doc_ids:
        paths += [f"{API}/documents/{d}", f"{API}/documents/{d}/content", f"{API}/documents/{d}/versions",
                  f"{API}/documents/{d}/comments", f"{API}/documents/{d}/attachments",
                  f"{API}/documents/{d}/share-links"]
    seen = {}
    for who, account in (("owner", owner), ("editor", editor)):
        for path in paths:
            resp = await client.get(path, headers=account.headers)
            seen[(who, path)] = (resp.status, resp.headers.get("ETag"), _comparable(path, await resp.read()))
    return seen


def _comparable(path: str, body: bytes):
    """What a client reads in a response: the JSON's values (not its spacing, nor 0.0 vs 0), less
    what differs on every request (request ids, the expiry of signed URLs) and search scores,
    which each engine computes its own way (the hits and their snippets must be equal)."""
    try:
        value = json.loads(body)
    except ValueError:
        return body

    def clean(v):
        if isinstance(v, dict):
            return {k: (x.split("?", 1)[0] if k == "url" and isinstance(x, str) else clean(x))
                    for k, x in v.items() if k not in ("request_id", "score")}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    value = clean(value)
    if path.startswith(f"{API}/search"):
        value["items"].sort(key=lambda item: item["document_id"])
    return value


async def _yjs_states(client, owner, doc_ids) -> dict:
    states = {}
    for d in doc_ids:
        resp = await client.get(f"{API}/documents/{d}/yjs", headers=owner.headers)
        assert resp.status == 200
        doc = Doc()
        doc.apply_update(await resp.read())
        states[d] = (str(doc.get("markdown", type=Text)), doc.get_state())
    return states


async def test_a_sqlite_data_dir_moves_to_postgresql_and_clients_carry_on(make_client, tmp_path, fake_ai):  # noqa: F811
    data_dir = tmp_path / "data"
    sqlite_side = await make_client(data_dir=data_dir, **fake_ai.settings())
    owner, editor, ws, doc_ids, etags, pat = await _fill(sqlite_side, fake_ai)
    before = await _reads(sqlite_side, owner, editor, ws, doc_ids)
    states = await _yjs_states(sqlite_side, owner, doc_ids)
    cursor = (await (await sqlite_side.get(f"{API}/sync/changes?limit=500",
                                           headers=owner.headers)).json())["cursor"]
    await sqlite_side.close()

    url = engines.cluster().create_database("t_move_" + tmp_path.name[-12:].replace("-", "_").lower())
    done = cli(data_dir, "migrate-db", "--to", url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "counts verified" in done.stdout

    pg_side = await make_client(data_dir=data_dir, database__url=url, **fake_ai.settings())
    after = await _reads(pg_side, owner, editor, ws, doc_ids)
    assert {k: v for k, v in after.items() if v != before[k]} == {}
    assert await _yjs_states(pg_side, owner, doc_ids) == states

    # an etag from before the move still takes a write; the old cursor sees exactly what came after
    d = doc_ids[0]
    resp = await pg_side.put(f"{API}/documents/{d}/content", data="# moved\n",
                             headers={**owner.headers, "If-Match": etags[d], "Content-Type": "text/markdown"})
    assert resp.status == 200, await resp.text()
    changes = (await (await pg_side.get(f"{API}/sync/changes?since={cursor}", headers=owner.headers)).json())
    assert [(c["entity"], c["id"]) for c in changes["changes"]] == [("document", d)]
    assert changes["cursor"] != cursor
    # the PAT, the password and the refresh token made on SQLite still work
    assert (await pg_side.get(f"{API}/me", headers={"Authorization": f"Bearer {pat}"})).status == 200
    resp = await pg_side.post(f"{API}/auth/refresh", json={"refresh_token": owner.refresh_token})
    assert resp.status == 200, await resp.text()
    resp = await pg_side.post(f"{API}/auth/login", json={"email": "OWNER@example.com", "password": owner.password})
    assert resp.status == 200, await resp.text()
    # a new row gets a new number: identity sequences were moved past the copied ids
    resp = await pg_side.post(OPENAI + "/chat/completions", json=CHAT, headers=owner.headers)
    assert resp.status == 200, await resp.text()


def test_migrate_db_refuses_a_database_that_is_not_empty(tmp_path):
    data_dir = tmp_path / "data"
    assert cli(data_dir, "migrate").returncode == 0
    url = engines.cluster().create_database("t_full_" + tmp_path.name[-12:].replace("-", "_").lower(),
                                            template=engines.TEMPLATE)
    done = cli(data_dir, "migrate-db", "--to", url)
    assert done.returncode == 1
    assert "is not empty" in done.stdout + done.stderr


@pytest.mark.parametrize("url, why", [("mysql://x@127.0.0.1/db", "postgresql:// URL")])
def test_migrate_db_refuses_what_is_not_postgresql(tmp_path, url, why):
    data_dir = tmp_path / "data"
    assert cli(data_dir, "migrate").returncode == 0
    done = cli(data_dir, "migrate-db", "--to", url)
    assert done.returncode == 1 and why in done.stdout + done.stderr
