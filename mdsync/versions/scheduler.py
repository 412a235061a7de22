"""When automatic versions are taken, and the periodic prune.

`Bursts` follows the rooms' update stream (the `room_update` hook: WebSocket, REST and
HTTP-Yjs writes all pass through a room with the writer's user id): a burst starts with the
first authenticated update after a document's previous version and collects its authors.
`Scheduler.run` wakes a few times per idle gap and takes an automatic version of every burst
that has been quiet for `idle_seconds`, or has gone on for `max_interval_seconds` (continuous
editing still gets a version that often). The listener does O(1) work: it runs on every
keystroke of every document.

A room may unload (grace period after its last client) before its burst is due: its close hook
keeps the final state in the burst, so the version is still taken at the idle gap without
loading the room again. At shutdown the close hook takes the pending versions at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mdsync import clock

if TYPE_CHECKING:
    from mdsync.collab.room import Room
    from mdsync.versions.service import Versions

log = logging.getLogger("mdsync.versions")


@dataclass
class Burst:
    first: float                                            # clock.timestamp() of its first update
    last: float                                             # ... and of its latest
    authors: dict[str, None] = field(default_factory=dict)  # user ids in order of first edit
    stash: tuple[str, bytes] | None = None                  # (markdown, state) kept when the room closed


class Bursts:
    def __init__(self):
        self.open: dict[str, Burst] = {}

    def on_update(self, room: Room, update: bytes, user_id: str | None) -> None:
        """`room_update` hook. Server-made updates (the markdown seed of a fresh
        document) do not start a burst: they change nobody's text."""
        burst = self.open.get(room.document_id)
        now = clock.timestamp()
        if burst is None:
            if user_id is None:
                return
            burst = self.open[room.document_id] = Burst(now, now)
        burst.last = now
        burst.stash = None  # the live room is the truth again
        if user_id is not None and user_id not in burst.authors:
            burst.authors[user_id] = None

    def take(self, document_id: str) -> Burst | None:
        """End the document's burst (a version is being taken): its authors go into that version."""
        return self.open.pop(document_id, None)

    def give_back(self, document_id: str, authors: list[str]) -> None:
        """Reopen a burst taken by a version that was then withdrawn."""
        if not authors:
            return
        now = clock.timestamp()
        burst = self.open.setdefault(document_id, Burst(now, now))
        for user_id in authors:
            burst.authors.setdefault(user_id, None)

    def reopen(self, document_id: str, taken: Burst) -> None:
        """Put back a burst taken by a version that could not be recorded now (several nodes:
        another node was recording one): due again at the next look, merged with any burst
        begun since."""
        current = self.open.get(document_id)
        if current is None:
            self.open[document_id] = Burst(taken.first, taken.last, dict(taken.authors))
            return
        current.first = min(current.first, taken.first)
        current.authors = {**taken.authors, **current.authors}

    def due(self, now: float, idle: float, max_interval: float) -> list[str]:
        return [doc for doc, b in self.open.items() if now - b.last >= idle or now - b.first >= max_interval]


class Scheduler:
    def __init__(self, versions: Versions, idle_seconds: float, max_interval_seconds: float,
                 prune_interval_seconds: float):
        self.versions = versions
        self.idle = idle_seconds
        self.max_interval = max_interval_seconds
        self.prune_interval = prune_interval_seconds
        # wake often enough that a version lands within a quarter of the idle gap after it
        self.tick = max(0.05, min(idle_seconds / 4, max_interval_seconds / 4, 5.0))

    async def on_room_close(self, room: Room) -> None:
        """`room_close` hook: keep the final state of an unfinished burst (or, at
        shutdown, take its version now: the process is about to lose it)."""
        burst = self.versions.bursts.open.get(room.document_id)
        if burst is None:
            return
        if room.manager.shutting_down:
            await self.versions.record_auto(room.document_id, room)
        else:
            burst.stash = await self.versions.markdown_and_state(room)

    async def run_auto(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = clock.timestamp()
            for document_id in self.versions.bursts.due(now, self.idle, self.max_interval):
                burst = self.versions.bursts.open.get(document_id)
                continuing = burst is not None and now - burst.last < self.idle
                try:
                    await self.versions.record_auto(document_id, continuing=continuing)
                except Exception:
                    log.exception("automatic version of %s failed", document_id)
                    self.versions.bursts.take(document_id)  # do not retry a failing one every tick

    async def run_prune(self) -> None:
        while True:
            await asyncio.sleep(self.prune_interval)
            try:
                await self.versions.prune()
            except Exception:
                log.exception("pruning versions failed")
