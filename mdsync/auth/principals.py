"""Who is behind a session or a personal access token, kept in memory for a second.

Every request signed with an access JWT needs its session's row and its user's (revoked?
disabled? name, email, admin?), every request with a personal access token that token's row and
its user's. Reading them was the largest part of a request's cost left (bench/README.md, issue
19), so `AuthService.principal_from_token` keeps what it read in a `Principals` cache, by session
id or token hash, for `TTL_SECONDS`:

- every change this process makes to those rows empties every cache of the process when it
  commits, before the caller that made it hears back: the store functions that change a user,
  end a session or delete a token call `changed(tx)` (sign-out, a revoked session, a deleted
  token, a password change or reset, a profile edit, admin rights, disabling, deleting);
- revocations other processes write (the admin CLI, another node) empty it when the revocations
  watcher hands them to the `sessions_revoked` hook;
- anything else another process changes (a profile edit, admin rights, a `disabled_at` set with
  plain SQL) is seen within `TTL_SECONDS`: an older entry is read again.

Expiry is still checked at every use, against the cached expiry. Entries are kept in the order
they were read, which with one TTL is the order they expire in: when the cache is full the oldest
goes (`SIZE`).
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from mdsync.db import Tx

TTL_SECONDS = 1.0   # a change made outside this process's own paths is seen within this
SIZE = 10_000       # entries at most (sessions and tokens in use within a second)

# the caches of this process (one per app); `changed` empties them all
_caches: weakref.WeakSet[Principals] = weakref.WeakSet()


class Principals:
    """Cached entries by key; `get` answers None for a missing or stale one. A reader notes
    `generation` before it reads the database and passes it to `put`: a read that overlapped a
    change is not kept."""

    def __init__(self, ttl: float = TTL_SECONDS, size: int = SIZE):
        self.ttl = ttl
        self.size = size
        self.generation = 0
        self._entries: dict[str, list] = {}   # key -> [deadline (monotonic), *value]
        _caches.add(self)

    def get(self, key: str) -> list | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] <= time.monotonic():
            self._entries.pop(key, None)
            return None
        return entry

    def put(self, key: str, generation: int, *value: Any) -> list:
        entry = [time.monotonic() + self.ttl, *value]
        if generation != self.generation:
            return entry   # something changed while it was read: use it once, keep nothing
        entries = self._entries
        if len(entries) >= self.size:
            entries.pop(next(iter(entries)), None)
        entries[key] = entry
        if generation != self.generation:   # emptied from another thread meanwhile
            entries.pop(key, None)
        return entry

    def clear(self, *_: Any) -> None:
        """Forget everything (also a `sessions_revoked` hook: it takes and ignores its arguments)."""
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _clear_all() -> None:
    for cache in list(_caches):
        cache.clear()


def changed(tx: Tx) -> None:
    """A user, session or personal access token row changes in `tx`: every cache of this process
    is emptied when it commits (the writer runs this on the event loop before the job's caller
    resumes; the CLI's offline jobs in their own thread)."""
    tx.after_commit(_clear_all)
