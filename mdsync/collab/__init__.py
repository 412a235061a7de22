"""Real-time collaboration: Yjs rooms over the y-websocket protocol, their update log and snapshots.

protocol.py (wire format) · connection.py (one socket, direct frame writes) · room.py (one open
document: relay, awareness, persistence) · rooms.py (the manager: load/unload, presence, access
changes, shutdown; `app[ROOMS]` is the API other features use) · socket.py (the aiohttp adapter)
· store.py (SQL) · tickets.py (single-use socket tickets) · routes.py (routes + wiring).
"""
