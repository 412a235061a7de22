"""The PostgreSQL server the benches compare SQLite with: tests/pgserver.py's cluster (Debian's
PostgreSQL 15 binaries, a temp dir, 127.0.0.1, a free port, stopped by its pid) with PostgreSQL's
durable defaults (fsync, synchronous_commit and full_page_writes on), so that a commit waits for
its WAL flush as SQLite's (WAL, synchronous=NORMAL) waits for its WAL write.

    with Engines(["sqlite", "postgresql"], admin_url=None) as engines:
        extra = engines.env("postgresql", "rest-1")   # {"MDSYNC_DATABASE__URL": <a fresh database>}
        BenchServer.mdsync(data_dir, **extra)

`admin_url` (or MDSYNC_BENCH_PG_URL): a running server's `postgres` database to make the fresh
databases in (bench/pg_vs_sqlite.py starts one cluster for all its benches); unset, a cluster is
started here for the benches that ask for "postgresql", and stopped at the end.

    python bench/pgcluster.py serve [--seconds 3600]   # prints the admin URL; SIGTERM/SIGINT stop it
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENGINES = ("sqlite", "postgresql")
DURABILITY = {
    "sqlite": "SQLite: WAL, synchronous=NORMAL (a commit is in the WAL file, fsync at checkpoints)",
    "postgresql": "PostgreSQL 15: fsync=on, synchronous_commit=on, full_page_writes=on (its defaults; "
                  "a commit waits for the WAL fsync), shared_buffers=64MB",
}


def parse_engines(text: str) -> list[str]:
    names = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in names if e not in ENGINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"engines are a comma-separated list of {', '.join(ENGINES)}")
    return names


def _exit(*_) -> None:
    raise SystemExit(143)


class Engines:
    def __init__(self, engines: list[str], admin_url: str | None = None):
        self.engines = engines
        self.admin_url = admin_url or os.environ.get("MDSYNC_BENCH_PG_URL") or None
        self.cluster = None
        self.made: list[str] = []

    def __enter__(self) -> Engines:
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (a time limit) unwinds like Ctrl-C, so the cluster and the servers are stopped
            signal.signal(signal.SIGTERM, _exit)
        if "postgresql" in self.engines and self.admin_url is None:
            from tests.pgserver import PostgresCluster, missing_reason

            reason = missing_reason()
            if reason:
                raise SystemExit(f"no PostgreSQL for the bench: {reason}")
            self.cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="mdsync-bench-pg-")), durable=True).start()
            self.admin_url = self.cluster.url("postgres")
        return self

    def __exit__(self, *exc) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        elif self.admin_url:
            for name in self.made:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def database(self, tag: str) -> str:
        """The URL of a new, empty database (mdsync migrates it at start)."""
        name = "bench_" + re.sub(r"[^a-z0-9_]", "_", tag.lower())
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    def env(self, engine: str, tag: str) -> dict[str, str]:
        """The MDSYNC_* settings a server on `engine` needs (none for SQLite in its data dir)."""
        return {"MDSYNC_DATABASE__URL": self.database(tag)} if engine == "postgresql" else {}


def serve(seconds: float) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    with Engines(["postgresql"]) as engines:
        print(engines.admin_url, flush=True)
        deadline = time.monotonic() + seconds
        while not stop and time.monotonic() < deadline and engines.cluster.proc.poll() is None:
            time.sleep(0.5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a durable PostgreSQL for the benches")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--seconds", type=float, default=3600)
    serve(parser.parse_args().seconds)
