"""Attachments over real HTTP (docs/api.md "Attachments"), local storage backend."""

from __future__ import annotations

import hashlib
import os

import aiohttp
import pytest

from mdsync import clock
from mdsync.appkeys import SETTINGS
from tests.builders import (
    API,
    HTML,
    PNG,
    SVG,
    document,
    join,
    make_workspace,
    register,
    share,
    upload_multipart,
    upload_raw,
)
from tests.readers import local

pytestmark = pytest.mark.both_engines


def stored_files(client) -> list[str]:
    root = client.app[SETTINGS].data_dir / "files"
    return sorted(p.name for p in root.rglob("*") if p.is_file())


async def setup(client):
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    return owner, ws


async def test_upload_multipart_and_raw_then_meta_and_signed_url(client):
    owner, ws = await setup(client)
    doc = await document(client, owner, ws, "Notes")
    a = await upload_multipart(client, owner, ws, PNG, "photo.png", document_id=doc["id"])
    assert a["name"] == "photo.png" and a["content_type"] == "image/png" and a["size"] == len(PNG)
    assert a["sha256"] == hashlib.sha256(PNG).hexdigest() and a["document_id"] == doc["id"] and a["id"]
    assert a["url"].startswith(client.app[SETTINGS].public_url + f"/api/v1/attachments/{a['id']}?exp=")

    b = await upload_raw(client, owner, ws, b"%PDF-1.7 hello", filename="report.pdf")
    assert b["name"] == "report.pdf" and b["content_type"] == "application/pdf" and b["document_id"] is None
    nameless = await upload_raw(client, owner, ws, b"plain words")
    assert nameless["name"] == "file" and nameless["content_type"].startswith("text/plain")

    resp = await client.get(f"{API}/attachments/{a['id']}/meta", headers=owner.headers)
    assert resp.status == 200
    meta = await resp.json()
    assert {k: meta[k] for k in ("id", "name", "size", "sha256")} == {k: a[k] for k in ("id", "name", "size", "sha256")}

    # the signed url works without any header; the stored file is named by id
    resp = await client.get(local(meta["url"]))
    assert resp.status == 200 and await resp.read() == PNG
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "photo.png" not in stored_files(client) and a["id"] in stored_files(client)
    # with a token, no signature needed
    resp = await client.get(f"{API}/attachments/{b['id']}", headers=owner.headers)
    assert resp.status == 200 and await resp.read() == b"%PDF-1.7 hello"
    # neither: 401
    assert (await client.get(f"{API}/attachments/{b['id']}")).status == 401

    listed = await (await client.get(f"{API}/documents/{doc['id']}/attachments", headers=owner.headers)).json()
    assert [i["id"] for i in listed["items"]] == [a["id"]] and listed["next_cursor"] is None
    assert listed["items"][0]["url"].split("?")[0].endswith(a["id"])


async def test_bad_and_expired_signatures_are_403(make_client):
    client = await make_client(storage__signed_url_ttl=60)  # shorter than the access token's life
    owner, ws = await setup(client)
    a = await upload_raw(client, owner, ws, PNG, filename="x.png")
    url = local(a["url"])
    bad = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert (await client.get(bad)).status == 403
    assert (await client.get(f"{API}/attachments/{a['id']}?exp=99999999999&sig=nope")).status == 403
    # a signature of one attachment does not open another
    b = await upload_raw(client, owner, ws, PNG, filename="y.png")
    assert (await client.get(url.replace(a["id"], b["id"]))).status == 403
    clock.advance(client.app[SETTINGS].storage.signed_url_ttl + 5)
    resp = await client.get(url)
    assert resp.status == 403
    assert (await resp.json())["type"] == "urn:mdsync:error:forbidden"
    # meta gives a fresh one
    fresh = await (await client.get(f"{API}/attachments/{a['id']}/meta", headers=owner.headers)).json()
    assert (await client.get(local(fresh["url"]))).status == 200


async def test_range_requests(client):
    owner, ws = await setup(client)
    data = bytes(range(256)) * 40
    a = await upload_raw(client, owner, ws, data, filename="blob.bin")
    url = local(a["url"])
    resp = await client.get(url, headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and await resp.read() == data[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    resp = await client.get(url, headers={"Range": "bytes=10000-"})
    assert resp.status == 206 and await resp.read() == data[10000:]
    resp = await client.get(url, headers={"Range": "bytes=-5"})
    assert resp.status == 206 and await resp.read() == data[-5:]
    resp = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(data)}"
    resp = await client.get(url)
    assert resp.status == 200 and resp.headers["Accept-Ranges"] == "bytes" and await resp.read() == data


async def test_active_content_is_a_download_with_nosniff(client):
    owner, ws = await setup(client)
    for data, name, kind in ((SVG, "logo.svg", "image/svg+xml"), (HTML, "page.html", "text/html"),
                             (HTML, "innocent.png", "text/html"), (SVG, "noext", "image/svg+xml")):
        a = await upload_raw(client, owner, ws, data, filename=name)
        assert a["content_type"] == kind, name
        for url, headers in ((local(a["url"]), {}), (f"{API}/attachments/{a['id']}", owner.headers)):
            resp = await client.get(url, headers=headers, allow_redirects=False)
            assert resp.status == 200, name
            assert resp.headers["Content-Disposition"].startswith("attachment"), name
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert "html" not in resp.headers["Content-Type"] and "svg" not in resp.headers["Content-Type"]
            assert await resp.read() == data
    # a png name cannot make text look like an image
    fake = await upload_raw(client, owner, ws, b"just text", filename="fake.png")
    assert fake["content_type"].startswith("text/plain")


async def test_names_are_reduced_to_their_last_component(client):
    owner, ws = await setup(client)
    cases = {"../../etc/passwd": "passwd", "..\\..\\x.png": "x.png", "a/b/": "file", "..": "file", ".": "file",
             "dir/..": "file", "": "file", "ok name.txt": "ok name.txt"}
    for given, expected in cases.items():
        a = await upload_raw(client, owner, ws, b"x", filename=given)
        assert a["name"] == expected, given
    a = await upload_multipart(client, owner, ws, b"x", "../../etc/passwd")
    assert a["name"] == "passwd"
    root = client.app[SETTINGS].data_dir
    assert not (root / "etc").exists() and not (root.parent / "etc").exists()


async def test_over_the_limit_is_413_and_nothing_is_stored(make_client):
    client = await make_client(limits__max_upload_bytes=1000)
    owner, ws = await setup(client)
    before = stored_files(client)
    await upload_raw(client, owner, ws, b"x" * 1001, filename="big.bin", status=413)
    await upload_multipart(client, owner, ws, b"x" * 5000, "big.bin", status=413)

    async def chunked():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b"y" * 500

    resp = await client.post(f"{API}/workspaces/{ws}/attachments", data=chunked(), params={"filename": "c.bin"},
                             headers={**owner.headers, "Content-Type": "application/octet-stream"})
    assert resp.status == 413
    assert stored_files(client) == before
    incoming = client.app[SETTINGS].data_dir / "incoming"
    assert not incoming.exists() or os.listdir(incoming) == []
    ok = await upload_raw(client, owner, ws, b"x" * 1000, filename="fits.bin")
    assert ok["size"] == 1000


async def test_delete_then_meta_file_and_url_are_404(client):
    owner, ws = await setup(client)
    doc = await document(client, owner, ws, "Notes")
    a = await upload_multipart(client, owner, ws, PNG, "p.png", document_id=doc["id"])
    resp = await client.delete(f"{API}/attachments/{a['id']}", headers=owner.headers)
    assert resp.status == 204
    assert (await client.get(f"{API}/attachments/{a['id']}/meta", headers=owner.headers)).status == 404
    assert (await client.get(f"{API}/attachments/{a['id']}", headers=owner.headers)).status == 404
    assert (await client.get(local(a["url"]))).status == 404
    assert (await client.delete(f"{API}/attachments/{a['id']}", headers=owner.headers)).status == 404
    listed = await (await client.get(f"{API}/documents/{doc['id']}/attachments", headers=owner.headers)).json()
    assert listed["items"] == []
    assert a["id"] not in stored_files(client)


async def test_roles_and_other_workspaces(client):
    owner, ws = await setup(client)
    viewer = await join(client, owner, ws, "viewer", "Viewer")
    editor = await join(client, owner, ws, "editor", "Editor")
    a = await upload_raw(client, editor, ws, PNG, filename="e.png")
    await upload_raw(client, viewer, ws, PNG, filename="v.png", status=403)
    assert (await client.get(f"{API}/attachments/{a['id']}/meta", headers=viewer.headers)).status == 200
    assert (await client.get(f"{API}/attachments/{a['id']}", headers=viewer.headers)).status == 200
    assert (await client.delete(f"{API}/attachments/{a['id']}", headers=viewer.headers)).status == 403

    stranger = await register(client, name="Stranger")
    other_ws = await make_workspace(client, stranger)
    for path in (f"{API}/attachments/{a['id']}/meta", f"{API}/attachments/{a['id']}"):
        assert (await client.get(path, headers=stranger.headers)).status == 404
    assert (await client.delete(f"{API}/attachments/{a['id']}", headers=stranger.headers)).status == 404
    # a document of another workspace cannot be the target of an upload
    doc = await document(client, owner, ws, "Mine")
    await upload_raw(client, stranger, other_ws, PNG, filename="s.png", status=404, document_id=doc["id"])
    await upload_raw(client, stranger, ws, PNG, filename="s.png", status=404)
    assert (await client.get(f"{API}/documents/{doc['id']}/attachments", headers=stranger.headers)).status == 404


async def test_share_link_readers_get_signed_links(client):
    owner, ws = await setup(client)
    a = await upload_raw(client, owner, ws, PNG, filename="pic.png")
    doc = await document(client, owner, ws, "Shared", markdown=f"![pic](/api/v1/attachments/{a['id']})\n")
    link = await share(client, owner, doc["id"])
    resp = await client.get(f"{API}/share/{link['token']}")
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    assert "sig=" in text
    import re
    url = re.search(r"(/api/v1/attachments/[^)\s\"]+)", text).group(1).replace("\\u0026", "&")
    fetched = await client.get(url)
    assert fetched.status == 200 and await fetched.read() == PNG


async def test_readiness_reports_storage(client):
    resp = await client.get("/readyz")
    body = await resp.json()
    assert body["checks"]["storage"]["ok"] is True


async def test_change_feed_and_audit(client):
    from tests.readers import audit_actions, feed

    owner, ws = await setup(client)
    a = await upload_raw(client, owner, ws, PNG, filename="p.png")
    assert (await client.delete(f"{API}/attachments/{a['id']}", headers=owner.headers)).status == 204
    assert [(e, i, op) for e, i, op, _ in feed(client, ws) if e == "attachment"] == [
        ("attachment", a["id"], "upsert"), ("attachment", a["id"], "delete")]
    assert {"attachment.create", "attachment.delete"} <= set(audit_actions(client, ws))
    resp = await client.get(f"{API}/sync/changes", headers=owner.headers)
    assert resp.status == 200
    assert a["id"] in await resp.text()


async def test_purging_a_document_or_a_workspace_removes_its_files(make_client):
    import asyncio

    from mdsync.workspaces.service import WORKSPACES

    client = await make_client(workspaces__purge_grace_seconds=600)
    owner, ws = await setup(client)
    doc = await document(client, owner, ws, "Doomed")
    a = await upload_raw(client, owner, ws, PNG, filename="a.png", document_id=doc["id"])
    kept = await upload_raw(client, owner, ws, PNG, filename="kept.png")
    resp = await client.delete(f"{API}/documents/{doc['id']}", params={"permanent": "true"}, headers=owner.headers)
    assert resp.status == 204, await resp.text()
    for _ in range(50):  # the files go right after the purge commits
        if a["id"] not in stored_files(client):
            break
        await asyncio.sleep(0.02)
    assert stored_files(client) == [kept["id"]]
    assert (await client.get(f"{API}/attachments/{a['id']}/meta", headers=owner.headers)).status == 404

    assert (await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)).status == 204
    assert (await client.get(local(kept["url"]))).status == 404  # a deleted workspace serves nothing
    clock.advance(660)
    assert await client.app[WORKSPACES].purge_expired() == 1
    for _ in range(50):
        if not stored_files(client):
            break
        await asyncio.sleep(0.02)
    assert stored_files(client) == []


async def test_malformed_uploads_are_refused_and_store_nothing(client):
    owner, ws = await setup(client)
    form = aiohttp.FormData()
    form.add_field("document_id", "x" * 5000)
    form.add_field("file", b"data", filename="a.txt")
    resp = await client.post(f"{API}/workspaces/{ws}/attachments", data=form, headers=owner.headers)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "document_id"
    form = aiohttp.FormData()
    form.add_field("file", b"one", filename="1.txt")
    form.add_field("file", b"two", filename="2.txt")
    resp = await client.post(f"{API}/workspaces/{ws}/attachments", data=form, headers=owner.headers)
    assert resp.status == 422
    form = aiohttp.FormData()
    form.add_field("other", "x")
    form.add_field("filler", b"data", filename="a.txt")
    resp = await client.post(f"{API}/workspaces/{ws}/attachments", data=form, headers=owner.headers)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "file"
    resp = await client.post(f"{API}/workspaces/{ws}/attachments", data=b"--x\r\nbroken",
                             headers={**owner.headers, "Content-Type": "multipart/form-data"})
    assert resp.status in (400, 422)
    await upload_multipart(client, owner, ws, b"x", "a.txt", document_id="not-a-document", status=404)
    assert stored_files(client) == []
    incoming = client.app[SETTINGS].data_dir / "incoming"
    assert not incoming.exists() or os.listdir(incoming) == []
