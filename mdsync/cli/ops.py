"""`mdsync backup`, `mdsync restore` and `mdsync doctor` (the work is in mdsync/ops)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mdsync.cli.datadir import fail, progress, settings_options


@click.command()
@click.option("--to", "dest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="backup file to write (a tar; .tar.gz / .tgz compresses it)")
@settings_options
def backup(dest, settings) -> None:
    """Write a consistent backup (database + attachments) while the server keeps running."""
    from mdsync.ops.backup import BackupError, create_backup

    try:
        manifest = create_backup(settings, dest, progress)
    except BackupError as exc:
        fail(str(exc))
    click.echo(f"backup written to {manifest['path']}: {manifest['bytes'] // 1024} KiB, schema "
               f"{manifest['schema_version']}, {manifest['files']['count']} attachments, {manifest['seconds']:.1f} s")


@click.command()
@click.option("--from-replica", is_flag=True, help="restore from the litestream replica (replica.url)")
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="restore from a file written by `mdsync backup`")
@click.option("--timestamp", default=None, help="with --from-replica: the state as of this time (RFC 3339)")
@click.option("--force", is_flag=True, help="replace the database in a data dir that has one (it is moved aside)")
@settings_options
def restore(from_replica, from_file, timestamp, force, settings) -> None:
    """Restore a data dir from the replica or a backup file, then verify it (as `mdsync doctor`)."""
    from mdsync.ops import doctor as checks
    from mdsync.ops.restore import RestoreError, restore as run_restore

    try:
        result = run_restore(settings, from_replica=from_replica, from_file=from_file, timestamp=timestamp,
                             force=force, progress=progress)
    except RestoreError as exc:
        fail(str(exc))
    click.echo(f"restored {settings.db_path} from {result['source']} (schema {result['schema_version']})")
    if result["moved_aside"]:
        click.echo(f"the data it replaced is in {result['moved_aside']}")
    if not _report(checks.run(settings)):
        fail("the restored data dir does not pass every check (see FAIL above)")


def _report(results) -> bool:
    """Print each check's PASS/FAIL line; True when none failed."""
    for check in results:
        click.echo(check.line())
    return not any(c.status == "FAIL" for c in results)


def _config_failed(exc) -> None:
    from mdsync.ops import doctor as checks

    click.echo(checks.Check("config", "FAIL", str(exc)).line())
    sys.exit(1)


@click.command()
@settings_options(on_config_error=_config_failed)
def doctor(settings) -> None:
    """Check config, database, migrations, disk, storage, replica and clock: PASS/FAIL lines."""
    from mdsync.ops import doctor as checks

    results = checks.run(settings)
    if not _report(results):
        failed = [c.name for c in results if c.status == "FAIL"]
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}")
        sys.exit(1)
    click.echo("all checks passed")


@click.command("migrate-db")
@click.option("--to", "url", required=True, metavar="postgresql://…",
              help="an empty PostgreSQL database the user owns (its password may come from PGPASSWORD)")
@settings_options
def migrate_db(url, settings) -> None:
    """Copy this data dir's SQLite database into an empty PostgreSQL database.

    Stop the server first. Afterwards set `database.url` to the same URL (config.toml or
    MDSYNC_DATABASE__URL) and start it again: clients keep their tokens, feed cursors and etags.
    The SQLite file is left as it was (keep it until you are satisfied).
    """
    from mdsync.ops.movedb import MoveError, move

    if not url.startswith(("postgresql://", "postgres://")):
        fail("--to must be a postgresql:// URL")
    if settings.database.url is not None:
        fail("this configuration already uses PostgreSQL (database.url): migrate-db copies from the SQLite "
             "database of a data dir")
    if not settings.db_path.exists():
        fail(f"no database at {settings.db_path}")
    try:
        report = move(settings.db_path, url, _TableProgress())
    except MoveError as exc:
        fail(str(exc))
    except Exception as exc:  # psycopg's errors (refused connection, permission): nothing was written
        fail(f"the copy failed and nothing was committed: {exc}")
    click.echo(f"copied {report.rows} rows in {len(report.tables)} tables to {report.target} "
               f"(schema {report.schema_version}, counts verified, {report.seconds:.1f} s)")
    click.echo(f"now set database.url (or MDSYNC_DATABASE__URL) to that URL and start mdsync; "
               f"{settings.db_path} is unchanged")


class _TableProgress:
    """Per-table progress on stderr: a bar that redraws on a terminal, one line per table elsewhere."""

    def __init__(self):
        self.tty = sys.stderr.isatty()

    def __call__(self, table: str, done: int, total: int) -> None:
        if self.tty:
            width = 30
            filled = width * done // max(total, 1)
            click.echo(f"\r{table:<24} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", err=True, nl=False)
            if done >= total:
                click.echo("", err=True)
        elif done >= total:
            progress(f"{table}: {done} rows")
