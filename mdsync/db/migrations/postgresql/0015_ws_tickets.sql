-- Socket tickets when several nodes run (cluster.redis_url): a ticket issued on one node is spent
-- once on any node, so it lives in the database all nodes share (one node keeps them in memory;
-- mdsync/collab/tickets.py). The ticket itself is not stored, only its SHA-256: the table holds
-- nothing a reader could open a socket with. Rows leave when spent, expired (on the next issue),
-- revoked with their session or token, or with their user.
-- (PostgreSQL: the same schema as sqlite/0015_ws_tickets.sql.)
CREATE TABLE ws_tickets (
    ticket_hash   TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL,        -- the session or personal access token it was asked with
    document_id   TEXT NOT NULL,
    principal     TEXT NOT NULL,        -- JSON: the caller, as the socket will see them
    expires       DOUBLE PRECISION NOT NULL  -- unix seconds
);
CREATE INDEX ws_tickets_user ON ws_tickets(user_id, expires);
CREATE INDEX ws_tickets_expires ON ws_tickets(expires);
