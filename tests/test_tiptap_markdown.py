"""TipTap documents as markdown, without a server: the renderer (XmlFragment → markdown as
@tiptap/markdown writes it), the parser (markdown → TipTap's nodes and marks), the block diff that
writes markdown into a live fragment, deterministic seeding, depth limits, and unknown names.
What TipTap itself writes and reads for the same cases is checked in tests/test_tiptap_interop.py."""

from __future__ import annotations

import logging
import time

import pytest
from pycrdt import Doc, XmlElement, XmlText

from mdsync.tiptap import blockdiff, yxml
from mdsync.tiptap.parse import MAX_CONTAINERS, TooDeep, parse, parse_with_sources
from mdsync.tiptap.render import render
from mdsync.tiptap.schema import Guard, Schema, Unknown
from tests.tiptap_cases import BR, CASES, TIPTAP_READS, TIPTAP_WRITES, corpus, li, p, t, ul


def y_doc(blocks: list[dict]) -> Doc:
    doc = Doc()
    with doc.transaction():
        yxml.insert_blocks(yxml.fragment(doc), 0, blocks)
    return doc


def markdown_of(doc: Doc) -> str:
    return render(yxml.read_blocks(yxml.fragment(doc)))


def schema_json(blocks: list[dict]) -> list[dict]:
    """JSON as it reads back from Yjs (attributes with their schema defaults), for comparing."""
    return yxml.read_blocks(yxml.fragment(y_doc(blocks)))


ALL_CASES = {**CASES, **{name: (blocks, md) for name, (blocks, md, _why) in TIPTAP_WRITES.items()}}


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_each_node_and_mark_renders_from_yjs_as_expected(name):
    blocks, expected = ALL_CASES[name]
    assert markdown_of(y_doc(blocks)) == expected


@pytest.mark.parametrize("name", [n for n in ALL_CASES if n not in TIPTAP_READS])
def test_each_case_parses_back_to_the_same_document(name):
    blocks, expected = ALL_CASES[name]
    assert schema_json(parse(expected)) == schema_json(blocks)


def test_parse_names_nodes_marks_and_attributes_as_tiptap_does():
    blocks = parse("## Title\n\n3. x\n\n- [x] done\n\n```mermaid\na\n```\n\n"
                   '![alt](p.png "T")\n\n[l](http://x "t") <u>u</u> ~~s~~\n\n| a |\n| :-: |\n| 1 |\n')
    assert blocks[0] == {"type": "heading", "attrs": {"level": 2}, "content": [t("Title")]}
    assert blocks[1]["attrs"] == {"start": 3} and isinstance(blocks[1]["attrs"]["start"], int)
    assert blocks[2]["type"] == "taskList" and blocks[2]["content"][0]["attrs"] == {"checked": True}
    assert blocks[3]["attrs"] == {"language": "mermaid"}
    assert blocks[4] == {"type": "image", "attrs": {"src": "p.png", "alt": "alt", "title": "T"}}
    marks = [n.get("marks") for n in blocks[5]["content"]]
    assert marks == [[{"type": "link", "attrs": {"href": "http://x", "title": "t"}}], None,
                     [{"type": "underline"}], None, [{"type": "strike"}]]
    header = blocks[6]["content"][0]["content"][0]
    assert header["type"] == "tableHeader" and header["attrs"] == {"align": "center"}
    assert header["content"] == [p(t("a"))]


@pytest.mark.parametrize("name", sorted(corpus()))
def test_corpus_is_stable_after_one_pass(name):
    once = render(parse(corpus()[name]))
    assert render(parse(once)) == once
    assert once.strip(), "nothing was read"


def test_what_the_schema_cannot_hold_is_kept_as_text():
    md = corpus()["inline-html.md"]
    out = render(parse(md))
    for kept in ("&lt;div align=\"center\"&gt;", "&lt;!-- a comment --&gt;", "&lt;kbd&gt;Ctrl&lt;/kbd&gt;",
                 "footnote\\[^1\\]", "\\[^1\\]: The footnote text.", "&lt;span class=\"x\"&gt;a span&lt;/span&gt;"):
        assert kept in out
    front = render(parse(corpus()["frontmatter.md"]))
    assert front.startswith("---\ntitle: Front matter\ntags: [a, b]\n---\n\n# Body")


def test_crlf_reads_as_lf():
    assert parse(corpus()["crlf.md"]) == parse(corpus()["crlf.md"].replace("\r\n", "\n"))
    assert "\r" not in render(parse(corpus()["crlf.md"]))


def test_blank_lines_round_trip_as_empty_paragraphs():
    for md in ("a\n\nb", "a\n\n\n\nb", "a\n\n\n\n&nbsp;\n\nb", "a\n\n", "\n\na", "# T\n\n\n| x |\n| --- |\n\n\n\n| y |\n| --- |\n"):
        once = render(parse(md))
        assert render(parse(once)) == once, md
    assert parse("a\n\n\n\nb") == [p(t("a")), p(), p(t("b"))]
    assert parse("a\n") == [p(t("a"))]


# ---------------------------------------------------------------------------------------------
def test_unknown_nodes_and_marks_keep_their_text_and_are_named():
    doc = Doc()
    frag = yxml.fragment(doc)
    with doc.transaction():
        callout = frag.children.append(XmlElement("callout", {"kind": "warning"}))
        inner = callout.children.append(XmlElement("paragraph"))
        text = inner.children.append(XmlText())
        text.insert(0, "inside a callout ")
        text.insert(len("inside a callout "), "highlighted", {"highlight": {"color": "yellow"}, "bold": {}})
        para = frag.children.append(XmlElement("paragraph"))
        mention = para.children.append(XmlElement("mention", {"id": "u1", "label": "Ana"}))
        assert mention is not None
    unknown = Unknown()
    md = render(yxml.read_blocks(frag, unknown=unknown), unknown=unknown)
    assert md == "inside a callout **highlighted**\n\nAna"
    assert unknown.nodes == {"callout", "mention"} and unknown.marks == {"highlight"}
    # names declared in config are known: nothing reported
    schema = Schema.with_extras(nodes=["callout", "mention"], marks=["highlight"])
    known = Unknown()
    render(yxml.read_blocks(frag, schema, known), schema, known)
    assert not known


def test_guard_counts_each_name_once_and_logs_once_per_document(caplog):
    counted = []
    guard = Guard(counted.append)
    with caplog.at_level(logging.WARNING, logger="mdsync.tiptap"):
        guard.report("d1", Unknown({"callout"}, {"highlight"}))
        guard.report("d1", Unknown({"callout"}, {"highlight"}))
        guard.report("d1", Unknown({"mention"}, set()))
        guard.report("d2", Unknown({"callout"}, set()))
    assert counted == ["node", "mark", "node", "node"]
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "callout" in logged[0] and "d2" in logged[1]


def test_numbers_from_yjs_are_integers():
    doc = Doc()
    with doc.transaction():
        yxml.fragment(doc).children.append(XmlElement("heading", {"level": 2.0}))
    assert yxml.read_blocks(yxml.fragment(doc)) == [{"type": "heading", "attrs": {"level": 2}}]


# ---------------------------------------------------------------------------------------------
def test_depth_beyond_the_limit_is_refused_quickly():
    deep = "".join("  " * i + "- item\n" for i in range(10000))
    started = time.perf_counter()
    with pytest.raises(TooDeep):
        parse(deep)
    with pytest.raises(TooDeep):
        parse("> " * 10000 + "x\n")
    with pytest.raises(TooDeep):
        parse("- " * 10000 + "x\n")
    assert time.perf_counter() - started < 5  # refused before the quadratic parse, not after it
    nested = parse("".join("  " * i + "- item\n" for i in range(MAX_CONTAINERS // 2)))
    assert render(nested).count("- item") == MAX_CONTAINERS // 2


def test_a_fragment_nested_too_deep_renders_its_text():
    doc = Doc()
    with doc.transaction():
        el = yxml.fragment(doc).children.append(XmlElement("blockquote"))
        for _ in range(yxml.MAX_DEPTH + 30):
            el = el.children.append(XmlElement("blockquote"))
        el.children.append(XmlElement("paragraph")).children.append(XmlText("deep down"))
    unknown = Unknown()
    md = render(yxml.read_blocks(yxml.fragment(doc), unknown=unknown))
    assert "deep down" in md
    assert "(nested too deep)" in unknown.nodes


# ---------------------------------------------------------------------------------------------
BASE = "# Title\n\nFirst paragraph.\n\n- a\n- b\n  - c\n\nFifth paragraph here.\n\n| x | y |\n| --- | --- |\n| 1 | 2 |\n"


def seeded(markdown: str = BASE) -> Doc:
    doc = Doc()
    doc.apply_update(blockdiff.seed_update(markdown))
    return doc


def write(doc: Doc, markdown: str, by_source: bool = True) -> tuple[blockdiff.Stats, list[bytes]]:
    updates: list[bytes] = []
    sub = doc.observe(lambda event: updates.append(event.update))
    blocks, sources = parse_with_sources(markdown)
    try:
        with doc.transaction(origin="test"):
            stats = blockdiff.apply(yxml.fragment(doc), blocks, sources=sources if by_source else None)
    finally:
        doc.unobserve(sub)
    return stats, updates


def test_seeding_is_deterministic_and_two_seeds_merge_into_one_copy():
    assert blockdiff.seed_update(BASE) == blockdiff.seed_update(BASE)
    a, b = seeded(), seeded()
    a.apply_update(b.get_update())
    assert markdown_of(a) == render(parse(BASE))


@pytest.mark.parametrize("by_source", [True, False], ids=["by-source", "rendered"])
def test_writing_the_same_markdown_changes_nothing(by_source):
    doc = seeded()
    stats, updates = write(doc, markdown_of(doc), by_source)
    assert updates == [] and stats.edited == stats.inserted == stats.deleted == 0


def test_markdown_that_differs_only_where_markdown_cannot_write_changes_nothing():
    doc = Doc()
    with doc.transaction():
        yxml.insert_blocks(yxml.fragment(doc), 0, [p(t("typing "), t("bold ", "bold")), ul(li(p(t("item  "))))])
    stats, updates = write(doc, markdown_of(doc))
    assert updates == [] and stats.kept == 2


@pytest.mark.parametrize("by_source", [True, False], ids=["by-source", "rendered"])
def test_a_changed_paragraph_is_edited_in_place_and_a_concurrent_edit_elsewhere_survives(by_source):
    server = seeded()
    client = Doc()
    client.apply_update(server.get_update())
    # the client types in the fifth block meanwhile
    fifth = yxml.fragment(client).children[3]
    with client.transaction():
        fifth.children[0].insert(len("Fifth"), " (edited)")
    stats, updates = write(server, BASE.replace("First paragraph.", "First paragraph, changed."), by_source)
    assert stats.edited == 1 and stats.inserted == stats.deleted == 0
    assert sum(len(u) for u in updates) < 200  # the change, not the document
    client.apply_update(server.get_update(client.get_state()))
    server.apply_update(client.get_update(server.get_state()))
    expected = render(parse(BASE.replace("First paragraph.", "First paragraph, changed.")
                            .replace("Fifth paragraph", "Fifth (edited) paragraph")))
    assert markdown_of(server) == markdown_of(client) == expected


def test_marks_change_where_they_differ_and_others_stay():
    doc = Doc()
    with doc.transaction():
        yxml.insert_blocks(yxml.fragment(doc), 0, [p(t("keep "), t("this", "bold"), t(" and "),
                                                     t("comment", {"type": "comment", "attrs": {"id": "c1"}}))])
    write(doc, "keep *this* and comment")
    text = yxml.fragment(doc).children[0].children[0]
    runs = [(s, sorted(f or {})) for s, f in text.diff()]
    assert runs == [("keep ", []), ("this", ["italic"]), (" and ", []), ("comment", ["comment"])]


def test_blocks_of_another_type_are_replaced_and_new_ones_inserted():
    doc = seeded("para one\n\npara two\n")
    stats, _ = write(doc, "# para one\n\npara two\n\nthird\n")
    assert (stats.replaced, stats.inserted) == (1, 2)
    assert markdown_of(doc) == "# para one\n\npara two\n\nthird"


def test_a_list_item_is_edited_inside_its_list():
    doc = seeded("- one\n- two\n- three\n")
    lst = yxml.fragment(doc).children[0]
    first_item = lst.children[0]
    stats, _ = write(doc, "- one\n- TWO\n- three\n- four\n")
    assert markdown_of(doc) == "- one\n- TWO\n- three\n- four"
    assert yxml.fragment(doc).children[0] == lst and lst.children[0] == first_item


def test_inline_breaks_and_marks_are_diffed_within_the_block():
    doc = seeded("a line\n")
    write(doc, "a line  \nwith a **break**\n")
    assert yxml.read_blocks(yxml.fragment(doc)) == [p(t("a line"), BR, t("with a "), t("break", "bold"))]


def test_the_trailing_empty_paragraph_tiptap_keeps_is_kept():
    doc = seeded("- a\n\n")
    assert yxml.read_blocks(yxml.fragment(doc))[-1] == p()
    _, updates = write(doc, "- a\n")
    assert updates == []


def test_heading_level_and_code_language_change_in_place():
    doc = seeded("# T\n\n```js\nx\n```\n")
    heading = yxml.fragment(doc).children[0]
    write(doc, "## T\n\n```py\nx\n```\n")
    assert markdown_of(doc) == "## T\n\n```py\nx\n```"
    assert yxml.fragment(doc).children[0] == heading


def _mutations(markdown: str) -> list[str]:
    chunks = markdown.split("\n\n")
    out = []
    for i in range(0, len(chunks), max(1, len(chunks) // 6)):
        out.append("\n\n".join(chunks[:i] + ["A new *middle* paragraph."] + chunks[i + 1:]))  # changed
        out.append("\n\n".join(chunks[:i] + chunks[i + 1:]))  # deleted
        out.append("\n\n".join(chunks[:i] + ["- inserted item", chunks[i]] + chunks[i + 1:]))  # a list before
        out.append("\n\n".join(chunks[:i] + ["```\nan open fence"] + chunks[i:]))  # swallows what follows
        out.append("\n\n".join(chunks[:i] + ["[ref]: https://example.com", "see [ref]"] + chunks[i:]))
    return out


@pytest.mark.parametrize("name", sorted(corpus()))
def test_writing_only_the_changed_middle_gives_what_a_whole_parse_gives(name):
    base = render(parse(corpus()[name]))
    for changed in _mutations(base):
        by_middle, whole = seeded(base), seeded(base)
        with by_middle.transaction():
            blockdiff.write_markdown(yxml.fragment(by_middle), changed)
        with whole.transaction():
            blockdiff.apply(yxml.fragment(whole), parse(changed))
        assert markdown_of(by_middle) == markdown_of(whole), changed


def test_a_one_paragraph_change_parses_only_around_it(monkeypatch):
    base = render(parse("\n\n".join(f"Paragraph number {i}." for i in range(200))))
    doc = seeded(base)
    parsed: list[int] = []
    real = blockdiff.md_parse.parse_with_sources
    monkeypatch.setattr(blockdiff.md_parse, "parse_with_sources", lambda md: parsed.append(len(md)) or real(md))
    with doc.transaction():
        stats = blockdiff.write_markdown(yxml.fragment(doc), base.replace("number 100.", "number one hundred."))
    assert stats.edited == 1 and stats.kept == 199
    assert parsed and max(parsed) < 100  # the paragraph and its two neighbours, not the document
