"""The `mdsync` command: serve, migrate, and the admin commands (users, …).

Admin commands work on the data dir directly (also while a server runs on it). Exit codes:
0 done, 1 refused or failed (the message says why), 2 wrong usage.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from mdsync import audit, config
from mdsync.auth import store as user_store
from mdsync.auth.passwords import Passwords
from mdsync.db import run_offline
from mdsync.db.migrate import SchemaTooNew


def settings_options(fn):
    """--config and --data-dir, shared by every command that touches a data dir."""

    @click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                  help="config.toml to read (default: $MDSYNC_CONFIG, else built-in defaults)")
    @click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="data directory (overrides server.data_dir)")
    @functools.wraps(fn)
    def wrapper(*args, config_file=None, data_dir=None, **kwargs):
        kwargs["settings"] = load_settings(config_file, {"server.data_dir": data_dir})
        return fn(*args, **kwargs)

    return wrapper


def load_settings(config_file, overrides) -> config.Settings:
    try:
        return config.load(config_file, overrides=overrides)
    except config.ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def fail(message: str) -> None:
    raise click.ClickException(message)


def offline(settings: config.Settings, fn, *args):
    try:
        return run_offline(settings.db_path, fn, *args)
    except SchemaTooNew as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mdsync")
def main() -> None:
    """mdsync: the self-hosted backend of a collaborative markdown editor."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="config.toml to read (default: $MDSYNC_CONFIG, else built-in defaults)")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="data directory (overrides server.data_dir)")
@click.option("--host", default=None, help="bind address (overrides server.host)")
@click.option("--port", type=int, default=None, help="bind port (overrides server.port; 0 picks a free one)")
def serve(config_file, data_dir, host, port) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    from mdsync.serve import run

    settings = load_settings(config_file, {"server.data_dir": data_dir, "server.host": host, "server.port": port})
    try:
        run(settings)
    except SchemaTooNew as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")


@main.command()
@settings_options
def migrate(settings) -> None:
    """Apply pending database migrations and exit."""
    from mdsync.db import connect
    from mdsync.db.migrate import apply_migrations

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(settings.db_path)
    try:
        done = apply_migrations(conn)
    except SchemaTooNew as exc:
        fail(str(exc))
    finally:
        conn.close()
    if done:
        for m in done:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("the database is up to date")


# -- users ---------------------------------------------------------------------------------------
@main.group()
def users() -> None:
    """Create, list, disable and manage user accounts."""


def read_password(password_stdin: bool, min_length: int) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        fail("no terminal to ask for a password: pipe it with --password-stdin")
    if len(password) < min_length:
        fail(f"the password must be at least {min_length} characters")
    return password


def _user_or_fail(tx, email: str):
    user = user_store.user_by_email_tx(tx, email.strip().lower())
    if user is None:
        raise click.ClickException(f"no user with email {email}")
    return user


def _hasher(settings: config.Settings) -> Passwords:
    a = settings.auth
    return Passwords(a.argon2_time_cost, a.argon2_memory_cost, a.argon2_parallelism)


@users.command("create")
@click.argument("email")
@click.option("--name", default=None, help="display name (default: the part of the email before @)")
@click.option("--admin", is_flag=True, help="make the user a server admin")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@settings_options
def users_create(email, name, admin, password_stdin, settings) -> None:
    """Create a user account."""
    from mdsync.api.models import Email
    from pydantic import TypeAdapter, ValidationError

    try:
        email = TypeAdapter(Email).validate_python(email)
    except ValidationError:
        fail(f"{email!r} is not an email address")
    name = (name or email.split("@")[0]).strip()
    if not 1 <= len(name) <= 500:
        fail("the name must be 1-500 characters")
    password = read_password(password_stdin, settings.auth.password_min_length)
    password_hash = _hasher(settings).hash_sync(password)

    def create(tx):
        try:
            user = user_store.insert_user(tx, email, name, password_hash, is_admin=admin)
        except user_store.EmailTaken:
            raise click.ClickException(f"a user with email {email} already exists") from None
        audit.record(tx, "admin.user_create", target_type="user", target_id=user["id"],
                     detail={"via": "cli", "admin": admin})
        return user

    user = offline(settings, create)
    click.echo(f"created {'admin ' if admin else ''}user {user['email']} ({user['id']})")


@users.command("list")
@settings_options
def users_list(settings) -> None:
    """List every user, one per line."""
    rows = offline(settings, user_store.list_users)
    if not rows:
        click.echo("no users yet: mdsync users create EMAIL --admin")
    for row in rows:
        flags = [f for f, on in (("admin", row["is_admin"]), ("disabled", row["disabled_at"])) if on]
        click.echo(f"{row['email']}\t{row['name']}\t{','.join(flags) or '-'}\t{row['created_at']}\t{row['id']}")


def _set_disabled(settings, email: str, disabled: bool) -> None:
    from mdsync import clock

    def change(tx):
        user = _user_or_fail(tx, email)
        user_store.update_user(tx, user["id"], disabled_at=clock.iso() if disabled else None)
        if disabled:
            user_store.revoke_sessions_of(tx, user["id"])
        audit.record(tx, "admin.user_disable" if disabled else "admin.user_enable", target_type="user",
                     target_id=user["id"], detail={"via": "cli"})

    offline(settings, change)
    click.echo(f"{'disabled' if disabled else 'enabled'} {email}")


@users.command("disable")
@click.argument("email")
@settings_options
def users_disable(email, settings) -> None:
    """Disable a user: sign-in refused, sessions ended."""
    _set_disabled(settings, email, True)


@users.command("enable")
@click.argument("email")
@settings_options
def users_enable(email, settings) -> None:
    """Enable a disabled user again."""
    _set_disabled(settings, email, False)


@users.command("reset-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="read the new password from the first line of stdin")
@settings_options
def users_reset_password(email, password_stdin, settings) -> None:
    """Set a new password; the user's sessions are signed out."""
    password = read_password(password_stdin, settings.auth.password_min_length)
    password_hash = _hasher(settings).hash_sync(password)

    def reset(tx):
        user = _user_or_fail(tx, email)
        user_store.update_user(tx, user["id"], password_hash=password_hash)
        user_store.revoke_sessions_of(tx, user["id"])
        audit.record(tx, "admin.password_reset", target_type="user", target_id=user["id"], detail={"via": "cli"})

    offline(settings, reset)
    click.echo(f"password of {email} reset; their sessions were signed out")


@users.command("set-admin")
@click.argument("email")
@click.option("--revoke", is_flag=True, help="take server admin rights away instead")
@settings_options
def users_set_admin(email, revoke, settings) -> None:
    """Grant (or with --revoke, take away) server admin rights."""
    def change(tx):
        user = _user_or_fail(tx, email)
        user_store.update_user(tx, user["id"], is_admin=0 if revoke else 1)
        audit.record(tx, "admin.set_admin", target_type="user", target_id=user["id"],
                     detail={"via": "cli", "admin": not revoke})

    offline(settings, change)
    click.echo(f"{email} is {'no longer' if revoke else 'now'} a server admin")


@users.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@settings_options
def users_delete(email, yes, settings) -> None:
    """Delete a user and their sessions and tokens."""
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to delete without confirmation: add --yes")
        click.confirm(f"Delete {email} for good?", abort=True)

    def delete(tx):
        user = _user_or_fail(tx, email)
        for check in USER_DELETE_CHECKS:
            check(tx, user["id"])
        user_store.delete_user(tx, user["id"])
        audit.record(tx, "admin.user_delete", target_type="user", target_id=user["id"],
                     detail={"via": "cli", "email": user["email"]})

    offline(settings, delete)
    click.echo(f"deleted {email}")


# Features add checks that refuse a deletion (e.g. the last owner of a workspace): fn(tx, user_id),
# raising click.ClickException with the reason.
USER_DELETE_CHECKS: list = []


if __name__ == "__main__":
    main()
