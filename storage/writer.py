"""The write transaction of an ingest batch: rows in, touched records re-merged, commit.

:class:`BatchWriter` holds what the write path caches between batches (ids of event types,
sources and signers; the decoded events of recently merged records) and works on the
store's write connection, which the :class:`~pithnode.storage.store.Store` owns and lends
it under its write lock.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pithnode.protocol.events import Event
from pithnode.protocol.spec import NetworkSpec

from .batch import Batch, Item
from .materialise import (
    carried_ids,
    encode_state,
    in_lists,
    load_events,
    materialise,
    prefix_alias_rows,
    write_states,
)
from .migrate import translate

__all__ = ["RECENT_MAX_EVENTS", "BatchWriter"]

#: Decoded events of recently merged records kept in memory, so re-merging a record that
#: a recent batch touched decodes nothing (a hot record with thousands of events would
#: otherwise be decoded again for every batch). A decoded event takes a few KB, so this
#: keeps the cache to about 15 MB. Records a batch creates are never read back at all.
RECENT_MAX_EVENTS = 4_000

Events = list[tuple[bytes, Event]]
_LOOKUPS = ("event_types", "sources", "signers")
#: Rows per multi-row INSERT (8 columns: well under SQLite's 32766 host parameters).
_ROWS_PER_INSERT = 500


def _insert_rows(conn: sqlite3.Connection, into: str, rows: Sequence[tuple[object, ...]]
                 ) -> None:
    """Insert many rows with multi-row INSERT statements: one statement step (and one
    release of the GIL) per chunk rather than per row, which keeps checking threads from
    slowing the commit down."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ",".join("?" * width) + ")"
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[i:i + _ROWS_PER_INSERT]
        conn.execute(f"INSERT INTO {into} VALUES " + ",".join([one] * len(chunk)),
                     [v for row in chunk for v in row])


class BatchWriter:
    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        #: ids of lookup rows: table -> name (or fingerprint) -> id
        self._ids: dict[str, dict[str | bytes, int]] = {t: {} for t in _LOOKUPS}
        self._recent: OrderedDict[int, Events] = OrderedDict()
        self._recent_events = 0
        #: compresses and hashes served states while the next record is merged
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="store-state-encode")

    def close(self) -> None:
        self._encoder.shutdown(wait=True)

    def reset(self, conn: sqlite3.Connection) -> None:
        """Forget every cache (after a repair, or when opening)."""
        self._ids = {t: {} for t in _LOOKUPS}
        self._recent.clear()
        self._recent_events = 0

    def commit(self, conn: sqlite3.Connection, batch: Batch, new: Sequence[Item]
               ) -> list[set[str]]:
        """Insert ``new``, re-merge the records it touches, commit: all or nothing.

        Returns, per part of the batch, the Pith Numbers of the records it touched.
        """
        touched: list[set[str]] = [set() for _ in batch.parts]
        pending: dict[str, dict[str | bytes, int]] = {t: {} for t in _LOOKUPS}
        merged: dict[int, Events] = {}
        committed = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            sources = [self._id(conn, "sources", "name", s, pending)
                       for _, s, _ in batch.parts]
            records, created = self._record_ids(conn, sorted({it.ev.subject for it in new}))
            first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM objects").fetchone()[0]
            objects: list[tuple[object, ...]] = []
            events: list[tuple[object, ...]] = []
            carried: list[tuple[int, bytes]] = []
            fresh: dict[int, Events] = {}
            for n, it in enumerate(new):
                rowid, ev = first + n, it.ev
                assert it.eid is not None
                record = records[ev.subject]
                objects.append((rowid, it.sha, it.codec, len(it.canonical), it.blob))
                events.append((
                    rowid, it.eid, record,
                    self._id(conn, "event_types", "name", ev.event_type, pending),
                    self._id(conn, "signers", "fingerprint",
                             bytes.fromhex(ev.signer.public_key_fingerprint), pending),
                    it.created_s, sources[it.part], batch.parts[it.part][2]))
                if ev.event_type == "registry_import":
                    carried += [(rowid, c) for c in carried_ids(ev)]
                fresh.setdefault(record, []).append((it.eid, ev))
                touched[it.part].add(ev.subject)
            _insert_rows(conn, "objects (id, sha256, codec, size, data)", objects)
            _insert_rows(conn, "events (id, eid, record, type, signer, created_s, source, "
                         "received_at)", events)
            if carried:
                conn.executemany("INSERT OR IGNORE INTO carried (import, eid) VALUES (?,?)",
                                 carried)
            states = []
            for subject, record in records.items():
                merged[record] = (fresh[record] if record in created
                                  else self._record_events(conn, record, fresh[record]))
                m = materialise(subject, merged[record], self.spec)
                states.append((record, m, self._encoder.submit(encode_state, m.served)))
            write_states(conn, [(r, m, f.result()) for r, m, f in states])
            conn.execute("COMMIT")
            committed = True
        except sqlite3.Error as exc:
            raise translate(exc, "cannot store the batch") from exc
        finally:  # on any failure: nothing of the batch stays, nor in the caches
            if not committed:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._recent.clear()
                self._recent_events = 0
        for table, ids in pending.items():
            self._ids[table].update(ids)
        self._remember(merged)
        return touched

    def _id(self, conn: sqlite3.Connection, table: str, column: str, value: str | bytes,
            pending: dict[str, dict[str | bytes, int]]) -> int:
        """Id of a small lookup row (event type, source, signer), made when new; made ids
        stay in ``pending`` until the transaction commits."""
        got = self._ids[table].get(value) or pending[table].get(value)
        if got is None:
            row = conn.execute(f"SELECT id FROM {table} WHERE {column} = ?",
                               (value,)).fetchone()
            if row is None:
                row = conn.execute(f"INSERT INTO {table} ({column}) VALUES (?) RETURNING id",
                                   (value,)).fetchone()
            got = pending[table][value] = int(row[0])
        return got

    @staticmethod
    def _record_ids(conn: sqlite3.Connection, subjects: Sequence[str]
                    ) -> tuple[dict[str, int], set[int]]:
        """Ids of the records named by ``subjects`` (in their order), making the missing
        ones with their Pith Number aliases; and the set of ids made here."""
        known: dict[str, int] = {}
        for chunk, marks in in_lists(subjects):
            known.update(conn.execute(f"SELECT pith, id FROM records WHERE pith IN ({marks})",
                                      chunk).fetchall())
        created: set[int] = set()
        aliases = []
        for subject in subjects:
            if subject not in known:
                record = int(conn.execute("INSERT INTO records (pith) VALUES (?) RETURNING id",
                                          (subject,)).fetchone()[0])
                known[subject] = record
                created.add(record)
                aliases += prefix_alias_rows(record, subject)
        if aliases:
            conn.executemany("INSERT OR IGNORE INTO aliases (kind, value, record, created_at, "
                             "origin) VALUES (?,?,?,?,?)", aliases)
        return {subject: known[subject] for subject in subjects}, created

    def _record_events(self, conn: sqlite3.Connection, record: int, fresh: Events) -> Events:
        """Every stored event of a record in arrival order: from the recent-records cache
        when it is current (its count matches the table), else decoded from the objects."""
        cached = self._recent.pop(record, None)
        if cached is not None:
            self._recent_events -= len(cached)
            count = conn.execute("SELECT count(*) FROM events WHERE record = ?",
                                 (record,)).fetchone()[0]
            if count == len(cached) + len(fresh):
                return cached + fresh
        return list(load_events(conn, record, dict(fresh)))

    def _remember(self, merged: dict[int, Events]) -> None:
        for record, events in merged.items():
            if len(events) <= RECENT_MAX_EVENTS:
                self._recent[record] = events
                self._recent_events += len(events)
        while self._recent_events > RECENT_MAX_EVENTS and self._recent:
            _, dropped = self._recent.popitem(last=False)
            self._recent_events -= len(dropped)
