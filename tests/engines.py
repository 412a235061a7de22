"""The database engine a test runs on, and its databases.

Test modules marked `both_engines` (pytestmark) run once per engine — `test_x[sqlite]` and
`test_x[postgresql]` — the others on SQLite only (pure logic with no database, or what only SQLite
has: its file, litestream); those marked `postgresql_only` (several nodes: tests/cluster.py) run
as `test_x[postgresql]` alone. `pytest --engine sqlite|postgresql|both` (default both) chooses.

On PostgreSQL each data dir a test uses gets its own database in one session-wide cluster
(tests/pgserver.py), made from a template already migrated; `make_settings` and `subprocess_env`
put its URL into the settings, so the server, the CLI and the test all reach the same data, and a
server restarted on the same data dir finds it again. The databases are dropped after the test.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

ENGINES = ("sqlite", "postgresql")
TEMPLATE = "mdsync_template"

current = "sqlite"
_cluster = None
_made: dict[str, str] = {}  # resolved data dir -> database name, for the current test


def cluster():
    """The session's PostgreSQL server (started on first use, with the migrated template)."""
    global _cluster
    if _cluster is None:
        from mdsync import config
        from mdsync.db import migrate
        from tests.pgserver import PostgresCluster

        started = PostgresCluster(Path(tempfile.mkdtemp(prefix="mdsync-pg-"))).start()
        try:
            url = started.create_database(TEMPLATE)
            migrate(config.load(None, environ={}, overrides={"database.url": url}))
        except BaseException:
            started.stop()
            raise
        _cluster = started
    return _cluster


def database_url(data_dir: Path | str) -> str | None:
    """The database URL of `data_dir` on the current engine (None: SQLite in the data dir)."""
    if current == "sqlite":
        return None
    key = str(Path(data_dir).resolve())
    name = _made.get(key)
    if name is None:
        name = _made[key] = "t_" + hashlib.sha1(key.encode()).hexdigest()[:20]
        return cluster().create_database(name, template=TEMPLATE)
    return cluster().url(name)


def empty_database_url(data_dir: Path | str) -> str:
    """Like database_url, but a database with no schema at all (tests of migrations)."""
    key = str(Path(data_dir).resolve())
    name = _made[key] = "t_" + hashlib.sha1(key.encode()).hexdigest()[:20]
    return cluster().create_database(name)


def finish_test() -> None:
    """Drop the databases the test made (its servers have stopped)."""
    if _cluster is not None:
        for name in _made.values():
            _cluster.drop_database(name)
    _made.clear()


def shutdown() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None
