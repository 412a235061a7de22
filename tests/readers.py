"""Read back what the server holds, for assertions: its database rows (audit log, change feed, the
Yjs update log), and the tree, content and roles as the API shows them.

    assert "workspace.delete" in audit_actions(client, ws)
    markdown, etag = await content(client, owner, doc_id)

Building state is tests/builders.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pycrdt import Doc, Text

from mdsync.appkeys import DB, SETTINGS
from mdsync.db import read_only
from tests.builders import API, Account


def db_rows(client, sql: str, params=()) -> list:
    """Read the server's database directly (audit log, change feed rows), on either engine."""
    return settings_rows(client.app[SETTINGS], sql, params)


def settings_rows(settings, sql: str, params=()) -> list:
    """Rows of `sql` (`?` placeholders) read on a fresh connection to `settings`' database."""
    with read_only(settings) as tx:
        return tx.all(sql, params)


def audit_actions(client, ws: str) -> list[str]:
    return [r["action"] for r in db_rows(client, "SELECT action FROM audit_log WHERE workspace_id = ? ORDER BY id", (ws,))]


def feed(client, ws: str) -> list[tuple]:
    """The change-feed rows of workspace `ws`: (entity, entity id, op, user id), oldest first."""
    return [tuple(r) for r in db_rows(
        client, "SELECT entity, entity_id, op, user_id FROM changes WHERE workspace_id = ? ORDER BY seq", (ws,))]


async def doc_text_in_db(app, document_id: str) -> str:
    """The document's `Y.Text('markdown')` rebuilt from what is stored (snapshot + update log)."""
    db = app[DB]
    doc = Doc()
    snap = await db.one("SELECT state FROM doc_snapshots WHERE document_id = ?", (document_id,))
    if snap:
        doc.apply_update(snap["state"])
    snap_seq = (await db.value("SELECT seq FROM doc_snapshots WHERE document_id = ?", (document_id,))) or 0
    for row in await db.all("SELECT data FROM doc_updates WHERE document_id = ? AND seq > ? ORDER BY seq",
                            (document_id, snap_seq)):
        doc.apply_update(row["data"])
    return str(doc.get("markdown", type=Text))


async def role_of(client, member: Account, ws: str) -> str | None:
    resp = await client.get(f"{API}/workspaces", headers=member.headers)
    return next((w["role"] for w in (await resp.json())["items"] if w["id"] == ws), None)


async def tree(client, who, ws) -> dict:
    resp = await client.get(f"{API}/workspaces/{ws}/tree", headers=who.headers)
    assert resp.status == 200
    return await resp.json()


async def content(client, who, doc_id) -> tuple[str, str]:
    """(markdown, ETag) of a document as `GET …/content` answers it."""
    resp = await client.get(f"{API}/documents/{doc_id}/content", headers=who.headers)
    assert resp.status == 200, await resp.text()
    return await resp.text(), resp.headers["ETag"]


def local(url: str) -> str:
    """The path and query of a signed url (its host is the configured public_url)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"
