-- Revocations: credentials that ended (sessions signed out, tokens deleted, a user disabled or
-- deleted) and access that may have shrunk (a membership ended, a role, grant or share link
-- changed, a document trashed, a workspace deleted), written in the transaction that makes the
-- change. A running server closes or downgrades its live connections from them: its own at
-- commit, those of another process (the admin CLI on its data dir) within half a second. Rows
-- are kept a few minutes (mdsync/auth/revocations.py).

CREATE TABLE revocations (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    origin       TEXT NOT NULL,   -- the writing process: a server skips the rows it wrote itself
    kind         TEXT NOT NULL CHECK (kind IN ('credentials', 'access')),
    user_id      TEXT,            -- credentials: whose; access: whose (NULL: everyone's)
    workspace_id TEXT,            -- access only
    document_id  TEXT,            -- access only (NULL: every document of the workspace)
    credentials  TEXT             -- credentials only: JSON list of session / token ids, NULL: all of the user's
) STRICT;
CREATE INDEX revocations_at ON revocations(at);
