"""Several `mdsync serve` nodes on one machine, as issue 21's drill runs them: one PostgreSQL (the
session's, tests/pgserver.py: a database of its own made from the migrated template), one Redis
(tests/redisserver.py), moto S3 for attachments (tests/s3server.py) and N nodes on 127.0.0.1, each
with its own data dir and the same database URL, Redis URL, secret and S3 bucket.

    with NodeCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes                 # ServerProcess: .base, .url(path), .proc.pid
        cluster.kill(0)                         # kill -9 of node 0 (its clients reconnect elsewhere)
        cluster.restart(0)                      # the same data dir, URL and port again
        cluster.redis.pause(); cluster.redis.resume(); cluster.redis.flushall()
        cluster.persisted_text(doc_id)          # what PostgreSQL holds: snapshot + later updates

Everything is stopped by its pid. Test modules built on it run on PostgreSQL only (a cluster needs
it): mark them `pytestmark = CLUSTER_MARKS` (tests/conftest.py gives them the `[postgresql]`
variant alone, and `serial`: the drill takes the whole machine — three servers, a database, Redis
and dozens of npm clients — and .ci/run runs those tests after the parallel part, alone).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from mdsync import config
from tests import engines, pgserver, prerequisites, redisserver
from tests.builders import make_settings
from tests.processes import ServerProcess, free_port
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

BUCKET = "mdsync-cluster"
# what every in-process node of a test shares (`node_settings`): tokens made on one hold on the others
SHARED_SECRET = "one-secret-for-every-node-of-the-test-cluster"
# modules of several-node tests: PostgreSQL only, after the parallel part (see the docstring)
CLUSTER_MARKS = [pytest.mark.postgresql_only, pytest.mark.serial]


def node_settings(data_dir: Path, database_url: str, redis: redisserver.RedisServer, s3: S3Server,
                  **overrides) -> config.Settings:
    """Settings of an in-process node (an app of `create_app`) of a test cluster: its own data dir,
    the shared database, Redis, secret and bucket (`BUCKET` on `s3`); `overrides` as
    `tests.builders.make_settings` takes them (`collab__snapshot_after_updates=5`)."""
    return make_settings(data_dir, database__url=database_url, server__secret=SHARED_SECRET,
                         cluster__redis_url=redis.url, storage__backend="s3", storage__s3__endpoint=s3.endpoint,
                         storage__s3__bucket=BUCKET, storage__s3__access_key_id=ACCESS_KEY,
                         storage__s3__secret_access_key=SECRET_KEY, storage__s3__path_style=True, **overrides)


def missing_reason() -> str | None:
    """None when a cluster can be started here, else why not."""
    return pgserver.missing_reason() or redisserver.missing_reason()


class NodeCluster:
    """PostgreSQL database + Redis + S3 + `nodes` servers sharing them."""

    def __init__(self, workdir: Path, nodes: int = 3, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.count = nodes
        self.extra_env = env or {}
        self.database = "cluster_" + uuid.uuid4().hex[:12]
        self.database_url = ""
        self.redis = redisserver.RedisServer(workdir / "redis")
        self.s3 = S3Server(workdir)
        self.nodes: list[ServerProcess] = []
        self.ports = [free_port() for _ in range(nodes)]
        self.secret = secrets.token_urlsafe(32)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> NodeCluster:
        reason = missing_reason()
        if reason:
            prerequisites.missing(reason)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.database_url = engines.cluster().create_database(self.database, template=engines.TEMPLATE)
            self.redis.start()
            self.s3.start()
            self.s3.create_bucket(BUCKET)
            for i in range(self.count):
                data_dir = self.workdir / f"node{i}"
                data_dir.mkdir()
                self.nodes.append(ServerProcess(data_dir, self.env(), args=["--port", str(self.ports[i])]))
            for i in range(self.count):
                self._start_node(i)
        except BaseException:
            self.stop()
            raise
        return self

    def env(self) -> dict[str, str]:
        """What every node shares: database, Redis, secret, S3; plus the cluster's `env`."""
        return {
            "MDSYNC_DATABASE__URL": self.database_url,
            "MDSYNC_CLUSTER__REDIS_URL": self.redis.url,
            "MDSYNC_SERVER__SECRET": self.secret,
            "MDSYNC_AUTH__REGISTRATION": "open",
            "MDSYNC_STORAGE__BACKEND": "s3",
            "MDSYNC_STORAGE__S3__ENDPOINT": self.s3.endpoint,
            "MDSYNC_STORAGE__S3__BUCKET": BUCKET,
            "MDSYNC_STORAGE__S3__ACCESS_KEY_ID": ACCESS_KEY,
            "MDSYNC_STORAGE__S3__SECRET_ACCESS_KEY": SECRET_KEY,
            "MDSYNC_STORAGE__S3__PATH_STYLE": "true",
            **self.extra_env,
        }

    def stop(self) -> None:
        """Every node, then Redis, S3 and the database: by pid, whatever state they are in."""
        for node in self.nodes:
            node.kill()
        self.redis.stop()
        self.s3.stop()
        if self.database_url:
            engines.cluster().drop_database(self.database)
            self.database_url = ""
        for node in self.nodes:
            shutil.rmtree(node.data_dir, ignore_errors=True)

    def __enter__(self) -> NodeCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------------
    def kill(self, i: int) -> None:
        """`kill -9` of node `i`: no shutdown, its sockets just drop."""
        proc = self.nodes[i].proc
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, i: int, timeout: float = 30.0) -> ServerProcess:
        """Node `i` again, on its data dir and port (a dead one is started, a live one stopped first)."""
        self.nodes[i].stop()
        return self._start_node(i, timeout)

    def _start_node(self, i: int, timeout: float = 30.0) -> ServerProcess:
        """Start node `i`; what it prints from then on goes to `log(i)` (read by a thread: a full pipe
        would stop a server that logs much, e.g. while Redis is away)."""
        node = self.nodes[i].start(timeout)
        log = open(self.workdir / f"node{i}.log", "a")
        log.write("".join(node.output))

        def drain(out=node.proc.stdout):
            with log:
                for line in out:
                    log.write(line)
                    log.flush()

        threading.Thread(target=drain, daemon=True).start()
        return node

    def log(self, i: int, tail: int = 3000) -> str:
        """The last `tail` characters node `i` printed (all its starts)."""
        path = self.workdir / f"node{i}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def alive(self) -> list[ServerProcess]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    # -- what the database holds -------------------------------------------------------------------
    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def persisted_text(self, document_id: str) -> str:
        """The document's Y.Text('markdown') as PostgreSQL holds it: its snapshot, then every logged
        update after the snapshot's seq (what a node loading the document cold would serve)."""
        from pycrdt import Doc, Text

        doc = Doc()
        snap = self.sql("SELECT seq, state FROM doc_snapshots WHERE document_id = %s", (document_id,))
        after = 0
        if snap:
            after = snap[0][0]
            doc.apply_update(bytes(snap[0][1]))
        for (data,) in self.sql("SELECT data FROM doc_updates WHERE document_id = %s AND seq > %s ORDER BY seq",
                                (document_id, after)):
            doc.apply_update(bytes(data))
        return str(doc.get("markdown", type=Text))
