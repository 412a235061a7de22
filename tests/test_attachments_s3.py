"""Attachments on the S3 backend, against a real S3-compatible server (moto, on 127.0.0.1)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from mdsync.appkeys import SETTINGS
from mdsync.attachments.service import ATTACHMENTS
from tests.builders import API, HTML, PNG, SVG, make_workspace, register, upload_multipart, upload_raw
from tests.readers import local
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.both_engines

BUCKET = "mdsync-attachments"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
async def client(make_client, s3):
    return await make_client(storage__backend="s3", storage__s3__endpoint=s3.endpoint, storage__s3__bucket=BUCKET,
                             storage__s3__access_key_id=ACCESS_KEY, storage__s3__secret_access_key=SECRET_KEY,
                             storage__s3__path_style=True)


async def setup(client):
    owner = await register(client, name="Owner")
    return owner, await make_workspace(client, owner)


async def test_put_presigned_redirect_and_delete(client, s3):
    owner, ws = await setup(client)
    a = await upload_multipart(client, owner, ws, PNG, "../photo.png")
    assert a["name"] == "photo.png" and a["content_type"] == "image/png"
    assert f"attachments/{a['id']}" in s3.keys(BUCKET)
    files = client.app[SETTINGS].data_dir / "files"
    assert not [p for p in files.rglob("*") if p.is_file()]  # nothing left on local disk
    # url points at mdsync, which redirects to a presigned URL valid 300 s
    assert a["url"].startswith(client.app[SETTINGS].public_url + "/api/v1/attachments/")
    for url, headers in ((local(a["url"]), {}), (f"{API}/attachments/{a['id']}", owner.headers)):
        resp = await client.get(url, headers=headers, allow_redirects=False)
        assert resp.status == 302
        target = resp.headers["Location"]
        assert target.startswith(f"{s3.endpoint}/{BUCKET}/attachments/{a['id']}?")
        query = parse_qs(urlsplit(target).query)
        assert query.get("X-Amz-Expires") == ["300"] or query.get("Expires")
        async with aiohttp.ClientSession() as http, http.get(target) as direct:
            assert direct.status == 200 and await direct.read() == PNG
    # bad signature: 403, no redirect
    assert (await client.get(local(a["url"])[:-2] + "xx", allow_redirects=False)).status == 403

    storage = client.app[ATTACHMENTS].storage
    assert await storage.exists(a["id"]) is True
    resp = await client.delete(f"{API}/attachments/{a['id']}", headers=owner.headers)
    assert resp.status == 204
    assert f"attachments/{a['id']}" not in s3.keys(BUCKET)
    assert await storage.exists(a["id"]) is False
    assert (await client.get(local(a["url"]), allow_redirects=False)).status == 404
    assert (await client.get(f"{API}/attachments/{a['id']}/meta", headers=owner.headers)).status == 404


async def test_active_content_is_streamed_not_redirected(client):
    owner, ws = await setup(client)
    for data, name in ((SVG, "x.svg"), (HTML, "y.html")):
        a = await upload_raw(client, owner, ws, data, filename=name)
        resp = await client.get(local(a["url"]), allow_redirects=False)
        assert resp.status == 200
        assert resp.headers["Content-Disposition"].startswith("attachment")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "svg" not in resp.headers["Content-Type"] and "html" not in resp.headers["Content-Type"]
        assert await resp.read() == data
        resp = await client.get(local(a["url"]), headers={"Range": "bytes=1-4"}, allow_redirects=False)
        assert resp.status == 206 and await resp.read() == data[1:5]


async def test_large_upload_goes_up_in_parts(client, s3):
    owner, ws = await setup(client)
    data = bytes(range(251)) * (9 * 1024 * 1024 // 251 + 1)  # past one 8 MiB part
    a = await upload_raw(client, owner, ws, data, filename="big.bin")
    assert a["size"] == len(data)
    body = s3.client().get_object(Bucket=BUCKET, Key=f"attachments/{a['id']}")["Body"].read()
    assert body == data


async def test_readiness_and_doctor_see_the_bucket(client, make_client, s3):
    from mdsync.ops.doctor import _storage

    body = await (await client.get("/readyz")).json()
    assert body["checks"]["storage"] == {"ok": True, "backend": "s3"}
    assert _storage(client.app[SETTINGS]).status == "PASS"
    missing = await make_client(storage__backend="s3", storage__s3__endpoint=s3.endpoint,
                                storage__s3__bucket="no-such-bucket", storage__s3__access_key_id=ACCESS_KEY,
                                storage__s3__secret_access_key=SECRET_KEY, storage__s3__path_style=True)
    resp = await missing.get("/readyz")
    assert resp.status == 503 and (await resp.json())["checks"]["storage"]["ok"] is False


async def test_export_reads_files_from_the_bucket(client):
    import io
    import zipfile

    owner, ws = await setup(client)
    a = await upload_raw(client, owner, ws, PNG, filename="p.png")
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": "D", "markdown": f"![](/api/v1/attachments/{a['id']})"},
                             headers=owner.headers)
    assert resp.status == 201
    resp = await client.get(f"{API}/workspaces/{ws}/export", headers=owner.headers)
    assert resp.status == 200
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
        assert zf.read(f"attachments/{a['id']}/p.png") == PNG
        assert zf.read("D.md").decode().endswith(f"![](attachments/{a['id']}/p.png)")
