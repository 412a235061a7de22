"""Export and import (docs/api.md "Export and import"): the zip layout, the lossless round trip into a fresh
server, plain markdown zips and vault folders, hostile archives refused with nothing written,
roles, flat memory while a 5 000-document workspace streams out, and the CLI on a real data dir."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import struct
import threading
import time
import zipfile
from pathlib import Path

import aiohttp
import pytest

from mdsync.appkeys import SETTINGS
from mdsync.transfer import archive
from tests.builders import (
    API,
    PASSWORD,
    document,
    folder,
    import_zip,
    join,
    make_settings,
    make_workspace,
    make_zip,
    owned_workspace,
    register,
)
from tests.processes import MDSYNC, ROOT, cli, subprocess_env
from tests.readers import audit_actions, content, db_rows, feed, settings_rows, tree

pytestmark = pytest.mark.both_engines

# -- helpers ----------------------------------------------------------------------------------------


async def export_zip(client, who, ws) -> bytes:
    resp = await client.get(f"{API}/workspaces/{ws}/export", headers=who.headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/zip"
    assert "attachment" in resp.headers["Content-Disposition"]
    return await resp.read()


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def comparable(files: dict[str, bytes]) -> tuple[dict, dict]:
    """(every .md file and directory, mdsync.json without what names the export itself)"""
    manifest = json.loads(files["mdsync.json"])
    for key in ("exported_at", "workspace"):
        manifest.pop(key)
    for doc in manifest["documents"]:
        doc.pop("versions")  # the history stays with the server that made it
    return {k: v for k, v in files.items() if k != "mdsync.json"}, manifest


def shape(t: dict) -> tuple:
    """A tree as ids, names, parents, titles, positions and kinds (no timestamps of this server)."""
    return (sorted((f["id"], f["name"], f["parent_id"], f["position"]) for f in t["folders"]),
            sorted((d["id"], d["title"], d["folder_id"], d["position"], d["kind"]) for d in t["documents"]))


# -- the round trip ---------------------------------------------------------------------------------
async def build_workspace(client, owner, ws) -> dict[str, str]:
    """Every awkward case at once; returns {document id: markdown}."""
    docs: dict[str, str] = {}

    async def doc(title, markdown, **extra):
        d = await document(client, owner, ws, title, markdown=markdown, **extra)
        docs[d["id"]] = markdown
        return d

    projects = await folder(client, owner, ws, "Projects")
    sub = await folder(client, owner, ws, "2026: Q4 / plans", parent_id=projects)
    await folder(client, owner, ws, "Empty folder")
    await folder(client, owner, ws, "attachments")          # a reserved name at the root
    await folder(client, owner, ws, "projects")              # differs from "Projects" by case only
    await doc("Read me", "# Read me\n\nHello *world*.\n")
    await doc("Read me", "A second document with the same title.\n")   # duplicate name
    await doc("read ME", "Same name once case is ignored.\n")
    await doc("CON", "A Windows device name.\n")
    await doc("Dots...", "Trailing dots.\n")
    await doc("Plan", "---\ntags: [a, b]\ntitle: Its own front matter\n---\nBody after foreign front matter\n",
              folder_id=sub)
    await doc("Ünïcødé ✓ 日本語", "Non-ASCII: é, ß, 😀\r\nCRLF line\r\n\ttab\n", folder_id=projects)
    await doc("Daily", "# {{title}} on {{date}}\n", folder_id=projects, kind="template")
    await doc("Style guide", "Write short sentences.", kind="context")
    await doc("Empty", "")
    await doc("---", "---\n---\n", folder_id=sub)             # looks like front matter itself
    await doc('Quote " and \\ back', "x\n")
    trashed = await document(client, owner, ws, "Trashed", markdown="gone")
    resp = await client.delete(f"{API}/documents/{trashed['id']}", headers=owner.headers)
    assert resp.status == 204
    return docs


async def test_round_trip_into_a_fresh_server_is_lossless(client, make_client):
    owner, ws = await owned_workspace(client)
    docs = await build_workspace(client, owner, ws)
    first = await export_zip(client, owner, ws)
    files = entries(first)

    # the layout: directories named after folders, .md with front matter, mdsync.json
    assert "Projects/" in files and "Projects/2026_ Q4 _ plans/" in files and "Empty folder/" in files
    assert "attachments (2)/" in files and "projects (2)/" in files
    assert {"Read me.md", "Read me (2).md", "read ME (3).md", "_CON.md", "Dots.md"} <= set(files)
    assert "Trashed.md" not in files
    text = files["Projects/Ünïcødé ✓ 日本語.md"].decode()
    split = archive.split_front_matter(text)
    assert split.ours and split.meta["title"] == "Ünïcødé ✓ 日本語" and split.meta["kind"] == "note"
    assert split.markdown == "Non-ASCII: é, ß, 😀\r\nCRLF line\r\n\ttab\n"
    manifest = json.loads(files["mdsync.json"])
    assert manifest["format"] == "mdsync-export" and manifest["workspace"]["id"] == ws
    assert len(manifest["documents"]) == len(docs) and len(manifest["folders"]) == 5
    assert manifest["comments"] == [] and manifest["attachments"] == []
    assert all(isinstance(d["versions"], list) for d in manifest["documents"])
    assert "workspace.export" in audit_actions(client, ws)

    # into a fresh server
    other = await make_client()
    owner2, ws2 = await owned_workspace(other, "Restored")
    counts = await import_zip(other, owner2, ws2, first)
    assert (counts["documents"], counts["folders"], counts["attachments"]) == (len(docs), 5, 0)
    assert counts["skipped"] == []
    for doc_id, markdown in docs.items():  # ids kept, markdown byte for byte
        assert (await content(other, owner2, doc_id))[0] == markdown
    assert shape(await tree(other, owner2, ws2)) == shape(await tree(client, owner, ws))
    # every created folder and document is in the change feed
    fed = [(e, i) for e, i, op, _ in feed(other, ws2) if e in ("folder", "document")]
    assert sorted(i for _, i in fed) == sorted([*docs, *(f["id"] for f in manifest["folders"])])

    # exported again: the same files, the same metadata
    second = await export_zip(other, owner2, ws2)
    assert comparable(entries(second)) == comparable(files)


async def test_an_export_without_its_mdsync_json_still_imports(client):
    owner, ws = await owned_workspace(client)
    sub = await folder(client, owner, ws, "Notes: 2026")
    d = await document(client, owner, ws, "Plan / draft", markdown="# Heading\nbody\n", folder_id=sub, kind="template")
    files = entries(await export_zip(client, owner, ws))
    plain = make_zip({name: data for name, data in files.items() if name != "mdsync.json"})
    ws2 = await make_workspace(client, owner, "Plain")
    counts = await import_zip(client, owner, ws2, plain)
    assert (counts["documents"], counts["folders"]) == (1, 1)
    t = await tree(client, owner, ws2)
    # the front matter still gives the exact title and kind; the folder is named after its directory
    assert [(x["title"], x["kind"]) for x in t["documents"]] == [("Plan / draft", "template")]
    assert [f["name"] for f in t["folders"]] == ["Notes_ 2026"]
    assert (await content(client, owner, t["documents"][0]["id"]))[0] == "# Heading\nbody\n"
    assert t["documents"][0]["id"] != d["id"]  # its id is taken on this server


async def test_an_empty_workspace_exports_and_imports(client):
    owner, ws = await owned_workspace(client)
    files = entries(await export_zip(client, owner, ws))
    assert list(files) == ["mdsync.json"]
    counts = await import_zip(client, owner, ws, make_zip(files))
    assert (counts["documents"], counts["folders"], counts["attachments"]) == (0, 0, 0)


async def test_the_version_list_is_in_mdsync_json(client):
    owner, ws = await owned_workspace(client)
    d = await document(client, owner, ws, "Versioned", markdown="v1\n")
    resp = await client.post(f"{API}/documents/{d['id']}/versions", json={"label": "first draft"},
                             headers=owner.headers)
    assert resp.status == 201, await resp.text()
    version = await resp.json()
    manifest = json.loads(entries(await export_zip(client, owner, ws))["mdsync.json"])
    listed = manifest["documents"][0]["versions"]
    assert [(v["id"], v["kind"], v["label"]) for v in listed] == [(version["id"], "named", "first draft")]


async def test_importing_the_same_export_twice_makes_new_ids(client):
    owner, ws = await owned_workspace(client)
    d = await document(client, owner, ws, "One", markdown="one\n")
    data = await export_zip(client, owner, ws)
    counts = await import_zip(client, owner, ws, data)
    assert counts["documents"] == 1
    t = await tree(client, owner, ws)
    assert [x["title"] for x in t["documents"]] == ["One", "One"]
    new = next(x for x in t["documents"] if x["id"] != d["id"])
    assert (await content(client, owner, new["id"]))[0] == "one\n"
    # into another workspace of the same server: the ids exist, so new ones
    ws2 = await make_workspace(client, owner, "Second")
    await import_zip(client, owner, ws2, data)
    assert d["id"] not in {x["id"] for x in (await tree(client, owner, ws2))["documents"]}


# -- plain markdown --------------------------------------------------------------------------------
def _with_symlink(entries: dict[str, str], link: str, target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(link)
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, target)
    return buf.getvalue()


async def test_symbolic_links_in_a_zip_are_skipped(client):
    owner, ws = await owned_workspace(client)
    counts = await import_zip(client, owner, ws, _with_symlink({"real.md": "real"}, "link.md", "/etc/passwd"))
    assert counts["documents"] == 1
    assert counts["skipped"] == [{"path": "link.md", "reason": "a symbolic link"}]
    assert [d["title"] for d in (await tree(client, owner, ws))["documents"]] == ["real"]


async def test_a_zip_of_plain_markdown_files(client):
    owner, ws = await owned_workspace(client)
    await document(client, owner, ws, "Already here")
    vault = make_zip({
        "Notes/Hello.md": "Intro line\n\n# Greeting\n\nbody\n",
        "Notes/bom.md": b"\xef\xbb\xbf# With a BOM\n",
        "Journal/2024/day.md": "---\ntitle: Day one\ntags: [x]\n---\ntext\n",
        "plain.md": "no heading here\n",
        "code.markdown": "```\n# not a heading\n```\n",
        ".obsidian/app.json": "{}",
        "__MACOSX/._plain.md": b"\x00\x01",
        "img/pic.png": b"\x89PNG\r\n\x1a\n",
        "Notes/": "",
    })
    counts = await import_zip(client, owner, ws, vault, multipart=True)
    assert (counts["documents"], counts["folders"], counts["attachments"]) == (5, 3, 1)  # img/pic.png
    reasons = {s["path"]: s["reason"] for s in counts["skipped"]}
    assert "img/pic.png" not in reasons
    assert ".obsidian/app.json" in reasons and counts["skipped_total"] == 2
    t = await tree(client, owner, ws)
    folders = {f["name"]: f for f in t["folders"]}
    assert set(folders) == {"Notes", "Journal", "2024"}  # folders hold documents: no "img", no ".obsidian"
    titles = {d["title"]: d for d in t["documents"]}
    assert set(titles) == {"Already here", "Greeting", "With a BOM", "Day one", "plain", "code"}
    assert titles["Day one"]["folder_id"] == folders["2024"]["id"]
    assert folders["2024"]["parent_id"] == folders["Journal"]["id"]
    assert titles["plain"]["folder_id"] is None and titles["plain"]["position"] > titles["Already here"]["position"]
    # a foreign front matter stays part of the markdown; a BOM does not
    assert (await content(client, owner, titles["Day one"]["id"]))[0].startswith("---\ntitle: Day one\n")
    assert (await content(client, owner, titles["With a BOM"]["id"]))[0] == "# With a BOM\n"


# -- hostile and broken archives --------------------------------------------------------------------
def _lying_sizes(data: bytes, name: bytes, size: int) -> bytes:
    """Patch the declared uncompressed size of `name` in its local header and central directory."""
    out = bytearray(data)
    pos = out.find(b"PK\x03\x04")
    while pos >= 0:
        n = struct.unpack_from("<H", out, pos + 26)[0]
        if out[pos + 30:pos + 30 + n] == name:
            struct.pack_into("<I", out, pos + 22, size)
        pos = out.find(b"PK\x03\x04", pos + 4)
    pos = out.find(b"PK\x01\x02")
    while pos >= 0:
        n = struct.unpack_from("<H", out, pos + 28)[0]
        if out[pos + 46:pos + 46 + n] == name:
            struct.pack_into("<I", out, pos + 24, size)
        pos = out.find(b"PK\x01\x02", pos + 4)
    return bytes(out)


def _duplicate_entries() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("a.md", "one")
        zf.writestr("a.md", "two")
    return buf.getvalue()


BOMB = make_zip({"ok.md": "fine", "bomb.md": b"\0" * (3 << 20)})  # 3 MiB of zeros → ~3 KiB
BAD_ARCHIVES = {
    "dotdot": (make_zip({"ok.md": "fine", "../evil.md": "x"}), 422, "leaves the archive's root"),
    "dotdot-inside": (make_zip({"a/../../evil.md": "x"}), 422, "leaves the archive's root"),
    "backslash-dotdot": (make_zip({"..\\evil.md": "x"}), 422, "leaves the archive's root"),
    "absolute": (make_zip({"/etc/evil.md": "x"}), 422, "absolute path"),
    "drive": (make_zip({"C:/evil.md": "x"}), 422, "absolute path"),
    "bomb": (BOMB, 422, "expands to"),
    "lying-sizes": (_lying_sizes(BOMB, b"bomb.md", 100), 422, "bomb.md"),
    "not-utf8": (make_zip({"fine.md": "ok", "Folder/latin1.md": "caf\xe9".encode("latin-1")}), 422,
                 "Folder/latin1.md is not UTF-8"),
    "duplicate-entries": (_duplicate_entries(), 422, "a.md appears twice"),
    "not-a-zip": (b"this is not a zip file at all", 422, "not a zip"),
    "empty": (b"", 422, "empty"),
    "truncated": (make_zip({"a.md": "x" * 5000})[:-30], 422, "not a zip"),
    "manifest-garbage": (make_zip({"mdsync.json": "{nope", "a.md": "x"}), 422, "mdsync.json"),
    "manifest-wrong-types": (make_zip({"mdsync.json": json.dumps({"format": "mdsync-export", "version": 1,
                                                                   "folders": [{"path": "A", "position": "x"}]}),
                                       "A/a.md": "x"}), 422, "folders[0].position"),
    "bad-kind": (make_zip({"a.md": "---\nid: \"x\"\ntitle: \"A\"\nkind: \"banana\"\n---\nx"}), 422, "kind"),
}


@pytest.mark.parametrize("case", BAD_ARCHIVES, ids=list(BAD_ARCHIVES))
async def test_bad_archives_are_refused_and_nothing_is_written(make_client, case):
    client = await make_client(limits__max_import_bytes=1 << 20)
    owner, ws = await owned_workspace(client)
    before = len(feed(client, ws))
    data, status, message = BAD_ARCHIVES[case]
    resp = await client.post(f"{API}/workspaces/{ws}/import", data=data,
                             headers={**owner.headers, "Content-Type": "application/zip"})
    body = await resp.json()
    assert resp.status == status, body
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert message in body["detail"], body
    t = await tree(client, owner, ws)
    assert t["folders"] == [] and t["documents"] == []
    assert len(feed(client, ws)) == before
    assert "workspace.import" not in audit_actions(client, ws)
    assert db_rows(client, "SELECT count(*) FROM documents")[0][0] == 0


async def test_oversized_and_wrong_bodies(make_client):
    client = await make_client(limits__max_import_bytes=64 * 1024)
    owner, ws = await owned_workspace(client)
    big = make_zip({"big.md": random.Random(1).randbytes(200_000).hex()}, zipfile.ZIP_STORED)
    resp = await client.post(f"{API}/workspaces/{ws}/import", data=big,
                             headers={**owner.headers, "Content-Type": "application/zip"})
    assert resp.status == 413 and "max_import_bytes" in (await resp.json())["detail"]

    async def chunks():  # no Content-Length: counted while streaming
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    resp = await client.post(f"{API}/workspaces/{ws}/import", data=chunks(),
                             headers={**owner.headers, "Content-Type": "application/zip"})
    assert resp.status == 413
    resp = await client.post(f"{API}/workspaces/{ws}/import", data=b"{}",
                             headers={**owner.headers, "Content-Type": "application/json"})
    assert resp.status == 415
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="x.zip")
    resp = await client.post(f"{API}/workspaces/{ws}/import", data=form, headers=owner.headers)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "file"
    t = await tree(client, owner, ws)
    assert t["documents"] == [] and t["folders"] == []


async def test_a_document_over_the_document_limit_is_refused(make_client):
    client = await make_client(limits__max_document_bytes=1000)
    owner, ws = await owned_workspace(client)
    body = await import_zip(client, owner, ws, make_zip({"ok.md": "x", "Big/huge.md": "y" * 1001}), expect=422)
    assert "Big/huge.md" in body["detail"]
    assert (await tree(client, owner, ws))["documents"] == []


# -- who may ----------------------------------------------------------------------------------------
async def test_roles(client):
    owner, ws = await owned_workspace(client)
    await document(client, owner, ws, "Secret", markdown="s")
    data = make_zip({"x.md": "x"})
    for role, status in (("admin", 200), ("editor", 403), ("viewer", 403)):
        who = await join(client, owner, ws, role)
        resp = await client.get(f"{API}/workspaces/{ws}/export", headers=who.headers)
        assert resp.status == status
        resp = await client.post(f"{API}/workspaces/{ws}/import", data=data,
                                 headers={**who.headers, "Content-Type": "application/zip"})
        assert resp.status == status
    outsider = await register(client)
    resp = await client.get(f"{API}/workspaces/{ws}/export", headers=outsider.headers)
    assert resp.status == 404
    resp = await client.post(f"{API}/workspaces/{ws}/import", data=data,
                             headers={**outsider.headers, "Content-Type": "application/zip"})
    assert resp.status == 404
    titles = sorted(d["title"] for d in (await tree(client, owner, ws))["documents"])
    assert titles == ["Secret", "x"]  # only the admin's import


# -- live documents ----------------------------------------------------------------------------------
async def test_export_has_the_live_text_of_an_open_document(client, settings):
    from mdsync.collab.rooms import ROOMS
    from tests.waiting import eventually
    from tests.yclient import YClient

    owner, ws = await owned_workspace(client)
    d = await document(client, owner, ws, "Live", markdown="base\n")
    y = await YClient.connect(client, d["id"], owner.access_token)
    await y.wait_synced()
    y.insert(len(str(y.text)), "typed just now\n")
    room = client.app[ROOMS]
    assert await eventually(lambda: room.loaded(d["id"]) is not None
                            and room.loaded(d["id"]).text() == "base\ntyped just now\n")
    files = entries(await export_zip(client, owner, ws))  # no waiting for the projection
    assert archive.split_front_matter(files["Live.md"].decode()).markdown == "base\ntyped just now\n"
    await room.loaded(d["id"]).drain()

    # the CLI, beside the running server, rebuilds it from the committed Yjs updates
    out = settings.data_dir.parent / "cli.zip"
    proc = await asyncio.create_subprocess_exec(
        *MDSYNC, "export", "--workspace", ws, str(out), "--data-dir", str(settings.data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=subprocess_env(settings.data_dir), cwd=ROOT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    files = entries(out.read_bytes())
    assert archive.split_front_matter(files["Live.md"].decode()).markdown == "base\ntyped just now\n"
    await y.close()


async def test_a_client_that_leaves_mid_export_stops_it(client, caplog):
    import base64
    import logging

    caplog.set_level(logging.INFO, logger="mdsync.transfer")
    owner, ws = await owned_workspace(client)
    rng = random.Random(7)
    # ~15 MB of barely compressible markdown: more than socket buffers hold
    vault = make_zip({f"n{i}.md": base64.b64encode(rng.randbytes(37_500)).decode() for i in range(400)})
    await import_zip(client, owner, ws, vault)
    resp = await client.get(f"{API}/workspaces/{ws}/export", headers=owner.headers)
    assert resp.status == 200
    await resp.content.readexactly(64 * 1024)
    resp.close()  # the client goes away with most of the zip unsent

    def exporting() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "mdsync-export"]

    deadline = time.monotonic() + 10
    while exporting() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert exporting() == []
    assert any("stopped after" in r.getMessage() for r in caplog.records)
    # and the server goes on serving exports
    assert len(entries(await export_zip(client, owner, ws))) == 401


async def test_an_export_that_fails_midway_is_never_a_valid_zip(client):
    from mdsync.transfer import export

    owner, ws = await owned_workspace(client)
    for i in range(5):
        await document(client, owner, ws, f"D{i}", markdown="x" * 1000)

    def failing(items):  # a markdown source that breaks after two documents (a disk error, say)
        for n, placed in enumerate(items):
            if n == 2:
                raise OSError("disk went away")
            yield placed, "text"

    tx = export.open_snapshot(client.app[SETTINGS])
    out = io.BytesIO()
    try:
        with pytest.raises(OSError):
            export.write_export(out, tx, ws, failing)
    finally:
        tx.conn.close()
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(out.getvalue()))


class _CountingConnection:
    """A database connection that counts the statements run on it (PostgreSQL: one round trip each)."""

    def __init__(self, conn):
        self.conn = conn
        self.statements = 0

    def execute(self, *args, **kwargs):
        self.statements += 1
        return self.conn.execute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.conn, name)


async def test_an_export_reads_its_documents_in_batches_and_writes_the_same_bytes(client, monkeypatch):
    """The export of 450 documents (in a folder and at the top; some with Yjs state, a snapshot,
    versions) reads their stored markdown, Yjs state and versions a batch of documents per
    statement (`export.BATCH`): a bounded number of statements, however many documents (before:
    one or two per document each way, a round trip each on PostgreSQL). Its bytes are the same as
    when it reads one document at a time (BATCH = 1), for the CLI's reader and the HTTP route's."""
    from pycrdt import Doc, Text

    from mdsync import clock
    from mdsync.appkeys import DB
    from mdsync.collab.room import TEXT_NAME
    from mdsync.documents.content import CONTENT
    from mdsync.transfer import export

    owner, ws = await owned_workspace(client)
    sub = await folder(client, owner, ws, "Sub")

    def yjs(text: str) -> bytes:
        doc = Doc()
        doc.get(TEXT_NAME, type=Text).insert(0, text)
        return doc.get_update()

    def create(tx) -> list[str]:
        ids, now = [], clock.iso()
        for i in range(450):
            doc_id = f"doc-{i:03d}"
            markdown = f"# Note {i}\n\n" + "words and more words\n" * (i % 7)
            tx.execute("INSERT INTO documents (id, workspace_id, folder_id, title, markdown, size, position,"
                       " created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (doc_id, ws, sub if i % 2 else None, f"Note {i % 300}", markdown, len(markdown.encode()),
                        i % 5, owner.id, now, now))
            ids.append(doc_id)
        tx.execute("INSERT INTO doc_snapshots (document_id, seq, state, updated_at) VALUES (?, 1, ?, ?)",
                   ("doc-010", yjs("from a snapshot\n"), now))
        for n, doc_id in enumerate(("doc-011", "doc-250", "doc-449")):
            tx.execute("INSERT INTO doc_updates (document_id, seq, data, created_at) VALUES (?, 1, ?, ?)",
                       (doc_id, yjs(f"live text {n}\n"), now))
        return ids

    ids = await client.app[DB].write(create)
    for doc_id in ("doc-000", "doc-011", "doc-301"):
        resp = await client.post(f"{API}/documents/{doc_id}/versions", json={"label": "kept"}, headers=owner.headers)
        assert resp.status == 201, await resp.text()
    exported_at = clock.iso()
    iso = clock.iso
    monkeypatch.setattr(clock, "iso", lambda moment=None: iso(moment) if moment is not None else exported_at)
    loop = asyncio.get_running_loop()
    readers = {"stored": export.stored_reader,
               "loop": lambda tx: export.loop_reader(loop, client.app[CONTENT], tx, threading.Event())}

    async def exported(reader: str) -> tuple[bytes, int]:
        tx = export.open_snapshot(client.app[SETTINGS])
        counted = tx.conn = _CountingConnection(tx.conn)
        out = io.BytesIO()
        try:
            summary = await asyncio.to_thread(export.write_export, out, tx, ws, readers[reader](tx))
        finally:
            counted.conn.close()
        assert summary.documents == 450
        return out.getvalue(), counted.statements

    for reader in readers:
        batched, statements = await exported(reader)
        assert statements <= 30, statements   # 450 documents, 2 folders
        files = entries(batched)
        assert files["Note 10.md"].endswith(b"from a snapshot\n")
        assert files["Sub/Note 11.md"].endswith(b"live text 0\n") and files["Note 250.md"].endswith(b"live text 1\n")
        assert files["Note 12.md"].endswith(b"# Note 12\n\n" + b"words and more words\n" * 5)
        manifest = json.loads(files["mdsync.json"])
        assert sorted(d["id"] for d in manifest["documents"]) == ids
        assert {d["id"] for d in manifest["documents"] if d["versions"]} == {"doc-000", "doc-011", "doc-301"}
        batch = export.BATCH
        export.BATCH = 1
        try:
            one_at_a_time, _ = await exported(reader)
        finally:
            export.BATCH = batch
        assert batched == one_at_a_time


# -- the layout's building blocks -------------------------------------------------------------------
@pytest.mark.parametrize("title", ["plain", 'q"uote\\', "new\nline", "\u0085\u2028 odd", "emoji 😀", ": colon #hash",
                                   "'single'", "  spaced  ", "---"])
def test_front_matter_round_trips_any_title(title):
    meta = {"id": "0e3c3f8e-9a51-4f55-a8a4-2b9f8c7c5b1d", "title": title, "kind": "note",
            "created_at": "2026-11-29T10:00:00.000000Z", "updated_at": "2026-11-29T10:00:00.000000Z"}
    split = archive.split_front_matter(archive.front_matter(meta) + "---\nbody")
    assert split.ours and split.meta == meta and split.markdown == "---\nbody"


def test_safe_names_and_paths():
    assert archive.safe_name("a/b\\c:d*e?f\"g<h>i|j") == "a_b_c_d_e_f_g_h_i_j"
    assert archive.safe_name("..") == "untitled" and archive.safe_name("  ") == "untitled"
    assert archive.safe_name("nul.txt") == "_nul.txt" and archive.safe_name("name. . ") == "name"
    assert len(archive.safe_name("é" * 500).encode()) <= archive.MAX_NAME_BYTES
    assert archive.entry_path("a\\b\\c.md") == "a/b/c.md" and archive.entry_path("./a//b/") == "a/b/"
    for bad in ("../x", "a/../../x", "/x", "\\x", "C:x", "c:/x", "a\x00b"):
        with pytest.raises(archive.UnsafePath):
            archive.entry_path(bad)


def test_attachment_links_both_ways():
    aid = "0e3c3f8e-9a51-4f55-a8a4-2b9f8c7c5b1d"
    files = {aid: archive.attachment_path(aid, "my pic.png")}
    md = f"![p](/api/v1/attachments/{aid}) and <img src=\"https://x.example/api/v1/attachments/{aid}?exp=1&sig=z\">"
    out = archive.links_to_files(md, "Projects/Sub", files)
    assert out == (f"![p](../../attachments/{aid}/my%20pic.png) and "
                   f"<img src=\"../../attachments/{aid}/my%20pic.png\">")
    new = "/api/v1/attachments/11111111-2222-4333-8444-555555555555"
    back = archive.file_links(out, "Projects/Sub", lambda path: new if path == files[aid] else None)
    assert back == f"![p]({new}) and <img src=\"{new}\">"
    vault = archive.file_links("![[pic.png]] [x](https://e.com/a.png) [y](../../../etc/passwd)", "",
                               lambda path: None, lambda name: new if name == "pic.png" else None)
    assert vault == f"![pic.png]({new}) [x](https://e.com/a.png) [y](../../../etc/passwd)"


# -- a big workspace streams out with flat memory -----------------------------------------------------
def _rss_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


async def test_a_5000_document_export_streams_with_flat_memory(server_process, tmp_path):
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open"})
    pid = server.proc.pid
    rng = random.Random(5000)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "markdown", "sync", "yjs", "folder", "zip", "über", "東京"]

    def note(i: int) -> str:
        lines = [f"# Note {i}", ""] + [" ".join(rng.choice(words) + str(rng.randrange(10**6)) for _ in range(12))
                                       for _ in range(90)]
        return "\n".join(lines) + "\n"

    vault = make_zip({f"folder {i % 50}/note {i}.md": note(i) for i in range(5000)})
    async with aiohttp.ClientSession() as http:
        resp = await http.post(server.url(f"{API}/auth/register"),
                               json={"email": "big@example.com", "password": PASSWORD, "name": "Big"})
        headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        resp = await http.post(server.url(f"{API}/workspaces"), json={"name": "Big"}, headers=headers)
        ws = (await resp.json())["id"]
        resp = await http.post(server.url(f"{API}/workspaces/{ws}/import"), data=vault,
                               headers={**headers, "Content-Type": "application/zip"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["documents"] == 5000
        del vault

        await asyncio.sleep(0.5)
        baseline = _rss_kib(pid, "VmRSS")
        peak = baseline
        try:  # reset the kernel's peak-RSS mark, so VmHWM is the peak during the export
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            use_hwm = True
        except OSError:
            use_hwm = False
        done = threading.Event()

        def sample():  # and sample RSS meanwhile, in case the mark cannot be reset
            nonlocal peak
            while not done.wait(0.01):
                peak = max(peak, _rss_kib(pid, "VmRSS"))

        sampler = threading.Thread(target=sample)
        sampler.start()
        out = tmp_path / "big.zip"
        size = 0
        try:
            resp = await http.get(server.url(f"{API}/workspaces/{ws}/export"), headers=headers)
            assert resp.status == 200
            with open(out, "wb") as f:
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    f.write(chunk)
        finally:
            done.set()
            sampler.join()
        if use_hwm:
            peak = max(peak, _rss_kib(pid, "VmHWM"))

    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        expanded = sum(i.file_size for i in zf.infolist())
        assert zf.testzip() is None
    assert sum(n.endswith(".md") for n in names) == 5000 and "mdsync.json" in names
    assert size > 20 << 20 and expanded > 60 << 20
    growth = (peak - baseline) * 1024
    print(f"export {size / 2**20:.1f} MiB zip ({expanded / 2**20:.1f} MiB markdown); server RSS "
          f"{baseline / 1024:.1f} MiB → peak {peak / 1024:.1f} MiB (+{growth / 2**20:.1f} MiB)")
    # what stays is the zip's central directory (~0.5 KiB per entry, kept by zipfile until the end),
    # SQLite's page cache and sorter, and the few chunks in flight: nothing grows with the content
    assert growth < size / 3, f"the server grew by {growth} bytes while streaming a {size}-byte export"
    assert growth < expanded / 8
    server.terminate()


# -- the CLI on a real data dir ----------------------------------------------------------------------


def test_cli_export_and_import(tmp_path):
    from tests.builders import PNG

    data_dir = tmp_path / "data"
    assert cli(data_dir, "users", "create", "admin@example.com", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    for name in ("First", "Second"):
        done = cli(data_dir, "workspaces", "create", name, "--owner", "admin@example.com")
        assert done.returncode == 0, done.stderr
    slugs = {row["name"]: row["slug"] for row in _rows(data_dir, "SELECT name, slug FROM workspaces")}

    vault = tmp_path / "vault"
    (vault / "Daily" / "2026").mkdir(parents=True)
    (vault / ".obsidian").mkdir()
    (vault / "Daily" / "2026" / "Nov 29.md").write_text("# Sunday\n\nwrote the export\n")
    (vault / "Ideas.md").write_text("---\ntitle: Big ideas\n---\n- one\n\n![[pic.png]]\n")
    (vault / ".obsidian" / "workspace.json").write_text("{}")
    (vault / "pic.png").write_bytes(PNG)
    (vault / "outside.md").symlink_to(tmp_path / "secret.md")
    (tmp_path / "secret.md").write_text("must not be imported")

    done = cli(data_dir, "import", "--workspace", slugs["First"], str(vault))
    assert done.returncode == 0, done.stderr
    assert "imported 2 documents, 2 folders and 1 attachments" in done.stdout
    [pic] = _rows(data_dir, "SELECT id, name, content_type FROM attachments")
    assert (pic["name"], pic["content_type"]) == ("pic.png", "image/png")
    assert (data_dir / "files").is_dir()

    first = tmp_path / "first.zip"
    done = cli(data_dir, "export", "--workspace", slugs["First"], str(first))
    assert done.returncode == 0, done.stderr
    assert "exported 2 documents, 2 folders and 1 attachments" in done.stdout
    files = entries(first.read_bytes())
    assert set(files) == {"Daily/", "Daily/2026/", "Daily/2026/Sunday.md", "Big ideas.md", "mdsync.json",
                          f"attachments/{pic['id']}/pic.png"}
    assert files[f"attachments/{pic['id']}/pic.png"] == PNG  # the bytes, read from storage by the CLI
    assert f"(attachments/{pic['id']}/pic.png)" in files["Big ideas.md"].decode()
    assert files["Daily/2026/Sunday.md"].decode().endswith("---\n# Sunday\n\nwrote the export\n")

    done = cli(data_dir, "import", "--workspace", slugs["Second"], str(first))
    assert done.returncode == 0, done.stderr
    second = tmp_path / "second.zip"
    assert cli(data_dir, "export", "--workspace", slugs["Second"], str(second)).returncode == 0
    second_files = entries(second.read_bytes())
    [copy_id] = {name.split("/")[1] for name in second_files if name.startswith("attachments/")} - {pic["id"]}
    assert second_files[f"attachments/{copy_id}/pic.png"] == PNG
    a, b = comparable(files), comparable(second_files)
    assert {k.replace(pic["id"], copy_id) for k in a[0]} == set(b[0])
    for name, data in a[0].items():  # new ids (same server), identical markdown and titles
        if name.startswith("attachments/"):
            continue
        x, y = archive.split_front_matter(data.decode()), archive.split_front_matter(b[0][name].decode())
        assert (x.markdown.replace(pic["id"], copy_id), x.meta.get("title")) == (y.markdown, y.meta.get("title"))

    bad = tmp_path / "bad.zip"
    bad.write_bytes(make_zip({"../evil.md": "x"}))
    done = cli(data_dir, "import", "--workspace", slugs["Second"], str(bad))
    assert done.returncode == 1 and "leaves the archive's root" in done.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "bad\x01name.md").write_text("a control character in a file name")
    done = cli(data_dir, "import", "--workspace", slugs["Second"], str(odd))
    assert done.returncode == 1 and "control characters" in done.stderr
    second_docs = _rows(data_dir, "SELECT count(*) FROM documents d JOIN workspaces w ON w.id = d.workspace_id"
                                  f" WHERE w.slug = '{slugs['Second']}'")[0][0]
    assert second_docs == 2  # the refused imports wrote nothing
    # the import into Second made its own copy of the attachment, linked from its copy of the document
    assert len(_rows(data_dir, "SELECT id FROM attachments")) == 2
    done = cli(data_dir, "export", "--workspace", "no-such-workspace", str(tmp_path / "x.zip"))
    assert done.returncode == 1 and "no workspace" in done.stderr
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.partial").exists()


def _rows(data_dir: Path, sql: str):
    return settings_rows(make_settings(data_dir), sql)


# -- attachments ----------------------------------------------------------------------------------
async def attachment_bytes(client, who, link: str) -> bytes:
    resp = await client.get(link, headers=who.headers)
    assert resp.status == 200, (link, resp.status)
    return await resp.read()


async def test_attachments_round_trip_into_a_fresh_server(client, make_client):
    from tests.builders import PNG, SVG, upload_multipart, upload_raw

    owner, ws = await owned_workspace(client)
    pics = await folder(client, owner, ws, "Pics")
    trip = await document(client, owner, ws, "Trip", folder_id=pics)
    a = await upload_multipart(client, owner, ws, PNG, "my pic.png", document_id=trip["id"])
    b = await upload_raw(client, owner, ws, b"%PDF-1.4 manual", filename="manual.pdf")
    c = await upload_raw(client, owner, ws, SVG, filename="logo.svg")
    gone = await upload_raw(client, owner, ws, PNG, filename="deleted.png")
    assert (await client.delete(f"{API}/attachments/{gone['id']}", headers=owner.headers)).status == 204
    trip_md = f"# Trip\n\n![a pic](/api/v1/attachments/{a['id']})\n\n<img src=\"/api/v1/attachments/{c['id']}\">\n"
    top_md = f"See [the manual](/api/v1/attachments/{b['id']}) and ![](/api/v1/attachments/{a['id']} \"title\")\n"
    resp = await client.put(f"{API}/documents/{trip['id']}/content", data=trip_md,
                            headers={**owner.headers, "Content-Type": "text/markdown"})
    assert resp.status == 200, await resp.text()
    top = await document(client, owner, ws, "Top", markdown=top_md)

    first = await export_zip(client, owner, ws)
    files = entries(first)
    assert files[f"attachments/{a['id']}/my pic.png"] == PNG
    assert files[f"attachments/{b['id']}/manual.pdf"] == b"%PDF-1.4 manual"
    assert files[f"attachments/{c['id']}/logo.svg"] == SVG
    assert not any(gone["id"] in name for name in files)
    exported_trip = files["Pics/Trip.md"].decode()
    assert f"](../attachments/{a['id']}/my%20pic.png)" in exported_trip and "/api/v1/" not in exported_trip
    assert f"[the manual](attachments/{b['id']}/manual.pdf)" in files["Top.md"].decode()
    manifest = json.loads(files["mdsync.json"])
    listed = {x["id"]: x for x in manifest["attachments"]}
    assert set(listed) == {a["id"], b["id"], c["id"]}
    assert listed[a["id"]]["document_id"] == trip["id"] and listed[a["id"]]["sha256"] == a["sha256"]

    other = await make_client()
    owner2, ws2 = await owned_workspace(other, "Restored")
    counts = await import_zip(other, owner2, ws2, first)
    assert counts["attachments"] == 3 and counts["skipped"] == []
    # links rewritten back: the markdown is what it was, byte for byte (ids kept on a fresh server)
    assert (await content(other, owner2, trip["id"]))[0] == trip_md
    assert (await content(other, owner2, top["id"]))[0] == top_md
    for original, data in ((a, PNG), (b, b"%PDF-1.4 manual"), (c, SVG)):
        meta = await (await other.get(f"{API}/attachments/{original['id']}/meta", headers=owner2.headers)).json()
        assert {k: meta[k] for k in ("name", "size", "sha256", "content_type", "document_id")} == \
            {k: original[k] for k in ("name", "size", "sha256", "content_type", "document_id")}
        assert await attachment_bytes(other, owner2, f"{API}/attachments/{original['id']}") == data
    assert {e for e, *_ in feed(other, ws2)} >= {"attachment"}

    second = await export_zip(other, owner2, ws2)
    assert comparable(entries(second)) == comparable(files)

    # into the same server again: the ids are taken, so new ones; the links follow them
    counts = await import_zip(client, owner, ws, first)
    assert counts["attachments"] == 3
    t = await tree(client, owner, ws)
    copies = [d for d in t["documents"] if d["title"] == "Trip" and d["id"] != trip["id"]]
    assert len(copies) == 1
    copy_md = (await content(client, owner, copies[0]["id"]))[0]
    new_id = re.search(r"!\[a pic\]\(/api/v1/attachments/([0-9a-f-]{36})\)", copy_md).group(1)
    assert new_id != a["id"]
    assert await attachment_bytes(client, owner, f"{API}/attachments/{new_id}") == PNG


async def test_an_obsidian_vault_with_images_becomes_documents_and_attachments(client):
    from tests.builders import PNG

    png2 = PNG + b"second"
    pdf = b"%PDF-1.5 obsidian"
    owner, ws = await owned_workspace(client)
    vault = make_zip({
        "Travel/Trip.md": ("# Trip\n\n![](photo.png)\n\n![[diagram.png|300]]\n\n[the manual](../files/manual%20v2.pdf)\n\n"
                           "![[Other note]]\n\n![missing](nowhere.png)\n"),
        "Travel/photo.png": PNG,
        "assets/diagram.png": png2,
        "files/manual v2.pdf": pdf,
        "Other note.md": "# Other note\n",
        "Root links.md": "![](assets/diagram.png)\n",
        ".obsidian/workspace.json": "{}",
    })
    counts = await import_zip(client, owner, ws, vault)
    assert (counts["documents"], counts["attachments"]) == (3, 3)
    t = await tree(client, owner, ws)
    docs = {d["title"]: d for d in t["documents"]}
    trip = (await content(client, owner, docs["Trip"]["id"]))[0]
    links = re.findall(r"\]\((/api/v1/attachments/[0-9a-f-]{36})\)", trip)
    assert len(links) == 3, trip
    assert "![[Other note]]" in trip and "![missing](nowhere.png)" in trip  # not files of the vault
    assert "![diagram.png](" in trip
    assert [await attachment_bytes(client, owner, link) for link in links] == [PNG, png2, pdf]
    root = (await content(client, owner, docs["Root links"]["id"]))[0]
    assert re.fullmatch(r"!\[\]\(/api/v1/attachments/[0-9a-f-]{36}\)\n", root)
    listed = await (await client.get(f"{API}/documents/{docs['Trip']['id']}/attachments", headers=owner.headers)).json()
    # an attachment belongs to the first document (in path order) that links to it
    assert sorted(i["name"] for i in listed["items"]) == ["manual v2.pdf", "photo.png"]
    assert {i["content_type"] for i in listed["items"]} == {"image/png", "application/pdf"}
    listed = await (await client.get(f"{API}/documents/{docs['Root links']['id']}/attachments",
                                     headers=owner.headers)).json()
    assert [i["name"] for i in listed["items"]] == ["diagram.png"]


async def test_an_attachment_over_the_upload_limit_is_skipped(make_client):
    client = await make_client(limits__max_upload_bytes=100)
    owner, ws = await owned_workspace(client)
    vault = make_zip({"Note.md": "![](big.png) ![](small.png)\n", "big.png": b"\x89PNG\r\n\x1a\n" + b"x" * 200,
                      "small.png": b"\x89PNG\r\n\x1a\n"})
    counts = await import_zip(client, owner, ws, vault)
    assert counts["attachments"] == 1
    assert [s["path"] for s in counts["skipped"]] == ["big.png"] and "max_upload_bytes" in counts["skipped"][0]["reason"]
    files = client.app[SETTINGS].data_dir / "files"
    assert len([p for p in files.rglob("*") if p.is_file()]) == 1


async def test_stored_files_go_again_when_the_import_transaction_fails(client):
    from mdsync.hooks import HOOKS

    owner, ws = await owned_workspace(client)
    vault = make_zip({"Note.md": "![](pic.png)\n", "pic.png": b"\x89PNG\r\n\x1a\nbytes"})

    def fail(tx, *args):  # a feature's import hook failing inside the transaction
        raise RuntimeError("hook failed")

    client.app[HOOKS].document_imported.append(fail)
    try:
        resp = await client.post(f"{API}/workspaces/{ws}/import", data=vault,
                                 headers={**owner.headers, "Content-Type": "application/zip"})
        assert resp.status == 500
    finally:
        client.app[HOOKS].document_imported.remove(fail)
    files = client.app[SETTINGS].data_dir / "files"
    assert [p for p in files.rglob("*") if p.is_file()] == []
    assert db_rows(client, "SELECT id FROM attachments") == []
    assert (await tree(client, owner, ws))["documents"] == []
