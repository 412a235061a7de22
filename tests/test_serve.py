"""`mdsync serve` as a self-hoster runs it: a real process on a temp data dir. The ready line,
first start (setup token), restart with the same secret, SIGTERM with a request in flight, a
fresh venv with the README's install command, and `kill -9` in the middle of a write burst."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.builders import PASSWORD
from tests.processes import MDSYNC, ROOT, ChildProcess, free_port, subprocess_env

# promises in wall-clock time (a stop within 10 s, /healthz within 2 s): .ci/run runs these alone
pytestmark = pytest.mark.serial

READY = re.compile(r"mdsync listening on http://127\.0\.0\.1:(\d+)")


def call(method: str, url: str, body: dict | None = None, token: str | None = None,
         timeout: float = 30) -> tuple[int, dict | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


class Launched(ChildProcess):
    """`mdsync serve` with its output going to a file, so what it printed can be read at any moment.
    Not waited for at start: the tests here measure what happens before it is ready."""

    what = "mdsync serve"

    def __init__(self, command: list[str], data_dir: Path, env: dict[str, str], cwd: Path):
        super().__init__()
        self.port = free_port()
        self.log = data_dir.parent / f"serve-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        with open(self.log, "w") as out:
            self.launch([*command, "serve", "--host", "127.0.0.1", "--port", str(self.port)], env, out, cwd=cwd)
        self.base = f"http://127.0.0.1:{self.port}"

    def printed(self) -> str:
        return self.log.read_text()

    def first_healthz(self, timeout: float = 20.0) -> float:
        """Poll /healthz until it answers; return the seconds since the process was started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.printed()}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.005)
        raise AssertionError(f"/healthz never answered:\n{self.printed()}")


@pytest.fixture
def launched():
    started: list[Launched] = []

    def launch(data_dir: Path, command: list[str] = MDSYNC, env: dict | None = None, cwd: Path = ROOT) -> Launched:
        server = Launched(command, data_dir, env or subprocess_env(data_dir), cwd)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.kill()


# -- start ------------------------------------------------------------------------------------------
def test_ready_line_is_out_before_healthz_answers(tmp_path, launched):
    server = launched(tmp_path / "data")
    server.first_healthz()
    printed = server.printed()  # read right after the first answer: the line must already be there
    assert f"mdsync listening on http://127.0.0.1:{server.port}" in printed
    # a fresh server says how to create the first admin: the setup token and the CLI command
    assert "mdsync users create" in printed and "--admin" in printed
    assert re.search(r'"setup_token": "[A-Za-z0-9_-]{20,}"', printed)
    assert printed.index("setup_token") < printed.index("mdsync listening")


def test_setup_token_printed_by_serve_creates_the_admin_once(tmp_path, server_process):
    server = server_process(tmp_path / "data")
    token = re.search(r'"setup_token": "([A-Za-z0-9_-]+)"', "".join(server.output)).group(1)
    admin = {"email": "root@example.com", "password": PASSWORD, "name": "Root"}
    status, body = call("POST", server.url("/api/v1/auth/setup"), {**admin, "setup_token": "wrong"})
    assert status == 403
    status, body = call("POST", server.url("/api/v1/auth/setup"), {**admin, "setup_token": token})
    assert status == 201, body
    assert body["user"]["is_admin"] is True
    status, _ = call("GET", server.url("/api/v1/me"), token=body["access_token"])
    assert status == 200
    status, body = call("POST", server.url("/api/v1/auth/setup"), {**admin, "email": "b@example.com", "setup_token": token})
    assert status == 409
    assert server.terminate() == 0
    # a restart on a data dir with users prints no setup token
    again = server_process(tmp_path / "data")
    assert "setup_token" not in "".join(again.output)
    status, _ = call("POST", again.url("/api/v1/auth/login"), {"email": "root@example.com", "password": PASSWORD})
    assert status == 200


def test_a_restart_before_setup_keeps_the_printed_setup_token(tmp_path, server_process):
    """The setup token belongs to the database, not to the process: a restart before anyone used it
    makes no new one (the one in the earlier output keeps working); the new process says which
    process printed it, and how to get another."""
    first = server_process(tmp_path / "data")
    token = re.search(r'"setup_token": "([A-Za-z0-9_-]+)"', "".join(first.output)).group(1)
    first_pid = first.proc.pid
    assert first.terminate() == 0
    again = server_process(tmp_path / "data")
    printed = "".join(again.output)
    assert '"setup_token"' not in printed
    assert f"(pid {first_pid}) printed at" in printed and "mdsync users setup-token" in printed
    admin = {"email": "root@example.com", "password": PASSWORD, "name": "Root"}
    status, body = call("POST", again.url("/api/v1/auth/setup"), {**admin, "setup_token": token})
    assert status == 201, body


def test_restart_keeps_the_secret_and_old_tokens(tmp_path, server_process):
    data = tmp_path / "data"
    env = {"MDSYNC_AUTH__REGISTRATION": "open"}
    server = server_process(data, env=env)
    status, pair = call("POST", server.url("/api/v1/auth/register"),
                        {"email": "keep@example.com", "password": PASSWORD, "name": "Keep"})
    assert status == 201
    secret = (data / "secret").read_text()
    assert stat.S_IMODE((data / "secret").stat().st_mode) == 0o600
    assert server.terminate() == 0

    server = server_process(data, env=env)
    assert (data / "secret").read_text() == secret
    assert call("GET", server.url("/api/v1/me"), token=pair["access_token"])[0] == 200
    assert call("POST", server.url("/api/v1/auth/refresh"), {"refresh_token": pair["refresh_token"]})[0] == 200
    assert server.terminate() == 0


def test_flags_beat_environment(tmp_path, server_process):
    # the environment asks for an address this machine cannot bind; the --host flag wins
    server = server_process(tmp_path / "data", env={"MDSYNC_SERVER__HOST": "203.0.113.1"})
    assert server.base.startswith("http://127.0.0.1:")
    assert call("GET", server.url("/healthz"))[0] == 200


def test_port_in_use_is_a_clear_failure(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*MDSYNC, "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=subprocess_env(tmp_path / "data"), capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


# -- stop -------------------------------------------------------------------------------------------
def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(tmp_path, server_process):
    # a deliberately slow password hash keeps one registration in flight for a few seconds
    server = server_process(tmp_path / "data", env={"MDSYNC_AUTH__REGISTRATION": "open",
                                                    "MDSYNC_AUTH__ARGON2_TIME_COST": "6000"})
    answers: list = []

    def slow_register():
        answers.append(call("POST", server.url("/api/v1/auth/register"),
                            {"email": "inflight@example.com", "password": PASSWORD, "name": "In Flight"}))

    client = threading.Thread(target=slow_register)
    client.start()
    time.sleep(0.5)  # the request is being hashed by now
    assert server.proc.poll() is None
    server.proc.send_signal(15)
    # it stops accepting at once, while the request in flight is still being answered
    port = int(server.base.rsplit(":", 1)[1])
    refused = False
    deadline = time.monotonic() + 5
    while not refused and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.01)
        except OSError:
            refused = True
    assert refused and not answers, answers
    code = server.proc.wait(timeout=10)  # the contract: gone within 10 s
    client.join(30)
    assert code == 0, server.rest_of_output()
    assert answers and answers[0][0] == 201, answers
    conn = sqlite3.connect(tmp_path / "data" / "mdsync.db")
    assert conn.execute("SELECT count(*) FROM users WHERE email = 'inflight@example.com'").fetchone()[0] == 1
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert "Traceback" not in server.rest_of_output()


def test_sigint_stops_cleanly_too(tmp_path, server_process):
    server = server_process(tmp_path / "data")
    server.proc.send_signal(2)
    assert server.proc.wait(timeout=10) == 0


# -- a fresh machine ---------------------------------------------------------------------------------
def _copy_of_the_repository(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "node_modules",
                                    "mdsync-data", ".pytest_cache", ".hypothesis", "results")
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


def test_fresh_venv_readme_install_then_serve(tmp_path, launched):
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme and "mdsync serve" in readme
    clone = _copy_of_the_repository(tmp_path / "clone")
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDSYNC_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    install = subprocess.run(["pip", "install", "-q", "."], cwd=clone, env=env, capture_output=True, text=True,
                             timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    mdsync = venv / "bin" / "mdsync"
    assert mdsync.exists()

    # an empty directory, no config: ./mdsync-data appears there. A second fresh directory is
    # tried only if the first start was slower than 2 s (a busy machine), never a warm restart.
    timings = []
    for attempt in range(2):
        home = tmp_path / f"home-{attempt}"
        home.mkdir()
        server = launched(home / "mdsync-data", command=[str(mdsync)], env=env, cwd=home)
        timings.append(server.first_healthz())
        if timings[-1] < 2.0:
            break
        server.kill()
    assert timings[-1] < 2.0, f"/healthz answered {', '.join(f'{t:.2f}' for t in timings)} s after start"
    assert (home / "mdsync-data" / "mdsync.db").exists()
    assert stat.S_IMODE((home / "mdsync-data" / "secret").stat().st_mode) == 0o600
    assert "mdsync listening on" in server.printed()
    server.proc.send_signal(15)
    assert server.proc.wait(timeout=10) == 0
    # and the installed package runs as a module too
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "mdsync", "--help"], env=env, cwd=home,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "serve" in result.stdout


# -- crash safety ----------------------------------------------------------------------------------------
def test_kill_9_mid_burst_loses_no_acknowledged_user(tmp_path, server_process):
    data = tmp_path / "data"
    server = server_process(data, env={"MDSYNC_AUTH__REGISTRATION": "open",
                                       "MDSYNC_AUTH__REGISTER_ATTEMPTS_PER_ADDRESS": "100000"})
    port = int(server.base.rsplit(":", 1)[1])
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def burst(worker: int) -> None:
        for n in range(400):  # bounded, and the kill ends it much sooner
            if stop.is_set():
                return
            email = f"w{worker}-{n}@example.com"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/api/v1/auth/register", headers={"Content-Type": "application/json"},
                             body=json.dumps({"email": email, "password": PASSWORD, "name": f"W {n}"}))
                status = conn.getresponse().status
                conn.close()
            except OSError:
                return  # the server is gone
            if 200 <= status < 300:
                with lock:
                    acknowledged.append(email)

    workers = [threading.Thread(target=burst, args=(w,)) for w in range(6)]
    for thread in workers:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.kill()  # SIGKILL, mid-burst: requests are still arriving
    server.proc.wait(10)
    stop.set()
    for thread in workers:
        thread.join(30)
    assert len(acknowledged) >= 60

    conn = sqlite3.connect(data / "mdsync.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT email FROM users")}
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    finally:
        conn.close()
    missing = [email for email in acknowledged if email not in stored]
    assert not missing, f"{len(missing)} acknowledged registrations were lost: {missing[:5]}"
    assert sessions == len(stored)  # each registration committed whole: user and session together

    # and the server starts again on that data
    again = server_process(data, env={"MDSYNC_AUTH__REGISTRATION": "open"})
    status, _ = call("POST", again.url("/api/v1/auth/login"), {"email": acknowledged[0], "password": PASSWORD})
    assert status == 200
    assert again.terminate() == 0
