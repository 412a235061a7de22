"""What every command that works on a data dir shares: the --config/--data-dir options, running
a job on the database, and finding the user or workspace the admin named.

Admin commands work on the data dir directly (also while a server runs on it): each change is
one transaction through `db.run_offline`, the same write functions the HTTP routes run through
the server's writer. Refusals those functions raise as API errors (409 last owner, ...) end the
command with their message.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from pydantic import TypeAdapter, ValidationError

from mdsync import config
from mdsync.api.errors import ApiError
from mdsync.api.models import Email
from mdsync.auth import store as user_store
from mdsync.db import Tx, read_only, run_offline
from mdsync.db.migrate import SchemaTooNew
from mdsync.workspaces.service import workspace_by_ref


def settings_options(fn: Callable | None = None, *, overrides: dict[str, str] | None = None,
                     on_config_error: Callable[[config.ConfigError], Any] | None = None):
    """--config and --data-dir, declared once for every command that touches a data dir. The
    command receives `settings`. `overrides` maps more of the command's own options (e.g.
    serve's --host) to the configuration keys they override; `on_config_error` replaces the
    usual "configuration: ..." failure (doctor reports it as a check)."""

    def decorate(fn: Callable) -> Callable:
        @click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                      help="config.toml to read (default: $MDSYNC_CONFIG, else built-in defaults)")
        @click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                      help="data directory (overrides server.data_dir)")
        @functools.wraps(fn)
        def wrapper(*args, config_file=None, data_dir=None, **kwargs):
            values = {"server.data_dir": data_dir}
            for option, key in (overrides or {}).items():
                values[key] = kwargs.pop(option)
            try:
                kwargs["settings"] = config.load(config_file, overrides=values)
            except config.ConfigError as exc:
                if on_config_error is not None:
                    return on_config_error(exc)
                raise click.ClickException(f"configuration: {exc}") from None
            return fn(*args, **kwargs)

        return wrapper

    return decorate(fn) if fn is not None else decorate


def fail(message: str):
    raise click.ClickException(message)


def progress(message: str) -> None:
    """Progress of long jobs (backup, restore, migrate), on stderr."""
    click.echo(message, err=True)


def offline(settings: config.Settings, fn: Callable[..., Any], *args: Any) -> Any:
    """Run the write job `fn(tx, *args)` on the data dir's database in one transaction."""
    try:
        return run_offline(settings, fn, *args)
    except SchemaTooNew as exc:
        fail(str(exc))
    except ApiError as exc:
        fail(exc.detail)


@contextlib.contextmanager
def reading(settings: config.Settings) -> Iterator[Tx]:
    """A read-only view of the data dir's database (refused when there is none)."""
    if settings.engine == "sqlite" and not settings.db_path.exists():
        fail(f"no database at {settings.db_path}")
    with read_only(settings) as tx:
        yield tx


def valid(kind: Any, value: str, refusal: str) -> Any:
    """`value` checked (and normalised) by the API's own field type `kind` (api/models.py: Name,
    Email), so the CLI never stores what the API would refuse; else fails with `refusal` and why."""
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        fail(f"{refusal} ({exc.errors()[0]['msg']})")


def user_or_fail(tx: Tx, email: str):
    """The user with this email (spelled as the API normalises emails)."""
    try:
        key = TypeAdapter(Email).validate_python(email)
    except ValidationError:
        key = None
    user = user_store.user_by_email_tx(tx, key) if key else None
    if user is None:
        fail(f"no user with email {email}")
    return user


def workspace_or_fail(tx: Tx, ref: str, *, deleted: bool = True):
    """The workspace with this id or slug (`deleted=False`: only one that is not deleted)."""
    row = workspace_by_ref(tx, ref, deleted=deleted)
    if row is None:
        fail(f"no workspace with id or slug {ref}")
    return row
