-- Content model `text` over Yjs (mdsync.collab.content / projection).
--
-- content_states: the Yjs states served under recent ETags (GET/PUT /documents/{id}/content), so a
-- later PUT with a stale If-Match can rebuild the exact base the client edited and merge. Stored as
-- a chain per document: a row is either the full state (`full` = 1: one Yjs update) or the delta
-- from the previous row of its document (`full` = 0: the live document's update relative to the
-- previous row's state vector, taken when the state was served). State k = the nearest full row
-- at or before k, then every delta up to k, applied in `seq` order. A full row is written again
-- once the deltas since the last one outweigh the document, so rebuilds stay bounded and the
-- rows older than the oldest retained state's full row can be deleted without rewriting anything.
-- Why not snapshots (state vector + delete set): the live documents run with Yjs GC on, so text
-- deleted since a snapshot is gone and the snapshot cannot be rebuilt; keeping GC off would grow
-- every document by all of its deleted text forever. Full copies per served ETag cost the whole
-- document each time; the chain costs what changed between two served states.
-- (PostgreSQL: the same schema as sqlite/0005_content_states.sql. FULL is a reserved word here:
-- statements name the column "full", in double quotes, which SQLite reads alike.)

CREATE TABLE content_states (
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,       -- order in the document's chain (1, 2, ...)
    etag        TEXT NOT NULL,         -- the ETag served for this state (unquoted)
    "full"      BIGINT NOT NULL,       -- 1: `data` is the whole state; 0: the delta from seq - 1
    sv          BYTEA NOT NULL,        -- the state's vector (the next delta is relative to it)
    data        BYTEA NOT NULL,
    served_at   TEXT NOT NULL,         -- last time this ETag was served (retention counts from here)
    PRIMARY KEY (document_id, seq)
);
CREATE UNIQUE INDEX content_states_etag ON content_states(document_id, etag);
CREATE INDEX content_states_served ON content_states(served_at);

-- content_heads: what the stored markdown projection (documents.markdown) was made from: the ETag
-- of the CRDT state and the last update-log seq folded into it. When the document's stored CRDT
-- state still ends at `crdt_seq`, the projection is exact and a REST read need not load the room.
CREATE TABLE content_heads (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    etag        TEXT NOT NULL,
    crdt_seq    BIGINT NOT NULL,
    updated_at  TEXT NOT NULL
);
