"""No credential in an access log (issue 14 item 18): a share link's token is the whole credential,
and it reached mdsync's access log on `HEAD`/`POST /share/{token}` and on routes no route matches
(`/share/{token}/`); the Caddyfile's log kept `?share=`, `?sig=`, `X-Mdsync-Share` and
`/share/{token}` paths. The same traffic goes to a real `mdsync serve` directly and through Caddy
with the repository's Caddyfile; neither log holds a token, a signature or a bearer token."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.builders import PASSWORD
from tests.prerequisites import missing, program
from tests.processes import Caddy

pytestmark = pytest.mark.both_engines


async def traffic(base: str) -> dict[str, str]:
    """Requests carrying every kind of credential there is, the secrets they carried."""
    ws_base = base.replace("http", "ws", 1)
    async with aiohttp.ClientSession(base) as http:
        resp = await http.post("/api/v1/auth/register", json={
            "email": f"l{time.time_ns()}@example.com", "password": PASSWORD, "name": "L"})
        assert resp.status == 201, await resp.text()
        token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        resp = await http.post("/api/v1/workspaces", json={"name": "L"}, headers=headers)
        ws_id = (await resp.json())["id"]
        resp = await http.post(f"/api/v1/workspaces/{ws_id}/documents", json={"title": "L", "markdown": "x\n"},
                               headers=headers)
        doc = (await resp.json())["id"]
        resp = await http.post(f"/api/v1/documents/{doc}/share-links", json={}, headers=headers)
        share = (await resp.json())["token"]
        resp = await http.post(f"/api/v1/workspaces/{ws_id}/attachments?filename=a.png",
                               data=b"\x89PNG\r\n\x1a\n" + b"0" * 32, headers=headers)
        url = urlsplit((await resp.json())["url"])
        sig = parse_qs(url.query)["sig"][0]

        answers = {}
        for method, path, extra in [
            ("GET", f"/api/v1/share/{share}", {}),
            ("HEAD", f"/api/v1/share/{share}", {}),
            ("POST", f"/api/v1/share/{share}", {}),
            ("GET", f"/api/v1/share/{share}/", {}),
            ("GET", f"/api/v1/share/{share}/more", {}),
            ("GET", f"/api/v1/documents/{doc}/content?share={share}", headers),
            ("GET", f"/api/v1/documents/{doc}/content", {**headers, "X-Mdsync-Share": share}),
            ("GET", f"{url.path}?{url.query}", {}),
            ("GET", f"/api/v1/documents/{doc}/content?access_token={token}&token={token}", {}),
        ]:
            async with http.request(method, path, headers=extra, allow_redirects=False) as resp:
                answers[(method, path)] = resp.status
        assert answers[("GET", f"/api/v1/share/{share}")] == 200
        assert answers[("GET", f"/api/v1/documents/{doc}/content?share={share}")] == 200
        assert answers[("GET", f"{url.path}?{url.query}")] == 200
        for query in (f"token={token}", f"share={share}"):
            async with http.ws_connect(f"{ws_base}/ws/docs/{doc}?{query}") as socket_:
                await socket_.send_bytes(b"\x00\x00\x01\x00")  # sync step 1, empty state: a step 2 answers
                msg = await socket_.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY
    return {"share token": share, "signature": sig, "access token": token}


def assert_clean(log: str, secrets: dict[str, str]) -> None:
    assert "/api/v1/share/" in log, "no access line was logged"
    for what, value in secrets.items():
        assert value not in log, f"the {what} is in the log"


async def test_mdsync_access_log_holds_no_credential(server_process):
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_LOG__LEVEL": "info"})
    secrets = await traffic(server.base)
    server.terminate()
    log = server.rest_of_output()
    assert_clean(log, secrets)
    assert "/api/v1/share/{token}" in log


async def test_caddy_access_log_holds_no_credential(tmp_path, server_process):
    if reason := program("caddy", ".ci/run installs Debian's caddy"):
        missing(reason)
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open"})
    caddy = Caddy(tmp_path, server.base.removeprefix("http://")).start()
    try:
        secrets = await traffic(caddy.base)
    finally:
        caddy.stop()
    log = caddy.log.read_text()
    assert '"uri":' in log, log[-2000:]
    assert_clean(log, secrets)
    assert "/api/v1/share/REDACTED" in log and "sig=REDACTED" in log and "share=REDACTED" in log
    with pytest.raises(AssertionError):  # the check itself catches a token (it can fail)
        assert_clean(log + secrets["share token"], secrets)
