"""Real-time collaboration: Yjs rooms over the y-websocket protocol, their update log and snapshots.

protocol.py (wire format) · connection.py (one socket, direct frame writes) · room.py (one open
document: relay, awareness, persistence) · rooms.py (the manager: load/unload, presence, access
changes, shutdown; `app[ROOMS]` is the API other features use) · socket.py (the aiohttp adapter)
· store.py (SQL) · tickets.py (single-use socket tickets) · routes.py (routes + wiring).

Content model `text` as markdown over REST: content.py (`YjsTextContent`, the ContentBackend of
documents/content.py) · etags.py (the ETag of a Yjs state) · text_ops.py (markdown diff → Y.Text
edits) · states.py (the states behind served ETags, for merges) · projection.py (markdown copied
into documents.markdown) · http_routes.py (Yjs over HTTP, presence; builds the backend).
"""
