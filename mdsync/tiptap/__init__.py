"""TipTap documents (content model `tiptap`, `Y.XmlFragment('default')`) read and written as
markdown.

- `yxml.py`: the Yjs XML tree ↔ ProseMirror JSON, as y-prosemirror maps them.
- `render.py`: JSON → markdown, the way @tiptap/markdown writes it.
- `parse.py`: markdown → JSON in TipTap's node and mark names.
- `blockdiff.py`: markdown written into a live fragment as a block diff; deterministic seeds.
- `schema.py`: the known node and mark names and the guard that counts unknown ones.
"""
