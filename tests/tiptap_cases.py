"""TipTap documents (ProseMirror JSON, as the editor's schema names nodes and marks) and the
markdown each is read as: one case per node and mark, and their combinations. Used by
tests/test_tiptap_markdown.py (the server's renderer and parser) and tests/test_tiptap_interop.py
(the same documents built by @tiptap/core + y-prosemirror in Node and pushed over both sockets;
@tiptap/markdown writes and reads the same markdown, except where `TIPTAP_WRITES` or
`TIPTAP_READS` say otherwise, with the reason).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "tiptap_corpus"


def t(text: str, *marks: str | dict) -> dict:
    node: dict = {"type": "text", "text": text}
    if marks:
        node["marks"] = [m if isinstance(m, dict) else {"type": m} for m in marks]
    return node


def p(*content: dict) -> dict:
    return {"type": "paragraph", "content": list(content)} if content else {"type": "paragraph"}


def h(level: int, *content: dict) -> dict:
    return {"type": "heading", "attrs": {"level": level}, "content": list(content)}


def li(*content: dict) -> dict:
    return {"type": "listItem", "content": list(content)}


def task(checked: bool, *content: dict) -> dict:
    return {"type": "taskItem", "attrs": {"checked": checked}, "content": list(content)}


def ul(*items: dict) -> dict:
    return {"type": "bulletList", "content": list(items)}


def ol(start: int, *items: dict) -> dict:
    return {"type": "orderedList", "attrs": {"start": start}, "content": list(items)}


def tasks(*items: dict) -> dict:
    return {"type": "taskList", "content": list(items)}


def code(language: str | None, text: str) -> dict:
    return {"type": "codeBlock", "attrs": {"language": language}, "content": [t(text)]}


def link(href: str, title: str | None = None) -> dict:
    return {"type": "link", "attrs": {"href": href, "title": title}}


def cell(kind: str, *content: dict, align: str | None = None) -> dict:
    node: dict = {"type": kind, "content": [p(*content)]}
    if align:
        node["attrs"] = {"align": align}
    return node


def row(*cells: dict) -> dict:
    return {"type": "tableRow", "content": list(cells)}


def table(*rows: dict) -> dict:
    return {"type": "table", "content": list(rows)}


def image(src: str, alt: str | None = None, title: str | None = None) -> dict:
    return {"type": "image", "attrs": {"src": src, "alt": alt, "title": title}}


HR = {"type": "horizontalRule"}
BR = {"type": "hardBreak"}

# name -> (blocks, the markdown GET content answers)
CASES: dict[str, tuple[list[dict], str]] = {
    "paragraph": ([p(t("Hello world."))], "Hello world."),
    "paragraphs": ([p(t("One.")), p(t("Two."))], "One.\n\nTwo."),
    **{f"heading {n}": ([h(n, t(f"Level {n}"))], "#" * n + f" Level {n}") for n in range(1, 7)},
    "bullet list": ([ul(li(p(t("a"))), li(p(t("b"))))], "- a\n- b"),
    "nested bullet list": ([ul(li(p(t("a")), ul(li(p(t("b")), ul(li(p(t("c"))))))))], "- a\n  - b\n    - c"),
    "ordered list": ([ol(1, li(p(t("one"))), li(p(t("two"))))], "1. one\n2. two"),
    "ordered list with start": ([ol(3, li(p(t("three"))), li(p(t("four"))))], "3. three\n4. four"),
    "ordered list nested in bullets": ([ul(li(p(t("a")), ol(1, li(p(t("x"))), li(p(t("y"))))))],
                                       "- a\n  1. x\n  2. y"),
    "task list": ([tasks(task(False, p(t("open"))), task(True, p(t("done"))))], "- [ ] open\n- [x] done"),
    "nested task list": ([tasks(task(False, p(t("parent")), tasks(task(True, p(t("child"))))))],
                         "- [ ] parent\n  - [x] child"),
    "list item with two paragraphs": ([ul(li(p(t("first")), p(t("second"))))], "- first\n\n  second"),
    "blockquote": ([{"type": "blockquote", "content": [p(t("quoted"))]}], "> quoted"),
    "blockquote with two paragraphs": ([{"type": "blockquote", "content": [p(t("a")), p(t("b"))]}], "> a\n>\n> b"),
    "code block": ([code("js", "const x = 1;\nconsole.log(x);")], "```js\nconst x = 1;\nconsole.log(x);\n```"),
    "code block without language": ([code(None, "plain")], "```\nplain\n```"),
    "mermaid": ([code("mermaid", "graph TD\n  A-->B")], "```mermaid\ngraph TD\n  A-->B\n```"),
    "horizontal rule": ([p(t("above")), HR, p(t("below"))], "above\n\n---\n\nbelow"),
    "hard break": ([p(t("line one"), BR, t("line two"))], "line one  \nline two"),
    "image": ([image("pic.png", "A picture")], "![A picture](pic.png)"),
    "image with title": ([image("pic.png", "A picture", "Title")], '![A picture](pic.png "Title")'),
    "table": ([table(row(cell("tableHeader", t("Name")), cell("tableHeader", t("Qty"))),
                     row(cell("tableCell", t("apple")), cell("tableCell", t("3"))))],
              "\n| Name  | Qty |\n| ----- | --- |\n| apple | 3   |\n"),
    "table with alignment": ([table(row(cell("tableHeader", t("L"), align="left"), cell("tableHeader", t("R"), align="right")),
                                    row(cell("tableCell", t("1"), align="left"), cell("tableCell", t("2"), align="right")))],
                             "\n| L   | R   |\n| :--- | ---: |\n| 1   | 2   |\n"),
    "table between paragraphs": ([p(t("before")), table(row(cell("tableHeader", t("h"))), row(cell("tableCell", t("c")))),
                                  p(t("after"))],
                                 "before\n\n\n| h   |\n| --- |\n| c   |\n\n\nafter"),
    "bold": ([p(t("a "), t("bold", "bold"), t(" word"))], "a **bold** word"),
    "italic": ([p(t("an "), t("italic", "italic"), t(" word"))], "an *italic* word"),
    "strike": ([p(t("a "), t("struck", "strike"), t(" word"))], "a ~~struck~~ word"),
    "inline code": ([p(t("run "), t("mdsync serve", "code"), t(" now"))], "run `mdsync serve` now"),
    "inline code with a backtick": ([p(t("a`b", "code"))], "``a`b``"),
    "underline": ([p(t("an "), t("underlined", "underline"), t(" word"))], "an <u>underlined</u> word"),
    "link": ([p(t("see "), t("the docs", link("https://example.com/docs")))], "see [the docs](https://example.com/docs)"),
    "link with title": ([p(t("docs", link("https://example.com", "Example")))], '[docs](https://example.com "Example")'),
    "bold italic": ([p(t("both", "bold", "italic"))], "***both***"),
    "bold inside italic": ([p(t("it ", "italic"), t("bold", "bold", "italic"), t(" it", "italic"))], "*it **bold** it*"),
    "bold link": ([p(t("strong link", link("https://x.org"), "bold"))], "[**strong link**](https://x.org)"),
    "bold code": ([p(t("x", "bold", "code"))], "**`x`**"),
    "strike underline": ([p(t("su", "strike", "underline"))], "~~<u>su</u>~~"),
    "escaped characters": ([p(t("2 * 3 = 6, a_b, `x`, [y], ~z, \\, & < >"))],
                           "2 \\* 3 = 6, a\\_b, \\`x\\`, \\[y\\], \\~z, \\\\, &amp; &lt; &gt;"),
    "emoji": ([p(t("Ship it 🚀 — ✅ 👨‍👩‍👧"))], "Ship it 🚀 — ✅ 👨‍👩‍👧"),
    "empty paragraphs": ([p(t("a")), p(), p(), p(t("b"))], "a\n\n\n\n&nbsp;\n\nb"),
}

# where the server writes other markdown than @tiptap/markdown 3 would, and why
TIPTAP_WRITES: dict[str, tuple[list[dict], str, str]] = {
    "paragraph starting with a block marker": (
        [p(t("# not a heading")), p(t("1. not a list")), p(t("- not a bullet"))],
        "\\# not a heading\n\n1\\. not a list\n\n\\- not a bullet",
        "TipTap writes the marker as is, so the paragraph reads back as a heading or a list"),
    "code block holding a fence": (
        [code("md", "```\nx\n```")], "````md\n```\nx\n```\n````",
        "TipTap always fences with three backticks: the inner fence would end the block"),
    "hard break ending a paragraph": (
        [p(t("end"), BR)], "end<br>",
        "two spaces before the paragraph's end are no break in markdown: <br> keeps it"),
    "trailing spaces": (
        [p(t("typing  "))], "typing",
        "markdown cannot hold spaces at a paragraph's edges; TipTap writes them, a reader drops them"),
    "underline in code": (
        [p(t("u", "code", "underline"))], "<u>`u`</u>",
        "TipTap nests by mark rank and writes <u> inside the backticks, where it is text"),
}

# markdown MarkdownManager.parse (in Node) reads as another document than the server's, and why
TIPTAP_READS: dict[str, str] = {
    "hard break ending a paragraph": "MarkdownManager without a DOM keeps inline <br> as text; the server reads a break",
    "trailing spaces": "neither parser can read spaces at a paragraph's end: the document read back has none",
}


def corpus() -> dict[str, str]:
    """The markdown corpus (READMEs, notes, tables, tasks, nested lists, mermaid, inline HTML,
    CRLF, emoji, escapes, front matter) by file name."""
    return {path.name: path.read_bytes().decode("utf-8") for path in sorted(CORPUS.glob("*.md"))}
