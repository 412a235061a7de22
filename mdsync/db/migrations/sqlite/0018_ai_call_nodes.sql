-- Which node reserved an AI call, and which nodes are alive (several nodes on one database). A
-- node starting releases the reservations of calls no running node will settle: on one node every
-- call of an earlier run; on several only those of nodes whose heartbeat in `nodes` stopped, never
-- a live node's calls in progress (mdsync/cluster/nodes.py, mdsync/ai/ledger.py). NULL node:
-- calls from before this column.
ALTER TABLE ai_calls ADD COLUMN node TEXT;

CREATE TABLE nodes (
    id         TEXT PRIMARY KEY,     -- Cluster.node_id: one per process start
    started_at TEXT NOT NULL,
    seen_at    REAL NOT NULL         -- unix seconds of its last heartbeat
) STRICT, WITHOUT ROWID;
