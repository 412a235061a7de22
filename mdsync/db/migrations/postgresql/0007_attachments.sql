-- Attachments: files uploaded into a workspace (images, PDFs …), optionally tied to a document.
-- The bytes live in the storage backend (data_dir/files/ or an S3 bucket) under `storage_key`,
-- which is derived from the id, never from the client's file name. A deleted attachment keeps
-- its row (deleted_at set) for the change feed and the audit log; its file is removed.
-- (PostgreSQL: the same schema as sqlite/0007_attachments.sql.)

CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    document_id  TEXT REFERENCES documents(id) ON DELETE SET NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    storage_key  TEXT NOT NULL,
    created_by   TEXT,
    created_at   TEXT NOT NULL,
    deleted_at   TEXT
);
-- a document's list, oldest first, and its cursor (created_at, id)
CREATE INDEX attachments_document ON attachments(document_id, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX attachments_workspace ON attachments(workspace_id, created_at, id);
