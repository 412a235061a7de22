"""Writing the change feed. Every feature calls `record(tx, ...)` inside the transaction that
makes the change, so the feed is never rebuilt from guesses. Readers waiting on the feed are
woken after the commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from mdsync import clock
from mdsync.db import Tx

Entity = Literal["document", "folder", "comment", "attachment", "member", "workspace", "version"]
Op = Literal["upsert", "delete"]

# Wake-up callbacks of the feeds served in this process (one per app), called after a commit
# that wrote changes. Each app's feed registers at startup and unregisters at cleanup.
listeners: set[Callable[[], None]] = set()


def _wake() -> None:
    for listener in list(listeners):
        listener()


def record(tx: Tx, workspace_id: str, entity: Entity, entity_id: str, op: Op, *,
           user_id: str | None = None) -> None:
    """Add one change. `user_id`: only that user sees it (None: every member of the workspace)."""
    tx.execute("INSERT INTO changes (workspace_id, entity, entity_id, op, at, user_id) VALUES (?, ?, ?, ?, ?, ?)",
               (workspace_id, entity, entity_id, op, clock.iso(), user_id))
    tx.after_commit(_wake)
