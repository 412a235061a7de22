"""Child processes the tests start: `mdsync serve`, the `mdsync` CLI, Caddy (and, in
tests/s3server.py, the moto S3 server). One base, `ChildProcess`: start, wait until ready, stop by
its pid (SIGTERM, then SIGKILL) — never by name.

    server = ServerProcess(data_dir).start()          # waits for "mdsync listening on ..."
    result = cli(data_dir, "users", "list")            # the CLI on a data dir, a CompletedProcess
    env = subprocess_env(data_dir)                     # no MDSYNC_* of the caller, cheap hashing
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tests import engines
from tests.builders import NO_AI_UPSTREAM

ROOT = Path(__file__).resolve().parent.parent
MDSYNC = [sys.executable, "-m", "mdsync"]


def ends_with_parent(sig: int) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when the test process dies, even by kill -9 (Linux's
    PR_SET_PDEATHSIG), so a server the tests started never outlives them."""
    def arm() -> None:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    return arm


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(data_dir: Path, **extra: str) -> dict[str, str]:
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
    url = engines.database_url(data_dir)
    if url is not None:
        env["MDSYNC_DATABASE__URL"] = url
    env.update(extra)
    return env


def cli(data_dir: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """`mdsync ARGS --data-dir DATA_DIR` to the end, output captured as text."""
    return subprocess.run([*MDSYNC, *args, "--data-dir", str(data_dir)], input=stdin, capture_output=True,
                          text=True, env=subprocess_env(data_dir, **(env or {})), cwd=ROOT, timeout=timeout)


async def cli_async(data_dir: Path, *args: str, stdin: str | None = None, timeout: float = 60) -> tuple[int, str]:
    """The CLI as a child process while an in-process server keeps serving: (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        *MDSYNC, *args, "--data-dir", str(data_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=subprocess_env(data_dir), cwd=ROOT)
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout)
    return proc.returncode, out.decode()


def wait_for_port(port: int, proc: subprocess.Popen, what: str, deadline: float) -> None:
    """Until something accepts connections on 127.0.0.1:`port`; RuntimeError when `proc` exits."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited at start") from None
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


class ChildProcess:
    """A child process of a test. Subclasses say how to launch it (`argv`, `env`, where its output
    goes) and when it is ready (`wait_ready`); stopping is the same for all: by pid."""

    what = "child process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def launch(self, argv: list[str], env: dict[str, str], output: IO | int, cwd: Path | None = None,
               **popen) -> subprocess.Popen:
        self.proc = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=cwd, **popen)
        return self.proc

    def start(self, timeout: float = 20.0) -> ChildProcess:  # pragma: no cover - each subclass says
        """Launch the process and return once `wait_ready` says it serves."""
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:  # pragma: no cover - each subclass says
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess(ChildProcess):
    """A real `mdsync serve` child process on a free port, ready once it printed its ready line."""

    what = "mdsync serve"

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None):
        super().__init__()
        self.data_dir = data_dir
        self.env = subprocess_env(data_dir, **(env or {}))
        self.args = args or []
        self.base = ""
        self.output: list[str] = []

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.output = []
        self.launch([*MDSYNC, "serve", "--host", "127.0.0.1", "--port", "0", *self.args], self.env,
                    subprocess.PIPE, cwd=self.data_dir.parent, text=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = re.match(r"mdsync listening on (http://\S+)", line)
            if match:
                self.base = match.group(1)
                return
        self.kill()
        raise RuntimeError("server did not become ready:\n" + "".join(self.output))

    def url(self, path: str) -> str:
        return self.base + path

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit code (a graceful stop, as systemd does it)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def rest_of_output(self) -> str:
        if self.proc and self.proc.stdout and self.proc.poll() is not None:
            self.output.append(self.proc.stdout.read())
        return "".join(self.output)


class Caddy(ChildProcess):
    """Caddy with the repository's Caddyfile (or `config`) on a free port, proxying to `upstream`
    (host:port). Another `config` reads `{$MDSYNC_SITE}` and `{$MDSYNC_CADDY_ADMIN}` as it does."""

    what = "caddy"

    def __init__(self, tmp_path: Path, upstream: str = "", config: Path = ROOT / "Caddyfile"):
        super().__init__()
        self.config = config
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        home = tmp_path / "caddy-home"
        home.mkdir()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("MDSYNC_")},
                    "MDSYNC_SITE": self.base, "MDSYNC_UPSTREAM": upstream,
                    "MDSYNC_CADDY_ADMIN": f"127.0.0.1:{free_port()}",
                    "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
        self.log = tmp_path / "caddy.log"

    def start(self, timeout: float = 20.0) -> Caddy:
        with open(self.log, "w") as out:
            self.launch(["caddy", "run", "--config", str(self.config), "--adapter", "caddyfile"],
                        self.env, out)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_for_port(self.port, self.proc, self.what, time.monotonic() + timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}:\n{self.log.read_text()}") from None
