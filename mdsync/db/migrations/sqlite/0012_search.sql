-- Full-text search (API.md "Search"): an FTS5 index of the title and markdown of every document
-- that is not in the trash, kept by triggers on `documents`, so it changes in the very
-- transaction that changes a title, the markdown (content writes and the Yjs projection), or
-- `deleted_at` (trash, restore), or that inserts or removes a row (create, import, purge, a
-- workspace purge's cascade). Nothing else writes it: no code path can forget it.
--
-- External content: the index holds no copy of the text; snippets read it by rowid from the view
-- `live_documents`, exactly the rows indexed (so FTS5's 'integrity-check' and 'rebuild' hold).
-- Rowids of `documents` are kept by VACUUM (a rowid table) and by the online backup (pages).
-- unicode61 with diacritics removed ("cafe" finds "café"); prefix indexes of 2 and 3 characters
-- make the first letters typed into a search box cheap. bm25 weighs a title match 10× a body one.

CREATE VIEW live_documents AS
    SELECT rowid AS doc_rowid, title, markdown FROM documents WHERE deleted_at IS NULL;

CREATE VIRTUAL TABLE docs_fts USING fts5(
    title, markdown,
    content = 'live_documents', content_rowid = 'doc_rowid',
    tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3'
);
INSERT INTO docs_fts (docs_fts, rank) VALUES ('rank', 'bm25(10.0, 1.0)');

CREATE TRIGGER docs_fts_insert AFTER INSERT ON documents WHEN new.deleted_at IS NULL BEGIN
    INSERT INTO docs_fts (rowid, title, markdown) VALUES (new.rowid, new.title, new.markdown);
END;

CREATE TRIGGER docs_fts_delete AFTER DELETE ON documents WHEN old.deleted_at IS NULL BEGIN
    INSERT INTO docs_fts (docs_fts, rowid, title, markdown) VALUES ('delete', old.rowid, old.title, old.markdown);
END;

-- only when what is indexed changes (a metadata update that rewrites the same text costs nothing)
CREATE TRIGGER docs_fts_update AFTER UPDATE OF title, markdown, deleted_at ON documents
WHEN (old.deleted_at IS NULL OR new.deleted_at IS NULL)
 AND (old.title IS NOT new.title OR old.markdown IS NOT new.markdown
      OR (old.deleted_at IS NULL) IS NOT (new.deleted_at IS NULL)) BEGIN
    INSERT INTO docs_fts (docs_fts, rowid, title, markdown)
        SELECT 'delete', old.rowid, old.title, old.markdown WHERE old.deleted_at IS NULL;
    INSERT INTO docs_fts (rowid, title, markdown)
        SELECT new.rowid, new.title, new.markdown WHERE new.deleted_at IS NULL;
END;

-- the documents already there (mdsync.db.migrate logs progress while a large index builds)
INSERT INTO docs_fts (rowid, title, markdown) SELECT rowid, title, markdown FROM documents WHERE deleted_at IS NULL;
