-- Retention (mdsync/ops/retention.py). The change feed (sync.changes_retention_days; sync/changes.py `trim`):
-- rows older than the retention are deleted by the periodic sweep, and the newest seq it ever
-- deleted is kept here. A cursor before it may have missed changes that no longer exist, so the
-- feed answers it 410 `gone` (read the tree again) instead of a page with a silent gap. Rows
-- deleted with a purged workspace do not count: nobody can see them any more.
-- (PostgreSQL: the same schema as sqlite/0010_retention.sql.)
CREATE TABLE changes_trimmed (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    through_seq BIGINT NOT NULL
);

-- Retention of the trash (documents.trash_retention_days): the sweep finds what was trashed
-- before its cutoff through these small partial indexes, not by scanning every document.
CREATE INDEX documents_trashed ON documents(deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX folders_trashed ON folders(deleted_at) WHERE deleted_at IS NOT NULL;
