-- Real-time collaboration: the Yjs update log of each document and its compacted snapshot.
-- A document's CRDT state = its snapshot (if any) + every update with seq > snapshot.seq, in seq order.
-- Rows are written by mdsync.collab.store through the writer queue (group commit).
-- (PostgreSQL: the same schema as sqlite/0004_collab.sql.)

CREATE TABLE doc_updates (
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    data        BYTEA NOT NULL,         -- one Yjs update (v1 encoding), as received
    user_id     TEXT,                   -- who sent it (NULL: the server, e.g. the markdown seed)
    created_at  TEXT NOT NULL,
    PRIMARY KEY (document_id, seq)
);

CREATE TABLE doc_snapshots (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,        -- the last update folded into `state`
    state       BYTEA NOT NULL,         -- the whole document as one Yjs update
    updated_at  TEXT NOT NULL
);
