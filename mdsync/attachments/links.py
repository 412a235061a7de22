"""Links to attachments in markdown — `/api/v1/attachments/{id}`, possibly absolute (any host) and
signed (`?exp=&sig=`) — found in time linear in the text.

One regular expression `(?:https?://[^\\s()<>"']+?)?/api/v1/attachments/…` backtracks: tried at
every position of a long run of URL characters, its lazy host scans the rest of the run each
time (a shared document of `"http://" * 16000` took 14 s to serve, the event loop blocked).
Here the fixed part `/api/v1/attachments/{id}` is found first, then each run of URL characters
that holds one is read once for its `http(s)://` starts, and the expression's leftmost-first
answer is worked out from those positions: every character is read a bounded number of times.
The links found are exactly the matches of that expression (tests/test_link_rewriting.py checks
it against the expression).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PATH = "/api/v1/attachments/"
URL_CHARS = r"[^\s()<>\"']"  # what a link is made of: a link lies within one run of them
# the fixed part: the path and the id, not followed by more of a path or an id (a head of the
# path cannot start inside another one: no two of them overlap)
_HEAD = re.compile(re.escape(PATH) + f"({UUID})" + r"(?![0-9a-zA-Z/-])")
_RUN = re.compile(URL_CHARS + "*")
_SCHEME = re.compile(r"https?://")


def spans(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, attachment id) of each link in `text`, in order, never overlapping: the
    matches of `(?:https?://URL_CHARS+?)?HEAD(?:\\?URL_CHARS*)?`, leftmost first."""
    if PATH not in text:
        return
    heads = [(m.start(), m.end(), m.group(1)) for m in _HEAD.finditer(text)]
    backwards = None
    n = len(text)
    i = 0
    while i < len(heads):
        # the run of URL characters holding this head, and every head in it
        at = heads[i][0]
        if backwards is None:
            backwards = text[::-1]
        run_start = at - (_RUN.match(backwards, n - at).end() - (n - at))
        run_end = _RUN.match(text, at).end()
        j = i
        while j < len(heads) and heads[j][0] < run_end:
            j += 1
        starts = [h[0] for h in heads[i:j]]
        pos, k = run_start, 0  # k: the first head at or after pos
        scheme = _SCHEME.search(text, run_start, run_end)  # the first `http(s)://` at or after pos
        while True:
            k = bisect.bisect_left(starts, pos, k)
            if k == len(starts):
                break
            if scheme is not None and scheme.start() < pos:
                scheme = _SCHEME.search(text, pos, run_end)
            chosen, start = k, starts[k]
            if scheme is not None and scheme.start() < start:
                # a scheme before the head: the lazy host ends at the first head after it (one
                # character of host at least); when there is none, the head matches alone
                after = bisect.bisect_left(starts, scheme.end() + 1, k)
                if after < len(starts):
                    chosen, start = after, scheme.start()
            _, head_end, attachment_id = heads[i + chosen]
            end = run_end if text.startswith("?", head_end) else head_end  # the query: the rest of the run
            yield start, end, attachment_id
            pos = end
        i = j


def ids(text: str) -> set[str]:
    """The attachment ids `text` links to."""
    return {attachment_id for _, _, attachment_id in spans(text)}


def rewrite(text: str, replace: Callable[[str, str], str | None]) -> str:
    """`text` with each link replaced by `replace(attachment id, link as written)` (None: as written)."""
    out: list[str] = []
    done = 0
    for start, end, attachment_id in spans(text):
        written = text[start:end]
        new = replace(attachment_id, written)
        if new is not None and new != written:
            out.append(text[done:start])
            out.append(new)
            done = end
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)
