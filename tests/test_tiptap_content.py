"""TipTap documents (content_model "tiptap") through every markdown route of a real app on a temp
data dir: GET/PUT content (block diff into the live document, stale ETags merged), the projection,
versions (create, diff, restore), export, templates, share links, bad input and the schema guard.
The Yjs side is a pycrdt client over /ws/docs editing `XmlFragment('default')` as y-prosemirror
would; the real TipTap editor and providers are in tests/test_tiptap_interop.py."""

from __future__ import annotations

import asyncio
import io
import zipfile

import pytest
from pycrdt import XmlElement, XmlText

from mdsync.appkeys import DB
from mdsync.collab.rooms import ROOMS
from mdsync.tiptap import yxml
from mdsync.tiptap.parse import parse
from mdsync.tiptap.render import render
from tests.builders import register
from tests.readers import content
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

API = "/api/v1"
BODY = "# Plan\n\nFirst paragraph.\n\n- one\n- two\n\nThird block.\n\nFifth paragraph here.\n"


@pytest.fixture
async def client(make_client):
    return await make_client(collab__room_grace_seconds=0.2)


async def workspace(client, owner) -> str:
    resp = await client.post(f"{API}/workspaces", json={"name": "Team"}, headers=owner.headers)
    assert resp.status == 201
    return (await resp.json())["id"]


async def create(client, owner, ws, markdown=BODY, **extra) -> dict:
    resp = await client.post(f"{API}/workspaces/{ws}/documents",
                             json={"title": "Plan", "content_model": "tiptap", "markdown": markdown, **extra},
                             headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def put_content(client, who, doc_id, body: str | bytes, if_match: str | None = None):
    headers = {**who.headers, "Content-Type": "text/markdown"}
    if if_match is not None:
        headers["If-Match"] = if_match
    return await client.put(f"{API}/documents/{doc_id}/content",
                            data=body if isinstance(body, bytes) else body.encode(), headers=headers)


def canonical(markdown: str) -> str:
    return render(parse(markdown))


def fragment_markdown(y: YClient) -> str:
    return render(yxml.read_blocks(yxml.fragment(y.doc)))


def type_into(y: YClient, block: int, text: str, at_end: bool = True) -> None:
    """Type into the first text of top-level block `block`, as an editor would."""
    ytext = yxml.fragment(y.doc).children[block].children[0]
    with y.doc.transaction():
        ytext.insert(len(str(ytext).encode()) if at_end else 0, text)


async def log_rows(client, doc_id) -> int:
    return await client.server.app[DB].value("SELECT count(*) FROM doc_updates WHERE document_id = ?", (doc_id,))


@pytest.fixture
async def team(client):
    owner = await register(client, name="Owner")
    return owner, await workspace(client, owner)


# ---------------------------------------------------------------------------------------------
async def test_created_document_reads_as_markdown_with_the_metadata_etag(client, team):
    owner, ws = team
    doc = await create(client, owner, ws)
    text, etag = await content(client, owner, doc["id"])
    assert text == canonical(BODY) and etag == doc["etag"]
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    assert fragment_markdown(y) == text  # the socket serves the very state the ETag names
    await y.close()


async def test_put_with_the_current_etag_edits_one_block_while_a_client_types_elsewhere(client, team):
    owner, ws = team
    doc = await create(client, owner, ws)
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    first = yxml.fragment(y.doc).children[1]
    text, etag = await content(client, owner, doc["id"])
    put = asyncio.ensure_future(put_content(client, owner, doc["id"],
                                            text.replace("First paragraph.", "First paragraph, edited."), etag))
    type_into(y, 4, " typed")  # the fifth block, while the PUT runs
    resp = await put
    assert resp.status == 200
    expected = canonical(BODY.replace("First paragraph.", "First paragraph, edited.")
                         .replace("Fifth paragraph here.", "Fifth paragraph here. typed"))
    await eventually(lambda: fragment_markdown(y) == expected)
    assert (await content(client, owner, doc["id"]))[0] == expected
    assert yxml.fragment(y.doc).children[1] == first  # edited in place, not replaced
    await y.close()


async def test_put_with_a_stale_etag_merges_with_what_was_typed_since(client, team):
    owner, ws = team
    doc = await create(client, owner, ws)
    text, stale = await content(client, owner, doc["id"])
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    type_into(y, 4, " typed")
    await eventually(lambda: "typed" in client.server.app[ROOMS].loaded(doc["id"]).doc.get_update().decode("latin-1"))
    resp = await put_content(client, owner, doc["id"], text.replace("First paragraph.", "First, from a file."), stale)
    assert resp.status == 200
    expected = canonical(BODY.replace("First paragraph.", "First, from a file.")
                         .replace("Fifth paragraph here.", "Fifth paragraph here. typed"))
    assert await resp.text() == expected
    await eventually(lambda: fragment_markdown(y) == expected)
    # a retry of the same PUT adds nothing (the same Yjs items, made by the same derived client id)
    resp = await put_content(client, owner, doc["id"], text.replace("First paragraph.", "First, from a file."), stale)
    assert await resp.text() == expected
    await y.close()


async def test_put_that_changes_nothing_changes_no_yjs_state(client, team):
    owner, ws = team
    doc = await create(client, owner, ws)
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    type_into(y, 1, "trailing space ")  # what markdown cannot hold (a paragraph's trailing space)
    await eventually(lambda: client.server.app[ROOMS].loaded(doc["id"]).seq > 0)
    text, etag = await content(client, owner, doc["id"])
    room = client.server.app[ROOMS].loaded(doc["id"])
    seq, received = room.seq, y.received_updates
    for body, if_match in ((text, etag), (text + "\n", None), (text.replace("\n", "\r\n"), etag)):
        resp = await put_content(client, owner, doc["id"], body, if_match)
        assert resp.status == 200 and resp.headers["ETag"] == etag
    assert room.seq == seq
    await asyncio.sleep(0.1)
    assert y.received_updates == received
    await y.close()


async def test_socket_edits_reach_the_projection_within_two_seconds(client, team):
    owner, ws = team
    doc = await create(client, owner, ws)
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    type_into(y, 3, "And more: ", at_end=False)
    started = asyncio.get_running_loop().time()
    db = client.server.app[DB]

    async def projected() -> bool:
        return "And more: " in await db.value("SELECT markdown FROM documents WHERE id = ?", (doc["id"],))

    while not await projected():
        assert asyncio.get_running_loop().time() - started < 2.0 + 1.0  # bound plus scheduling slack
        await asyncio.sleep(0.05)
    await y.close()


async def test_versions_diff_and_restore_while_a_client_types(client, team):
    owner, ws = team
    doc = await create(client, owner, ws)
    resp = await client.post(f"{API}/documents/{doc['id']}/versions", json={"label": "v1"}, headers=owner.headers)
    assert resp.status == 201
    v1 = await resp.json()
    detail = await (await client.get(f"{API}/versions/{v1['id']}", headers=owner.headers)).json()
    assert detail["markdown"] == canonical(BODY)
    text, _ = await content(client, owner, doc["id"])
    assert (await put_content(client, owner, doc["id"], text.replace("Third block.", "Third, rewritten."))).status == 200
    diff = await (await client.get(f"{API}/documents/{doc['id']}/diff?from={v1['id']}&to=current",
                                   headers=owner.headers)).json()
    assert "-Third block." in diff["unified"] and "+Third, rewritten." in diff["unified"]
    text, seen = await content(client, owner, doc["id"])
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    restore = asyncio.ensure_future(client.post(f"{API}/versions/{v1['id']}/restore",
                                                headers={**owner.headers, "If-Match": seen}))
    type_into(y, 4, " typed")
    resp = await restore
    assert resp.status == 200, await resp.text()
    expected = canonical(BODY.replace("Fifth paragraph here.", "Fifth paragraph here. typed"))
    await eventually(lambda: fragment_markdown(y) == expected)
    assert (await content(client, owner, doc["id"]))[0] == expected
    await y.close()


async def test_export_template_and_share_link_show_the_markdown(client, team):
    owner, ws = team
    doc = await create(client, owner, ws)
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    type_into(y, 1, " Live.")
    expected = canonical(BODY.replace("First paragraph.", "First paragraph. Live."))
    await eventually(lambda: fragment_markdown(y) == expected)
    resp = await client.get(f"{API}/workspaces/{ws}/export", headers=owner.headers)
    assert resp.status == 200
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as archive:
        bodies = [archive.read(n).decode() for n in archive.namelist() if n.endswith(".md")]
    assert any(expected in body for body in bodies)
    # a tiptap template for a text document, and a text template for a tiptap document
    resp = await client.post(f"{API}/workspaces/{ws}/documents",
                             json={"title": "From template", "template_id": doc["id"]}, headers=owner.headers)
    copy = await resp.json()
    assert (await content(client, owner, copy["id"]))[0] == expected
    back = await create(client, owner, ws, markdown=None, template_id=copy["id"])
    assert (await content(client, owner, back["id"]))[0] == expected
    link = await (await client.post(f"{API}/documents/{doc['id']}/share-links", json={},
                                    headers=owner.headers)).json()
    shared = await (await client.get(f"{API}/share/{link['token']}")).json()
    assert shared["markdown"] == expected
    await y.close()


async def test_bad_input(make_client):
    client = await make_client(limits__max_document_bytes=64 * 1024)
    owner = await register(client)
    ws = await workspace(client, owner)
    doc = await create(client, owner, ws, markdown="start\n")
    for deep in ("- " * 10000 + "x\n", "> " * 10000 + "x\n", "1. " * 10000 + "x\n",
                 "".join("  " * i + "- item\n" for i in range(200))):
        resp = await put_content(client, owner, doc["id"], deep)
        assert resp.status == 422, await resp.text()
        assert (await resp.json())["errors"][0]["field"] == "body"
    resp = await client.post(f"{API}/workspaces/{ws}/documents",
                             json={"title": "Deep", "content_model": "tiptap", "markdown": "- " * 10000 + "x"},
                             headers=owner.headers)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "markdown"
    assert (await put_content(client, owner, doc["id"], "x" * (65 * 1024))).status == 413
    resp = await client.post(f"{API}/workspaces/{ws}/documents",
                             json={"title": "Odd", "content_model": "prosemirror"}, headers=owner.headers)
    assert resp.status == 422
    assert (await content(client, owner, doc["id"]))[0] == "start"  # nothing lost, server up


async def test_unknown_nodes_render_their_text_and_are_counted(client, team):
    owner, ws = team
    doc = await create(client, owner, ws, markdown="before\n")
    y = await YClient.connect(client, doc["id"], owner.access_token)
    await asyncio.wait_for(y.synced.wait(), 10)
    with y.doc.transaction():
        callout = yxml.fragment(y.doc).children.append(XmlElement("callout", {"tone": "info"}))
        para = callout.children.append(XmlElement("paragraph"))
        text = para.children.append(XmlText())
        text.insert(0, "inside the callout", {"highlight": {"color": "yellow"}})
    await eventually(lambda: len(yxml.fragment(client.server.app[ROOMS].loaded(doc["id"]).doc).children) == 2)
    text, etag = await content(client, owner, doc["id"])
    assert text == "before\n\ninside the callout"
    # a PUT that leaves that block alone keeps the node and its attributes
    resp = await put_content(client, owner, doc["id"], text.replace("before", "after"), etag)
    assert resp.status == 200
    room = client.server.app[ROOMS].loaded(doc["id"])
    kept = yxml.read_blocks(yxml.fragment(room.doc))[1]
    assert kept["type"] == "callout" and kept["attrs"] == {"tone": "info"}
    metrics = await (await client.get("/metrics")).text()
    assert 'mdsync_tiptap_unknown_names_total{kind="node"} 1.0' in metrics
    assert 'mdsync_tiptap_unknown_names_total{kind="mark"} 1.0' in metrics
    await y.close()
