"""Shared fixtures: a real app on a temp data dir (in-process, over real HTTP via aiohttp's test
server), a real `mdsync serve` subprocess, and small helpers that build state through the API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mdsync import clock, config
from mdsync.app import create_app
from tests import prerequisites

ROOT = Path(__file__).resolve().parent.parent
MDSYNC = [sys.executable, "-m", "mdsync"]
PASSWORD = "correct horse battery"

# argon2 at full cost takes ~100 ms per hash; tests use the cheapest valid parameters
FAST_AUTH = {"auth.argon2_time_cost": 1, "auth.argon2_memory_cost": 1024, "auth.argon2_parallelism": 1}
# tests never reach a real AI provider: unless a test points them at its fake upstream, the AI
# base URLs are a loopback port nothing listens on (a call there is a 502, never traffic out)
NO_AI_UPSTREAM = {"ai.openai.base_url": "http://127.0.0.1:9/v1", "ai.anthropic.base_url": "http://127.0.0.1:9"}


def make_settings(data_dir: Path, **overrides) -> config.Settings:
    """Settings for a test server: open registration, cheap hashing; `overrides` use dotted keys
    with `__` for dots (`auth__registration="invite"`)."""
    values = {"server.data_dir": data_dir, "auth.registration": "open", **FAST_AUTH, **NO_AI_UPSTREAM}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return config.load(None, environ={}, overrides=values)


def test_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for an `mdsync` subprocess: no MDSYNC_* from the caller, cheap hashing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDSYNC_")}
    env.update({
        "MDSYNC_SERVER__DATA_DIR": str(data_dir),
        "MDSYNC_AUTH__ARGON2_TIME_COST": "1",
        "MDSYNC_AUTH__ARGON2_MEMORY_COST": "1024",
        "MDSYNC_AUTH__ARGON2_PARALLELISM": "1",
        "MDSYNC_LOG__LEVEL": "warning",
        "MDSYNC_AI__OPENAI__BASE_URL": NO_AI_UPSTREAM["ai.openai.base_url"],
        "MDSYNC_AI__ANTHROPIC__BASE_URL": NO_AI_UPSTREAM["ai.anthropic.base_url"],
    })
    env.update(extra)
    return env


def pytest_configure(config):
    config.addinivalue_line("markers", "prerequisite(reason_missing): the test needs a program or package that "
                            "may be missing (tests/prerequisites.py: skipped here, failed in CI)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    prerequisites.check(item)


@pytest.fixture(autouse=True)
def _reset_clock():
    clock.reset()
    yield
    clock.reset()


@pytest.fixture
def settings(tmp_path) -> config.Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def client(aiohttp_client, settings):
    """A test client on a real app (real SQLite in a temp dir) served over real HTTP."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def make_client(aiohttp_client, tmp_path):
    """Build a client with other settings: `await make_client(auth__registration="invite")`."""
    async def build(**overrides):
        data_dir = overrides.pop("data_dir", tmp_path / f"data-{uuid.uuid4().hex[:6]}")
        return await aiohttp_client(create_app(make_settings(data_dir, **overrides)))
    return build


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


class ServerProcess:
    """A real `mdsync serve` child process on a free port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None):
        self.data_dir = data_dir
        self.env = test_env(data_dir, **(env or {}))
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.base = ""
        self.output: list[str] = []

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        self.output = []
        self.proc = subprocess.Popen(
            [*MDSYNC, "serve", "--host", "127.0.0.1", "--port", "0", *self.args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.data_dir.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = re.match(r"mdsync listening on (http://\S+)", line)
            if match:
                self.base = match.group(1)
                return self
        self.kill()
        raise RuntimeError("server did not become ready:\n" + "".join(self.output))

    def url(self, path: str) -> str:
        return self.base + path

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def rest_of_output(self) -> str:
        if self.proc and self.proc.stdout and self.proc.poll() is not None:
            self.output.append(self.proc.stdout.read())
        return "".join(self.output)


@pytest.fixture
def server_process(tmp_path):
    """Start real servers with `server_process(env={...})`; every one is stopped by pid afterwards."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, env: dict[str, str] | None = None, args: list[str] | None = None):
        data_dir = data_dir or tmp_path / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(data_dir, env, args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()
