"""A real PostgreSQL 15 server for the tests: Debian's binaries (`initdb`, `postgres`) on a temp
directory, on 127.0.0.1 and a free port, started once per test session and stopped by its pid.

    cluster = PostgresCluster.start(workdir)
    url = cluster.create_database("t_abc")       # an empty database; mdsync migrates it
    cluster.stop()

PostgreSQL refuses to run as root: under root the server runs as the `postgres` user (which the
Debian package creates), on a directory that user owns. fsync is off: the tests kill mdsync, not
PostgreSQL, and an acknowledged edit is durable once PostgreSQL has committed it. The benches
(bench/pgcluster.py) ask for `durable=True`: PostgreSQL's own defaults (fsync, synchronous_commit,
full_page_writes on), so a commit waits for its WAL flush as SQLite's does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from tests.processes import ChildProcess, ends_with_parent, free_port

BIN = Path(os.environ.get("MDSYNC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"


def missing_reason() -> str | None:
    """None when a PostgreSQL server can be started here, else why not."""
    if not (BIN / "initdb").exists() or not (BIN / "postgres").exists():
        return f"PostgreSQL 15 server binaries are not in {BIN} (.ci/run installs the Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


class PostgresCluster(ChildProcess):
    what = "postgres"

    def __init__(self, workdir: Path, durable: bool = False):
        super().__init__()
        self.workdir = workdir
        self.durable = durable
        self.data = workdir / "pgdata"
        self.port = free_port()
        self.log = workdir / "postgres.log"
        self._as_user: dict = {}

    def _own(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        self._own()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        subprocess.run([str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                        "--no-sync", "--locale=C.UTF-8"], env=env, check=True, capture_output=True, timeout=120,
                       **self._as_user)
        log = open(self.log, "ab")
        # the server ends with the test process even when that is killed (fast shutdown: SIGINT)
        fast = [] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.launch([str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.workdir),
                     "-c", "listen_addresses=127.0.0.1", *fast, "-c", "max_connections=400", "-c", "shared_buffers=64MB",
                     "-c", "log_min_messages=warning"], env, log, preexec_fn=ends_with_parent(signal.SIGINT), **self._as_user)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError("postgres did not start")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return None if self.proc is None else self.proc.returncode

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database `name` (dropped first if a previous run left it), empty or a copy of
        `template`; its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
