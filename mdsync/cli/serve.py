"""`mdsync serve` (run the server) and `mdsync migrate` (apply migrations and exit)."""

from __future__ import annotations

import click
import psycopg

from mdsync.cli.datadir import fail, progress, settings_options
from mdsync.db.migrate import SchemaTooNew


@click.command()
@click.option("--host", default=None, help="bind address (overrides server.host)")
@click.option("--port", type=int, default=None, help="bind port (overrides server.port; 0 picks a free one)")
@settings_options(overrides={"host": "server.host", "port": "server.port"})
def serve(settings) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    from mdsync.serve import run

    try:
        run(settings)
    except SchemaTooNew as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")
    except psycopg.OperationalError as exc:  # PostgreSQL unreachable or refusing us (the message names no password)
        from mdsync.db import describe

        fail(f"cannot start: the database at {describe(settings)} cannot be used: {str(exc).strip()}")


@click.command()
@settings_options
def migrate(settings) -> None:
    """Apply pending database migrations and exit."""
    from mdsync.db import migrate as apply_pending

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.server.backup_before_migrate:
        from mdsync.ops.backup import backup_before_migrate

        saved = backup_before_migrate(settings, progress)
        if saved:
            click.echo(f"backed up the database before migrating: {saved}")
    try:
        done = apply_pending(settings)
    except SchemaTooNew as exc:
        fail(str(exc))
    if done:
        for m in done:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("the database is up to date")
