"""`mdsync restore`: bring a data dir back from the litestream replica or from a backup file.

The restored database is unpacked into a staging folder inside the data dir, checked
(`PRAGMA integrity_check`, schema not newer than this mdsync), and only then moved into place.
A data dir that already holds a database is refused unless `--force`; with it, the database, its
WAL, litestream's local state and the attachments being replaced are moved aside into
`data_dir/replaced-<time>/`, never deleted. Stop the server before restoring into its data dir.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from pathlib import Path

from mdsync import clock
from mdsync.ops import backup, replica

SIDE_FILES = ("-wal", "-shm", "-journal")


class RestoreError(Exception):
    """The restore was refused or failed; the message says why and nothing live was changed."""


def _db_files(db: Path) -> list[Path]:
    return [p for p in [db, *(db.with_name(db.name + s) for s in SIDE_FILES)] if p.exists()]


def _litestream_meta(db: Path) -> Path:
    return db.with_name(f".{db.name}-litestream")


def _replicating_pid(settings) -> int | None:
    """The pid of a litestream that a running `mdsync serve` supervises for this data dir."""
    try:
        pid = int((settings.data_dir / "litestream.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def is_live(settings) -> bool:
    """The data dir already holds a database (or attachments) that a restore would replace."""
    files = backup.files_dir(settings)
    has_files = files.is_dir() and any(files.iterdir())
    return any(p.exists() and p.stat().st_size > 0 for p in _db_files(settings.db_path)) or has_files


def check_database(path: Path) -> int:
    """integrity_check must say ok; returns the schema version (refuses one newer than this code)."""
    from mdsync.db.migrate import available

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise RestoreError(f"the restored database fails integrity_check: {'; '.join(result[:5])}")
        try:
            schema = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0
        except sqlite3.OperationalError:
            raise RestoreError("the restored file is not an mdsync database (no schema_migrations)") from None
    finally:
        conn.close()
    known = max((m.version for m in available()), default=0)
    if schema > known:
        raise RestoreError(f"the restored database is at schema version {schema}, newer than this mdsync "
                           f"knows ({known}): upgrade mdsync first")
    return schema


def restore(settings, *, from_replica: bool = False, from_file: Path | None = None, timestamp: str | None = None,
            force: bool = False, progress=None) -> dict:
    say = progress or (lambda message: None)
    if from_replica == (from_file is not None):
        raise RestoreError("choose one source: --from-replica or --from-file FILE")
    if settings.engine == "postgresql":
        raise RestoreError("this configuration uses PostgreSQL (database.url): restore its database with pg_restore "
                           "from a `mdsync backup` file or your provider's backups (docs/operations.md \"PostgreSQL\")")
    if from_file is not None and timestamp:
        raise RestoreError("--timestamp applies to --from-replica only (a backup file is one moment)")
    if from_replica and not settings.replica.url:
        raise RestoreError("--from-replica needs replica.url in the configuration")
    if from_file is not None and not Path(from_file).is_file():
        raise RestoreError(f"no backup file at {from_file}")
    live = is_live(settings)
    replicating = _replicating_pid(settings)
    if live and replicating:
        raise RestoreError(f"a server is running on {settings.data_dir} (its litestream is pid {replicating}): "
                           "stop it before restoring into its data dir")
    if live and not force:
        raise RestoreError(f"{settings.data_dir} already holds a database: refusing to overwrite it. Restore into "
                           "an empty data dir, or add --force (the current data is moved aside, not deleted)")

    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / f".restore-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        manifest: dict = {}
        restored_db = staging / backup.DB_NAME
        if from_replica:
            say(f"restoring from {replica.redact_url(settings.replica.url)}"
                + (f" as of {timestamp}" if timestamp else "") + " …")
            try:
                replica.restore(settings.replica.url, restored_db, timestamp)
            except replica.ReplicaError as exc:
                raise RestoreError(str(exc)) from None
            source = "replica"
        else:
            say(f"restoring from {from_file} …")
            try:
                manifest = backup.extract_backup(Path(from_file), staging, progress)
            except backup.BackupError as exc:
                raise RestoreError(str(exc)) from None
            source = str(from_file)
        for side in SIDE_FILES:  # litestream may leave these beside its output
            p = restored_db.with_name(restored_db.name + side)
            if p.exists() and side != "-wal":
                p.unlink()
        say("checking the restored database (integrity_check) …")
        schema = check_database(restored_db)

        moved_aside = None
        if live:
            moved_aside = data_dir / f"replaced-{clock.now().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
            moved_aside.mkdir()
            for p in _db_files(settings.db_path):
                os.replace(p, moved_aside / p.name)
            meta = _litestream_meta(settings.db_path)
            if meta.exists():
                os.replace(meta, moved_aside / meta.name)
            if (staging / "files").is_dir() and backup.files_dir(settings).exists():
                os.replace(backup.files_dir(settings), moved_aside / "files")
            if (staging / "secret").is_file() and (data_dir / "secret").exists():
                os.replace(data_dir / "secret", moved_aside / "secret")
        else:
            # stale litestream state beside a fresh database would confuse replication
            meta = _litestream_meta(settings.db_path)
            if meta.exists():
                shutil.rmtree(meta)
            for p in _db_files(settings.db_path):
                p.unlink()
        # the database last: a data dir with mdsync.db is a restored one
        if (staging / "files").is_dir():
            if backup.files_dir(settings).exists():
                shutil.rmtree(backup.files_dir(settings))  # empty (else it was live and moved aside)
            os.replace(staging / "files", backup.files_dir(settings))
        if (staging / "secret").is_file() and not (data_dir / "secret").exists():
            os.replace(staging / "secret", data_dir / "secret")
        wal = restored_db.with_name(restored_db.name + "-wal")
        if wal.exists():
            os.replace(wal, settings.db_path.with_name(settings.db_path.name + "-wal"))
        os.replace(restored_db, settings.db_path)
        return {"source": source, "schema_version": schema, "moved_aside": str(moved_aside) if moved_aside else None,
                "files": manifest.get("files", {}).get("count") if manifest else None}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
