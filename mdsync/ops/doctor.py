"""`mdsync doctor`: check a deployment and print one PASS / FAIL / SKIP line per check.

Read-only: it never migrates or writes the database (the writability probe is a temporary file
in the data dir). Exit code 1 when any check fails.
"""

from __future__ import annotations

import email.utils
import os
import shutil
import socket
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mdsync import clock

MIN_FREE_BYTES = 256 * 1024 * 1024
MAX_CLOCK_SKEW = 300.0


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<12} {self.detail}"


def run(settings) -> list[Check]:
    checks = [Check("config", "PASS", "settings are valid")]
    checks.append(_data_dir(settings))
    checks.append(_disk(settings))
    checks.extend(_database(settings))
    checks.append(_storage(settings))
    checks.append(_replica(settings))
    checks.append(_clock(settings))
    return checks


def _data_dir(settings) -> Check:
    path = settings.data_dir
    if not path.is_dir():
        return Check("data dir", "FAIL", f"{path} does not exist")
    probe = path / f".doctor-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        os.fsync(os.open(probe, os.O_RDONLY))
        probe.unlink()
    except OSError as exc:
        return Check("data dir", "FAIL", f"{path} is not writable: {exc.strerror or exc}")
    return Check("data dir", "PASS", f"{path.resolve()} is writable")


def _disk(settings) -> Check:
    path = settings.data_dir if settings.data_dir.exists() else Path(".")
    usage = shutil.disk_usage(path)
    free_mib = usage.free // (1 << 20)
    db_bytes = settings.db_path.stat().st_size if settings.engine == "sqlite" and settings.db_path.exists() else 0
    # a backup or VACUUM INTO needs about the database's size again
    needed = max(MIN_FREE_BYTES, db_bytes)
    if usage.free < needed:
        return Check("disk", "FAIL", f"{free_mib} MiB free, need at least {needed // (1 << 20)} MiB")
    return Check("disk", "PASS", f"{free_mib} MiB free ({100 * usage.free // usage.total}% of the disk)")


def _migrations(done: set[int], engine: str) -> Check:
    from mdsync.db.migrate import available

    known = {m.version for m in available(engine)}
    newest = max(known, default=0)
    if done and max(done) > newest:
        return Check("migrations", "FAIL", f"database schema {max(done)} is newer than this mdsync ({newest}): "
                                           "upgrade mdsync")
    if known - done:
        return Check("migrations", "FAIL", f"{len(known - done)} pending (run `mdsync migrate` or start the server)")
    return Check("migrations", "PASS", f"up to date (schema {newest})")


def _postgres(settings) -> list[Check]:
    import psycopg

    from mdsync.db import describe
    from mdsync.db.postgres import connect

    where = describe(settings)
    try:
        conn = connect(settings.database.url, statement_timeout=settings.database.statement_timeout)
    except psycopg.Error as exc:
        return [Check("database", "FAIL", f"cannot connect to {where}: {str(exc).strip().splitlines()[0]}")]
    try:
        started = time.monotonic()
        server = conn.execute("SHOW server_version").fetchone()[0]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] // (1 << 20)
        took = (time.monotonic() - started) * 1000
        try:
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        except psycopg.errors.UndefinedTable:
            done = set()
    except psycopg.Error as exc:
        return [Check("database", "FAIL", f"cannot read {where}: {str(exc).strip().splitlines()[0]}")]
    finally:
        conn.close()
    if int(server.split(".")[0]) < 15:
        return [Check("database", "FAIL", f"{where} runs PostgreSQL {server}; mdsync needs 15 or newer")]
    return [Check("database", "PASS", f"PostgreSQL {server} at {where} ({size} MiB, answered in {took:.0f} ms)"),
            _migrations(done, "postgresql")]


def _database(settings) -> list[Check]:
    if settings.engine == "postgresql":
        return _postgres(settings)
    db = settings.db_path
    if not db.exists():
        return [Check("database", "FAIL", f"no database at {db} (start `mdsync serve` once, or restore one)")]
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return [Check("database", "FAIL", f"cannot open {db}: {exc}")]
    try:
        started = time.monotonic()
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        took = time.monotonic() - started
        if result != ["ok"]:
            checks = [Check("database", "FAIL", f"integrity_check: {'; '.join(result[:3])}")]
        else:
            size = db.stat().st_size // (1 << 20)
            checks = [Check("database", "PASS", f"integrity_check ok ({size} MiB, {took:.1f} s)")]
        try:
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        except sqlite3.OperationalError:
            done = set()
    except sqlite3.Error as exc:
        return [Check("database", "FAIL", f"cannot read {db}: {exc}")]
    finally:
        conn.close()
    checks.append(_migrations(done, "sqlite"))
    return checks


def _storage(settings) -> Check:
    if settings.storage.backend == "local":
        files = settings.data_dir / "files"
        target = files if files.exists() else settings.data_dir
        if target.exists() and os.access(target, os.W_OK | os.X_OK):
            return Check("storage", "PASS", f"local attachments in {files}")
        return Check("storage", "FAIL", f"{target} is not writable for attachments")
    s3 = settings.storage.s3
    if not (s3.bucket and s3.endpoint):
        return Check("storage", "FAIL", "storage.backend is s3 but storage.s3.bucket / endpoint are not set")
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        return Check("storage", "FAIL", "cannot check the S3 bucket: botocore is not installed")
    try:
        session = botocore.session.get_session()
        client = session.create_client(
            "s3", endpoint_url=s3.endpoint, region_name=s3.region,
            aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key,
            config=Config(s3={"addressing_style": "path" if s3.path_style else "auto"},
                          connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))
        client.head_bucket(Bucket=s3.bucket)
    except Exception as exc:  # any failure is the answer: unreachable, denied, no such bucket
        return Check("storage", "FAIL", f"bucket {s3.bucket} at {s3.endpoint}: {exc}")
    return Check("storage", "PASS", f"bucket {s3.bucket} at {s3.endpoint} is reachable")


def _replica(settings) -> Check:
    from mdsync.ops import replica

    if not settings.replica.url:
        return Check("replica", "SKIP", "replica.url is not set (no continuous replication)")
    shown = replica.redact_url(settings.replica.url)
    try:
        endpoint = replica.parse_url(settings.replica.url)["endpoint"]
        if endpoint:
            # litestream retries a refused connection for minutes: fail fast on a dead endpoint
            problem = _unreachable(endpoint)
            if problem:
                return Check("replica", "FAIL", f"{shown}: {problem}")
        files = replica.list_replica(settings.replica.url, timeout=20)
    except replica.ReplicaError as exc:
        return Check("replica", "FAIL", f"{shown}: {exc}")
    if not files:
        return Check("replica", "PASS", f"{shown} is reachable (no replicated data yet)")
    latest = max(files, key=lambda f: f.get("max_txid", "") if isinstance(f, dict) else "")
    when = latest.get("created_at") or latest.get("timestamp") or "?"
    return Check("replica", "PASS", f"{shown} is reachable ({len(files)} LTX files, latest {when})")


def _unreachable(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=5):
            return None
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port} ({exc.strerror or exc})"


def _newest_timestamp(settings) -> str | None:
    """The latest time the database recorded (migrations, audit log): the clock must not be before it."""
    from mdsync.db import read_only

    if settings.engine == "sqlite" and not settings.db_path.exists():
        return None
    newest = None
    try:
        with read_only(settings) as tx:
            for table, column in (("schema_migrations", "applied_at"), ("audit_log", "created_at"),
                                  ("users", "created_at"), ("sessions", "created_at")):
                try:
                    with tx.attempt():
                        value = tx.value(f"SELECT max({column}) FROM {table}")
                except Exception:  # a table an older schema lacks
                    continue
                if value and (newest is None or value > newest):
                    newest = value
    except Exception:  # unreachable or unreadable: the database check reports it
        return None
    return newest


def _endpoint_date(url: str) -> float | None:
    """The Date header of an HTTP endpoint (S3 refuses requests signed with a skewed clock)."""
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as resp:
            header = resp.headers.get("Date")
    except urllib.error.HTTPError as exc:
        header = exc.headers.get("Date")
    except (OSError, ValueError):
        return None
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None


def _clock(settings) -> Check:
    from mdsync.ops import replica

    now = clock.now()
    if now.year < 2024:
        return Check("clock", "FAIL", f"the system clock says {clock.iso(now)}: set the time (NTP)")
    newest = _newest_timestamp(settings)
    if newest and newest > clock.iso_in(MAX_CLOCK_SKEW):
        return Check("clock", "FAIL", f"the clock ({clock.iso(now)}) is behind data written at {newest}")
    endpoints = []
    if settings.replica.url:
        try:
            endpoint = replica.parse_url(settings.replica.url)["endpoint"]
        except replica.ReplicaError:
            endpoint = None
        if endpoint:
            endpoints.append(endpoint)
    if settings.storage.backend == "s3" and settings.storage.s3.endpoint:
        endpoints.append(settings.storage.s3.endpoint)
    for endpoint in endpoints:
        remote = _endpoint_date(endpoint)
        if remote is not None and abs(remote - clock.timestamp()) > MAX_CLOCK_SKEW:
            return Check("clock", "FAIL", f"the clock differs from {endpoint} by "
                                          f"{abs(remote - clock.timestamp()):.0f} s (S3 refuses > 15 min)")
    return Check("clock", "PASS", f"{clock.iso(now)}" + (f", consistent with {', '.join(endpoints)}" if endpoints else ""))
