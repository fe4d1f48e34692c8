"""The node's store: one SQLite database (WAL mode) behind one synchronous class.

:class:`Store` owns the database file, its write lock and every connection to it. Writes go
through one write connection, in batches: :meth:`Store.ingest` checks a batch of events,
stores the new ones, re-merges the records they touch and commits, all in one durable
transaction, before it returns the outcomes. Reads use separate read-only connections
(WAL lets them run beside a write), from a pool, so any thread may read.

The class is synchronous and knows nothing of trio; ``pithnode.node.store_service`` puts a
writer task and worker threads in front of it. Helpers: ``batch`` (checking a batch),
``writer`` (its transaction), ``materialise`` (states and aliases), ``codec`` (objects),
``importer`` (documents), ``fsck``, ``migrate`` (schema), ``connections`` (lock, readers).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from pithnode.protocol.bundle import build_bundle
from pithnode.protocol.events import Event, SignatureJob
from pithnode.protocol.identifiers import normalise_alias
from pithnode.protocol.keys import SigningKey, verify_digest
from pithnode.protocol.merge import admission_from_import
from pithnode.protocol.spec import NetworkSpec

from .batch import (
    DEFAULT_BATCH_EVENTS,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    Batch,
    Item,
    Part,
    check_item,
    chunked,
    classify,
    make_batch,
    mark_exact_copies,
    results,
    settle_signatures,
    stored_digests,
)
from .codec import CODEC_DEFLATE, CODEC_RAW, CodecError, check_blob, decode_event
from .connections import WRITER_AUTOCHECKPOINT_PAGES, ReaderPool, WalCheckpointer, acquire_lock
from .errors import BatchTooLarge, StoreClosed, StoreCorrupt, StoreError, StoreMissing
from .fsck import FsckReport, check, rebuild
from .importer import BinaryReader, import_stream
from .materialise import in_lists, load_events, raw_event_id, spec_digest
from .migrate import connect, create_atomically, translate, upgrade
from .results import (
    DocumentResult,
    EventOutcome,
    IngestResult,
    IngestSummary,
    Provenance,
    StoreCounts,
    StoredState,
    StoreStats,
)
from .writer import BatchWriter

__all__ = [
    "DEFAULT_BATCH_EVENTS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "BinaryReader",
    "DocumentResult",
    "EventOutcome",
    "FsckReport",
    "IngestResult",
    "IngestSummary",
    "Provenance",
    "Store",
    "StoreCounts",
    "StoreStats",
    "StoredState",
]

log = logging.getLogger(__name__)

#: Below this many events a batch is checked on the calling thread.
_PARALLEL_MIN = 64

EventRef = str | bytes


def _event_ref(ref: EventRef) -> bytes | None:
    if isinstance(ref, bytes):
        return ref if len(ref) == 32 else None
    return raw_event_id(ref)


def _decoded(rows: Iterable[tuple[Any, int, bytes, int, bytes]]
             ) -> Iterator[tuple[Any, Event, bytes]]:
    """``(key, event, exact bytes)`` of rows ``(key, codec, blob, size, sha256)``."""
    for key, codec, data, size, sha in rows:
        try:
            ev, exact = decode_event(codec, data, size, sha)
        except CodecError as exc:
            raise StoreCorrupt(f"object {sha.hex()} is damaged: {exc}") from exc
        yield key, ev, exact


def _verify_chunk(jobs: Sequence[SignatureJob]) -> list[bool]:
    return [verify_digest(*job) for job in jobs]


_EVENT_ROWS = ("SELECT e.eid, o.codec, o.data, o.size, o.sha256 FROM events e "
               "JOIN objects o ON o.id = e.id")


class Store:
    """The node's database of events, objects, records and states.

    ``Store(path, spec)`` opens (creating atomically if needed) the database at ``path`` for
    writing and takes its lock; ``readonly=True`` opens an existing store without the lock,
    for readers beside a running node. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], spec: NetworkSpec, *,
                 readonly: bool = False, verify_threads: int | None = None) -> None:
        self.path = Path(path)
        self.spec = spec
        self.readonly = readonly
        self.spec_changed = False
        self._closed = False
        self._lock_fd: int | None = None
        self._write_lock = threading.Lock()
        self._w: sqlite3.Connection | None = None
        self._readers = ReaderPool(self.path)
        self._checkpointer = WalCheckpointer(self.path)
        self._writer_state = BatchWriter(spec)
        self._pool: ThreadPoolExecutor | None = None
        self._threads = verify_threads if verify_threads is not None else min(
            4, os.cpu_count() or 1)
        opened = False
        try:
            self._open()
            opened = True
        finally:
            if not opened:
                self.close()

    # -- opening and closing ---------------------------------------------------------------
    def _open(self) -> None:
        if self.readonly:
            if not self.path.exists():
                raise StoreMissing(f"no store at {self.path}")
            self._readers.check()
            return
        if not self.path.parent.is_dir():
            raise StoreMissing(f"no directory {self.path.parent}",
                               hint="create the data directory first")
        self._lock_fd = acquire_lock(self.path)
        if not self.path.exists():
            log.info("creating store %s", self.path)
            create_atomically(self.path)
        self._w = connect(self.path)
        upgrade(self._w, self.path)
        try:
            self._w.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
            self._writer_state.reset(self._w)
            row = self._w.execute("SELECT value FROM meta WHERE key = 'spec_sha256'").fetchone()
            digest = spec_digest(self.spec)
            if row is None:
                self._w.execute("INSERT INTO meta (key, value) VALUES ('spec_sha256', ?)",
                                (digest,))
            elif row[0] != digest:
                self.spec_changed = True
                log.warning("states in %s were merged under another network spec",
                            self.path.name)
        except sqlite3.Error as exc:
            raise translate(exc, f"cannot open {self.path}") from exc

    def close(self) -> None:
        """Close every connection and release the lock. Idempotent."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._checkpointer.close()
        self._readers.close()
        with self._write_lock:
            self._writer_state.close()
            if self._w is not None:
                self._w.close()
                self._w = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def checkpoints(self) -> tuple[int, int]:
        """Background WAL checkpoints run so far, and the WAL frames they copied."""
        return self._checkpointer.runs, self._checkpointer.frames

    def _writer(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._w is None:
            raise StoreError("the store was opened read-only",
                             hint="open it without readonly=True to write")
        return self._w

    # -- ingest ------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event], *, source: str,
               received_at: float) -> IngestResult:
        """Store a batch of events; one outcome per event, in order.

        ``new`` events were stored, ``duplicate`` ones were already held, ``rejected`` ones
        fail :func:`pithnode.protocol.ingest.accept` (its reason code) or the store's own
        rule (``bad_subject``, ``bad_created_at``, ``event_too_large``, ``not_canonical``).
        The batch and the re-merged states of the records it touched are committed durably
        before this returns. At most :data:`MAX_BATCH_EVENTS` events (see
        :meth:`ingest_many`).
        """
        return self.ingest_group([(events, source, received_at)])[0]

    def ingest_group(self, parts: Sequence[tuple[Sequence[Event], str, float]]
                     ) -> list[IngestResult]:
        """Several batches, each with its own source and time, in one transaction."""
        return self.commit_group(self.check_group(parts))

    def ingest_many(self, events: Iterable[Event], *, source: str, received_at: float,
                    batch_events: int = DEFAULT_BATCH_EVENTS,
                    on_batch: Callable[[IngestResult], None] | None = None) -> IngestSummary:
        """Ingest any number of events in batches of ``batch_events``, one commit each.

        Checking a batch (signatures, encoding) overlaps with committing the one before;
        ``events`` is consumed lazily, so a parsing generator overlaps too. ``on_batch`` is
        called after each commit, in order. A batch over :data:`MAX_BATCH_BYTES` is split.
        """
        if not 0 < batch_events <= MAX_BATCH_EVENTS:
            raise StoreError(f"batch_events must be 1..{MAX_BATCH_EVENTS}")
        summary = IngestSummary()

        def finish(prepared: Batch) -> None:
            try:
                done = self.commit_group(prepared)
            except BatchTooLarge:
                events = prepared.parts[0][0]
                if len(events) == 1:
                    raise
                half = len(events) // 2
                for chunk in (events[:half], events[half:]):
                    finish(self.check_group([(chunk, source, received_at)]))
                return
            summary.add(done[0])
            if on_batch is not None:
                on_batch(done[0])

        with ThreadPoolExecutor(1, thread_name_prefix="store-prepare") as stage:
            pending: Future[Batch] | None = None
            for batch in chunked(events, batch_events):
                nxt = stage.submit(self.check_group, [(batch, source, received_at)])
                if pending is not None:
                    finish(pending.result())
                pending = nxt
            if pending is not None:
                finish(pending.result())
        return summary

    # The write path, in two steps: check_group (no write lock; any thread) checks
    # signatures and encodes; commit_group (under the write lock) classifies against the
    # database and commits. A caller may check the next group while one commits.
    def check_group(self, parts: Sequence[Part]) -> Batch:
        """The first half of :meth:`ingest_group`: check and encode the batches, without
        the write lock and on any thread. Commit with :meth:`commit_group`."""
        batch = make_batch(parts)
        with self._readers.read("cannot look up events") as conn:
            stored = stored_digests(conn, (it.eid for it in batch.items))
        self._check_all(mark_exact_copies(batch, stored))
        return batch

    def _check_all(self, items: list[Item]) -> None:
        """Check a batch: its Python part here, in one thread, and its Ed25519 checks (C,
        which releases the GIL) in large chunks on the verify threads, so that they
        overlap with Python work (this thread's, or the commit's) instead of contending
        with it for the GIL."""
        if len(items) < _PARALLEL_MIN or self._threads <= 1:
            for it in items:
                check_item(it, self.spec)
            return
        for it in items:
            check_item(it, self.spec, defer_signature=True)
        pending: list[Item] = []
        jobs: list[SignatureJob] = []
        for it in items:
            if it.job is not None:
                pending.append(it)
                jobs.append(it.job)
        if not jobs:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="store-verify")
        step = -(-len(jobs) // self._threads)
        chunks = [jobs[i:i + step] for i in range(0, len(jobs), step)]
        verified = [ok for part in self._pool.map(_verify_chunk, chunks) for ok in part]
        settle_signatures(pending, verified)

    def commit_group(self, batch: Batch) -> list[IngestResult]:
        """The second half of :meth:`ingest_group`: classify ``batch`` against what is
        stored now (it may have been committed since it was checked) and commit it."""
        with self._write_lock:
            conn = self._writer()
            try:  # what was committed since check_group looked
                stored = stored_digests(conn, (it.eid for it in batch.items
                                               if it.reason is None))
            except sqlite3.Error as exc:
                raise translate(exc, "cannot look up events") from exc
            new = classify(batch, stored)
            touched: Sequence[set[str]] = [set() for _ in batch.parts]
            if new:
                touched = self._writer_state.commit(conn, batch, new)
                self._checkpointer.committed()
        return results(batch, touched)

    # -- documents ---------------------------------------------------------------------------
    def ingest_document(self, data: bytes, *, source: str, node_key: SigningKey,
                        node_id: str, received_at: float,
                        batch_events: int = DEFAULT_BATCH_EVENTS,
                        on_batch: Callable[[IngestResult], None] | None = None
                        ) -> DocumentResult:
        """Import a Pith bundle.json or state.json, one event, or JSON Lines of events.

        Registry events (Pith's, unsigned) are admitted by import attestations signed with
        ``node_key`` (:mod:`pithnode.storage.importer`); when that key is not a trusted
        importer of the network they are left out and counted in
        ``registry_not_admitted``. Input that cannot be used sets ``error`` in the result.
        """
        return self.ingest_file(io.BytesIO(data), source=source, node_key=node_key,
                                node_id=node_id, received_at=received_at,
                                batch_events=batch_events, on_batch=on_batch)

    def ingest_file(self, stream: BinaryReader, *, source: str, node_key: SigningKey,
                    node_id: str, received_at: float,
                    batch_events: int = DEFAULT_BATCH_EVENTS,
                    on_batch: Callable[[IngestResult], None] | None = None) -> DocumentResult:
        """Like :meth:`ingest_document`, reading a binary stream (JSON Lines are streamed)."""
        return import_stream(self, stream, source=source, node_key=node_key, node_id=node_id,
                             received_at=received_at, batch_events=batch_events,
                             on_batch=on_batch)

    # -- reads -------------------------------------------------------------------------------
    def _read(self, what: str, *, snapshot: bool = False
              ) -> AbstractContextManager[sqlite3.Connection]:
        return self._readers.read(what, snapshot=snapshot)

    def resolve(self, identifier: str) -> str | None:
        """The full Pith Number an identifier names, or None if no stored record matches.

        Takes full or short Pith Numbers (``pith:2018:SUFFIX``, ``pith:32UK2ZWI``, a bare
        suffix), arXiv ids with or without version and ``arXiv:`` prefix, DOIs in any case.
        When several records carry the alias, the one whose alias is newest wins (the latest
        arXiv version). Raises ``InputError`` for text that is no identifier at all.
        """
        with self._read("cannot resolve") as conn:
            found = self._subject(conn, identifier)
        return found[1] if found else None

    def resolve_all(self, identifier: str) -> list[str]:
        """Every record an identifier matches, best first."""
        with self._read("cannot resolve") as conn:
            return [pith for _, pith in self._subjects(conn, identifier)]

    @staticmethod
    def _subjects(conn: sqlite3.Connection, identifier: str) -> list[tuple[int, str]]:
        kind, value = normalise_alias(identifier)
        if kind == "pith" and ":" in value:
            rows = conn.execute("SELECT id, pith FROM records WHERE pith = ?", (value,))
        else:
            rows = conn.execute(
                "SELECT r.id, r.pith FROM aliases a JOIN records r ON r.id = a.record "
                "WHERE a.kind = ? AND a.value = ? ORDER BY a.created_at DESC, r.pith",
                (kind, value))
        return list(dict.fromkeys((int(i), str(p)) for i, p in rows))

    def _subject(self, conn: sqlite3.Connection, identifier: str) -> tuple[int, str] | None:
        found = self._subjects(conn, identifier)
        return found[0] if found else None

    def state(self, identifier: str) -> StoredState | None:
        """The served state document of a record (checked against its stored SHA-256)."""
        with self._read("cannot read a state") as conn:
            found = self._subject(conn, identifier)
            return None if found is None else self._state_of(conn, *found)

    def state_heads(self, subjects: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``{Pith Number: (state_sha256 hex, event_count)}`` of the stored records among
        ``subjects`` (full Pith Numbers), no state document read."""
        out: dict[str, tuple[str, int]] = {}
        with self._read("cannot read states") as conn:
            for chunk, marks in in_lists(subjects):
                for pith, sha, count in conn.execute(
                        "SELECT r.pith, s.state_sha256, s.event_count FROM records r JOIN "
                        f"states s ON s.record = r.id WHERE r.pith IN ({marks})", chunk):
                    out[str(pith)] = (bytes(sha).hex(), int(count))
        return out

    @staticmethod
    def _state_of(conn: sqlite3.Connection, record_id: int, pith: str) -> StoredState:
        row = conn.execute(
            "SELECT state_sha256, fingerprint, stored_events, event_count, valid_count, "
            "invalid_count, equivocation_count, codec, size, data_sha256, data "
            "FROM states WHERE record = ?", (record_id,)).fetchone()
        if row is None:
            raise StoreCorrupt(f"record {pith} has no materialised state")
        try:
            data = check_blob(row[7], row[10], row[8], row[9])
        except CodecError as exc:
            raise StoreCorrupt(f"the stored state of {pith} is damaged: {exc}") from exc
        blob = bytes(row[10]) if row[7] == CODEC_DEFLATE else b""
        return StoredState(pith, data, row[0].hex(), row[1].hex(), row[2], row[3], row[4],
                           row[5], row[6], CODEC_DEFLATE if blob else CODEC_RAW, blob)

    def events(self, identifier: str) -> list[Event]:
        """The stored (signed) events of a record, in arrival order."""
        with self._read("cannot read events", snapshot=True) as conn:
            found = self._subject(conn, identifier)
            if found is None:
                return []
            return [ev for _, ev in load_events(conn, found[0])]

    def admitted(self, identifier: str) -> tuple[list[Event], list[dict[str, str]]]:
        """Registry events and aliases admitted by the record's trusted import attestations.

        Events are deduplicated by exact content and sorted by it (deterministic).
        """
        with self._read("cannot read events", snapshot=True) as conn:
            found = self._subject(conn, identifier)
            if found is None:
                return [], []
            imports = [ev for _, ev, _ in _decoded(conn.execute(
                _EVENT_ROWS + " JOIN event_types t ON t.id = e.type "
                "WHERE e.record = ? AND t.name = 'registry_import' ORDER BY e.id",
                (found[0],)))]
        return self._admissions(imports)

    def _admissions(self, imports: Iterable[Event]
                    ) -> tuple[list[Event], list[dict[str, str]]]:
        events: dict[bytes, Event] = {}
        aliases: dict[tuple[str, str, str], dict[str, str]] = {}
        for imp in imports:
            adm = admission_from_import(imp, self.spec)
            if adm is None:
                continue
            for ev in adm.events:
                events.setdefault(ev.canonical_bytes(), ev)
            for a in adm.source_aliases:
                aliases[(a["alias_kind"], a["alias_value"], a["created_at"])] = dict(a)
        return ([events[k] for k in sorted(events)], [aliases[k] for k in sorted(aliases)])

    def bundle(self, identifier: str) -> bytes | None:
        """Served bytes of the record's bundle, built from the stored events.

        Holds the record and aliases (from its state), every admitted registry event, then
        every stored event (import attestations last); the same events give the same bytes.
        """
        found = self.record_bundle(identifier)
        return None if found is None else found[1]

    def record_bundle(self, identifier: str) -> tuple[str, bytes] | None:
        """(Pith Number, served bundle bytes) of the record ``identifier`` names."""
        with self._read("cannot read a bundle", snapshot=True) as conn:
            found = self._subject(conn, identifier)
            if found is None:
                return None
            natives = [ev for _, ev in load_events(conn, found[0])]
            st = self._state_of(conn, *found)
        current = json.loads(st.data)["current"]
        registry, _ = self._admissions(e for e in natives if e.event_type == "registry_import")
        data: bytes = build_bundle(st.pith_number, current["canonical_record"],
                                   current["source_aliases"], registry + natives)
        return st.pith_number, data

    def alias_keys(self, pith_numbers: Iterable[str]) -> set[tuple[str, str]]:
        """Every (kind, value) lookup key that names one of these records now: the keys
        :meth:`resolve` may answer with one of them (a read cache drops those names after
        a commit touched the records)."""
        wanted = sorted(set(pith_numbers))
        keys: set[tuple[str, str]] = set()
        with self._read("cannot read aliases", snapshot=True) as conn:
            for chunk, marks in in_lists(wanted):
                keys.update((str(k), str(v)) for k, v in conn.execute(
                    "SELECT a.kind, a.value FROM aliases a JOIN records r ON r.id = a.record "
                    f"WHERE r.pith IN ({marks})", chunk))
        return keys

    def event(self, event_id: EventRef) -> Event | None:
        """A stored event, or a registry event carried by a stored import attestation."""
        raw = _event_ref(event_id)
        if raw is None:
            return None
        got = self.events_by_ids([raw])
        if got:
            return got[0]
        with self._read("cannot read an event") as conn:
            imports = [ev for _, ev, _ in _decoded(conn.execute(
                "SELECT c.import, o.codec, o.data, o.size, o.sha256 FROM carried c "
                "JOIN objects o ON o.id = c.import WHERE c.eid = ? ORDER BY c.import",
                (raw,)))]
        want = "sha256:" + raw.hex()
        return next((ev for ev in self._admissions(imports)[0] if ev.event_id == want), None)

    def _by_ids(self, ids: Iterable[EventRef]) -> list[tuple[Event, bytes]]:
        wanted = [r for r in (_event_ref(i) for i in ids) if r is not None]
        found: dict[bytes, tuple[Event, bytes]] = {}
        with self._read("cannot read events") as conn:
            for chunk, marks in in_lists(wanted):
                for eid, ev, exact in _decoded(conn.execute(
                        f"{_EVENT_ROWS} WHERE e.eid IN ({marks})", chunk)):
                    found[eid] = (ev, exact)
        return [found[r] for r in wanted if r in found]

    def events_by_ids(self, ids: Iterable[EventRef]) -> list[Event]:
        """Stored events with these ids (``sha256:...`` text or 32 raw bytes), in the order
        asked; unknown ids are left out."""
        return [ev for ev, _ in self._by_ids(ids)]

    def raw_events(self, ids: Iterable[EventRef]) -> list[bytes]:
        """Exact bytes of the stored events among ``ids``, in the order asked (what a sync
        peer is sent); unknown ids are left out."""
        return [exact for _, exact in self._by_ids(ids)]

    def event_bytes(self, event_id: EventRef) -> bytes | None:
        """The exact stored bytes of an event (its canonical JSON)."""
        got = self.raw_events([event_id])
        return got[0] if got else None

    def object(self, sha256: str | bytes) -> bytes | None:
        """The exact bytes of an object by its SHA-256 (hex or raw)."""
        try:
            key = bytes.fromhex(sha256) if isinstance(sha256, str) else sha256
        except ValueError:
            return None
        with self._read("cannot read an object") as conn:
            row = conn.execute("SELECT codec, data, size FROM objects WHERE sha256 = ?",
                               (key,)).fetchone()
        if row is None:
            return None
        try:
            return check_blob(row[0], row[1], row[2], key)
        except CodecError as exc:
            raise StoreCorrupt(f"object {key.hex()} is damaged: {exc}") from exc

    def iter_sync_items(self, prefixes: Sequence[str] | None = None, *,
                        page: int = 10_000) -> Iterator[tuple[int, bytes]]:
        """Every stored event as Negentropy's ``(seconds, raw id)``, in that order.

        ``prefixes`` (Pith Number suffix prefixes, as in mirror hints) limits the items to
        records whose suffix starts with one of them; None or empty means every record.
        Pages through the index, so no read transaction stays open between pages.
        """
        if prefixes:
            yield from self._sync_items_for(prefixes)
            return
        after: tuple[int, bytes] = (-(1 << 62), b"")
        while True:
            with self._read("cannot read sync items") as conn:
                rows = conn.execute(
                    "SELECT created_s, eid FROM events WHERE (created_s, eid) > (?, ?) "
                    "ORDER BY created_s, eid LIMIT ?", (*after, page)).fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1]

    def _sync_items_for(self, prefixes: Sequence[str]) -> Iterator[tuple[int, bytes]]:
        items: set[tuple[int, bytes]] = set()
        with self._read("cannot read sync items", snapshot=True) as conn:
            for prefix in sorted({p.upper() for p in prefixes}):
                items.update(conn.execute(
                    "SELECT e.created_s, e.eid FROM aliases a JOIN events e "
                    "ON e.record = a.record WHERE a.kind = 'pith' AND a.value >= ? "
                    "AND a.value < ?", (prefix, prefix + "\U0010ffff")))
        yield from sorted(items)

    def record_fingerprint(self, subject: str) -> str | None:
        """Event-set fingerprint (hex) of a record's stored events, or None if unknown."""
        with self._read("cannot read a fingerprint") as conn:
            row = conn.execute("SELECT s.fingerprint FROM states s JOIN records r "
                               "ON r.id = s.record WHERE r.pith = ?", (subject,)).fetchone()
        return row[0].hex() if row else None

    def record_states(self) -> list[tuple[str, str]]:
        """(Pith Number, state_sha256 hex) of every record, sorted, one snapshot."""
        with self._read("cannot list record states", snapshot=True) as conn:
            return [(str(p), bytes(s).hex()) for p, s in conn.execute(
                "SELECT r.pith, s.state_sha256 FROM records r JOIN states s "
                "ON s.record = r.id ORDER BY r.pith")]

    def records(self) -> list[str]:
        """Every stored record's Pith Number, sorted."""
        with self._read("cannot list records") as conn:
            return [r[0] for r in conn.execute("SELECT pith FROM records ORDER BY pith")]

    def iter_event_bytes(self, *, page: int = 1000) -> Iterator[bytes]:
        """The exact bytes of every stored event, in arrival order (checked)."""
        after = 0
        while True:
            with self._read("cannot read events") as conn:
                rows = list(_decoded(conn.execute(
                    "SELECT e.id, o.codec, o.data, o.size, o.sha256 FROM events e "
                    "JOIN objects o ON o.id = e.id WHERE e.id > ? ORDER BY e.id LIMIT ?",
                    (after, page))))
            for rowid, _, exact in rows:
                yield exact
                after = int(rowid)
            if len(rows) < page:
                return

    def provenance(self, event_id: EventRef) -> Provenance | None:
        """Where a stored event came from and when it was first received."""
        raw = _event_ref(event_id)
        if raw is None:
            return None
        with self._read("cannot read provenance") as conn:
            row = conn.execute("SELECT s.name, e.received_at, e.id FROM events e "
                               "JOIN sources s ON s.id = e.source WHERE e.eid = ?",
                               (raw,)).fetchone()
        return Provenance("sha256:" + raw.hex(), row[0], row[1], row[2]) if row else None

    def invalid_reason(self, event_id: EventRef) -> str | None:
        """Why the merge found an event invalid, or None."""
        raw = _event_ref(event_id)
        if raw is None:
            return None
        with self._read("cannot read invalid events") as conn:
            row = conn.execute("SELECT reason FROM invalid_events WHERE eid = ? LIMIT 1",
                               (raw,)).fetchone()
        return str(row[0]) if row else None

    def stats(self) -> StoreStats:
        """Every figure, including the objects' sizes: this scans the objects table (about
        0.3 s for 100,000 records); :meth:`counts` is the cheap part."""
        with self._read("cannot read statistics", snapshot=True) as conn:
            records = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            objects, size, stored = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(length(data)), 0) "
                "FROM objects").fetchone()
            invalid = conn.execute("SELECT count(*) FROM invalid_events").fetchone()[0]
        return StoreStats(records, events, objects, invalid, size, stored, self._file_bytes())

    def counts(self) -> StoreCounts:
        """Records, events, invalid events and file size, from the indexes (what the
        metrics gauges and ``node.status`` show)."""
        with self._read("cannot read statistics", snapshot=True) as conn:
            records = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            invalid = conn.execute("SELECT count(*) FROM invalid_events").fetchone()[0]
        return StoreCounts(records, events, self._file_bytes(), invalid)

    def _file_bytes(self) -> int:
        files = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with suppress(FileNotFoundError):
                files += p.stat().st_size
        return files

    # -- checking ---------------------------------------------------------------------------
    def fsck(self, repair: bool = False, *, verify_signatures: bool = False) -> FsckReport:
        """Check every object, index and state; ``repair`` rebuilds them from the objects.

        See :mod:`pithnode.storage.fsck`.
        """
        if not repair:
            with self._read("cannot check the store", snapshot=True) as conn:
                return check(conn, self.spec, verify_signatures=verify_signatures)
        with self._write_lock:
            conn = self._writer()
            report = rebuild(conn, self.spec, verify_signatures=verify_signatures)
            try:
                self._writer_state.reset(conn)
            except sqlite3.Error as exc:
                raise translate(exc, "cannot reload the store") from exc
            self.spec_changed = False
        return report
