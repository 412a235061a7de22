"""Deployment files: the systemd unit passes `systemd-analyze verify`; the repo's Caddyfile (Debian's
caddy) in front of mdsync on 127.0.0.1 carries REST and a WebSocket upgrade, compresses, adds
headers, hides /metrics and keeps tokens out of its log; deploy/install.sh is idempotent."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib

import aiohttp
import pytest

from tests.builders import PASSWORD
from tests.nodeclients import INTEROP, why_missing
from tests.prerequisites import missing, present, program, requires
from tests.processes import MDSYNC as MDSYNC_CLI
from tests.processes import ROOT, Caddy

UNIT = ROOT / "systemd" / "mdsync.service"
UNITS = [UNIT, ROOT / "systemd" / "mdsync-backup.service", ROOT / "systemd" / "mdsync-backup.timer"]
# two y-websocket providers on one document through the proxy: one types, the other must see it
Y_WEBSOCKET_THROUGH_PROXY = """
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
const cfg = JSON.parse(process.argv[1])
setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(2) }, 30000).unref()
const open = () => {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(cfg.url, cfg.doc, doc, { WebSocketPolyfill: WebSocket,
    params: { token: cfg.token }, disableBc: true })
  return { doc, provider, text: doc.getText('markdown'), synced: new Promise((ok) => provider.on('sync', (s) => s && ok())) }
}
const a = open(), b = open()
await Promise.all([a.synced, b.synced])
a.text.insert(a.text.length, 'typed through caddy\\n')
const end = Date.now() + 20000
while (b.text.toString() !== a.text.toString() && Date.now() < end) await new Promise((r) => setTimeout(r, 10))
console.log(JSON.stringify({ a: a.text.toString(), b: b.text.toString() }))
a.provider.destroy(); b.provider.destroy()
process.exit(0)
"""


def unit_settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@requires(program("systemd-analyze"))
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart's binary exists: give it /opt/mdsync/venv/bin/mdsync inside a
    # private mount namespace (the machine's real /opt is never touched); else a copy of the unit
    # pointing at this venv's mdsync
    fake_opt = tmp_path / "opt"
    (fake_opt / "mdsync" / "venv" / "bin").mkdir(parents=True)
    shim = fake_opt / "mdsync" / "venv" / "bin" / "mdsync"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m mdsync \"$@\"\n")
    shim.chmod(0o755)
    unshare = shutil.which("unshare")
    result = None
    namespaces = unshare and os.geteuid() == 0 and subprocess.run(
        [unshare, "--mount", "sh", "-c", f"mount --bind {fake_opt} /opt"], capture_output=True).returncode == 0
    if namespaces:
        result = subprocess.run([unshare, "--mount", "sh", "-c",
                                 f"mount --bind {fake_opt} /opt && systemd-analyze verify "
                                 + " ".join(str(u) for u in UNITS)],
                                capture_output=True, text=True, timeout=60)
    if result is None:
        copies = []
        for unit in UNITS:
            copies.append(tmp_path / unit.name)
            copies[-1].write_text(unit.read_text().replace("/opt/mdsync/venv/bin/mdsync", str(shim)))
        result = subprocess.run(["systemd-analyze", "verify", *map(str, copies)], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mdsync" not in result.stderr, result.stderr  # no warnings about our units

    settings = unit_settings()
    assert settings["ExecStart"] == ["/opt/mdsync/venv/bin/mdsync serve --config /etc/mdsync/config.toml "
                                     "--data-dir /var/lib/mdsync"]
    for key, value in {"User": "mdsync", "StateDirectory": "mdsync", "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "PrivateTmp": "yes", "Restart": "on-failure",
                       "KillMode": "mixed"}.items():
        assert settings[key] == [value], key
    # long enough for the room flush (server.shutdown_timeout) and litestream's final sync
    assert int(settings["TimeoutStopSec"][0]) >= 8 + 10 + 10


def test_nightly_backup_unit_command_runs(tmp_path):
    """The backup unit's ExecStart, unescaped as systemd does (%% → %, $$ → $), writes a backup."""
    line = next(text for text in (ROOT / "systemd" / "mdsync-backup.service").read_text().splitlines()
                if text.startswith("ExecStart="))
    command = line.removeprefix("ExecStart=").replace("%%", "%").replace("$$", "$")
    data = tmp_path / "var-lib-mdsync"
    config = tmp_path / "config.toml"
    config.write_text("[server]\nport = 8080\n")
    command = (command.replace("/opt/mdsync/venv/bin/mdsync", str(ROOT / ".venv" / "bin" / "mdsync")
                               if (ROOT / ".venv" / "bin" / "mdsync").exists() else f"{sys.executable} -m mdsync")
               .replace("/etc/mdsync/config.toml", str(config)).replace("/var/lib/mdsync", str(data)))
    assert subprocess.run([*MDSYNC_CLI, "migrate", "--data-dir", str(data)], capture_output=True).returncode == 0
    (data / "backups").mkdir()
    argv = command.split(" ", 2)  # /bin/sh -c '<script>'
    result = subprocess.run([argv[0], argv[1], argv[2].strip("'")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    made = list((data / "backups").glob("mdsync-*.tar.gz"))
    assert len(made) == 1 and re.fullmatch(r"mdsync-\d{8}T\d{6}Z\.tar\.gz", made[0].name)


@pytest.fixture
def caddy_in_front(tmp_path, server_process):
    if reason := program("caddy", ".ci/run installs Debian's caddy"):
        missing(reason)
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_LOG__LEVEL": "info"})
    caddy = Caddy(tmp_path, server.base.removeprefix("http://")).start()
    yield server, caddy
    caddy.stop()


async def test_caddy_in_front_of_mdsync(caddy_in_front):
    server, caddy = caddy_in_front
    async with aiohttp.ClientSession(auto_decompress=True) as http:
        # REST through the proxy
        async with http.post(f"{caddy.base}/api/v1/auth/register",
                             json={"email": "caddy@example.com", "password": PASSWORD, "name": "C"}) as resp:
            assert resp.status == 201, await resp.text()
            pair = await resp.json()
            assert resp.headers.get("X-Request-Id"), "the answer did not come from mdsync"
            assert "max-age" in resp.headers.get("Strict-Transport-Security", "")
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        async with http.get(f"{caddy.base}/api/v1/me", headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["email"] == "caddy@example.com"
        async with http.post(f"{caddy.base}/api/v1/workspaces", json={"name": "W"}, headers=headers) as resp:
            ws = (await resp.json())["id"]
        async with http.post(f"{caddy.base}/api/v1/workspaces/{ws}/documents",
                             json={"title": "Doc", "markdown": "# Hello\n"}, headers=headers) as resp:
            assert resp.status == 201
            doc = (await resp.json())["id"]
        # compression of a large answer
        async with http.get(f"{caddy.base}/api/v1/openapi.json", headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.status == 200
            assert resp.headers.get("Content-Encoding") in ("gzip", "zstd")
            await resp.json()
        # /metrics is not served to the internet through the public site
        async with http.get(f"{caddy.base}/metrics") as resp:
            assert resp.status == 404

        # a WebSocket upgrade goes through to mdsync's collaboration socket
        token = pair["access_token"]
        async with http.ws_connect(f"{caddy.base.replace('http', 'ws')}/ws/docs/{doc}?token={token}",
                                   timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws_conn:
            message = await ws_conn.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.BINARY, message  # y-websocket sync step 1 from mdsync
            await ws_conn.close()
        # a refused socket is refused by mdsync (its close code), not by the proxy
        async with http.ws_connect(f"{caddy.base.replace('http', 'ws')}/ws/docs/{doc}?token=not-a-token") as ws_conn:
            message = await ws_conn.receive(timeout=10)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws_conn.close_code == 4401
    # the real npm client (yjs + y-websocket's WebsocketProvider) through the proxy
    if present(why_missing()):
        result = subprocess.run(["node", "--input-type=module", "-e", Y_WEBSOCKET_THROUGH_PROXY,
                                 json.dumps({"url": f"{caddy.base.replace('http', 'ws')}/ws/docs", "doc": doc,
                                             "token": token})],
                                cwd=INTEROP, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        texts = json.loads(result.stdout.strip().splitlines()[-1])
        assert texts["a"] == texts["b"] and "through caddy" in texts["a"] and texts["a"].startswith("# Hello")
    caddy.stop()
    log = caddy.log.read_text()
    assert "/ws/docs/" in log, "caddy logged no access lines"
    assert token not in log and pair["refresh_token"] not in log
    assert "REDACTED" in log


def test_install_script_is_idempotent(tmp_path):
    prefix = tmp_path / "root"
    cmd = ["bash", str(ROOT / "deploy" / "install.sh"), "--prefix", str(prefix), "--domain", "notes.example.org",
           "--pip-args", "--no-deps", "--python", sys.executable]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    config_file = prefix / "etc" / "mdsync" / "config.toml"
    config = tomllib.loads(config_file.read_text())
    assert config["server"]["public_url"] == "https://notes.example.org"
    assert len(config["server"]["secret"]) >= 40 and len(config["metrics"]["token"]) >= 40
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o640
    assert stat.S_IMODE((prefix / "etc" / "mdsync" / "env").stat().st_mode) == 0o600
    for unit in UNITS:
        assert (prefix / "etc" / "systemd" / "system" / unit.name).read_text() == unit.read_text()
    assert "notes.example.org {" in (prefix / "etc" / "mdsync" / "Caddyfile").read_text()
    venv_mdsync = prefix / "opt" / "mdsync" / "venv" / "bin" / "mdsync"
    assert venv_mdsync.exists()
    assert "Next steps" in first.stdout and "mdsync users create" in first.stdout

    # the generated config is valid for mdsync
    from mdsync import config as config_module
    settings = config_module.load(config_file, environ={})
    assert settings.server.backup_before_migrate is True

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert tomllib.loads(config_file.read_text())["server"]["secret"] == config["server"]["secret"]
    assert re.search(r"kept\s+.*config\.toml", second.stdout)
    assert re.search(r"kept\s+.*mdsync\.service \(unchanged\)", second.stdout)

    dry = subprocess.run([*cmd[:3], str(tmp_path / "dry"), *cmd[4:], "--dry-run"], capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "would run" in dry.stdout and not (tmp_path / "dry").exists()
