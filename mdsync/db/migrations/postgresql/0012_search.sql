-- Full-text search (API.md "Search"): a tsvector of the title and markdown of every document that
-- is not in the trash, in `docs_search`, kept by triggers on `documents`, so it changes in the
-- very transaction that changes a title, the markdown (content writes and the Yjs projection), or
-- `deleted_at` (trash, restore), or that inserts a row (create, import); a row removed (purge, a
-- workspace purge's cascade) takes its entry with it (ON DELETE CASCADE). Nothing else writes it:
-- no code path can forget it. (The PostgreSQL side of sqlite/0012_search.sql, FTS5 there.)
--
-- Words are what SQLite's unicode61 tokenizer makes them: ASCII punctuation separates words
-- (docs_search_words), so the default parser's URL, e-mail, path and version tokens never form
-- and "example" finds "ada@example.com"; letters and digits of any script are words. The
-- configuration `mdsync_search` is 'simple' (no stemming, no stop words: a prefix typed in any
-- language matches) after `unaccent` ("cafe" finds "café"). The title is weight A, the markdown
-- D: ts_rank with the weights {0.1, 0.2, 0.4, 1.0} weighs a title match 10× a body one, as bm25
-- does in SQLite. Prefix queries ('wor':*) use the GIN index.

CREATE EXTENSION IF NOT EXISTS unaccent;

CREATE TEXT SEARCH CONFIGURATION mdsync_search (COPY = pg_catalog.simple);
ALTER TEXT SEARCH CONFIGURATION mdsync_search
    ALTER MAPPING FOR asciiword, word, numword, asciihword, hword, numhword, hword_asciipart, hword_part,
                      hword_numpart
    WITH unaccent, simple;

-- ASCII punctuation (every printable ASCII character that is not a letter or digit) to spaces
CREATE FUNCTION docs_search_words(t TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN translate(t, E'!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~', repeat(' ', 32));

-- What docs_search holds for one document. A tsvector holds at most 1 MB: markdown of more than
-- 256 KiB (which may hold more distinct words than that; 2.75 bytes of tsvector per byte of
-- text at worst) is tried whole and, when it does not fit, indexed by its first 64 Ki characters
-- rather than failing the write that changed it.
CREATE FUNCTION docs_search_terms(title TEXT, markdown TEXT) RETURNS tsvector
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    head tsvector := setweight(to_tsvector('mdsync_search', docs_search_words(title)), 'A');
BEGIN
    IF octet_length(markdown) <= 262144 THEN
        RETURN head || setweight(to_tsvector('mdsync_search', docs_search_words(markdown)), 'D');
    END IF;
    BEGIN
        RETURN head || setweight(to_tsvector('mdsync_search', docs_search_words(markdown)), 'D');
    EXCEPTION WHEN program_limit_exceeded THEN
        RETURN head || setweight(to_tsvector('mdsync_search', docs_search_words(left(markdown, 65536))), 'D');
    END;
END
$$;

CREATE TABLE docs_search (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    terms       tsvector NOT NULL
);
CREATE INDEX docs_search_terms ON docs_search USING gin (terms);

CREATE FUNCTION docs_search_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.deleted_at IS NULL THEN
        INSERT INTO docs_search (document_id, terms) VALUES (NEW.id, docs_search_terms(NEW.title, NEW.markdown))
        ON CONFLICT (document_id) DO UPDATE SET terms = excluded.terms;
    ELSE
        DELETE FROM docs_search WHERE document_id = OLD.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER docs_search_insert AFTER INSERT ON documents
FOR EACH ROW WHEN (NEW.deleted_at IS NULL) EXECUTE FUNCTION docs_search_sync();

-- only when what is indexed changes (a metadata update that rewrites the same text costs nothing)
CREATE TRIGGER docs_search_update AFTER UPDATE OF title, markdown, deleted_at ON documents
FOR EACH ROW WHEN ((OLD.deleted_at IS NULL OR NEW.deleted_at IS NULL)
                   AND (OLD.title IS DISTINCT FROM NEW.title OR OLD.markdown IS DISTINCT FROM NEW.markdown
                        OR (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL)))
EXECUTE FUNCTION docs_search_sync();

-- the documents already there
INSERT INTO docs_search (document_id, terms)
    SELECT id, docs_search_terms(title, markdown) FROM documents WHERE deleted_at IS NULL;
