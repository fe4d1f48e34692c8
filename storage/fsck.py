"""Checking the store against its objects, and rebuilding everything else from them.

:func:`check` re-hashes every object (a damaged one is named by its SHA-256), checks every
event row against the event its object holds, the carried ids against the import
attestations, and recomputes every record's state, invalid events and aliases.
:func:`rebuild` repairs in one transaction: damaged objects and their events are dropped
(and reported), event rows are corrected from their objects, orphan objects that are
acceptable events are indexed again, and every derived table is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from pithnode.protocol.documents import loads
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, event_from_json
from pithnode.protocol.ingest import accept
from pithnode.protocol.spec import NetworkSpec

from .codec import CodecError, decode_bytes, decode_event
from .materialise import (
    ORIGIN_PITH,
    alias_rows,
    carried_ids,
    materialise,
    prefix_alias_rows,
    raw_event_id,
    spec_digest,
    write_state,
)
from .migrate import translate

__all__ = ["FsckReport", "Problem", "check", "rebuild"]

log = logging.getLogger(__name__)

#: Source name given to events indexed again by a repair (their provenance was lost).
REPAIR_SOURCE = "fsck-repair"
_PAGE = 2000


@dataclass(frozen=True, slots=True)
class Problem:
    #: object, event, record, carried, state, invalid, alias, sqlite or spec
    kind: str
    #: what it is about: an object's SHA-256, an event id, a Pith Number
    subject: str
    detail: str

    def line(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"


@dataclass(slots=True)
class FsckReport:
    objects: int = 0
    events: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: SHA-256 (hex) of every object whose bytes do not match
    corrupt_objects: list[str] = field(default_factory=list)
    #: set by a repair: ids of events dropped because their object was damaged or unusable
    dropped_events: list[str] = field(default_factory=list)
    repaired: bool = False
    #: after a repair: the problems a fresh check still finds (empty when repaired)
    remaining: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, subject: str, detail: str) -> None:
        self.problems.append(Problem(kind, subject, detail))


@dataclass(frozen=True, slots=True)
class _Expected:
    """The index row an object's event should have."""

    eid: bytes
    subject: str
    event_type: str
    signer: bytes
    created_s: int


@dataclass(slots=True)
class _Scan:
    report: FsckReport
    #: object id -> the event row's eid (None when the object has no event row)
    bad: dict[int, bytes | None] = field(default_factory=dict)
    #: object id -> what its event row should say, where the row is wrong or missing
    fix: dict[int, _Expected] = field(default_factory=dict)
    carried: set[tuple[int, bytes]] = field(default_factory=set)


def _parse(data: bytes) -> Event:
    return event_from_json(loads(data))


def _expected(ev: Event) -> _Expected | str:
    """The index row of an acceptable stored event, or why it cannot be one."""
    eid = raw_event_id(ev.event_id)
    if eid is None or not ev.signature:
        return "not a signed event"
    try:
        created_s = ev.time_key // 1_000_000
        signer = bytes.fromhex(ev.signer.public_key_fingerprint)
    except (InputError, ValueError):
        return "unusable created_at or signer fingerprint"
    return _Expected(eid, ev.subject, ev.event_type, signer, created_s)


def _scan_objects(conn: sqlite3.Connection, spec: NetworkSpec,
                  verify_signatures: bool) -> _Scan:
    scan = _Scan(FsckReport())
    report = scan.report
    after = 0
    while True:
        rows = conn.execute(
            "SELECT o.id, o.sha256, o.codec, o.size, o.data, e.eid, r.pith, t.name, "
            "s.fingerprint, e.created_s FROM objects o LEFT JOIN events e ON e.id = o.id "
            "LEFT JOIN records r ON r.id = e.record LEFT JOIN event_types t ON t.id = e.type "
            "LEFT JOIN signers s ON s.id = e.signer WHERE o.id > ? ORDER BY o.id LIMIT ?",
            (after, _PAGE)).fetchall()
        for oid, sha, codec, size, blob, eid, pith, tname, signer, created_s in rows:
            after = oid
            report.objects += 1
            if eid is not None:
                report.events += 1
            name = sha.hex() if isinstance(sha, bytes) else repr(sha)
            try:
                data = decode_bytes(codec, blob, size)
                if len(data) != size or hashlib.sha256(data).digest() != sha:
                    raise CodecError("bytes do not match their SHA-256")
                ev = _parse(data)
            except (CodecError, ValueError, InputError) as exc:
                report.add("object", name, f"damaged: {exc}")
                report.corrupt_objects.append(name)
                scan.bad[oid] = eid
                continue
            exp = _expected(ev)
            if isinstance(exp, str):
                reason: str | None = exp
            elif verify_signatures:
                reason = accept(ev, spec)
            else:
                reason = None
            if reason is not None:
                report.add("object", name, f"holds an event the store must not keep ({reason})")
                scan.bad[oid] = eid
                continue
            assert isinstance(exp, _Expected)
            if ev.event_type == "registry_import":
                scan.carried.update((oid, c) for c in carried_ids(ev))
            if eid is None:
                report.add("object", name, f"is event {ev.event_id} but has no event row")
                scan.fix[oid] = exp
                continue
            have = (eid, pith, tname, signer, created_s)
            want = (exp.eid, exp.subject, exp.event_type, exp.signer, exp.created_s)
            if have != want:
                fields = ("eid", "record", "type", "signer", "created_s")
                wrong = [f for f, h, w in zip(fields, have, want, strict=True) if h != w]
                report.add("event", ev.event_id,
                           f"index row disagrees with object {name} ({', '.join(wrong)})")
                scan.fix[oid] = exp
        if len(rows) < _PAGE:
            break
    for (eid,) in conn.execute("SELECT e.eid FROM events e LEFT JOIN objects o "
                               "ON o.id = e.id WHERE o.id IS NULL"):
        report.add("event", "sha256:" + bytes(eid).hex(), "has no object")
    return scan


def _check_carried(conn: sqlite3.Connection, scan: _Scan) -> None:
    have = {(int(i), bytes(e)) for i, e in conn.execute("SELECT import, eid FROM carried")}
    for oid, eid in sorted(have - scan.carried):
        scan.report.add("carried", "sha256:" + eid.hex(), f"listed for event row {oid}, "
                        "whose import attestation does not carry it")
    for oid, eid in sorted(scan.carried - have):
        scan.report.add("carried", "sha256:" + eid.hex(), f"carried by event row {oid} "
                        "but not indexed")


def _record_events(conn: sqlite3.Connection, record_id: int,
                   skip: dict[int, bytes | None]) -> Iterator[tuple[bytes, Event]]:
    rows = conn.execute(
        "SELECT o.id, e.eid, o.codec, o.data, o.size, o.sha256 FROM events e "
        "JOIN objects o ON o.id = e.id WHERE e.record = ? ORDER BY e.id", (record_id,))
    for oid, eid, codec, blob, size, sha in rows:
        if oid in skip:
            continue
        try:
            ev, _ = decode_event(codec, blob, size, sha)
        except CodecError:
            continue  # already reported by the object scan
        yield eid, ev


def _check_records(conn: sqlite3.Connection, spec: NetworkSpec, scan: _Scan) -> None:
    report = scan.report
    records = conn.execute("SELECT id, pith FROM records ORDER BY id").fetchall()
    for record_id, pith in records:
        report.records += 1
        events = list(_record_events(conn, record_id, scan.bad))
        if not events:
            report.add("record", pith, "has no usable events")
            continue
        m = materialise(pith, events, spec)
        row = conn.execute(
            "SELECT state_sha256, fingerprint, stored_events, event_count, valid_count, "
            "invalid_count, equivocation_count, codec, size, data_sha256, data "
            "FROM states WHERE record = ?", (record_id,)).fetchone()
        doc = m.doc
        if row is None:
            report.add("state", pith, "has no materialised state")
        else:
            try:
                served = decode_bytes(row[7], row[10], row[8])
            except CodecError as exc:
                served = b""
                report.add("state", pith, f"stored state does not decode: {exc}")
            want = (bytes.fromhex(m.state.state_sha256), bytes.fromhex(m.fingerprint),
                    m.stored_events, doc["event_count"], doc["valid_event_count"],
                    doc["invalid_event_count"], doc["equivocation_count"])
            if tuple(row[:7]) != want or served != m.served or row[9] != hashlib.sha256(
                    m.served).digest():
                report.add("state", pith, "stored state differs from a fresh merge "
                           f"(stored {bytes(row[0]).hex()[:16]}, merged "
                           f"{m.state.state_sha256[:16]})")
        invalid = {(bytes(e), t, r) for e, t, r in conn.execute(
            "SELECT eid, event_type, reason FROM invalid_events WHERE record = ?",
            (record_id,))}
        want_invalid = {(raw, e["event_type"], e["reason"]) for e in doc["invalid_events"]
                        if (raw := raw_event_id(e["event_id"])) is not None}
        if invalid != want_invalid:
            report.add("invalid", pith, "invalid-event index differs from the state")
        aliases = {tuple(r) for r in conn.execute(
            "SELECT kind, value, record, created_at, origin FROM aliases WHERE record = ?",
            (record_id,))}
        want_aliases = _alias_set(record_id, pith, doc)
        if aliases != want_aliases:
            report.add("alias", pith, "alias index differs from the state")


def _alias_set(record_id: int, pith: str, doc: dict[str, object]) -> set[tuple[object, ...]]:
    rows = {r[:2]: r for r in prefix_alias_rows(record_id, pith)}
    current = doc["current"]
    assert isinstance(current, dict)
    for r in alias_rows(record_id, current["source_aliases"]):
        rows.setdefault(r[:2], r)
    return set(rows.values())


def check(conn: sqlite3.Connection, spec: NetworkSpec, *,
          verify_signatures: bool = False) -> FsckReport:
    """Find every problem; changes nothing. Run inside one read transaction."""
    try:
        return _check(conn, spec, verify_signatures).report
    except sqlite3.Error as exc:
        raise translate(exc, "cannot check the store") from exc


def _check(conn: sqlite3.Connection, spec: NetworkSpec, verify_signatures: bool) -> _Scan:
    quick = [r[0] for r in conn.execute("PRAGMA quick_check")]
    scan = _scan_objects(conn, spec, verify_signatures)
    report = scan.report
    if quick != ["ok"]:
        for line in quick[:20]:
            report.add("sqlite", "quick_check", str(line))
    for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check"):
        report.add("sqlite", "foreign_key_check", f"{table} row {rowid} references a missing "
                   f"{parent} row")
    _check_carried(conn, scan)
    _check_records(conn, spec, scan)
    row = conn.execute("SELECT value FROM meta WHERE key = 'spec_sha256'").fetchone()
    if row is None or row[0] != spec_digest(spec):
        report.add("spec", spec.name, "states were merged under another network spec "
                   "(a repair re-merges them under this one)")
    return scan


def rebuild(conn: sqlite3.Connection, spec: NetworkSpec, *,
            verify_signatures: bool = False) -> FsckReport:
    """Repair: rebuild every index and state from the objects, in one transaction.

    Returns the report of what was found, with ``dropped_events`` and, from a fresh check
    afterwards, ``remaining`` (empty when the repair succeeded; then ``repaired`` is set).
    """
    try:
        conn.execute("REINDEX")
        conn.execute("BEGIN IMMEDIATE")
        try:
            scan = _check(conn, spec, verify_signatures)
            report = scan.report
            _repair(conn, spec, scan, report)
            conn.execute("COMMIT")
        finally:  # on any failure, nothing of the repair stays
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        try:
            after = _check(conn, spec, verify_signatures).report
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise translate(exc, "cannot repair the store") from exc
    report.remaining = after.problems
    report.repaired = after.clean
    return report


def _name_id(conn: sqlite3.Connection, table: str, column: str, value: object) -> int:
    row = conn.execute(f"SELECT id FROM {table} WHERE {column} = ?", (value,)).fetchone()
    if row is None:
        row = conn.execute(f"INSERT INTO {table} ({column}) VALUES (?) RETURNING id",
                           (value,)).fetchone()
    return int(row[0])


def _record_id(conn: sqlite3.Connection, pith: str) -> int:
    return _name_id(conn, "records", "pith", pith)


def _repair(conn: sqlite3.Connection, spec: NetworkSpec, scan: _Scan,
            report: FsckReport) -> None:
    # 1. Damaged or unacceptable objects: their events leave every index.
    for oid, eid in sorted(scan.bad.items()):
        if eid is not None:
            report.dropped_events.append("sha256:" + bytes(eid).hex())
        conn.execute("DELETE FROM carried WHERE import = ?", (oid,))
        conn.execute("DELETE FROM events WHERE id = ?", (oid,))
        conn.execute("DELETE FROM objects WHERE id = ?", (oid,))
    conn.execute("DELETE FROM events WHERE id NOT IN (SELECT id FROM objects)")
    # 2. Event rows corrected from (or re-created for) their objects.
    for oid, exp in sorted(scan.fix.items()):
        record = _record_id(conn, exp.subject)
        type_id = _name_id(conn, "event_types", "name", exp.event_type)
        signer = _name_id(conn, "signers", "fingerprint", exp.signer)
        clash = conn.execute("SELECT id FROM events WHERE eid = ? AND id != ?",
                             (exp.eid, oid)).fetchone()
        if clash is not None:
            conn.execute("DELETE FROM carried WHERE import = ?", (clash[0],))
            conn.execute("DELETE FROM events WHERE id = ?", (clash[0],))
        exists = conn.execute("SELECT 1 FROM events WHERE id = ?", (oid,)).fetchone()
        if exists:
            conn.execute("UPDATE events SET eid = ?, record = ?, type = ?, signer = ?, "
                         "created_s = ? WHERE id = ?",
                         (exp.eid, record, type_id, signer, exp.created_s, oid))
        else:  # provenance is lost: the repair is named as the source, received_at 0
            source = _name_id(conn, "sources", "name", REPAIR_SOURCE)
            conn.execute("INSERT INTO events (id, eid, record, type, signer, created_s, "
                         "source, received_at) VALUES (?,?,?,?,?,?,?,0.0)",
                         (oid, exp.eid, record, type_id, signer, exp.created_s, source))
    # 3. Carried ids, from the import attestations.
    conn.execute("DELETE FROM carried")
    conn.executemany("INSERT INTO carried (import, eid) VALUES (?,?)", sorted(scan.carried))
    # 4. Records without events go; every other record's state and aliases are rebuilt.
    for table in ("states", "invalid_events", "aliases"):
        conn.execute(f"DELETE FROM {table} WHERE record NOT IN "
                     "(SELECT DISTINCT record FROM events)")
    conn.execute("DELETE FROM records WHERE id NOT IN (SELECT DISTINCT record FROM events)")
    for record_id, pith in conn.execute("SELECT id, pith FROM records ORDER BY id").fetchall():
        events = list(_record_events(conn, record_id, {}))
        conn.execute("DELETE FROM aliases WHERE record = ? AND origin = ?",
                     (record_id, ORIGIN_PITH))
        conn.executemany("INSERT OR REPLACE INTO aliases (kind, value, record, created_at, "
                         "origin) VALUES (?,?,?,?,?)", prefix_alias_rows(record_id, pith))
        write_state(conn, record_id, materialise(pith, events, spec))
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('spec_sha256', ?)",
                 (spec_digest(spec),))
    log.info("repair dropped %d event(s), fixed %d index row(s)", len(report.dropped_events),
             len(scan.fix))
