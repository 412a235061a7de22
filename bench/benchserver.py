"""The server a bench measures, and the latency numbers it reports.

Every bench script runs a real `mdsync serve` child process on 127.0.0.1 and a free port, with an
environment that keeps nothing MDSYNC_* from the caller (a developer's own settings must not leak
into the numbers), and stops it by its pid at the end:

    with BenchServer.mdsync(data_dir, MDSYNC_LIMITS__MAX_BODY_BYTES="8388608") as server:
        ... server.base, server.pid ...

Latencies are collected as lists of seconds; `percentile` and `Latencies.of` turn them into the
p50/p99/max the tables print.
"""

from __future__ import annotations

import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MDSYNC = [sys.executable, "-m", "mdsync"]

# argon2 at its cheapest valid cost: the benches register users to measure something else; the
# one that measures logins (auth_bench) asks for the default cost with fast_auth=False
FAST_AUTH = {
    "MDSYNC_AUTH__ARGON2_TIME_COST": "1",
    "MDSYNC_AUTH__ARGON2_MEMORY_COST": "1024",
    "MDSYNC_AUTH__ARGON2_PARALLELISM": "1",
}


def server_env(data_dir: Path, *, fast_auth: bool = True, **extra: str) -> dict[str, str]:
    """Environment for an `mdsync` child process (serve or a CLI command) on `data_dir`: no MDSYNC_*
    from the caller, open registration, warnings only in the log, then `extra` (MDSYNC_… names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDSYNC_")}
    env.update({"MDSYNC_SERVER__DATA_DIR": str(data_dir), "MDSYNC_AUTH__REGISTRATION": "open"})
    if fast_auth:
        env.update(FAST_AUTH)
    env["MDSYNC_LOG__LEVEL"] = "warning"
    env.update(extra)
    return env


class BenchServer:
    """A server child process that printed `... listening on http://host:port`; stopped by its pid."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, timeout: float = 30.0):
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.base = ""
        self.ready_seconds = 0.0
        self.output: list[str] = []  # its first lines, for the error when it does not start
        ready = threading.Event()

        def read() -> None:  # a thread, so the timeout holds when the server prints nothing
            for line in self.proc.stdout:  # and keeps reading: a chatty server never blocks on a full pipe
                if not ready.is_set():
                    self.output.append(line)
                    match = re.search(r"listening on (http://\S+)", line)
                    if match:
                        self.base = match.group(1)
                        self.ready_seconds = time.perf_counter() - self.started
                        ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            ready.wait(timeout)
        finally:
            if not self.base:
                self.stop(10)
        if not self.base:
            raise RuntimeError("server did not start within {:g} s; its output:\n{}".format(
                timeout, "".join(self.output[-30:])))

    @classmethod
    def mdsync(cls, data_dir: Path, *, fast_auth: bool = True, **env: str) -> BenchServer:
        """`mdsync serve` on `data_dir` (created if missing), env as `server_env` builds it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls([*MDSYNC, "serve", "--host", "127.0.0.1", "--port", "0"],
                   server_env(data_dir, fast_auth=fast_auth, **env), data_dir.parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        return int(match.group(1)) / 1024 if match else math.nan

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the server's graceful shutdown), then SIGKILL if it has not exited in `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class BenchAccount:
    user_id: str
    headers: dict[str, str]  # the Authorization header of its access token
    workspace_id: str


async def bench_account(session, base: str, workspace: str = "Bench") -> BenchAccount:
    """Register the bench user (open registration, see server_env) and create one workspace."""
    async with session.post(f"{base}/api/v1/auth/register", json={
            "email": "bench@example.com", "password": "correct horse battery", "name": "Bench"}) as resp:
        assert resp.status == 201, await resp.text()
        pair = await resp.json()
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    async with session.post(f"{base}/api/v1/workspaces", json={"name": workspace}, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        ws = (await resp.json())["id"]
    return BenchAccount(pair["user"]["id"], headers, ws)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank `p`th percentile (0–100) of `values`; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Latencies:
    """What a bench table says about a list of request times, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latencies:
        if not seconds:
            return cls(0, math.nan, math.nan, math.nan)
        return cls(len(seconds), statistics.median(seconds) * 1000, percentile(seconds, 99) * 1000,
                   max(seconds) * 1000)
