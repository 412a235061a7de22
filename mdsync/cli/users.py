"""`mdsync users ...`: create, list, disable, enable, reset-password, set-admin, delete accounts
(the write jobs are in auth/admin.py), and setup-token: a new one-time setup token for the first
admin (auth/setup_token.py)."""

from __future__ import annotations

import sys

import click

from mdsync.api.models import Email, Name
from mdsync.auth import admin, setup_token
from mdsync.auth import store as user_store
from mdsync.auth.passwords import Passwords
from mdsync.auth.tokens import opaque
from mdsync.cli.datadir import fail, offline, settings_options, user_or_fail, valid
from mdsync.workspaces.service import sole_owner_workspaces


@click.group()
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


def _password_hash(settings, password_stdin: bool) -> str:
    password = read_password(password_stdin, settings.auth.password_min_length)
    return Passwords.configured(settings.auth).hash_sync(password)


@users.command("create")
@click.argument("email")
@click.option("--name", default=None, help="display name (default: the part of the email before @)")
@click.option("--admin", "make_admin", is_flag=True, help="make the user a server admin")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@settings_options
def users_create(email, name, make_admin, password_stdin, settings) -> None:
    """Create a user account."""
    email = valid(Email, email, f"{email!r} is not an email address")
    name = valid(Name, name or email.split("@")[0],
                 "the name is not valid: 1-500 characters, no control characters")
    password_hash = _password_hash(settings, password_stdin)

    def create(tx):
        try:
            return admin.create_user(tx, email, name, password_hash, admin=make_admin, via="cli")
        except user_store.EmailTaken:
            fail(f"a user with email {email} already exists")

    user = offline(settings, create)
    click.echo(f"created {'admin ' if make_admin else ''}user {user['email']} ({user['id']})")


@users.command("setup-token")
@settings_options
def users_setup_token(settings) -> None:
    """Print a new one-time setup token for the first admin (POST /api/v1/auth/setup), on a
    server without users. It replaces the one `mdsync serve` printed, which stops working."""
    token = opaque()
    expires, replaced = offline(settings, setup_token.replace, token, settings.auth.setup_token_ttl,
                                setup_token.made_by("mdsync users setup-token"))
    click.echo(f'POST /api/v1/auth/setup with {{"setup_token": "{token}", "email": …, "password": …, "name": …}}')
    click.echo(f"creates the first admin: the setup token works once, on any node of this database, until "
               f"{setup_token.minute(expires)}")
    if replaced is not None:
        click.echo(f"(the setup token {replaced['made_by']} printed at {setup_token.minute(replaced['created_at'])}"
                   " no longer works)")


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
    offline(settings, lambda tx: admin.set_disabled(tx, user_or_fail(tx, email)["id"], disabled, via="cli"))
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
    password_hash = _password_hash(settings, password_stdin)
    offline(settings, lambda tx: admin.reset_password(tx, user_or_fail(tx, email)["id"], password_hash, via="cli"))
    click.echo(f"password of {email} reset; their sessions were signed out")


@users.command("set-admin")
@click.argument("email")
@click.option("--revoke", is_flag=True, help="take server admin rights away instead")
@settings_options
def users_set_admin(email, revoke, settings) -> None:
    """Grant (or with --revoke, take away) server admin rights."""
    offline(settings, lambda tx: admin.set_admin(tx, user_or_fail(tx, email)["id"], not revoke, via="cli"))
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
        user = user_or_fail(tx, email)
        owned = sole_owner_workspaces(tx, user["id"])
        if owned:
            names = ", ".join(f"{row['name']} ({row['id']})" for row in owned)
            fail(f"this user is the only owner of: {names}; make someone else owner "
                 "(mdsync workspaces add-member WS EMAIL --role owner) or delete the workspace first")
        admin.delete_user(tx, user, via="cli")

    offline(settings, delete)
    click.echo(f"deleted {email}")
