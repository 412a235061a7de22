-- The one-time setup token of a server without users (POST /api/v1/auth/setup creates the first
-- admin with it): a property of the database, not of the process that printed it, so that any
-- node of several on one database accepts the token any of them printed (mdsync/auth/setup_token.py).
-- At most one row (id 1): one valid token at a time. The token itself is never stored, only its
-- SHA-256; the row is deleted in the transaction that creates the first admin with it.
CREATE TABLE setup_token (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    token_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    made_by    TEXT NOT NULL        -- who printed it: "`mdsync serve` on HOST (pid N)", or the CLI
) STRICT;
