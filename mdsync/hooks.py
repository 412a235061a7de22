"""Every call one feature makes into another, declared in one place with its signature.

A feature that must hear about something another feature does appends a function to one of these
lists in its `install(app, settings)`; the feature that does it calls every function in the list
at the moment named below. `app[HOOKS]` holds the app's lists (app.py makes it first, so every
install finds it). Nothing registers itself at import time.

One process-wide mechanism stays outside: `sync/changes.listeners`, the wake-up of change-feed
readers after a commit, which is keyed by database file (several apps may share a process).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import logging

from aiohttp import web

from mdsync.api.errors import Gone

log = logging.getLogger("mdsync.hooks")

if TYPE_CHECKING:
    from mdsync.collab.room import Room
    from mdsync.db import Tx

# (workspace_id, user_id | None, document_id | None), on the event loop after a commit that may
# have changed someone's access (member removed, left, role changed; grant changed or revoked;
# share link revoked; document trashed or purged; workspace deleted). None means "everyone" /
# "every document". Called by the revocations watcher (auth/revocations.py) for every change
# recorded with `revocations.access_changed`, whichever process committed it (the CLI too).
AccessChanged = Callable[[str, "str | None", "str | None"], Any]

# (user_id, [session or token ids] | None: every credential), after the commit that ended
# sessions or tokens (logout, password change or reset, refresh-token reuse, a token deleted, the
# user disabled or deleted). Called by the revocations watcher, whichever process committed it.
SessionsRevoked = Callable[[str, "list[str] | None"], Any]

# (tx, workspace_id) inside the purge transaction, before the workspace row goes; (tx, document_id)
# likewise for a document. Features with rows or files of their own clean up here.
Purge = Callable[["Tx", str], Any]

# (tx, workspace_id, document_id, user_id | None, manifest entry | None) inside an import's
# transaction, for every document it creates. Called by transfer (importer.write).
DocumentImported = Callable[["Tx", str, str, "str | None", "dict | None"], Any]

# (markdown, document row) -> markdown (or an awaitable of it): what GET /share/{token} does to
# the markdown before serving it (attachments sign their links here). Called by documents.
ShareFilter = Callable[[str, Any], "str | Awaitable[str]"]

# (room, update, user_id | None) after every update a room accepted (sockets, REST, merges), on
# the event loop, in order: keep it cheap. Called by collab (RoomManager).
RoomUpdate = Callable[["Room", bytes, "str | None"], Any]

# (room, awareness message) after a room took awareness from one of this process's sockets (states
# set, or a leaving socket's states removed), on the event loop: keep it cheap. Called by collab
# (Room); the cluster's relay sends it to the other nodes (mdsync/cluster/awareness.py).
RoomAwareness = Callable[["Room", bytes], Any]

# awaited before a room unloads (grace period over, or shutdown). Called by collab.
RoomClose = Callable[["Room"], Awaitable[Any]]

# (tx, invitation token, new user id, email) while registering with an invitation: join, or raise
# Gone for an unusable invitation. One function: workspaces installs the real one.
InvitationAccept = Callable[["Tx", str, str, str], Any]


def call_each(listeners: list[Callable[..., Any]], *args: Any) -> None:
    """Call every function of a hook list with `args`; one that fails is logged and the others
    still run."""
    for listener in list(listeners):
        try:
            listener(*args)
        except Exception:
            log.exception("hook %r failed", listener)


def no_invitations(tx: Tx, token: str, user_id: str, email: str) -> None:
    raise Gone("the invitation is not valid")


@dataclass(eq=False)
class Hooks:
    access_changed: list[AccessChanged] = field(default_factory=list)
    sessions_revoked: list[SessionsRevoked] = field(default_factory=list)
    workspace_purge: list[Purge] = field(default_factory=list)
    document_purge: list[Purge] = field(default_factory=list)
    document_imported: list[DocumentImported] = field(default_factory=list)
    share_filters: list[ShareFilter] = field(default_factory=list)
    room_update: list[RoomUpdate] = field(default_factory=list)
    room_close: list[RoomClose] = field(default_factory=list)
    room_awareness: list[RoomAwareness] = field(default_factory=list)
    accept_invitation: InvitationAccept = no_invitations


HOOKS: web.AppKey[Hooks] = web.AppKey("hooks", Hooks)
