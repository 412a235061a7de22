"""Operating mdsync on PostgreSQL (docs/operations.md "PostgreSQL"): `mdsync migrate`, `doctor`,
`backup` (pg_dump), the refusals (a litestream replica, `restore` of a PostgreSQL backup), on a real
PostgreSQL 15 server (tests/pgserver.py)."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile

import psycopg
import pytest

from mdsync.db.migrate import available
from mdsync.ops.backup import pg_tool
from tests import engines, pgserver
from tests.builders import PASSWORD
from tests.processes import MDSYNC, cli, free_port, subprocess_env
from tests.prerequisites import requires

pytestmark = requires(pgserver.missing_reason())


@pytest.fixture
def pg(tmp_path) -> dict[str, str]:
    """The environment of a CLI command on an empty PostgreSQL database of its own."""
    url = engines.cluster().create_database("t_ops_" + tmp_path.name[-12:].replace("-", "_").lower())
    yield {"MDSYNC_DATABASE__URL": url}
    engines.cluster().drop_database(url.rsplit("/", 1)[1])


def test_migrate_creates_the_schema_once_and_refuses_a_newer_one(tmp_path, pg):
    data = tmp_path / "data"
    first = cli(data, "migrate", env=pg)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applied ") == len(available("postgresql"))
    again = cli(data, "migrate", env=pg)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert not (data / "mdsync.db").exists()  # nothing was written to SQLite
    with psycopg.connect(pg["MDSYNC_DATABASE__URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 'from_the_future', '2030-01-01T00:00:00Z')")
    newer = cli(data, "migrate", env=pg)
    assert newer.returncode == 1 and "newer than this mdsync" in newer.stderr


def test_doctor_checks_the_postgresql_connection_and_schema(tmp_path, pg):
    data = tmp_path / "data"
    assert cli(data, "migrate", env=pg).returncode == 0
    healthy = cli(data, "doctor", env=pg)
    assert healthy.returncode == 0, healthy.stdout
    assert re.search(r"PASS +database", healthy.stdout) and "PostgreSQL 15" in healthy.stdout
    assert re.search(r"PASS +migrations", healthy.stdout)

    unreachable = f"postgresql://mdsync:hunter2secret@127.0.0.1:{free_port()}/mdsync"
    down = cli(data, "doctor", env={"MDSYNC_DATABASE__URL": unreachable})
    assert down.returncode == 1 and re.search(r"FAIL +database", down.stdout)
    assert "hunter2secret" not in down.stdout + down.stderr  # the password is never printed


def test_users_made_by_the_cli_live_in_postgresql(tmp_path, pg):
    data = tmp_path / "data"
    made = cli(data, "users", "create", "Ada@Example.com", "--password-stdin", stdin=PASSWORD + "\n", env=pg)
    assert made.returncode == 0, made.stderr
    listed = cli(data, "users", "list", env=pg)
    assert "ada@example.com" in listed.stdout.lower()
    on_sqlite = cli(data, "users", "list")  # the same data dir without database.url: its own SQLite file
    assert "ada@example.com" not in on_sqlite.stdout.lower()


def test_a_litestream_replica_is_refused_with_postgresql(tmp_path, pg):
    result = cli(tmp_path / "data", "doctor", env={**pg, "MDSYNC_REPLICA__URL": "s3://bucket/path"})
    assert result.returncode == 1 and re.search(r"FAIL +config", result.stdout)
    assert "litestream" in result.stdout


@pytest.mark.skipif(pg_tool("pg_dump") is None, reason="pg_dump is not installed")
def test_backup_is_a_pg_dump_that_pg_restore_reads_back(tmp_path, pg):
    data = tmp_path / "data"
    assert cli(data, "users", "create", "ada@example.com", "--password-stdin", stdin=PASSWORD + "\n",
               env=pg).returncode == 0
    dest = tmp_path / "backup.tar"
    made = cli(data, "backup", "--to", str(dest), env=pg)
    assert made.returncode == 0, made.stderr
    with tarfile.open(dest) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest["database"]["name"] == "mdsync.pgdump" and manifest["database"]["engine"] == "postgresql"
        assert manifest["schema_version"] == available("postgresql")[-1].version
        tar.extract("mdsync.pgdump", tmp_path, filter="data")

    # restored with pg_restore into an empty database, it holds the account
    name = "t_restored_" + tmp_path.name[-12:].replace("-", "_").lower()
    target = engines.cluster().create_database(name)
    try:
        done = subprocess.run([pg_tool("pg_restore"), "--no-owner", "--dbname", target, str(tmp_path / "mdsync.pgdump")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        listed = cli(tmp_path / "other", "users", "list", env={"MDSYNC_DATABASE__URL": target})
        assert "ada@example.com" in listed.stdout
    finally:
        engines.cluster().drop_database(name)

    # `mdsync restore` says how instead of half-restoring: on a SQLite data dir, and on PostgreSQL
    refused = cli(tmp_path / "fresh", "restore", "--from-file", str(dest))
    assert refused.returncode == 1 and "pg_restore" in refused.stderr
    refused = cli(tmp_path / "fresh", "restore", "--from-file", str(dest), env=pg)
    assert refused.returncode == 1 and "pg_restore" in refused.stderr


def test_serve_on_an_unreachable_postgresql_says_so_and_exits(tmp_path):
    url = f"postgresql://mdsync:hunter2secret@127.0.0.1:{free_port()}/mdsync"
    result = subprocess.run([*MDSYNC, "serve", "--host", "127.0.0.1", "--port", "0"],
                            env=subprocess_env(tmp_path / "data", MDSYNC_DATABASE__URL=url),
                            capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
    assert "hunter2secret" not in result.stdout + result.stderr
