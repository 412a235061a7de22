"""Search (docs/api.md "Search") over HTTP against the real app: prefix matching, ranking, snippets,
who sees what, hostile queries, the limit, and an index that follows create, rename, content
writes, trash, restore, purge and import — and a live npm client's typing within 2 s
(docs/api.md "Search"). Existing databases get their index from the migration."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import uuid

import pytest

from mdsync.appkeys import SETTINGS
from mdsync.db import migrate
from tests.builders import API, document, join, make_workspace, register
from tests.nodeclients import needs_node, run_node


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
    assert _integrity(client) is None


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


def _integrity(client) -> None:
    """FTS5's own check that the index matches the documents table (raises when it does not)."""
    conn = sqlite3.connect(client.app[SETTINGS].db_path)
    try:
        conn.execute("INSERT INTO docs_fts (docs_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


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
    knows search opens it, with progress lines in the log while it builds."""
    data_dir = tmp_path / "old"
    client = await make_client(data_dir=data_dir)
    ada = await register(client, name="Ada")
    ws = await make_workspace(client, ada)
    await document(client, ada, ws, "Kept", markdown="an old axolotl\n")
    trashed = await document(client, ada, ws, "Binned", markdown="a trashed axolotl\n")
    assert (await client.delete(f"{API}/documents/{trashed['id']}", headers=ada.headers)).status == 204
    db_path = client.app[SETTINGS].db_path
    await client.close()
    # back to the schema of an mdsync without search, with many documents in it
    conn = sqlite3.connect(db_path, isolation_level=None)
    search_version = next(m.version for m in migrate.available() if m.name == "search")
    conn.executescript("DROP TRIGGER docs_fts_insert; DROP TRIGGER docs_fts_update; DROP TRIGGER docs_fts_delete;"
                       f"DROP TABLE docs_fts; DROP VIEW live_documents; DELETE FROM schema_migrations WHERE version = {search_version};")
    conn.execute("BEGIN")
    for i in range(3000):
        conn.execute("INSERT INTO documents (id, workspace_id, title, markdown, created_at, updated_at)"
                     " VALUES (?, ?, ?, ?, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
                     (str(uuid.uuid4()), ws, f"Bulk {i}", "lorem ipsum dolor sit amet " * 40 + f"token{i}"))
    conn.execute("COMMIT")
    conn.close()
    monkeypatch.setattr(migrate, "PROGRESS_EVERY", 0.0)  # every progress tick logs
    caplog.set_level(logging.INFO, logger="mdsync.db")
    client = await make_client(data_dir=data_dir)
    assert any("migration" in r.getMessage() and "search" in r.getMessage() and "still running" in r.getMessage()
               for r in caplog.records)
    assert titles(await search(client, ada, "axolo")) == ["Kept"]
    assert titles(await search(client, ada, "token2999")) == ["Bulk 2999"]
    _integrity(client)


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
