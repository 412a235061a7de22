-- The ids of documents deleted for good (DELETE ?permanent=true, trash retention, workspace
-- purges, and any cascade): an import never gives such an id to a new document, so nothing
-- keyed by the old document (a room still loaded, a client's cache, a link) can meet another
-- document under it (mdsync/transfer/importer.py). One row per purged document, kept.
-- (PostgreSQL: the same schema as sqlite/0014_retired_documents.sql.)
CREATE TABLE retired_documents (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    retired_at TEXT NOT NULL
);

-- a trigger, so that every way a documents row goes (cascades included) retires its id.
-- retired_at as SQLite's strftime('%Y-%m-%dT%H:%M:%fZ', 'now') writes it: UTC, milliseconds.
CREATE FUNCTION documents_retire() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retired_documents (id, workspace_id, retired_at)
    VALUES (OLD.id, OLD.workspace_id,
            to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
    ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER documents_retire AFTER DELETE ON documents
FOR EACH ROW EXECUTE FUNCTION documents_retire();
