-- Several nodes (cluster.redis_url): each document's last update-log seq. A node appending to a
-- document's log takes the next seqs from this row in the committing transaction
-- (mdsync.collab.store.append_at_head); the row lock, held until COMMIT, orders the commits of
-- every node, so per document the seqs become visible in increasing order: if seq N is
-- committed, so is every seq below it. One node (no Redis) numbers its rows in memory and leaves
-- this table alone.
-- (PostgreSQL: the same schema as sqlite/0017_doc_heads.sql, unused on SQLite.)
CREATE TABLE doc_heads (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL        -- the highest seq handed out (committed) in doc_updates
);
