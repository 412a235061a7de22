-- The ids of documents deleted for good (DELETE ?permanent=true, trash retention, workspace
-- purges, and any cascade): an import never gives such an id to a new document, so nothing
-- keyed by the old document (a room still loaded, a client's cache, a link) can meet another
-- document under it (mdsync/transfer/importer.py). One row per purged document, kept.
CREATE TABLE retired_documents (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    retired_at TEXT NOT NULL
) WITHOUT ROWID;

-- a trigger, so that every way a documents row goes (cascades included) retires its id
CREATE TRIGGER documents_retire AFTER DELETE ON documents
BEGIN
    INSERT OR IGNORE INTO retired_documents (id, workspace_id, retired_at)
    VALUES (old.id, old.workspace_id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
