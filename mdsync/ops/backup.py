"""`mdsync backup --to FILE`: one tar holding a consistent copy of the database, the attachments
folder and a manifest; and reading such a file back for `mdsync restore --from-file`.

The database copy uses SQLite's online backup API under one read transaction: WAL readers do not
block the server's writer, and the snapshot is fixed when the transaction starts, so the copy holds
exactly the commits acknowledged before that moment (and never restarts under a write load,
which a step-wise backup without it does whenever another connection writes).

On PostgreSQL (`database.url`) the database part is `pg_dump --format=custom` (one consistent
snapshot, taken while the server runs) as `mdsync.pgdump`; PostgreSQL's client tools must be
installed. Such a file is restored with `pg_restore` (docs/operations.md "PostgreSQL").

Layout of the tar (optionally gzip-compressed when FILE ends in .gz/.tgz):
    manifest.json   format, versions, sizes, sha256 of the database
    mdsync.db       the database (SQLite), or mdsync.pgdump (PostgreSQL, pg_dump's custom format)
    secret          the server secret (when it lives in the data dir), so sessions survive a restore
    files/...       local attachments (data_dir/files)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import tarfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath

from mdsync import clock

FORMAT = "mdsync-backup"
FORMAT_VERSION = 1
DB_NAME = "mdsync.db"
PG_DUMP_NAME = "mdsync.pgdump"
PAGES_PER_STEP = 4096  # 16 MiB at 4 KiB pages between progress reports

Progress = Callable[[str], None]


class BackupError(Exception):
    """The backup or the backup file is unusable; the message says why."""


def _mdsync_version() -> str:
    try:
        return version("mdsync")
    except PackageNotFoundError:
        return "unknown"


class _Reporter:
    """Progress lines at most once a second (and always the last one)."""

    def __init__(self, progress: Progress | None, interval: float = 1.0):
        self.progress = progress
        self.interval = interval
        self.last = 0.0

    def __call__(self, message: str, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self.last >= self.interval:
            self.last = now
            self.progress(message)


def files_dir(settings) -> Path:
    return settings.data_dir / "files"


def snapshot_database(source: Path, target: Path, progress: Progress | None = None) -> int:
    """Copy `source` into `target` with the online backup API; returns the schema version."""
    report = _Reporter(progress)
    src = sqlite3.connect(str(source), isolation_level=None)
    dst = sqlite3.connect(str(target), isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout = 5000")
        # one read transaction for the whole copy: a fixed snapshot, no restarts under load
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()

        def step(status, remaining, total):
            done = total - remaining
            report(f"database: {done}/{total} pages ({100 * done // max(total, 1)}%)")

        src.backup(dst, pages=PAGES_PER_STEP, progress=step)
        src.execute("COMMIT")
        total = dst.execute("PRAGMA page_count").fetchone()[0]
        report(f"database: {total}/{total} pages (100%)", final=True)
        try:
            schema = dst.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0
        except sqlite3.OperationalError:
            schema = 0
        # the copy is a standalone file: no -wal beside it
        dst.execute("PRAGMA journal_mode = DELETE")
        return schema
    finally:
        dst.close()
        src.close()


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _walk_files(root: Path) -> list[tuple[Path, int]]:
    found = []
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                found.append((path, path.stat().st_size))
    return found


def pg_tool(name: str) -> str | None:
    """PostgreSQL's client program `name` (pg_dump, pg_restore): on PATH, else the newest of
    Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return str(candidates[-1]) if candidates else None


def dump_postgres(settings, target: Path, progress: Progress | None = None) -> int:
    """`pg_dump --format=custom` of the configured PostgreSQL database into `target`; returns the
    schema version."""
    import subprocess

    from mdsync.db import describe, read_only

    pg_dump = pg_tool("pg_dump")
    if pg_dump is None:
        raise BackupError("pg_dump is not installed: install PostgreSQL's client tools (Debian: postgresql-client, "
                          "the server's major version or newer) or back the database up with your provider's tools")
    with read_only(settings) as tx:
        schema = tx.value("SELECT max(version) FROM schema_migrations") or 0
    if progress is not None:
        progress(f"database: pg_dump of {describe(settings)}")
    done = subprocess.run([pg_dump, "--format=custom", "--no-owner", "--no-privileges", "--file", str(target),
                           "--dbname", settings.database.url], capture_output=True, text=True,
                          env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BackupError(f"pg_dump failed: {why}")
    return schema


def create_backup(settings, dest: Path, progress: Progress | None = None) -> dict:
    """Write the backup tar to `dest` (atomically: a partial file never carries the final name)."""
    postgres = settings.engine == "postgresql"
    if not postgres and not settings.db_path.exists():
        raise BackupError(f"no database at {settings.db_path}: nothing to back up")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        copy = staging / (PG_DUMP_NAME if postgres else DB_NAME)
        started = time.monotonic()
        if postgres:
            schema = dump_postgres(settings, copy, progress)
        else:
            schema = snapshot_database(settings.db_path, copy, progress)
        attachments = _walk_files(files_dir(settings))
        secret_file = settings.data_dir / "secret"
        include_secret = not settings.server.secret and secret_file.is_file()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mdsync_version": _mdsync_version(),
            "created_at": clock.iso(),
            "schema_version": schema,
            "database": {"name": copy.name, "engine": settings.engine, "bytes": copy.stat().st_size,
                         "sha256": _sha256(copy)},
            "files": {"count": len(attachments), "bytes": sum(size for _, size in attachments)},
            "secret": include_secret,
        }
        partial = staging / "backup.tar"
        compress = {"compresslevel": 1} if dest.name.endswith((".gz", ".tgz")) else {}
        report = _Reporter(progress)
        # gzip level 1: several times faster than tarfile's default 9, most of the size gain on text;
        # 1 MiB copy buffer: tarfile's default 16 KiB makes a 1 GB database copy needlessly slow
        with tarfile.open(partial, "w:gz" if compress else "w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20,
                          **compress) as tar:
            _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
            tar.add(copy, arcname=copy.name, recursive=False)
            if include_secret:
                tar.add(secret_file, arcname="secret", recursive=False)
            written, total = 0, manifest["files"]["bytes"]
            for index, (path, size) in enumerate(attachments, 1):
                arcname = "files/" + path.relative_to(files_dir(settings)).as_posix()
                try:
                    tar.add(path, arcname=arcname, recursive=False)
                except FileNotFoundError:
                    continue  # deleted meanwhile: the database copy predates the deletion anyway
                written += size
                report(f"attachments: {index}/{len(attachments)} files, "
                       f"{written // (1 << 20)}/{max(total, 1) // (1 << 20)} MiB")
            if attachments:
                report(f"attachments: {len(attachments)} files", final=True)
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
        manifest["seconds"] = round(time.monotonic() - started, 3)
        manifest["path"] = str(dest)
        manifest["bytes"] = dest.stat().st_size
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


# -- reading a backup back ----------------------------------------------------------------------
def _safe_member_path(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    if path.parts[0] not in ("manifest.json", DB_NAME, PG_DUMP_NAME, "secret", "files"):
        return None
    if path.parts[0] != "files" and len(path.parts) != 1:
        return None
    return path


def read_manifest(path: Path) -> dict:
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != "manifest.json" or not first.isfile():
                raise BackupError(f"{path} is not an mdsync backup (no manifest.json at its start)")
            manifest = json.loads(tar.extractfile(first).read())
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise BackupError(f"{path} is not a readable mdsync backup: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is not an mdsync backup (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BackupError(f"{path} was written by a newer mdsync (backup format {manifest['format_version']})")
    return manifest


def extract_backup(path: Path, staging: Path, progress: Progress | None = None) -> dict:
    """Unpack the backup into `staging` (an empty directory), checking every member's path
    and the database's checksum. Nothing is written outside `staging`."""
    manifest = read_manifest(path)
    report = _Reporter(progress)
    total = manifest.get("database", {}).get("bytes", 0) + manifest.get("files", {}).get("bytes", 0)
    done = 0
    if manifest.get("database", {}).get("name") == PG_DUMP_NAME:
        raise BackupError(f"{path} holds a PostgreSQL database ({PG_DUMP_NAME}, pg_dump's custom format): restore it "
                          f"with pg_restore into an empty PostgreSQL database (docs/operations.md \"PostgreSQL\") "
                          f"and its files/ into the data dir")
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.name == "manifest.json":
                continue
            rel = _safe_member_path(member.name)
            if rel is None or not (member.isfile() or member.isdir()):
                raise BackupError(f"refusing backup member {member.name!r}: unexpected path or type")
            target = staging.joinpath(*rel.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            if rel.parts[0] == "secret":
                os.chmod(target, 0o600)
            done += member.size
            report(f"restoring: {done // (1 << 20)}/{max(total, 1) // (1 << 20)} MiB")
    report(f"restoring: {done // (1 << 20)} MiB unpacked", final=True)
    db = staging / DB_NAME
    if not db.is_file():
        raise BackupError(f"{path} holds no database")
    expected = manifest.get("database", {}).get("sha256")
    if expected and _sha256(db) != expected:
        raise BackupError(f"the database in {path} does not match its checksum: the file is damaged")
    return manifest


# -- before migrations ----------------------------------------------------------------------------
def backup_before_migrate(settings, progress: Progress | None = None) -> Path | None:
    """With server.backup_before_migrate: back up an existing database that has migrations pending
    into data_dir/backups/ (returns the file, or None when nothing was pending)."""
    from mdsync.db.migrate import available

    if settings.engine == "postgresql" or not settings.db_path.exists():
        return None  # PostgreSQL: the operator's own backups (or `mdsync backup`) come before an upgrade
    conn = sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True)
    try:
        try:
            done = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        except sqlite3.OperationalError:
            return None  # a brand-new database: nothing to protect
    finally:
        conn.close()
    known = [m.version for m in available()]
    if not done or (known and max(done) > max(known)):
        return None  # empty, or too new (serve refuses it with the reason)
    todo = [v for v in known if v not in done]
    if not todo:
        return None
    stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
    dest = settings.data_dir / "backups" / f"pre-migrate-{max(done):04d}-to-{max(todo):04d}-{stamp}.tar"
    create_backup(settings, dest, progress)
    return dest



async def before_migrate_ctx(app):
    """cleanup_ctx entry (registered before the database's): the backup runs before migrations."""
    import asyncio
    import logging

    from mdsync.appkeys import SETTINGS

    settings = app[SETTINGS]
    path = await asyncio.to_thread(backup_before_migrate, settings)
    if path is not None:
        logging.getLogger("mdsync.backup").info("backed up the database before migrating: %s", path)
        print(f"mdsync: backed up the database before migrating: {path}", flush=True)
    yield
