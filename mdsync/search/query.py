"""What the search box typed: as a query of each engine's index, and as the highlighter of its snippets.

Each word of `q` must match (in any order), the last of its letters-and-digits runs by prefix, so
a word matches as it is being typed. Control characters (NUL included) separate words. Nothing
typed is ever syntax: every word is quoted, so `AND`, `NEAR(`, `col:`, `^`, `-`, `*`, `!`, `&`,
`|`, `:*` and quotes are plain text to search for, never an operator. A word without letters or
digits matches nothing and constrains nothing.

SQLite (FTS5): each word a quoted phrase with a prefix star (`"wor"*`), joined by spaces; FTS5's
unicode61 tokenizer splits the phrase into its letters-and-digits runs.
PostgreSQL (tsquery, for to_tsquery('mdsync_search', …); migration 0012): the runs are cut here,
the same way, each single-quoted (it holds no quote: only letters and digits), a word's runs
joined as a phrase (`<->`), the last with `:*`, the words joined by `&`.

Snippets are made here rather than by FTS5's `snippet()` or PostgreSQL's ts_headline(), which
score every match in a document: a word that occurs 2 000 times in a 100 KB note cost FTS5 ~70 ms
per result (measured: 3.3 s for 50 results). Here a regular expression per query word finds the
same tokens the index does (unicode61: runs of letters and digits; case and diacritics ignored;
the word as a prefix), the snippet is the text around the first match, every match in it is
wrapped in `<mark>…</mark>` and everything else is HTML-escaped — linear in the document, done by
`re` in C, and alike on both engines.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata

from mdsync.api.errors import ValidationFailed

MAX_QUERY_CHARS = 500
MAX_WORDS = 32
SNIPPET_BEFORE = 80    # characters of context before the first match (cut at a word boundary)
SNIPPET_AFTER = 160    # and after it
_SEPARATORS = re.compile(r"[\s\x00-\x1f\x7f]+")
_TOKEN = re.compile(r"[^\W_]+")           # what unicode61 indexes: letters and digits
_SPACES = re.compile(r"[\s\x00-\x1f\x7f]+")  # control characters read as spaces in a snippet


def words(q: str | None) -> list[str]:
    """The words of `q`; 422 naming `q` when it is missing, empty or too long."""
    if q is None or not q.strip():
        raise ValidationFailed.field("q", "type something to search for")
    if len(q) > MAX_QUERY_CHARS:
        raise ValidationFailed.field("q", f"must be at most {MAX_QUERY_CHARS} characters")
    words = [w for w in _SEPARATORS.split(q) if w]
    if not words:
        raise ValidationFailed.field("q", "type something to search for")
    if len(words) > MAX_WORDS:
        raise ValidationFailed.field("q", f"must be at most {MAX_WORDS} words")
    return words


def match_expression(q: str | None) -> str:
    """The FTS5 MATCH expression for `q` (SQLite); 422 naming `q` when it is missing, empty or too long."""
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words(q))


def tsquery_expression(q: str | None) -> str | None:
    """The to_tsquery text for `q` (PostgreSQL); None when no word of it has a letter or digit
    (nothing can match); 422 naming `q` when it is missing, empty or too long."""
    terms = []
    for word in words(q):
        runs = ["'" + run.replace("\\", "\\\\").replace("'", "''") + "'" for run in _TOKEN.findall(word)]
        if runs:
            terms.append(" <-> ".join(runs) + ":*")
    return " & ".join(terms) or None


# -- highlighting -------------------------------------------------------------------------------
def _fold(text: str) -> str:
    """Lower case without diacritics, as unicode61 (remove_diacritics 2) compares tokens."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(ch))


@functools.cache
def _variants() -> dict[str, str]:
    """Each base letter → every character that folds to it (é, É, è … for e), from the scripts
    with diacritics unicode61 removes (Latin, Greek, Cyrillic and their extensions)."""
    table: dict[str, set[str]] = {}
    for code in (*range(0x00C0, 0x0530), *range(0x1E00, 0x2000)):
        ch = chr(code)
        folded = _fold(ch)
        if len(folded) == 1 and folded != ch and folded.isalnum():
            table.setdefault(folded, set()).add(ch)
    return {base: "".join(sorted(chars)) for base, chars in table.items()}


def _token_pattern(token: str) -> str:
    variants = _variants()
    parts = []
    for ch in _fold(token):
        extra = variants.get(ch)
        parts.append(f"[{re.escape(ch + extra)}]" if extra else re.escape(ch))
    return "".join(parts)


class Highlighter:
    """The snippet of a document for one query: the text around its first match, escaped, with
    `<mark>` around every match."""

    def __init__(self, q: str):
        tokens = {t for w in words(q) for t in _TOKEN.findall(w)}
        # longest first, so that of two prefixes that match at one place the whole match is marked
        alternatives = sorted((_token_pattern(t) for t in tokens if _fold(t)), key=len, reverse=True)
        self.pattern = (re.compile(r"(?<![^\W_])(?:" + "|".join(alternatives) + r")[^\W_]*", re.IGNORECASE)
                        if alternatives else None)

    def snippet(self, text: str) -> str:
        first = self.pattern.search(text) if self.pattern else None
        at = first.start() if first else 0
        start = max(0, at - SNIPPET_BEFORE)
        end = min(len(text), at + SNIPPET_AFTER)
        if start > 0:  # begin and end on word boundaries
            space = text.find(" ", start, at)
            start = space + 1 if space >= 0 else start
        if end < len(text):
            space = text.rfind(" ", max(at, end - 40), end)
            end = space if space > at else end
        window = _SPACES.sub(" ", text[start:end]).strip()
        out, last = [], 0
        for match in (self.pattern.finditer(window) if self.pattern else ()):
            out.append(html.escape(window[last:match.start()]))
            out.append("<mark>" + html.escape(match.group()) + "</mark>")
            last = match.end()
        out.append(html.escape(window[last:]))
        return ("… " if start > 0 else "") + "".join(out) + (" …" if end < len(text) else "")
