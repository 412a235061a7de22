-- Several nodes (cluster.redis_url): the state vector and delete set of the Yjs state the stored
-- markdown projection was made from (mdsync/cluster/once.py), so a node whose room is behind
-- another's never overwrites a newer projection with an older one. NULL on one node.
-- (The same column as postgresql/0016_content_heads_made_from.sql: the two schemas stay equal.)
ALTER TABLE content_heads ADD COLUMN made_from BLOB;
