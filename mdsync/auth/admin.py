"""A server admin's changes to accounts (`mdsync users ...`): create, disable or enable, reset a
password, grant or take admin rights, delete. Each is a write job `fn(tx, ...)` run in one
transaction with its audit row (`via` says where the change came from)."""

from __future__ import annotations

from typing import Any

from mdsync import audit, clock
from mdsync.auth import revocations, store
from mdsync.db import Tx
from mdsync.workspaces.service import remove_member


def create_user(tx: Tx, email: str, name: str, password_hash: str, *, admin: bool, via: str) -> Any:
    """A new account (store.EmailTaken when the email is in use)."""
    user = store.insert_user(tx, email, name, password_hash, is_admin=admin)
    audit.record(tx, "admin.user_create", target_type="user", target_id=user["id"],
                 detail={"via": via, "admin": admin})
    return user


def set_disabled(tx: Tx, user_id: str, disabled: bool, *, via: str) -> list[str]:
    """Disable (sign-in refused, sessions ended) or enable an account; returns the ended sessions."""
    store.update_user(tx, user_id, disabled_at=clock.iso() if disabled else None)
    ended = store.revoke_sessions_of(tx, user_id) if disabled else []
    if disabled:
        # personal access tokens stop working too: every connection of the user closes
        revocations.credentials_ended(tx, user_id, None)
    audit.record(tx, "admin.user_disable" if disabled else "admin.user_enable", target_type="user",
                 target_id=user_id, detail={"via": via})
    return ended


def reset_password(tx: Tx, user_id: str, password_hash: str, *, via: str) -> list[str]:
    """A new password; every session and personal access token of the user ends (as when the
    user changes it: a reset after a takeover must evict the thief's tokens too). Returns the
    ended sessions."""
    store.update_user(tx, user_id, password_hash=password_hash)
    ended = store.revoke_sessions_of(tx, user_id)
    tokens = store.delete_api_tokens_of(tx, user_id)
    audit.record(tx, "admin.password_reset", target_type="user", target_id=user_id,
                 detail={"via": via, "tokens_revoked": len(tokens)})
    return ended


def set_admin(tx: Tx, user_id: str, admin: bool, *, via: str) -> None:
    store.update_user(tx, user_id, is_admin=1 if admin else 0)
    audit.record(tx, "admin.set_admin", target_type="user", target_id=user_id, detail={"via": via, "admin": admin})


def delete_user(tx: Tx, user: Any, *, via: str) -> None:
    """Delete an account with its sessions and tokens (the caller refuses a workspace's only owner).
    Each membership ends as a removal does, with its change rows (other members' devices learn
    of it), before the account's rows go."""
    for (workspace_id,) in tx.all("SELECT workspace_id FROM members WHERE user_id = ? ORDER BY workspace_id",
                                  (user["id"],)):
        remove_member(tx, workspace_id, user["id"], actor_id=None)
    store.delete_user(tx, user["id"])
    audit.record(tx, "admin.user_delete", target_type="user", target_id=user["id"],
                 detail={"via": via, "email": user["email"]})
