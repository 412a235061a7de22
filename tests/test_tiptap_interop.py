"""TipTap documents with the real npm packages (tests/interop, pinned in package.json): documents
built by `@tiptap/core`'s getSchema (StarterKit, TaskList, TaskItem, Table*, Image; Link and
Underline come with StarterKit 3) and y-prosemirror's prosemirrorJSONToYXmlFragment, pushed
through /ws/docs (y-websocket's WebsocketProvider) and /ws/hocuspocus (HocuspocusProvider), read
back as markdown; markdown PUT and opened in a headless TipTap editor (TipTap's Collaboration
extension); a REST write and a version restore while a TipTap editor types elsewhere.

The cases and their markdown are tests/tiptap_cases.py; where @tiptap/markdown itself writes or
reads otherwise, the case is listed there with the reason (TIPTAP_WRITES, TIPTAP_READS)."""

from __future__ import annotations

import json

import pytest

from mdsync.tiptap.parse import parse
from mdsync.tiptap.render import render
from tests.builders import register
from tests.nodeclients import needs_node, run_node
from tests.tiptap_cases import CASES, TIPTAP_READS, TIPTAP_WRITES

pytestmark = [needs_node, pytest.mark.both_engines]
API = "/api/v1"
SCRIPT = "tiptap_scenario.mjs"
ALL = {**CASES, **{name: (blocks, md) for name, (blocks, md, _why) in TIPTAP_WRITES.items()}}
BODY = ("# Plan\n\nFirst paragraph.\n\n- one\n- two\n\nThird block.\n\nFifth paragraph, typed at the end:\n")


@pytest.fixture
async def client(make_client):
    return await make_client(collab__room_grace_seconds=0.5)


def urls(client) -> dict:
    host = f"{client.server.host}:{client.server.port}"
    return {"yurl": f"ws://{host}/ws/docs", "hurl": f"ws://{host}/ws/hocuspocus", "http": f"http://{host}"}


async def setup(client):
    owner = await register(client, name="Owner")
    resp = await client.post(f"{API}/workspaces", json={"name": "Team"}, headers=owner.headers)
    return owner, (await resp.json())["id"]


async def new_document(client, owner, ws, markdown: str = "") -> str:
    resp = await client.post(f"{API}/workspaces/{ws}/documents",
                             json={"title": "T", "content_model": "tiptap", "markdown": markdown}, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def content(client, owner, doc_id) -> str:
    resp = await client.get(f"{API}/documents/{doc_id}/content", headers=owner.headers)
    assert resp.status == 200
    return await resp.text()


async def run_with_file(tmp_path, scenario: str, config: dict, timeout: float = 120) -> dict:
    path = tmp_path / f"{scenario}.json"
    path.write_text(json.dumps(config))
    return await run_node(SCRIPT, scenario, {"input": str(path)}, timeout=timeout)


def without_trailing_paragraph(doc: dict) -> dict:
    """TipTap's TrailingNode keeps an empty paragraph after a last block that is not one."""
    content = list(doc.get("content") or [])
    if len(content) > 1 and content[-1] == {"type": "paragraph"}:
        content.pop()
    return {**doc, "content": content}


async def test_documents_built_by_tiptap_read_as_the_expected_markdown_over_both_sockets(client, tmp_path):
    owner, ws = await setup(client)
    cases = []
    for name, (blocks, markdown) in ALL.items():
        for via in ("yws", "hp"):
            cases.append({"name": name, "via": via, "doc": await new_document(client, owner, ws),
                          "json": {"type": "doc", "content": blocks}, "markdown": markdown})
    result = await run_with_file(tmp_path, "push", {**urls(client), "token": owner.access_token, "cases": cases},
                                 timeout=180)
    for i, case in enumerate(cases):
        name = case["name"]
        # what the server answers
        assert await content(client, owner, case["doc"]) == case["markdown"], (name, case["via"])
        # what TipTap itself writes: the same, except where listed with the reason
        if name not in TIPTAP_WRITES:
            assert result["tiptapMarkdown"][i] == case["markdown"], name
        else:
            assert result["tiptapMarkdown"][i] != case["markdown"], f"{name} is no exception any more"
        # and @tiptap/markdown reads that markdown back as the document built (except where listed)
        if name not in TIPTAP_READS:
            assert result["tiptapParse"][i] == result["normalized"][i], name


async def test_markdown_put_shows_in_a_tiptap_editor_as_the_expected_document(client, tmp_path):
    owner, ws = await setup(client)
    names, docs = [], []
    for name, (_blocks, markdown) in ALL.items():
        if name in TIPTAP_READS:
            continue  # markdown no document reads back exactly (tests/tiptap_cases.py)
        doc_id = await new_document(client, owner, ws)
        resp = await client.put(f"{API}/documents/{doc_id}/content", data=markdown.encode(),
                                headers={**owner.headers, "Content-Type": "text/markdown"})
        assert resp.status == 200
        names.append(name)
        docs.append(doc_id)
    shown = (await run_with_file(tmp_path, "editor", {**urls(client), "token": owner.access_token, "docs": docs}))["docs"]
    expected = (await run_with_file(tmp_path, "normalize", {"docs": [
        {"type": "doc", "content": ALL[name][0]} for name in names]}))["docs"]
    for name, got, want in zip(names, shown, expected):
        assert without_trailing_paragraph(got) == without_trailing_paragraph(want), name


@pytest.mark.parametrize("stale", [False, True], ids=["current-etag", "stale-etag"])
async def test_put_changing_block_one_while_a_hocuspocus_client_types_in_block_five(client, stale):
    owner, ws = await setup(client)
    doc_id = await new_document(client, owner, ws, BODY)
    result = await run_node(SCRIPT, "typing", {**urls(client), "token": owner.access_token, "doc": doc_id,
                                               "block": 4, "stale": stale, "from": "First paragraph.",
                                               "to": "First paragraph, from REST."}, timeout=120)
    assert result["put"]["status"] == 200
    typed = "".join(result["typed"])
    expected = render(parse(BODY.replace("First paragraph.", "First paragraph, from REST.")
                            .replace("typed at the end:", "typed at the end:" + typed)))
    assert result["final"] == expected  # both edits, nothing duplicated, nothing lost
    assert expected.count("First paragraph") == 1 and expected.count("Third block.") == 1
    # the typist's caret stayed at the end of its text, in its editor and as others see it
    caret = result["caret"]
    assert caret["editorText"] == "Fifth paragraph, typed at the end:" + typed
    assert caret["editorOffset"] == len(caret["editorText"])
    assert caret["seen"]["inBlock"] and caret["seen"]["index"] == len(caret["editorText"])
    # the content PUT back as it is: nothing changes, no update reaches anyone
    assert result["same"]["status"] == 200 and result["same"]["etag"] == result["same"]["before"]
    assert result["unchangedStatus"] == 200
    assert result["updatesForSamePut"] == 0


async def test_version_restore_while_a_client_types_keeps_the_typing(client):
    owner, ws = await setup(client)
    doc_id = await new_document(client, owner, ws, BODY)
    result = await run_node(SCRIPT, "restore", {**urls(client), "token": owner.access_token, "doc": doc_id,
                                                "block": 4, "from": "Third block.", "to": "Third, rewritten."},
                            timeout=120)
    assert (result["version"], result["changed"], result["restored"]) == (201, 200, 200)
    typed = "".join(result["typed"])
    assert result["final"] == render(parse(BODY.replace("typed at the end:", "typed at the end:" + typed)))
    assert "+Fifth paragraph, typed at the end:" + typed in result["diff"]  # diff shows markdown
