"""`mdsync workspaces ...`: list, create, add-member (or change a role), remove-member, through
the workspace service's own write functions (the last-owner rule included)."""

from __future__ import annotations

import click

from mdsync.api.models import Name
from mdsync.cli.datadir import offline, settings_options, user_or_fail, valid, workspace_or_fail
from mdsync.workspaces import service


@click.group()
def workspaces() -> None:
    """List and create workspaces, add and remove members."""


@workspaces.command("list")
@settings_options
def workspaces_list(settings) -> None:
    """List every workspace: id, slug, name, members, owners (one per line)."""
    rows = offline(settings, service.list_all)
    if not rows:
        click.echo("no workspaces yet: mdsync workspaces create NAME --owner EMAIL")
    for row in rows:
        state = f"deleted {row['deleted_at']}" if row["deleted_at"] else "-"
        click.echo(f"{row['id']}\t{row['slug']}\t{row['name']}\t{row['members']} members\t"
                   f"owners: {row['owners'] or '-'}\t{state}")


@workspaces.command("create")
@click.argument("name")
@click.option("--owner", "owner_email", required=True, help="email of the user who will own it")
@settings_options
def workspaces_create(name, owner_email, settings) -> None:
    """Create a workspace owned by an existing user."""
    name = valid(Name, name, "the name must be 1-500 characters without control characters")
    row = offline(settings, lambda tx: service.insert_workspace(tx, name, user_or_fail(tx, owner_email)["id"]))
    click.echo(f"created workspace {row['name']} ({row['id']}, slug {row['slug']}) owned by {owner_email}")


@workspaces.command("add-member")
@click.argument("workspace")
@click.argument("email")
@click.option("--role", type=click.Choice(["viewer", "commenter", "editor", "admin", "owner"]), default="editor",
              show_default=True, help="their role (an existing member gets this role instead)")
@settings_options
def workspaces_add_member(workspace, email, role, settings) -> None:
    """Add a user to a workspace (by id or slug), or change an existing member's role."""
    def add(tx):
        ws = workspace_or_fail(tx, workspace)
        user = user_or_fail(tx, email)
        if service.member_role(tx, ws["id"], user["id"]) is None:
            service.add_member(tx, ws["id"], user["id"], role, actor_id=None, via="cli")
            return "added"
        service.set_role(tx, ws["id"], user["id"], role, actor_id=None)
        return "changed"

    done = offline(settings, add)
    click.echo(f"{'added' if done == 'added' else 'set the role of'} {email} {'as' if done == 'added' else 'to'} {role}")


@workspaces.command("remove-member")
@click.argument("workspace")
@click.argument("email")
@settings_options
def workspaces_remove_member(workspace, email, settings) -> None:
    """Remove a user from a workspace (refused for its only owner)."""
    def remove(tx):
        ws = workspace_or_fail(tx, workspace)
        service.remove_member(tx, ws["id"], user_or_fail(tx, email)["id"], actor_id=None)

    offline(settings, remove)
    click.echo(f"removed {email} from {workspace}")
