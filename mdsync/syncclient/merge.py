"""Each document's Yjs replica on the device, and the file's text around it.

`text` documents (`Replica`): a local edit becomes Yjs operations with the project's minimal text diff
(`collab.text_ops.apply_text_diff`, the same one `PUT …/content` uses): last synced text → file,
applied to the replica's `Y.Text('markdown')`; what the replica gained is the update to send.
A remote update is applied to the replica; the CRDT merges it with the local edit already there,
so both survive without markers or copies.

`tiptap` documents (`TipTapReplica`): the replica is TipTap's `Y.XmlFragment('default')`, its
text the markdown the server's renderer makes of it (mdsync/tiptap/render.py, what `GET
…/content` answers); a local edit is written into the fragment with the server's block diff
(mdsync/tiptap/blockdiff.py: unchanged blocks untouched, a changed paragraph edited in place), so
a concurrent edit in another block survives the merge.

CRLF line ends and a BOM stay in the file only: the
replica holds LF text without a BOM.
"""

from __future__ import annotations

from pycrdt import Doc, Text

from mdsync.collab.text_ops import apply_text_diff
from mdsync.tiptap import blockdiff, yxml
from mdsync.tiptap.render import render

BOM = "\ufeff"


class Replica:
    def __init__(self, state: bytes | None = None):
        self.doc = Doc()
        self.text = self.doc.get("markdown", type=Text)
        if state:
            self.doc.apply_update(state)

    def markdown(self) -> str:
        return str(self.text)

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def state(self) -> bytes:
        return self.doc.get_update()

    def apply(self, update: bytes) -> None:
        if update:
            self.doc.apply_update(update)

    def edit(self, new: str, old: str | None = None) -> bytes | None:
        """Turn the replica's text into `new` (a minimal diff); the update it made, or None."""
        before = self.doc.get_state()
        with self.doc.transaction():
            count = apply_text_diff(self.text, new, old)
        return self.doc.get_update(before) if count else None


class TipTapReplica(Replica):
    def __init__(self, state: bytes | None = None):
        self.doc = Doc()
        self.frag = yxml.fragment(self.doc)
        if state:
            self.doc.apply_update(state)

    def markdown(self) -> str:
        return render(yxml.read_blocks(self.frag))

    def edit(self, new: str, old: str | None = None) -> bytes | None:
        """Write `new` into the fragment as a block diff against what it renders now (`old` is
        not needed); the update it made, or None. Raises tiptap.parse.TooDeep."""
        captured: list[bytes] = []
        subscription = self.doc.observe(lambda event: captured.append(event.update))
        try:
            with self.doc.transaction(origin="mdsync-sync"):
                blockdiff.write_markdown(self.frag, new)
        finally:
            self.doc.unobserve(subscription)
        return captured[0] if captured else None


def replica_of(content_model: str, state: bytes | None = None) -> Replica:
    """The replica of a document of `content_model` (`text` or `tiptap`)."""
    return TipTapReplica(state) if content_model == "tiptap" else Replica(state)


def decode(raw: bytes) -> tuple[str, str]:
    """The file's bytes → (LF text without BOM, style). Raises UnicodeDecodeError."""
    text = raw.decode("utf-8")
    style = ""
    if text.startswith(BOM):
        text, style = text[1:], "bom"
    if "\r\n" in text:
        text, style = text.replace("\r\n", "\n"), style + "+crlf"
    return text, style


def encode(text: str, style: str) -> bytes:
    if "crlf" in style:
        text = text.replace("\n", "\r\n")
    if style.startswith("bom"):
        text = BOM + text
    return text.encode("utf-8")
