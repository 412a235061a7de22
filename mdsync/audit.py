"""The audit log: who did what to whom. Rows are written inside the transaction of the action."""

from __future__ import annotations

import json
from typing import Any

from mdsync import clock
from mdsync.db import Tx


def record(tx: Tx, action: str, *, actor_id: str | None = None, target_type: str | None = None,
           target_id: str | None = None, workspace_id: str | None = None, ip: str | None = None,
           detail: dict[str, Any] | None = None) -> None:
    tx.execute(
        "INSERT INTO audit_log (at, actor_id, action, target_type, target_id, workspace_id, ip, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (clock.iso(), actor_id, action, target_type, target_id, workspace_id, ip,
         json.dumps(detail, separators=(",", ":")) if detail else None),
    )
