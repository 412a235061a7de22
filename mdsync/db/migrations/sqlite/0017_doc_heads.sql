-- Several nodes (cluster.redis_url): each document's last update-log seq. A node appending to a
-- document's log takes the next seqs from this row in the committing transaction
-- (mdsync.collab.store.append_at_head); the row lock, held until COMMIT, orders the commits of
-- every node, so per document the seqs become visible in increasing order. Several nodes need
-- PostgreSQL: on SQLite the table stays empty (the schemas of both engines stay alike).
CREATE TABLE doc_heads (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL       -- the highest seq handed out (committed) in doc_updates
) STRICT;
