-- Comments (API.md "Comments"): threads (parent_id NULL) and their replies, one level deep.
-- A thread's anchor is JSON {quote, prefix, suffix, yjs_start, yjs_end}: a TextQuote selector
-- as the author wrote it plus Yjs relative positions (base64url) that follow later edits; NULL
-- for a comment on the whole document. Deleting a comment deletes its row (a thread takes its
-- replies with it); the change feed carries the delete.
-- (PostgreSQL: the same schema as sqlite/0008_comments.sql.)

CREATE TABLE comments (
    id           TEXT PRIMARY KEY,
    document_id  TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    parent_id    TEXT REFERENCES comments(id) ON DELETE CASCADE,
    author_id    TEXT REFERENCES users(id) ON DELETE SET NULL,
    body         TEXT NOT NULL,
    anchor       TEXT,
    resolved_at  TEXT,
    resolved_by  TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
-- a document's threads in order and their cursor (created_at, id); replies of a page of threads
CREATE INDEX comments_document ON comments(document_id, parent_id, created_at, id);
CREATE INDEX comments_parent ON comments(parent_id, created_at, id) WHERE parent_id IS NOT NULL;
