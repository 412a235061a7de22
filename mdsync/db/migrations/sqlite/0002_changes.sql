-- The change feed: one row per state change a client may need to sync, written in the same
-- transaction as the change. `user_id` set = only that user sees the row (e.g. the one
-- "workspace deleted" a removed member receives); NULL = every member of the workspace.

CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    entity       TEXT NOT NULL CHECK (entity IN ('document', 'folder', 'comment', 'attachment', 'member', 'workspace', 'version')),
    entity_id    TEXT NOT NULL,
    op           TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    at           TEXT NOT NULL,
    user_id      TEXT
) STRICT;
CREATE INDEX changes_workspace ON changes(workspace_id, seq);
CREATE INDEX changes_user ON changes(user_id, seq) WHERE user_id IS NOT NULL;
