-- Workspaces and their members, invitations, folders, documents, per-document grants and share
-- links. Deleting a workspace row (the purge after its grace period) cascades to all of them;
-- features that hang rows off documents or workspaces should reference them ON DELETE CASCADE.
-- (PostgreSQL: the same schema as sqlite/0003_workspaces.sql.)

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    slug        TEXT NOT NULL UNIQUE,
    settings    TEXT NOT NULL DEFAULT '{}',
    created_by  TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    deleted_at  TEXT,            -- soft delete: invisible to everyone, purged after the grace period
    purge_after TEXT
);
CREATE INDEX workspaces_purge ON workspaces(purge_after) WHERE purge_after IS NOT NULL;

CREATE TABLE members (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'commenter', 'viewer')),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

CREATE TABLE invitations (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'commenter', 'viewer')),
    token_hash   TEXT NOT NULL UNIQUE,
    email        TEXT,
    created_by   TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    accepted_at  TEXT,
    accepted_by  TEXT REFERENCES users(id) ON DELETE SET NULL,
    revoked_at   TEXT
);
CREATE INDEX invitations_workspace ON invitations(workspace_id, created_at);

CREATE TABLE folders (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    parent_id    TEXT REFERENCES folders(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    position     DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_by   TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    deleted_at   TEXT
);
CREATE INDEX folders_workspace ON folders(workspace_id, parent_id);

CREATE TABLE documents (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    folder_id     TEXT REFERENCES folders(id) ON DELETE SET NULL,
    title         TEXT NOT NULL,
    kind          TEXT NOT NULL DEFAULT 'note' CHECK (kind IN ('note', 'template', 'context')),
    content_model TEXT NOT NULL DEFAULT 'text' CHECK (content_model IN ('text', 'tiptap')),
    markdown      TEXT NOT NULL DEFAULT '',   -- the content (simple backend) or its projection (Yjs)
    size          BIGINT NOT NULL DEFAULT 0,  -- bytes of markdown, UTF-8
    seq           BIGINT NOT NULL DEFAULT 0,  -- content revision: bumped by every content write
    position      DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_by    TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    deleted_at    TEXT
);
CREATE INDEX documents_workspace ON documents(workspace_id, deleted_at, folder_id, position, title);  -- the tree's order
CREATE INDEX documents_folder ON documents(folder_id);

CREATE TABLE document_grants (
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'commenter', 'viewer')),
    created_by  TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (document_id, user_id)
);
CREATE INDEX document_grants_user ON document_grants(user_id);

CREATE TABLE share_links (
    id           TEXT PRIMARY KEY,
    document_id  TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    token_hash   TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'commenter')),
    created_by   TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    revoked_at   TEXT
);
CREATE INDEX share_links_document ON share_links(document_id, created_at);
