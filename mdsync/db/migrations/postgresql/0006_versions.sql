-- Version history: snapshots of a document (its Yjs state and its markdown), automatic after an
-- editing burst goes idle, named on request, and recorded before every restore and import.
-- Automatic versions are thinned by mdsync.versions.policy; the other kinds are kept.
-- (PostgreSQL: the same schema as sqlite/0006_versions.sql.)

CREATE TABLE versions (
    id           TEXT PRIMARY KEY,
    document_id  TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('auto', 'named', 'restore', 'import')),
    label        TEXT,
    authors      TEXT NOT NULL DEFAULT '[]',  -- JSON [{id, name}]: who edited since the previous version
    created_by   TEXT,                         -- who asked for it (NULL: automatic)
    size         BIGINT NOT NULL,              -- bytes of markdown, UTF-8
    markdown     TEXT NOT NULL,
    state        BYTEA NOT NULL                -- the whole document as one Yjs update
);
-- the list, newest first, and the cursor (created_at, id)
CREATE INDEX versions_document ON versions(document_id, created_at, id);
-- the thinning sweep looks at automatic versions only
CREATE INDEX versions_auto ON versions(created_at) WHERE kind = 'auto';
