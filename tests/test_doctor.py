"""`mdsync doctor`: one PASS/FAIL/SKIP line per check, exit 1 when any check fails."""

from __future__ import annotations

import sqlite3

import pytest

from tests.builders import older_database
from tests.processes import cli, free_port
from tests.s3server import S3Server


def lines(result) -> dict[str, str]:
    found = {}
    for line in result.stdout.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] in ("PASS", "FAIL", "SKIP"):
            name = parts[1][:12].strip()
            found[name] = parts[0]
    return found


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    server.create_bucket("doctor-files")
    server.create_bucket("doctor-replica")
    yield server
    server.stop()


def test_healthy_data_dir_passes(tmp_path):
    data = tmp_path / "data"
    assert cli(data, "migrate").returncode == 0
    result = cli(data, "doctor")
    assert result.returncode == 0, result.stdout
    checks = lines(result)
    assert checks == {"config": "PASS", "data dir": "PASS", "disk": "PASS", "database": "PASS",
                      "migrations": "PASS", "storage": "PASS", "replica": "SKIP", "clock": "PASS"}
    assert "all checks passed" in result.stdout


def test_bad_config_and_missing_database_fail(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'not a number'\n")
    result = cli(tmp_path / "data", "doctor", "--config", str(bad))
    assert result.returncode == 1 and lines(result)["config"] == "FAIL"
    assert "server.port" in result.stdout

    result = cli(tmp_path / "data", "doctor", env={"MDSYNC_REPLICA__URL": "s3:/missing-a-slash"})
    assert result.returncode == 1 and lines(result)["config"] == "FAIL" and "replica.url" in result.stdout

    result = cli(tmp_path / "nowhere", "doctor")
    assert result.returncode == 1
    checks = lines(result)
    assert checks["data dir"] == "FAIL" and checks["database"] == "FAIL"


def test_damaged_database_fails_integrity(tmp_path):
    data = tmp_path / "data"
    assert cli(data, "migrate").returncode == 0
    conn = sqlite3.connect(data / "mdsync.db")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE filler (x TEXT)")
    conn.executemany("INSERT INTO filler VALUES (?)", [("y" * 500,) for _ in range(500)])
    conn.execute("CREATE INDEX filler_x ON filler (x)")
    conn.commit()
    conn.close()
    raw = bytearray((data / "mdsync.db").read_bytes())
    size = len(raw)
    for offset in range(size // 2, size // 2 + 8192, 7):  # scribble over pages in the middle
        raw[offset] = (raw[offset] + 91) % 256
    (data / "mdsync.db").write_bytes(bytes(raw))
    result = cli(data, "doctor")
    assert result.returncode == 1
    assert lines(result)["database"] == "FAIL", result.stdout


def test_pending_and_too_new_migrations_fail(tmp_path):
    data = tmp_path / "old"
    older_database(data)
    result = cli(data, "doctor")
    assert result.returncode == 1 and lines(result)["migrations"] == "FAIL"
    assert "pending" in result.stdout

    data = tmp_path / "new"
    assert cli(data, "migrate").returncode == 0
    conn = sqlite3.connect(data / "mdsync.db")
    conn.execute("INSERT INTO schema_migrations VALUES (9999, 'from_the_future', '2026-01-01T00:00:00.000000Z')")
    conn.commit()
    conn.close()
    result = cli(data, "doctor")
    assert result.returncode == 1 and "newer than this mdsync" in result.stdout


def test_clock_behind_the_data_fails(tmp_path):
    data = tmp_path / "data"
    assert cli(data, "migrate").returncode == 0
    conn = sqlite3.connect(data / "mdsync.db")
    conn.execute("UPDATE schema_migrations SET applied_at = '2099-01-01T00:00:00.000000Z'")
    conn.commit()
    conn.close()
    result = cli(data, "doctor")
    assert result.returncode == 1 and lines(result)["clock"] == "FAIL"
    assert "behind data written at 2099" in result.stdout


def test_replica_and_s3_storage_reachable_or_not(tmp_path, s3):
    data = tmp_path / "data"
    assert cli(data, "migrate").returncode == 0
    good = {
        "MDSYNC_REPLICA__URL": s3.replica_url("doctor-replica", "db"),
        "MDSYNC_STORAGE__BACKEND": "s3",
        "MDSYNC_STORAGE__S3__ENDPOINT": s3.endpoint,
        "MDSYNC_STORAGE__S3__BUCKET": "doctor-files",
        "MDSYNC_STORAGE__S3__ACCESS_KEY_ID": "k",
        "MDSYNC_STORAGE__S3__SECRET_ACCESS_KEY": "s",
        "MDSYNC_STORAGE__S3__PATH_STYLE": "true",
        **s3.credentials(),
    }
    result = cli(data, "doctor", env=good)
    assert result.returncode == 0, result.stdout
    checks = lines(result)
    assert checks["replica"] == "PASS" and checks["storage"] == "PASS" and checks["clock"] == "PASS"
    assert "consistent with" in result.stdout  # the clock was compared with the endpoint's

    closed = f"http://127.0.0.1:{free_port()}"
    bad = {**good, "MDSYNC_REPLICA__URL": f"s3://doctor-replica/db?endpoint={closed}&region=us-east-1"
                                          "&forcePathStyle=true",
           "MDSYNC_STORAGE__S3__ENDPOINT": closed}
    result = cli(data, "doctor", env=bad, timeout=180)
    assert result.returncode == 1
    checks = lines(result)
    assert checks["replica"] == "FAIL" and checks["storage"] == "FAIL"
    assert "2 check(s) failed" in result.stdout

    missing_bucket = {**good, "MDSYNC_STORAGE__S3__BUCKET": "no-such-bucket"}
    result = cli(data, "doctor", env=missing_bucket)
    assert result.returncode == 1 and lines(result)["storage"] == "FAIL"
