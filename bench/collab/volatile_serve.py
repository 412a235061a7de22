"""`mdsync serve` with the Yjs update log switched off: bench only (bench/collab/durable_bench.py).

Updates are still applied, relayed and acknowledged, the markdown projection is still stored, but
no update is handed to the database writer: the group flush runs on the next loop iteration
instead of after `collab.flush_delay_seconds`, drops the pending rows and counts them saved (so a
Hocuspocus SyncStatus goes out at once, without a commit), and the log is never compacted while
the room is open. This measures what the durable log costs; it is not a
mode the server offers (an acknowledged edit must survive a crash).

    python bench/collab/volatile_serve.py serve --host 127.0.0.1 --port 0
"""

from __future__ import annotations

from mdsync.cli import main
from mdsync.collab.room import Room
from mdsync.collab.rooms import RoomManager


def _drop_pending(self: Room) -> list:
    if self._pending:
        self._pending = []
        self.loop.call_soon(self._saved)
    return []


Room.take_pending = _drop_pending
Room.compact_if_due = lambda self: None
_init = RoomManager.__init__


def _no_window(self: RoomManager, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    self.flush_delay = 0.0


RoomManager.__init__ = _no_window

if __name__ == "__main__":
    main()
