"""What the search box typed, as an FTS5 query, and a match snippet as safe HTML.

Each word of `q` becomes a quoted phrase with a prefix star (`"wor"*`), joined by spaces (all
words must match): FTS5's own syntax — `AND`, `NEAR(`, `col:`, `^`, `-`, `*`, quotes — is plain
text to search for, never an operator, and the last word matches as it is being typed. Control
characters (NUL included) separate words. A word without letters or digits matches nothing and
constrains nothing (FTS5 ignores an empty phrase).

Snippets come from FTS5's `snippet()` with two control characters around each match; everything
is HTML-escaped, then they become `<mark>` and `</mark>`, always balanced (a marker character in
the document itself cannot open an unclosed tag).
"""

from __future__ import annotations

import html
import re

from mdsync.api.errors import ValidationFailed

MAX_QUERY_CHARS = 500
MAX_WORDS = 32
OPEN, CLOSE = "\x02", "\x03"
_SEPARATORS = re.compile(r"[\s\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s+")


def match_expression(q: str | None) -> str:
    """The FTS5 MATCH expression for `q`; 422 naming `q` when it is missing, empty or too long."""
    if q is None or not q.strip():
        raise ValidationFailed.field("q", "type something to search for")
    if len(q) > MAX_QUERY_CHARS:
        raise ValidationFailed.field("q", f"must be at most {MAX_QUERY_CHARS} characters")
    words = [w for w in _SEPARATORS.split(q) if w]
    if not words:
        raise ValidationFailed.field("q", "type something to search for")
    if len(words) > MAX_WORDS:
        raise ValidationFailed.field("q", f"must be at most {MAX_WORDS} words")
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words)


def snippet_html(raw: str | None) -> str:
    """FTS5 snippet text with OPEN/CLOSE markers → escaped HTML with `<mark>` around matches."""
    out, marked = [], False
    for part in re.split(f"([{OPEN}{CLOSE}])", _SPACES.sub(" ", raw or "").strip()):
        if part == OPEN:
            if not marked:
                out.append("<mark>")
                marked = True
        elif part == CLOSE:
            if marked:
                out.append("</mark>")
                marked = False
        else:
            out.append(html.escape(part))
    if marked:
        out.append("</mark>")
    return "".join(out)
