"""A room: one open document, its live `Doc`, the sockets editing it, their awareness, and the
update log it feeds.

The relay: each incoming update is applied once to the room's Doc, then the sender's own message
bytes (a sync step 2 re-typed as an update) are framed once and written to every other peer's
transport. Nothing is re-encoded per peer and no per-peer task or queue is involved (see
docs/architecture.md "Fan-out speed"). Every accepted update is appended to `doc_updates`
through the database writer: the manager collects the pending updates of every room for
`flush_delay` and hands them over as one job (one commit for 500 busy documents, not 500); the
log is compacted into a snapshot past a threshold.

With several nodes (mdsync/collab/replication.py) the same room also takes in the updates other
nodes committed (`apply_remote`, `apply_stored`): applied to the Doc and sent to this node's
sockets, never logged again. `seq` then only numbers this node's own rows until they commit
(the database gives them their real seqs) and counts every change; `known` is the highest seq up
to which the Doc holds every committed row, and the snapshot a compaction writes is at `known`.

Everything here runs on the event loop without awaiting (except `close`), so a room's state is
never seen half-changed and a cancelled socket handler cannot leave it inconsistent.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pycrdt import Doc, Text, merge_updates

from mdsync.collab import protocol as p
from mdsync.collab import store, updates
from mdsync.collab.protocol import ProtocolError
from mdsync.db import IntegrityError
from mdsync.hooks import call_each

if TYPE_CHECKING:
    from mdsync.collab.connection import Connection
    from mdsync.collab.rooms import RoomManager

log = logging.getLogger("mdsync.collab")

TEXT_NAME = "markdown"
# The Yjs client id of the deterministic markdown seed: every server seeding the same markdown
# produces byte-identical CRDT state, so two seeds of one document merge instead of duplicating.
# The sync client recognises a document it created by this seed (syncclient/creates.py).
SEED_CLIENT_ID = 0x6D64_7379  # "mdsy"


class DocumentTooLarge(Exception):
    """Applying this update would grow the document past limits.max_document_bytes."""


class Room:
    def __init__(self, manager: RoomManager, document_id: str, doc: Doc, *, seq: int,
                 snapshot_bytes: int, log_updates: list[bytes], content_model: str = "text"):
        self.manager = manager
        self.document_id = document_id
        self.doc = doc
        self.content_model = content_model   # the document's (read with its state; it never changes)
        self.conns: set[Connection] = set()
        # client id -> (clock, JSON state); "null" states are removed
        self.awareness: dict[int, tuple[int, str]] = {}
        self.holds = 0
        self.closing = False
        self._closed: asyncio.Event | None = None  # see `closed`
        self.grace_timer: asyncio.TimerHandle | None = None
        # persistence
        self.seq = seq                      # last seq handed out (persisted or pending)
        # several nodes: every committed row up to `known` is in the Doc; `_ahead` holds the rows
        # seen past a gap (seq -> another node's update, waiting; None: this node's, in the Doc)
        self.known = seq
        self._ahead: dict[int, bytes | None] | None = None
        self._waiting: list[bytes] | None = None   # other nodes' rows the Doc has not integrated
        self.snapshot_bytes = snapshot_bytes
        self._log: list[bytes] = list(log_updates)   # updates since the snapshot (in the DB or pending)
        self._log_bytes = sum(len(u) for u in log_updates)
        # per client, the highest clock a client's update in `_log` reaches (`Covered.ends`): when
        # the Doc's state vector is past all of them, every logged update is integrated and a
        # compaction need not read them again (None: not known, they are read)
        self._log_ends: dict[int, int] | None = None if log_updates else {}
        self._pending: list[tuple[int, bytes, str | None]] = []
        self.flush_queued = False           # in the manager's next group flush
        self._inflight: set[asyncio.Future] = set()
        # first seq -> last seq of log rows handed to the writer and not committed yet (in flight,
        # waiting for a retry, or lost until a snapshot holds them): what `saved_seq` is below
        self._unsaved: dict[int, int] = {}
        self._when_saved: collections.deque | None = None   # (seq, callback), made on first use
        # the room's loop, for callers on the hot path: in Python 3.11 each
        # asyncio.get_running_loop() costs a getpid() system call (its fork check)
        self.loop = asyncio.get_running_loop()
        # (frame, socket not to send it to) sent at the end of this loop turn (_fanout)
        self.outbox: list[tuple[bytes, Connection | None]] | None = None
        self.evicted = False  # the document was purged (evict): nothing is written any more
        # (seq, clocks, delete set as per-client sorted starts and ends) for `has_all`
        self._known: tuple[int, dict[int, int], dict[int, tuple[list[int], list[int]]]] | None = None

    @property
    def closed(self) -> asyncio.Event:
        """Set once the room has unloaded. Made on first use: only a joiner arriving during an
        unload waits for it, and an Event per idle room costs ~0.6 KB for nothing."""
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    # ---------------------------------------------------------------------------------------
    # Public API for other features (REST content, Yjs over HTTP, presence, versions)
    # ---------------------------------------------------------------------------------------
    def text(self) -> str:
        """The live markdown (content model `text`)."""
        return str(self.doc.get(TEXT_NAME, type=Text))

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def encode_state(self, state_vector: bytes | None = None) -> bytes:
        """The update a peer with `state_vector` lacks (the whole document without one).
        Raises ValueError for a state vector that does not decode."""
        return self.doc.get_update(state_vector) if state_vector else self.doc.get_update()

    def has_all(self, covered: updates.Covered) -> bool:
        """Whether the document has every struct and every deletion an update carries (what
        `updates.check` returned for it), without encoding the document: its clocks and delete
        set are read once per change (`seq`), however many updates are compared."""
        if self._known is None or self._known[0] != self.seq:
            own = updates.check(self.doc.get_update(self.doc.get_state()))  # no structs: the delete set
            deleted = {}
            for client, ranges in own.deleted.items():
                merged: list[list[int]] = []
                for start, end in sorted(ranges):
                    if merged and start <= merged[-1][1]:
                        merged[-1][1] = max(merged[-1][1], end)
                    else:
                        merged.append([start, end])
                deleted[client] = ([m[0] for m in merged], [m[1] for m in merged])
            self._known = (self.seq, decode_state_vector(self.doc.get_state()), deleted)
        _, clocks, deleted = self._known
        if any(clocks.get(client, 0) < end for client, end in covered.ends.items()):
            return False
        for client, ranges in covered.deleted.items():
            starts, ends = deleted.get(client, ((), ()))
            for start, end in ranges:
                at = bisect.bisect_right(starts, start) - 1
                if at < 0 or ends[at] < end:
                    return False
        return True

    def apply_update(self, update: bytes, user_id: str | None = None) -> None:
        """Apply a Yjs update as `user_id` (None: the server): broadcast to every socket and append
        to the log. Raises ProtocolError (a ValueError) when refused by the gate
        (`updates.apply`), DocumentTooLarge past the limit."""
        if update == p.EMPTY_UPDATE:
            return
        self._accept(update, user_id, None, None)

    def edit(self, fn: Callable[[Text], Any], user_id: str | None = None) -> bytes | None:
        """Run `fn(text)` on the live Y.Text('markdown') in one transaction (e.g. a minimal text
        diff) and broadcast + persist the resulting update, which is returned (None: no change).
        If `fn` raises, what it changed before raising is still broadcast and persisted (a Yjs
        transaction cannot roll back), then the exception propagates."""
        captured: list[bytes] = []
        subscription = self.doc.observe(lambda event: captured.append(event.update))
        try:
            with self.doc.transaction(origin="mdsync"):
                fn(self.doc.get(TEXT_NAME, type=Text))
        finally:
            self.doc.unobserve(subscription)
            update = None
            if captured:
                update = captured[0] if len(captured) == 1 else merge_updates(*captured)
                if update != p.EMPTY_UPDATE:
                    self._after_apply(update, user_id, None, None)
        return update if update != p.EMPTY_UPDATE else None

    def users(self) -> list[dict]:
        """Who is connected, from their tokens (never from awareness claims): one entry per user."""
        by_user: dict[str, dict] = {}
        for conn in self.conns:
            key = conn.user_id or f"share:{conn.share_link_id}"
            entry = by_user.get(key)
            if entry is None:
                entry = by_user[key] = {"user_id": conn.user_id, "share_link_id": conn.share_link_id,
                                        "name": conn.name, "role": conn.role,
                                        "can_write": not conn.read_only, "connections": 0,
                                        "connected_at": conn.connected_at}
            entry["connections"] += 1
            entry["can_write"] = entry["can_write"] or not conn.read_only
            entry["connected_at"] = min(entry["connected_at"], conn.connected_at)
        return list(by_user.values())

    @property
    def size(self) -> int:
        """Approximate bytes of CRDT state (snapshot + log); exact right after a compaction."""
        return self.snapshot_bytes + self._log_bytes

    # ---------------------------------------------------------------------------------------
    # Sockets
    # ---------------------------------------------------------------------------------------
    def join(self, conn: Connection) -> None:
        """Add a socket: from now on it receives every update (its step 2 covers what came before)."""
        if self.outbox:
            self.flush_outbox()  # updates held for this turn went to the peers before this one
        self.conns.add(conn)
        if not conn.read_only:
            # ask for what the client has that we lack (offline edits)
            conn.send(p.ws_frame(p.sync_step1(self.doc.get_state())))
        if self.awareness:
            # joiners see who is here at once instead of after the peers' next renewal (~15 s)
            conn.send(p.ws_frame(self._awareness_states()))

    def leave(self, conn: Connection) -> None:
        """Remove a socket and broadcast the removal of its awareness states."""
        self.conns.discard(conn)
        gone = []
        for client_id in conn.awareness_ids:
            current = self.awareness.pop(client_id, None)
            if current is not None:
                gone.append((client_id, current[0] + 1, p.NULL_STATE))
        conn.awareness_ids.clear()
        if gone:
            message = p.awareness_message(gone)
            if self.conns:
                self._fanout(message, None)
            relays = self.manager.hooks.room_awareness
            if relays:
                call_each(relays, self, message)

    def receive(self, conn: Connection, frame: bytes) -> None:
        """Handle one binary frame from `conn`. Raises ProtocolError (garbage: close that socket)
        or DocumentTooLarge."""
        if not frame:
            raise ProtocolError("empty frame")
        kind = frame[0]
        if kind == p.MSG_SYNC:
            inner, payload, end = p.sync_payload(frame)
            if inner == p.SYNC_STEP1:
                try:
                    reply = self.doc.get_update(payload)
                except ValueError:
                    raise ProtocolError("undecodable state vector") from None
                conn.send(p.ws_frame(p.sync_step2(reply)))
                return
            if payload == p.EMPTY_UPDATE:
                return
            if conn.read_only:
                self.manager.stats.readonly_dropped += 1
                return
            # forward the sender's bytes: an update message as is, a step 2 re-typed as update
            message = frame if (inner == p.SYNC_UPDATE and end == len(frame)) else None
            self._accept(payload, conn.user_id, conn, message)
        elif kind == p.MSG_AWARENESS:
            self._receive_awareness(conn, frame)
        elif kind == p.MSG_QUERY_AWARENESS:
            conn.send(p.ws_frame(self._awareness_states()))
        elif kind == p.MSG_AUTH:
            return  # server → client only; ignore
        else:
            raise ProtocolError(f"unknown message type {kind}")

    def _receive_awareness(self, conn: Connection, frame: bytes) -> None:
        entries = p.parse_awareness(frame)
        # checked before anything is stored: the room keeps each state and sends it to every peer
        # and every joiner, so one huge state would be multiplied across the whole room
        if any(len(state) > MAX_AWARENESS_STATE_CHARS for _, _, state in entries):
            raise ProtocolError(f"an awareness state is longer than {MAX_AWARENESS_STATE_CHARS} characters")
        self._keep_awareness(entries, conn)
        # to everyone, the sender included: y-websocket clients reconnect after 30 s without any
        # message, and the echo of their own awareness renewal is what keeps a lone client alive
        self._fanout(frame, None)
        relays = self.manager.hooks.room_awareness  # other nodes (empty on one node)
        if relays:
            call_each(relays, self, frame)

    def _keep_awareness(self, entries: list[tuple[int, int, str]], conn: Connection | None) -> None:
        """Keep awareness states by the Yjs clock rule: a newer state replaces the one kept, a
        "null" state at least as new removes it. `conn`: the socket here that sent them (its
        client ids are tracked, for its leave, and capped); None for another node's."""
        states = self.awareness
        for client_id, clock, state in entries:
            current = states.get(client_id)
            if state == p.NULL_STATE:
                if current is not None and clock >= current[0]:
                    del states[client_id]
                if conn is not None:
                    conn.awareness_ids.discard(client_id)
            elif current is None or clock > current[0]:
                if conn is not None:
                    if client_id not in conn.awareness_ids and len(conn.awareness_ids) >= MAX_AWARENESS_IDS:
                        raise ProtocolError("too many awareness client ids on one socket")
                    conn.awareness_ids.add(client_id)
                states[client_id] = (clock, state)

    def _awareness_states(self) -> bytes:
        return p.awareness_message([(cid, clock, state) for cid, (clock, state) in self.awareness.items()])

    def receive_remote_awareness(self, message: bytes) -> list[tuple[int, int, str]]:
        """An awareness message of another node's sockets (mdsync/cluster/awareness.py): its states
        are kept by the same clock rule, for joiners here, and it goes to every socket here. Its
        entries are returned; ProtocolError when it does not parse."""
        entries = p.parse_awareness(message)
        self._keep_awareness(entries, None)
        if self.conns:
            self._fanout(message, None)
        return entries

    def local_awareness(self) -> bytes | None:
        """An awareness message of the states this process's sockets set (None: none), for a node
        that just opened the document."""
        entries = [(cid, *self.awareness[cid]) for conn in self.conns for cid in conn.awareness_ids
                   if cid in self.awareness]
        return p.awareness_message(entries) if entries else None

    # ---------------------------------------------------------------------------------------
    # The hot path
    # ---------------------------------------------------------------------------------------
    def _accept(self, update: bytes, user_id: str | None, sender: Connection | None, message: bytes | None) -> None:
        limit = self.manager.max_document_bytes
        if self.snapshot_bytes + self._log_bytes + len(update) > limit:
            self._compact()  # the estimate may be stale: measure before refusing
            if self.snapshot_bytes + len(update) > limit:
                raise DocumentTooLarge(f"the document would exceed {limit} bytes")
        try:
            covered = updates.apply(self.doc, update)  # the gate: checked whole before pycrdt sees it
        except updates.NotApplied as exc:
            integrated = self._integrated_part(exc.covered)
            if integrated is not None:
                # pycrdt refused it halfway: what it integrated goes to every peer and the log,
                # so the live Doc never holds state that was not persisted
                self._after_apply(integrated, user_id, None, None)
            raise
        self._after_apply(update, user_id, sender, message, covered.ends)

    def _integrated_part(self, covered: updates.Covered) -> bytes | None:
        """After pycrdt refused an update carrying `covered`: an update holding whatever of it
        the Doc integrated (None: nothing). Whatever it integrated are structs of its clients
        from its first clocks on, so the Doc's structs from those clocks on hold them (and maybe
        some the Doc had already: sending those again is harmless). Worked out only on this rare
        path, so that accepting an update never reads the state vector beforehand."""
        have = decode_state_vector(self.doc.get_state())
        since = {client: min(clock, covered.starts[client]) if client in covered.starts else clock
                 for client, clock in have.items()}
        if since == have:
            return None
        return self.doc.get_update(encode_state_vector(since))

    def _after_apply(self, update: bytes, user_id: str | None, sender: Connection | None,
                     message: bytes | None, ends: dict[int, int] | None = None) -> None:
        """Send, log and announce an update the Doc holds. `ends`: its `Covered.ends` when a
        client sent it; None when the Doc made it (integrated by construction)."""
        if self.evicted:
            return  # the document is gone: nobody is to hear of it, nothing is to be written
        self._fanout(message or p.update_message(update), sender)
        stats = self.manager.stats
        stats.updates += 1
        stats.update_bytes += len(update)
        # log
        self.seq += 1
        self._pending.append((self.seq, update, user_id))
        self._log.append(update)
        self._log_bytes += len(update)
        log_ends = self._log_ends
        if ends and log_ends is not None:
            for client, end in ends.items():
                if end > log_ends.get(client, 0):
                    log_ends[client] = end
        if not self.flush_queued:
            # group commit window: one writer job per window for every room, not one per update
            self.flush_queued = True
            self.manager.queue_flush(self)
        for listener in self.manager.hooks.room_update:
            try:
                listener(self, update, user_id)
            except Exception:
                log.exception("update listener failed")

    def _fanout(self, message: bytes, exclude: Connection | None) -> None:
        """Send `message` to every socket but `exclude` at the end of this loop turn: the frames
        of one turn (several clients' updates read in one poll) reach each peer in one write,
        one system call instead of one per frame. A socket's own `send` writes what is held
        here first, so no frame overtakes another."""
        outbox = self.outbox
        if outbox is None:
            outbox = self.outbox = []
            self.loop.call_soon(self.flush_outbox)
        outbox.append((p.ws_frame(message), exclude))

    def flush_outbox(self) -> None:
        """Write what `_fanout` holds: per peer, one write of the frames meant for it."""
        outbox = self.outbox
        self.outbox = None
        if not outbox:
            return
        conns = self.conns
        if len(outbox) == 1:
            framed, exclude = outbox[0]
            frames = [framed]
            whole = framed
            excluded = {exclude}
        else:
            frames = [framed for framed, _ in outbox]
            whole = b"".join(frames)
            excluded = {exclude for _, exclude in outbox}
        excluded.discard(None)
        sent = len(frames) * len(conns)
        for conn in conns:
            if conn in excluded:
                mine = [framed for framed, exclude in outbox if exclude is not conn]
                sent -= len(frames) - len(mine)
                if not mine:
                    continue
                if conn.joins:
                    conn.write(b"".join(mine))
                else:
                    for framed in mine:
                        conn.send(framed)
            elif conn.joins:
                conn.write(whole)
            else:
                for framed in frames:
                    conn.send(framed)
        self.manager.stats.deliveries += sent

    # ---------------------------------------------------------------------------------------
    # Persistence
    # ---------------------------------------------------------------------------------------
    def saved_seq(self) -> int:
        """Every update up to this seq is committed (in the log or a snapshot)."""
        low = min(self._unsaved) if self._unsaved else None
        if self._pending and (low is None or self._pending[0][0] < low):
            low = self._pending[0][0]
        return self.seq if low is None else low - 1

    def when_saved(self, callback: Callable[[], Any]) -> None:
        """Call `callback` (on the loop) once every update accepted so far is committed: at once
        when it already is. Callbacks run in the order they were registered. An update whose write
        fails for good is never reported saved until a snapshot holding it commits."""
        waiting = self._when_saved
        if not waiting and self.saved_seq() >= self.seq:
            callback()
            return
        if waiting is None:
            waiting = self._when_saved = collections.deque()
        waiting.append((self.seq, callback))
        if self.flush_queued:
            self.manager.hurry()

    def _saved(self) -> None:
        waiting = self._when_saved
        if not waiting:
            return
        saved = self.saved_seq()
        while waiting and waiting[0][0] <= saved:
            _, callback = waiting.popleft()
            try:
                callback()
            except Exception:
                log.exception("a saved-callback failed")

    def evict(self) -> None:
        """The document was purged: forget everything, write nothing from now on (whoever still
        holds this Room edits a Doc that goes nowhere), let waiters for the unload go on."""
        self.evicted = True
        self.closing = True
        if self.grace_timer is not None:
            self.grace_timer.cancel()
        self.grace_timer = None
        self._pending = []
        self._log = []
        self._log_bytes = 0
        self._log_ends = {}
        self.closed.set()

    def flush(self) -> None:
        """Hand the pending updates to the database writer now, as a job of their own."""
        rows = self.take_pending()
        if rows:
            self._track(self.manager.db.submit(self.manager.append, self.document_id, rows), rows)
        self.compact_if_due()

    def take_pending(self) -> list[tuple[int, bytes, str | None]]:
        """The pending log rows, handed over (the caller writes them and reports through
        `written`)."""
        if self.evicted or not self._pending:
            return []
        rows, self._pending = self._pending, []
        return rows

    def compact_if_due(self) -> None:
        if (not self.evicted and (len(self._log) >= self.manager.snapshot_after_updates
                                  or self._log_bytes > max(self.manager.snapshot_after_bytes, self.snapshot_bytes))):
            self._compact()

    def written(self, future: asyncio.Future, rows: list) -> None:
        """`rows` (from `take_pending`) are in `future`, a write job shared with other rooms
        (RoomManager.flush_rooms), which calls `settled` once it is done (one callback for the
        job, not one per room)."""
        self._inflight.add(future)
        self._unsaved[rows[0][0]] = rows[-1][0]

    def settled(self, fut: asyncio.Future, rows: list) -> None:
        """The shared job holding `rows` is done: saved when it committed; when it failed they
        are written again as a job of their own, which fails or succeeds for this room alone."""
        self._inflight.discard(fut)
        if fut.cancelled():
            return
        if fut.exception() is None:
            self._unsaved.pop(rows[0][0], None)
            if self.manager.replication is not None:
                self._logged(rows, fut.result())
            self._saved()
        elif not self.evicted:
            self._retry(rows)

    def _track(self, future: asyncio.Future, rows: list | None, covers: int | None = None) -> None:
        """Follow a write: `rows` appended, or a snapshot that `covers` every update up to a seq."""
        self._inflight.add(future)
        started = time.perf_counter()
        if rows:
            self._unsaved[rows[0][0]] = rows[-1][0]

        def done(fut: asyncio.Future) -> None:
            self._inflight.discard(fut)
            stats = self.manager.stats
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is None:
                stats.flushes += 1
                stats.flushed_updates += len(rows) if rows else 0
                stats.flush_seconds_total += time.perf_counter() - started
                if rows:
                    self._unsaved.pop(rows[0][0], None)
                    if self.manager.replication is not None:
                        self._logged(rows, fut.result())
                if covers is not None:
                    for first in [f for f in self._unsaved if f <= covers]:
                        del self._unsaved[first]
                self._saved()
                return
            stats.flush_errors += 1
            if rows and not isinstance(exc, IntegrityError):
                log.error("could not append %d updates of %s (%s): retrying in 1 s", len(rows), self.document_id, exc)
                self.loop.call_later(1.0, self._retry, rows)
            elif rows:
                # these rows will never be in the log: the live Doc holds them, so a snapshot of it
                # does (their updates stay unsaved, and unacknowledged, until it commits)
                log.error("could not append %d updates of %s (%s): writing a snapshot instead",
                          len(rows), self.document_id, exc)
                if not self.closing:
                    self._compact()
            else:
                log.error("write for document %s failed: %s", self.document_id, exc)

        future.add_done_callback(done)

    def _retry(self, rows: list) -> None:
        self._track(self.manager.db.submit(self.manager.append, self.document_id, rows), rows)

    def _compact(self) -> None:
        """Fold the log into a snapshot: the live Doc's full state, which reflects exactly the
        updates up to self.seq (everything runs on the loop). Updates the Doc could not integrate
        yet (missing dependencies) are not in `get_update()`, so they are carried over as log rows."""
        if self.evicted:
            return
        if self._pending:
            rows, self._pending = self._pending, []
            self._track(self.manager.db.submit(self.manager.append, self.document_id, rows), rows)
        if not self._log:
            return
        state = self.doc.get_update()
        carried = self._not_integrated()
        if self.manager.replication is None:
            seq = self.seq
            self._track(self.manager.db.submit(store.compact, self.document_id, seq, state), None, covers=seq)
        else:
            # several nodes: the snapshot is at `known` (it holds more: harmless, rows are
            # idempotent), under the document's advisory lock, and covers no row of this node's
            # that is still on its way (another node's later snapshot need not hold it: its row must)
            self._track(self.manager.db.submit(store.compact_locked, self.document_id, self.known, state), None)
        self.snapshot_bytes = len(state)
        self._log = []
        self._log_bytes = 0
        self._log_ends = None if carried else {}
        self.manager.stats.compactions += 1
        for update in carried:
            self.seq += 1
            self._pending.append((self.seq, update, None))
            self._log.append(update)
            self._log_bytes += len(update)
        if carried:
            rows, self._pending = self._pending, []
            self._track(self.manager.db.submit(self.manager.append, self.document_id, rows), rows)

    # ---------------------------------------------------------------------------------------
    # Several nodes: rows committed by the others, and the seqs of this node's own
    # ---------------------------------------------------------------------------------------
    def crdt_seq(self) -> int:
        """The stored seq the live Doc is exactly once what is pending here commits (projection
        provenance): `seq` on one node; with several, `known` when nothing of this node's is on
        its way and nothing past a gap is held, else -1 (matches no stored seq)."""
        if self.manager.replication is None:
            return self.seq
        if self._pending or self._unsaved or self._ahead:
            return -1
        return self.known

    def apply_remote(self, seq: int, update: bytes) -> None:
        """A row another node committed. The next one (`known` + 1) is applied to the Doc and
        sent to every socket here, not logged again, not passed to the room_update hook; one past
        a gap waits for the rows before it (its dependencies may be among them); one the Doc
        holds already is skipped."""
        if self.evicted or seq <= self.known:
            return
        if seq > self.known + 1:
            if self._ahead is None:
                self._ahead = {}
            if seq not in self._ahead:
                self._ahead[seq] = update
                self.manager.replication.gap_seen(self)
            return
        self._apply_row(update)
        self.known = seq
        self._advance()

    def _apply_row(self, update: bytes) -> None:
        try:
            self.doc.apply_update(update)
        except Exception as exc:  # another node accepted it: nothing here can do better
            log.error("could not apply an update of %s from another node: %s", self.document_id, exc)
            return
        self._fanout(p.update_message(update), None)
        self._log.append(update)   # counts towards compaction; carried over if not integrated
        self._log_bytes += len(update)
        self._log_ends = None
        self.seq += 1  # a change: REST writes compare seq to see whether the room moved on
        self.manager.stats.remote_updates += 1
        # rows come in seq order, but a retried append can log a row after one that depends on
        # it, and pycrdt may then never integrate the earlier one (docs/architecture.md "Facts
        # the code relies on"): such a row is applied again after the next, until the Doc holds it
        if not missing_from(self.doc, [update]):
            if self._waiting:
                self._waiting = missing_from(self.doc, self._waiting, reapply=True) or None
        elif self._waiting is None:
            self._waiting = [update]
        elif len(self._waiting) < 1000:   # beyond: in `_log` still, carried over by a compaction
            self._waiting.append(update)

    def apply_stored(self, found: store.Since) -> None:
        """What `store.since(known)` read: a snapshot past `known` (compacted by another node),
        then the rows after it."""
        if self.evicted:
            return
        if found.snapshot is not None and found.snapshot_seq > self.known:
            before = self.doc.get_state()
            try:
                self.doc.apply_update(found.snapshot)
            except Exception as exc:
                log.error("could not apply the snapshot of %s: %s", self.document_id, exc)
            else:
                news = self.doc.get_update(before)
                if news != p.EMPTY_UPDATE:
                    self._fanout(p.update_message(news), None)
                if self._waiting:
                    self._waiting = missing_from(self.doc, self._waiting, reapply=True) or None
            self.seq += 1
            self.known = found.snapshot_seq
            self._advance()
        if found.rows and found.rows[0][0] > self.known + 1:
            # committed seqs have no holes (each is taken in its committing transaction): a hole
            # here is a bug, and waiting for a row that will never come would stop the room
            log.error("the log of %s has no rows %d to %d: going on after them", self.document_id,
                      self.known + 1, found.rows[0][0] - 1)
            self.known = found.rows[0][0] - 1
            self._advance()
        for seq, update in found.rows:
            self.apply_remote(seq, update)

    def gap(self) -> bool:
        """Whether rows past `known` are held while one before them is missing."""
        return bool(self._ahead)

    def missing_up_to(self, head: int) -> bool:
        """Whether some committed row up to `head` is not in the Doc."""
        if head <= self.known:
            return False
        held = sum(1 for s in self._ahead if s <= head) if self._ahead else 0
        return held < head - self.known

    def _logged(self, rows: list, first: int | dict[str, int] | None) -> None:
        """This node's `rows` committed with seqs from `first` on (a dict: a shared job's)."""
        if isinstance(first, dict):
            first = first.get(self.document_id)
        if first is None:  # a job of one node's (a test's stand-in): nothing to number
            log.error("rows of %s committed without their seqs", self.document_id)
            return
        if first == self.known + 1:
            self.known = first + len(rows) - 1
            self._advance()
        else:
            if self._ahead is None:
                self._ahead = {}
            for seq in range(max(first, self.known + 1), first + len(rows)):
                self._ahead[seq] = None   # in the Doc already
            if self._ahead:
                self.manager.replication.gap_seen(self)
        self.manager.replication.publish(
            self.document_id, [(first + i, update) for i, (_, update, _) in enumerate(rows)])

    def _advance(self) -> None:
        """Past `known`: the rows held beyond it that now follow on (applied when another
        node's, in the Doc already when this node's)."""
        ahead = self._ahead
        if not ahead:
            return
        while self.known + 1 in ahead:
            self.known += 1
            update = ahead.pop(self.known)
            if update is not None:
                self._apply_row(update)
        for seq in [s for s in ahead if s <= self.known]:
            del ahead[seq]

    def _not_integrated(self) -> list[bytes]:
        ends = self._log_ends
        if ends is not None:
            have = decode_state_vector(self.doc.get_state())
            if all(have.get(client, 0) >= end for client, end in ends.items()):
                return []  # every struct logged is below the Doc's state vector: all integrated
        # one that cannot be read is kept: keeping it costs a few bytes, losing it an edit
        return missing_from(self.doc, self._log, unreadable_missing=True)

    async def close(self) -> None:
        """Flush and compact, then wait until every write of this room has committed."""
        self._compact()
        if self._pending:
            self.flush()
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every update accepted so far is committed (pending ones are flushed now)."""
        if self._pending:
            self.flush()
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)


MAX_AWARENESS_IDS = 16
# a user's name, colour and cursor are a few hundred characters; this leaves ample room for more
MAX_AWARENESS_STATE_CHARS = 64 * 1024


def decode_state_vector(sv: bytes) -> dict[int, int]:
    count, pos = p.read_varuint(sv, 0)
    out = {}
    for _ in range(count):
        client, pos = p.read_varuint(sv, pos)
        clock, pos = p.read_varuint(sv, pos)
        out[client] = clock
    return out


def missing_from(doc: Doc, rows: list[bytes], *, reapply: bool = False,
                 unreadable_missing: bool = False) -> list[bytes]:
    """The updates of `rows` whose structs `doc` does not hold (all of them applied to it again
    first with `reapply`: pycrdt integrates an update whose dependencies came after it only when
    it is applied again). One whose structs cannot be read is listed with `unreadable_missing`."""
    if reapply:
        for update in rows:
            try:
                doc.apply_update(update)
            except Exception:  # noqa: S112 - it did apply once; what it lacks stays listed
                continue
    have = decode_state_vector(doc.get_state())
    missing = []
    for update in rows:
        try:
            ends = updates.struct_ends(update)
        except ProtocolError:
            if unreadable_missing:
                missing.append(update)
            continue  # else: cannot tell, applied once as any row
        if any(have.get(client, 0) < end for client, end in ends.items()):
            missing.append(update)
    return missing


def encode_state_vector(clocks: dict[int, int]) -> bytes:
    return p.varuint(len(clocks)) + b"".join(p.varuint(client) + p.varuint(clock) for client, clock in clocks.items())


def seed_update(markdown: str) -> bytes:
    """The CRDT state of a fresh document holding `markdown`: always the same bytes for the same
    text (fixed client id, one insert), so seeding twice merges to one copy."""
    seed = Doc(client_id=SEED_CLIENT_ID)
    text = seed.get(TEXT_NAME, type=Text)
    text += markdown
    return seed.get_update()
