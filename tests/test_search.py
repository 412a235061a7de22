"""Search (docs/api.md "Search") over HTTP against the real app: prefix matching, ranking, snippets,
who sees what, hostile queries, the limit, and an index that follows create, rename, content
writes, trash, restore, purge and import — and a live npm client's typing within 2 s
(docs/api.md "Search"). Existing databases get their index from the migration. On both engines:
SQLite's FTS5 and PostgreSQL's tsvector meet the same rules."""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import sqlite3
import uuid

import psycopg
import pytest

from mdsync.api.errors import ValidationFailed
from mdsync.appkeys import SETTINGS
from mdsync.db import database_for, read_only
from mdsync.search.service import Search
from tests.builders import API, document, join, make_settings, make_workspace, register
from tests.nodeclients import needs_node, run_node

pytestmark = pytest.mark.both_engines
migrate = importlib.import_module("mdsync.db.migrate")  # (mdsync.db.migrate is also a function's name)


async def search(client, who, q, status=200, **params) -> dict:
    resp = await client.get(f"{API}/search", params={"q": q, **params}, headers=who.headers)
    body = await resp.json()
    assert resp.status == status, body
    return body


def titles(body: dict) -> list[str]:
    return [item["title"] for item in body["items"]]


@pytest.fixture
async def two_teams(client):
    ada, bob = await register(client, name="Ada"), await register(client, name="Bob")
    ws_a, ws_b = await make_workspace(client, ada, "A"), await make_workspace(client, bob, "B")
    viewer = await join(client, ada, ws_a, "viewer", "Vera")
    return ada, bob, ws_a, ws_b, viewer


async def test_prefix_match_ranking_and_snippet(client, two_teams):
    ada, bob, ws_a, ws_b, viewer = two_teams
    await document(client, ada, ws_a, "Pelican notes", markdown="Birds of the coast.\n")
    await document(client, ada, ws_a, "Coast", markdown="We saw a pelican fishing near the pier.\n")
    await document(client, ada, ws_a, "Unrelated", markdown="Nothing to see.\n")
    body = await search(client, viewer, "peli")
    assert titles(body) == ["Pelican notes", "Coast"]  # the title match weighs more
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    hit = body["items"][1]
    assert hit["snippet"] == "We saw a <mark>pelican</mark> fishing near the pier."
    assert set(hit) == {"document_id", "workspace_id", "title", "snippet", "score"} and hit["workspace_id"] == ws_a
    # every word must match, each by prefix, in any order; accents do not matter
    await document(client, ada, ws_a, "Café", markdown="Crème brûlée and espresso\n")
    assert titles(await search(client, viewer, "esp cafe")) == ["Café"]
    assert titles(await search(client, viewer, "creme espresso")) == ["Café"]
    assert titles(await search(client, viewer, "espresso pelican")) == []


async def test_results_in_descending_score(client, two_teams):
    ada, bob, ws_a, ws_b, viewer = two_teams
    for i in range(12):
        await document(client, ada, ws_a, f"Doc {i}", markdown=("otter " * (i + 1)) + "filler " * (30 - i))
    await document(client, ada, ws_a, "Otters", markdown="about them")
    body = await search(client, viewer, "otter")
    assert len(body["items"]) == 13 and body["items"][0]["title"] == "Otters"
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 5


async def test_only_documents_the_caller_may_read(client, two_teams):
    ada, bob, ws_a, ws_b, viewer = two_teams
    await document(client, ada, ws_a, "Ours", markdown="walrus meeting\n")
    await document(client, bob, ws_b, "Theirs", markdown="walrus secrets\n")
    assert titles(await search(client, viewer, "walrus")) == ["Ours"]
    assert titles(await search(client, bob, "walrus")) == ["Theirs"]
    assert titles(await search(client, viewer, "walrus", workspace_id=ws_a)) == ["Ours"]
    # a workspace the caller is not in: 404, as if it did not exist
    for ws in (ws_b, str(uuid.uuid4())):
        resp = await client.get(f"{API}/search", params={"q": "walrus", "workspace_id": ws}, headers=viewer.headers)
        assert resp.status == 404 and (await resp.json())["type"] == "urn:mdsync:error:not-found"
    # a member who joins sees them; one who leaves or is removed does not; nor anyone once the
    # workspace is deleted
    carol = await join(client, bob, ws_b, "viewer", "Carol")
    assert titles(await search(client, carol, "walrus")) == ["Theirs"]
    assert (await client.delete(f"{API}/workspaces/{ws_b}/members/{carol.id}", headers=bob.headers)).status == 204
    assert titles(await search(client, carol, "walrus")) == []
    assert (await client.delete(f"{API}/workspaces/{ws_b}", headers=bob.headers)).status == 204
    assert titles(await search(client, bob, "walrus")) == []
    # a grant lowering the viewer's role on a document keeps it readable (every role reads)
    lowered = await document(client, ada, ws_a, "Granted", markdown="walrus granted\n")
    editor = await join(client, ada, ws_a, "editor", "Ed")
    resp = await client.put(f"{API}/documents/{lowered['id']}/grants/{editor.id}", json={"role": "viewer"},
                            headers=ada.headers)
    assert resp.status == 200
    assert sorted(titles(await search(client, editor, "walrus"))) == ["Granted", "Ours"]


HOSTILE = ['"', "*", "NEAR(", "NEAR(a b, 2)", "AND OR", "a AND", "OR", "NOT x", "col:", "title:walrus",
           "markdown:x", "-", "- walrus", "^", "^walrus", "😀", "👩‍👩‍👧 family", "שלום עולם", "مرحبا بالعالم",
           "\x00", "wal\x00rus", "x" * 10_000, '""', '"walrus', 'walrus"', "(", ")", "{title markdown}: x",
           "+", "*walrus*", "walrus'", "\\", "%", "_", "a:b:c", "\u202eevil", "𝔴𝔞𝔩𝔯𝔲𝔰", "walrus " * 40,
           "\ud7ff", "<script>alert(1)</script>"]


async def test_hostile_queries_are_200_or_422_never_500(server_process):
    """Against a real `mdsync serve`: 30+ queries made of FTS5 syntax, odd characters and sizes."""
    import aiohttp

    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open"})
    api = server.url(API)
    async with aiohttp.ClientSession() as http:
        async def call(method, path, **kw):
            async with http.request(method, api + path, **kw) as resp:
                return resp.status, await resp.json()

        status, pair = await call("POST", "/auth/register", json={"email": "h@example.com", "password": "pw " * 4,
                                                                  "name": "H"})
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        status, ws = await call("POST", "/workspaces", json={"name": "W"}, headers=headers)
        status, _ = await call("POST", f"/workspaces/{ws['id']}/documents", headers=headers,
                               json={"title": "Walrus", "markdown": "walrus NEAR( AND OR col: ^ - * 😀 שלום\n"})
        assert status == 201
        assert len(HOSTILE) >= 30
        statuses = {}
        for q in HOSTILE:
            status, body = await call("GET", "/search", params={"q": q}, headers=headers)
            statuses[q[:20]] = status
            assert status in (200, 422), (q[:40], status, body)
            if status == 422:
                assert body["errors"][0]["field"] == "q"
            else:
                assert all(item["title"] == "Walrus" for item in body["items"])
        assert 200 in statuses.values() and 422 in statuses.values()
        # operators are words to look for, not syntax
        for q in ("NEAR( AND col:", "שלו", "-", "walrus OR"):
            status, body = await call("GET", "/search", params={"q": q}, headers=headers)
            assert (status, [i["title"] for i in body["items"]]) == (200, ["Walrus"] if q != "-" else []), q
        async with http.get(server.url("/healthz")) as resp:
            assert resp.status == 200
    assert server.terminate() == 0


@pytest.mark.postgresql_only
async def test_a_statement_past_statement_timeout_is_503_never_500(make_client, caplog):
    """PostgreSQL cancels a statement that runs past `database.statement_timeout` (here: one that
    waits for a lock another connection holds). The error middleware answers it 503
    `database-timeout` with Retry-After, on any route (a search, a write through the writer), and
    logs it without what was searched for."""
    client = await make_client(database__statement_timeout=0.5)
    ada = await register(client, name="Ada")
    ws = await make_workspace(client, ada, "A")
    doc = await document(client, ada, ws, "Pelican", markdown="a pelican\n")
    url = client.app[SETTINGS].database.url
    caplog.set_level(logging.WARNING, logger="mdsync.http")
    with psycopg.connect(url) as blocker:  # its transaction holds the locks until the block ends
        blocker.execute("LOCK TABLE docs_search IN ACCESS EXCLUSIVE MODE")
        blocker.execute("SELECT 1 FROM documents WHERE id = %s FOR UPDATE", (doc["id"],))
        resp = await client.get(f"{API}/search", params={"q": "pelicansecret"}, headers=ada.headers)
        body = await resp.json()
        assert resp.status == 503, body
        assert resp.content_type == "application/problem+json"
        assert body["type"] == "urn:mdsync:error:database-timeout" and body["status"] == 503
        assert int(resp.headers["Retry-After"]) > 0
        resp = await client.patch(f"{API}/documents/{doc['id']}", json={"title": "Renamed"}, headers=ada.headers)
        body = await resp.json()
        assert resp.status == 503, body
        assert body["type"] == "urn:mdsync:error:database-timeout" and "Retry-After" in resp.headers
    logged = [r for r in caplog.records if r.name == "mdsync.http"]
    assert logged and all(r.levelno == logging.WARNING and not r.exc_info for r in logged)
    assert "pelicansecret" not in caplog.text and "SELECT" not in caplog.text
    # the locks gone, both answer again
    assert titles(await search(client, ada, "pelican")) == ["Pelican"]
    resp = await client.patch(f"{API}/documents/{doc['id']}", json={"title": "Renamed"}, headers=ada.headers)
    assert resp.status == 200, await resp.text()


async def test_missing_or_empty_q_is_422(client, two_teams):
    ada, bob, ws_a, ws_b, viewer = two_teams
    for params in ({}, {"q": ""}, {"q": "   "}, {"q": "\t\n"}):
        resp = await client.get(f"{API}/search", params=params, headers=viewer.headers)
        body = await resp.json()
        assert resp.status == 422 and [e["field"] for e in body["errors"]] == ["q"], (params, body)
    for limit in ("0", "-3", "many"):
        resp = await client.get(f"{API}/search", params={"q": "x", "limit": limit}, headers=viewer.headers)
        assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "limit"
    assert (await client.get(f"{API}/search", params={"q": "x"})).status == 401


async def test_limit_above_200_answers_200_at_most(client, two_teams):
    ada, bob, ws_a, ws_b, viewer = two_teams
    for i in range(205):
        await document(client, ada, ws_a, f"Heron {i}", markdown="heron")
    assert len((await search(client, viewer, "heron", limit="500"))["items"]) == 200
    assert len((await search(client, viewer, "heron", limit="7"))["items"]) == 7
    assert len((await search(client, viewer, "heron"))["items"]) == 50  # the Lists default


async def test_snippet_escapes_everything_but_mark(client, two_teams):
    ada, bob, ws_a, ws_b, viewer = two_teams
    await document(client, ada, ws_a, "Markup", markdown='Use <b>bold</b> lemur & "quotes" <script>x()</script> '
                                                         "\x02not a mark\x03 lemurs\n")
    snippet = (await search(client, viewer, "lemur"))["items"][0]["snippet"]
    assert snippet == ("Use &lt;b&gt;bold&lt;/b&gt; <mark>lemur</mark> &amp; &quot;quotes&quot; "
                       "&lt;script&gt;x()&lt;/script&gt; not a mark <mark>lemurs</mark>")
    assert snippet.replace("<mark>", "").replace("</mark>", "").count("<") == 0


async def test_index_follows_create_rename_content_trash_restore_purge(client, two_teams):
    ada, bob, ws_a, ws_b, viewer = two_teams
    doc = await document(client, ada, ws_a, "Draft", markdown="about an ibex\n")
    assert titles(await search(client, viewer, "ibex")) == ["Draft"]
    resp = await client.patch(f"{API}/documents/{doc['id']}", json={"title": "Mountain goats"}, headers=ada.headers)
    assert resp.status == 200
    assert titles(await search(client, viewer, "mountain")) == ["Mountain goats"]
    assert titles(await search(client, viewer, "draft")) == []
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data="now about a chamois\n",
                            headers={**ada.headers, "Content-Type": "text/markdown"})
    assert resp.status == 200
    assert titles(await search(client, viewer, "chamois")) == ["Mountain goats"]
    assert titles(await search(client, viewer, "ibex")) == []
    # the trash hides it; a restore brings it back
    assert (await client.delete(f"{API}/documents/{doc['id']}", headers=ada.headers)).status == 204
    assert titles(await search(client, viewer, "chamois")) == []
    assert (await client.post(f"{API}/documents/{doc['id']}/restore", headers=ada.headers)).status == 200
    assert titles(await search(client, viewer, "chamois")) == ["Mountain goats"]
    # a folder sent to the trash takes its documents out of the results
    folder = (await (await client.post(f"{API}/workspaces/{ws_a}/folders", json={"name": "F"},
                                       headers=ada.headers)).json())["id"]
    await document(client, ada, ws_a, "Filed", markdown="a chamois in a folder", folder_id=folder)
    assert len((await search(client, viewer, "chamois"))["items"]) == 2
    assert (await client.delete(f"{API}/folders/{folder}", headers=ada.headers)).status == 204
    assert titles(await search(client, viewer, "chamois")) == ["Mountain goats"]
    # purged: gone for good
    assert (await client.delete(f"{API}/documents/{doc['id']}", params={"permanent": "true"},
                                headers=ada.headers)).status == 204
    assert titles(await search(client, viewer, "chamois")) == []
    index_is_exact(client)


async def test_imported_documents_are_found(client, two_teams):
    import io
    import zipfile

    ada, bob, ws_a, ws_b, viewer = two_teams
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/narwhal.md", "# Tusks\nThe narwhal is a whale.\n")
    resp = await client.post(f"{API}/workspaces/{ws_a}/import", data=buffer.getvalue(),
                             headers={**ada.headers, "Content-Type": "application/zip"})
    assert resp.status == 200, await resp.text()
    body = await search(client, viewer, "narwh")
    assert len(body["items"]) == 1 and "<mark>narwhal</mark>" in body["items"][0]["snippet"]


def index_is_exact(client) -> None:
    """The index holds exactly the documents not in the trash, as they are now (raises if not):
    FTS5's own integrity check on SQLite; on PostgreSQL, every entry against its recomputation."""
    settings = client.app[SETTINGS]
    if settings.database.url is None:
        conn = sqlite3.connect(settings.db_path)
        try:
            conn.execute("INSERT INTO docs_fts (docs_fts, rank) VALUES ('integrity-check', 1)")
        finally:
            conn.close()
        return
    with read_only(settings) as tx:
        wrong = tx.value(
            "SELECT count(*) FROM documents d FULL JOIN docs_search s ON s.document_id = d.id"
            " WHERE (d.deleted_at IS NULL AND s.terms IS DISTINCT FROM docs_search_terms(d.title, d.markdown))"
            "  OR (s.document_id IS NOT NULL AND (d.id IS NULL OR d.deleted_at IS NOT NULL))")
    assert wrong == 0


@needs_node
async def test_a_word_a_live_client_typed_2_seconds_ago_is_found(client, two_teams):
    """The real npm y-websocket client writes a word and goes on typing (the document never goes
    idle); a search for its first letters, 2 s after it was written, finds it with a snippet."""
    ada, bob, ws_a, ws_b, viewer = two_teams
    doc = await document(client, ada, ws_a, "Live", markdown="Field notes.\n")
    base = f"http://{client.server.host}:{client.server.port}"
    result = await run_node("search_typing.mjs", "fresh", {
        "url": base.replace("http", "ws") + "/ws/docs", "http": base, "doc": doc["id"], "token": ada.access_token,
        "word": "quokkasighting", "prefix": "quokk", "afterMs": 2000}, timeout=60)
    answer = result["answer"]
    assert answer["status"] == 200 and "quokkasighting" in result["text"]
    assert [item["document_id"] for item in answer["body"]["items"]] == [doc["id"]]
    assert "<mark>quokkasighting</mark>" in answer["body"]["items"][0]["snippet"]


async def test_the_migration_indexes_an_existing_database(make_client, tmp_path, caplog, monkeypatch):
    """A database from before search (documents, no index) gets its index when the server that
    knows search opens it, with progress lines in the log while it builds (SQLite; PostgreSQL
    says how long it took)."""
    data_dir = tmp_path / "old"
    client = await make_client(data_dir=data_dir)
    ada = await register(client, name="Ada")
    ws = await make_workspace(client, ada)
    await document(client, ada, ws, "Kept", markdown="an old axolotl\n")
    trashed = await document(client, ada, ws, "Binned", markdown="a trashed axolotl\n")
    assert (await client.delete(f"{API}/documents/{trashed['id']}", headers=ada.headers)).status == 204
    settings = client.app[SETTINGS]
    await client.close()
    # back to the schema of an mdsync without search, with many documents in it
    search_version = next(m.version for m in migrate.available() if m.name == "search")
    bulk = [(str(uuid.uuid4()), ws, f"Bulk {i}", "lorem ipsum dolor sit amet " * 40 + f"token{i}") for i in range(3000)]
    insert = ("INSERT INTO documents (id, workspace_id, title, markdown, created_at, updated_at)"
              " VALUES (?, ?, ?, ?, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
    if settings.database.url is None:
        conn = sqlite3.connect(settings.db_path, isolation_level=None)
        conn.executescript("DROP TRIGGER docs_fts_insert; DROP TRIGGER docs_fts_update; DROP TRIGGER docs_fts_delete;"
                           "DROP TABLE docs_fts; DROP VIEW live_documents;"
                           f"DELETE FROM schema_migrations WHERE version = {search_version};")
        conn.execute("BEGIN")
        conn.executemany(insert, bulk)
        conn.execute("COMMIT")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(settings.database.url, autocommit=True) as conn, conn.transaction():
            conn.execute("DROP TABLE docs_search; DROP FUNCTION docs_search_sync() CASCADE;"
                         " DROP FUNCTION docs_search_terms; DROP FUNCTION docs_search_words;"
                         " DROP TEXT SEARCH CONFIGURATION mdsync_search;"
                         f" DELETE FROM schema_migrations WHERE version = {search_version}")
            conn.cursor().executemany(insert.replace("?", "%s"), bulk)
    monkeypatch.setattr(migrate, "PROGRESS_EVERY", 0.0)  # every progress tick logs
    caplog.set_level(logging.INFO, logger="mdsync.db")
    client = await make_client(data_dir=data_dir)
    progress = "still running" if settings.database.url is None else "applied in"
    assert any("migration" in r.getMessage() and "search" in r.getMessage() and progress in r.getMessage()
               for r in caplog.records)
    assert titles(await search(client, ada, "axolo")) == ["Kept"]
    assert titles(await search(client, ada, "token2999")) == ["Bulk 2999"]
    index_is_exact(client)


def test_snippets_mark_what_the_index_matched():
    """The highlighter marks the tokens the index matched: prefixes of letters-and-digits runs,
    case and diacritics ignored; the window is the text around the first match."""
    from mdsync.search.query import Highlighter

    h = Highlighter("cafe BRU")
    assert h.snippet("Au Café, crème brûlée; Brunch at the café_bar.") == (
        "Au <mark>Café</mark>, crème <mark>brûlée</mark>; <mark>Brunch</mark> at the <mark>café</mark>_bar.")
    assert Highlighter("rus").snippet("walrus rust") == "walrus <mark>rust</mark>"  # prefixes, not infixes
    assert Highlighter("日本").snippet("これは日本語です。日本") == "これは日本語です。<mark>日本</mark>"
    long = "intro " * 100 + "the needle here " + "outro " * 100
    snippet = Highlighter("needle").snippet(long)
    assert snippet.startswith("… intro") and snippet.endswith("outro …") and "<mark>needle</mark> here" in snippet
    assert len(snippet) < 300
    assert Highlighter("title-only").snippet("Body text\nwith lines") == "Body text with lines"
    # a word matched 20 000 times in one document: every match in the window marked, and no more
    many = Highlighter("th").snippet("the that this " * 20_000)
    assert many.count("<mark>") == len(re.findall(r"\bth", many.replace("<mark>", "").replace("</mark>", "")))


def test_each_engine_gets_its_words_quoted():
    """Every word becomes quoted text of the engine's query language, never its syntax: FTS5 phrases
    with a prefix star; tsquery runs of letters and digits, a word's runs a phrase whose last is a
    prefix, the words all required."""
    from mdsync.search.query import match_expression, tsquery_expression

    assert match_expression('title:walrus "x" NEAR(') == '"title:walrus"* """x"""* "NEAR("*'
    assert tsquery_expression("title:walrus it's Café") == "'title' <-> 'walrus':* & 'it' <-> 's':* & 'Café':*"
    assert tsquery_expression("a&b | !c :* 'd'") == "'a' <-> 'b':* & 'c':* & 'd':*"
    assert tsquery_expression("- ★ ()") is None  # nothing to look for: no items, no query
    with pytest.raises(ValidationFailed):
        tsquery_expression(" \t")


async def test_tiptap_documents_are_searched_by_their_markdown(client, two_teams):
    """A TipTap document is indexed by the markdown its content backend renders: as created, and
    after a markdown PUT (which edits its Y.XmlFragment)."""
    ada, bob, ws_a, ws_b, viewer = two_teams
    doc = await document(client, ada, ws_a, "Rich", content_model="tiptap", markdown="# Gannet\n\nA **seabird**.\n")
    assert titles(await search(client, viewer, "gann seab")) == ["Rich"]
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data="# Gannet\n\nA **diving** seabird.\n",
                            headers={**ada.headers, "Content-Type": "text/markdown"})
    assert resp.status == 200
    for _ in range(100):  # the projection of a REST write is stored at once; allow its commit
        body = await search(client, viewer, "diving")
        if body["items"]:
            break
        await asyncio.sleep(0.05)
    assert titles(body) == ["Rich"] and "<mark>diving</mark>" in body["items"][0]["snippet"]


@pytest.fixture
async def searched_db(tmp_path):
    """A database of the test's engine, holding: Ada in workspace A, Bob in B (and a deleted C),
    and documents in each (one of A's in the trash)."""
    db = database_for(make_settings(tmp_path / "data"))
    await db.open()
    docs = [("A", "Pelican notes", "Birds of the coast."), ("A", "Coast", "We saw a pelican fishing near the pier."),
            ("A", "Café", "Crème brûlée and espresso"), ("A", "Contacts", "Mail ada@example.com, see https://x.org/a_b"),
            ("A", "Walrus", "walrus NEAR( AND OR col: ^ - * 😀 שלום walrus-ish"), ("A", "Binned", "a binned walrus"),
            ("B", "Theirs", "walrus secrets"), ("C", "Gone", "a walrus in a deleted workspace")]

    def fill(tx):
        for user in ("ada", "bob"):
            tx.execute("INSERT INTO users (id, email, name, password_hash, created_at, updated_at)"
                       " VALUES (?, ?, ?, 'x', 't', 't')", (user, f"{user}@example.com", user))
        for ws, owner, deleted in (("A", "ada", None), ("B", "bob", None), ("C", "ada", "t")):
            tx.execute("INSERT INTO workspaces (id, name, slug, created_at, updated_at, deleted_at)"
                       " VALUES (?, ?, ?, 't', 't', ?)", (ws, ws, ws, deleted))
            tx.execute("INSERT INTO members (workspace_id, user_id, role, created_at, updated_at)"
                       " VALUES (?, ?, 'owner', 't', 't')", (ws, owner))
        for n, (ws, title, markdown) in enumerate(docs):
            tx.execute("INSERT INTO documents (id, workspace_id, title, markdown, created_at, updated_at, deleted_at)"
                       " VALUES (?, ?, ?, ?, 't', 't', ?)", (f"d{n}", ws, title, markdown,
                                                            "t" if title == "Binned" else None))

    await db.write(fill)
    yield Search(db)
    await db.close()


async def test_the_search_statement_on_each_engine(searched_db):
    """The statement and query of each engine (SQLite FTS5, PostgreSQL tsvector) against the same
    rows: prefix match, title over body, accents, readable rows only, words not syntax, hostile
    input a 422 or an answer, never an error."""
    search = searched_db

    async def found(q, user="ada", workspace_id=None, limit=50):
        return [hit["title"] for hit in await search.query(user, q, workspace_id, limit)]

    hits = await search.query("ada", "peli", None, 50)
    assert [h["title"] for h in hits] == ["Pelican notes", "Coast"]  # the title match weighs more
    assert hits[0]["score"] > hits[1]["score"] > 0 and all(isinstance(h["score"], float) for h in hits)
    assert hits[1]["snippet"] == "We saw a <mark>pelican</mark> fishing near the pier."
    assert await found("esp cafe") == await found("creme espresso") == await found("BRÛL") == ["Café"]
    assert await found("espresso pelican") == []
    # words are unicode61's on both: e-mail addresses, URLs and hyphenated words are their parts
    assert await found("example") == await found("ada@example") == await found("org a_b") == ["Contacts"]
    assert await found("walrus-is") == ["Walrus"]
    # readable rows only: not the trash, not another's workspace, not a deleted workspace
    assert await found("walrus") == ["Walrus"] and await found("walrus", "bob") == ["Theirs"]
    assert await found("walrus", workspace_id="B") == [] and await found("secrets", "bob", "B") == ["Theirs"]
    assert len(await found("a", limit=2)) == 2
    # syntax of either engine is text to look for
    for q in ("NEAR( AND col:", "שלו", "walrus OR", "walrus & !", "walrus:*", "col: | wal", "'walrus'", "walrus\\"):
        assert await found(q) == ["Walrus"], q
    assert await found("-") == await found("😀") == []
    for q in HOSTILE:
        try:
            assert set(await found(q)) <= {"Walrus", "Coast", "Pelican notes", "Café", "Contacts"}, q
        except ValidationFailed as exc:
            assert exc.errors[0]["field"] == "q"
