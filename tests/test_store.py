"""The store: schema, locking, ingest outcomes, reads, lookups, fsck and repair."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pithnode.node import store_service
from pithnode.node.store_service import StoreService
from pithnode.protocol.events import Event, make_native_event
from pithnode.protocol.ingest import event_set_fingerprint, make_registry_imports, sync_item
from pithnode.protocol.merge import merge
from pithnode.protocol.spec import NetworkSpec
from pithnode.storage import migrate, writer
from pithnode.storage.codec import CODEC_EVENT, decode_bytes, encode_event
from pithnode.storage.connections import WRITER_AUTOCHECKPOINT_PAGES, WalCheckpointer
from pithnode.storage.errors import (
    BatchTooLarge,
    NotAStore,
    SchemaTooNew,
    StoreClosed,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreMissing,
)
from pithnode.storage.materialise import write_states
from pithnode.storage.results import IngestResult
from pithnode.storage.store import MAX_BATCH_EVENTS, Store

from .corpus import (
    GOLDEN,
    GOLDEN_PITH,
    Keys,
    Record,
    corpus,
    key_from,
    mainnet_spec,
    net_spec,
)

T0 = 1_780_000_000.0


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.make("store")


@pytest.fixture(scope="module")
def recs(keys: Keys) -> list[Record]:
    return corpus(keys, 5)


@pytest.fixture
def spec(keys: Keys) -> NetworkSpec:
    return net_spec(keys, keys.node)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture
def store(db: Path, spec: NetworkSpec) -> Iterator[Store]:
    with Store(db, spec) as s:
        yield s


def load(store: Store, keys: Keys, recs: list[Record]) -> None:
    for rec in recs:
        res = store.ingest_document(rec.bundle_bytes(), source=f"{rec.arxiv}.json",
                                    node_key=keys.node, node_id="test-node", received_at=T0)
        assert res.ok, res.error


def dump(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def assert_states_fresh(store: Store, spec: NetworkSpec) -> None:
    """Every stored state equals a fresh merge of the record's stored events."""
    for pith in store.records():
        st = store.state(pith)
        assert st is not None
        fresh = merge(pith, store.events(pith), spec, verify_signatures=False)
        assert st.data == fresh.served_bytes()
        assert st.state_sha256 == fresh.state_sha256
        ids = [e.event_id for e in store.events(pith)]
        assert st.fingerprint == event_set_fingerprint(ids) == store.record_fingerprint(pith)


# -- schema, creation, locking ------------------------------------------------------------
def test_new_store_has_versioned_schema_and_pragmas(store: Store, db: Path) -> None:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrate.schema_version() == 1
    assert conn.execute("PRAGMA application_id").fetchone()[0] == migrate.APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    w = store._writer()
    assert w.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert w.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert w.execute("PRAGMA busy_timeout").fetchone()[0] == migrate.BUSY_TIMEOUT_MS
    assert [s.name for s in migrate.schema_steps()] == ["0001_initial.sql"]


def test_newer_schema_is_refused_naming_both_versions(db: Path, spec: NetworkSpec) -> None:
    Store(db, spec).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(SchemaTooNew) as info:
        Store(db, spec)
    assert "schema version 7" in str(info.value)
    assert "up to 1" in str(info.value)
    assert info.value.hint and "upgrade pithnode" in info.value.hint
    with pytest.raises(SchemaTooNew):
        Store(db, spec, readonly=True)


def test_creation_is_atomic(db: Path, spec: NetworkSpec,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    broken = (migrate.SchemaStep(1, "0001_initial.sql",
                                 migrate.schema_steps()[0].sql + "\nCREATE TABLE oops (;"),)
    monkeypatch.setattr(migrate, "schema_steps", lambda: broken)
    with pytest.raises(StoreError):
        Store(db, spec)
    assert sorted(p.name for p in db.parent.iterdir()) == ["store.sqlite.lock"]
    monkeypatch.undo()
    with Store(db, spec) as s:
        assert s.stats().events == 0


def test_foreign_database_is_refused(db: Path, spec: NetworkSpec) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(NotAStore, match="not a pithnode store"):
        Store(db, spec)


def test_readonly_needs_an_existing_store(db: Path, spec: NetworkSpec) -> None:
    with pytest.raises(StoreMissing):
        Store(db, spec, readonly=True)


def test_second_writer_is_refused(store: Store, db: Path, spec: NetworkSpec) -> None:
    with pytest.raises(StoreLocked, match="in use by another pithnode process"):
        Store(db, spec)
    with Store(db, spec, readonly=True) as reader:  # readers need no lock
        assert reader.stats().records == 0
    code = ("import sys\nfrom pithnode.storage.store import Store\n"
            "from pithnode.storage.errors import StoreLocked\n"
            "from pithnode.protocol.spec import spec_from_toml\n"
            f"spec = spec_from_toml(open({str(Path('configs/network.toml').resolve())!r})"
            ".read())\n"
            "try:\n"
            f"    Store({str(db)!r}, spec)\n"
            "except StoreLocked as exc:\n"
            "    print(exc); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "in use by another pithnode process" in proc.stdout


def test_lock_is_released_on_close(db: Path, spec: NetworkSpec) -> None:
    Store(db, spec).close()
    Store(db, spec).close()


# -- ingest ---------------------------------------------------------------------------------
def test_ingest_outcomes_new_duplicate_rejected(store: Store, keys: Keys,
                                                recs: list[Record]) -> None:
    natives = recs[0].natives
    first = store.ingest(natives, source="peer-a", received_at=T0)
    assert [o.outcome for o in first.outcomes] == ["new"] * len(natives)
    assert first.records_touched == (recs[0].pith,)
    again = store.ingest(natives, source="peer-b", received_at=T0 + 5)
    assert [o.outcome for o in again.outcomes] == ["duplicate"] * len(natives)
    assert again.records_touched == ()

    good = recs[1].natives[0]
    bad_sig = dataclasses.replace(recs[1].natives[1], signature=bytes(64))
    bad_id = dataclasses.replace(recs[1].natives[2], payload={**recs[1].natives[2].payload,
                                                              "proof_b64": "AAAA"})
    registry = recs[1].registry[0]
    untrusted = make_registry_imports(
        keys.other_node, subject=recs[1].pith, source="x", document=b"doc",
        events=recs[1].registry, source_aliases=[], created_at="2026-05-01T00:00:00Z",
        signer_id="other")[0]
    lower = make_native_event(keys.authors[0], event_type="citation_signature",
                              subject=recs[1].pith.lower(), payload={
                                  "cited": recs[0].pith, "relation": "cites", "note": ""},
                              created_at="2026-06-01T00:00:00Z", signer_id="a",
                              signer_type="author")
    mixed = store.ingest([good, bad_sig, bad_id, registry, untrusted, lower, good,
                          natives[0]], source="peer-c", received_at=T0)
    assert [(o.outcome, o.reason) for o in mixed.outcomes] == [
        ("new", None), ("rejected", "bad_signature"), ("rejected", "event_id_mismatch"),
        ("rejected", "unsigned_registry_event"), ("rejected", "importer_not_trusted"),
        ("rejected", "bad_subject"), ("duplicate", None), ("duplicate", None)]
    assert mixed.rejected_by_reason()["bad_signature"] == 1
    assert store.stats().events == len(natives) + 1
    assert store.provenance(natives[0].event_id) is not None
    prov = store.provenance(natives[0].event_id)
    assert prov is not None and (prov.source, prov.received_at) == ("peer-a", T0)


def test_parallel_signature_checks_give_the_serial_outcomes(tmp_path: Path, spec: NetworkSpec,
                                                             keys: Keys,
                                                             recs: list[Record]) -> None:
    """Batches of 64 events and more have their Ed25519 checks run apart from the rest
    (check_item(defer_signature=True), then settle_signatures): every outcome, and every
    reason's precedence (a bad signature wins over what is checked after it), is the one
    the serial path gives."""
    natives = [e for r in recs for e in r.natives]
    imports = [e for r in recs for e in store_imports(keys, r)]
    short = make_native_event(keys.authors[0], event_type="citation_signature",
                              subject="pith:" + recs[0].pith.split(":")[2][:8], payload={
                                  "cited": recs[1].pith, "relation": "cites", "note": ""},
                              created_at="2026-06-01T00:00:00Z", signer_id="a",
                              signer_type="author")
    forged = [dataclasses.replace(e, signature=bytes(64)) for e in natives[::3]]
    forged.append(dataclasses.replace(imports[0], signature=bytes(64)))
    forged.append(dataclasses.replace(short, signature=bytes(64)))  # bad_subject comes later
    batch = [*natives, *imports, short, *forged, natives[0]]
    random.Random(3).shuffle(batch)
    assert len(batch) >= 64
    outcomes = []
    for threads in (1, 3):
        fresh = [dataclasses.replace(e) for e in batch]  # nothing marked verified yet
        with Store(tmp_path / f"t{threads}.sqlite", spec, verify_threads=threads) as st:
            res = st.ingest(fresh, source="peer", received_at=T0)
            outcomes.append([(o.outcome, o.reason) for o in res.outcomes])
            assert not any(e.verified for e in fresh if e.signature == bytes(64))
            assert_states_fresh(st, spec)
    assert outcomes[0] == outcomes[1]
    reasons = {r for _, r in outcomes[0]}
    assert {"bad_signature", "bad_subject", None} <= reasons
    by_id = dict(zip((id(e) for e in batch), outcomes[0], strict=True))
    assert all(by_id[id(e)] == ("rejected", "bad_signature") for e in forged)


def store_imports(keys: Keys, rec: Record) -> list[Event]:
    return make_registry_imports(
        keys.node, subject=rec.pith, source="x", document=b"doc", events=rec.registry,
        source_aliases=[], created_at="2026-05-01T00:00:00Z", signer_id="test-node")


def test_rejected_events_leave_the_store_unchanged(store: Store, db: Path, keys: Keys,
                                                   recs: list[Record]) -> None:
    load(store, keys, recs[:2])
    before = dump(db)
    states = {p: store.state(p) for p in store.records()}
    bad = [dataclasses.replace(e, signature=bytes(64)) for e in recs[2].natives]
    result = store.ingest([*bad, recs[2].registry[0]], source="evil", received_at=T0 + 1)
    assert {o.outcome for o in result.outcomes} == {"rejected"}
    assert dump(db) == before
    assert {p: store.state(p) for p in store.records()} == states


def test_a_failing_commit_leaves_nothing(store: Store, db: Path, keys: Keys,
                                        recs: list[Record],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    load(store, keys, recs[:1])
    before = dump(db)

    def fail_midway(conn: sqlite3.Connection, states: list[object]) -> None:
        assert len(states) == 2
        write_states(conn, states[:1])  # type: ignore[arg-type]
        raise StoreError("injected failure")

    monkeypatch.setattr(writer, "write_states", fail_midway)
    with pytest.raises(StoreError, match="injected"):
        store.ingest(recs[1].natives + recs[2].natives, source="x", received_at=T0)
    assert dump(db) == before
    monkeypatch.undo()
    result = store.ingest(recs[1].natives + recs[2].natives, source="x", received_at=T0)
    assert result.new == len(recs[1].natives) + len(recs[2].natives)
    assert store.fsck().clean


def test_no_room_is_told_apart_from_other_io_errors() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.execute("PRAGMA max_page_count = 4")  # a database that cannot grow: SQLITE_FULL
    with pytest.raises(sqlite3.Error) as full:
        for _ in range(100):
            conn.execute("INSERT INTO t VALUES (zeroblob(4096))")
    conn.close()
    err = migrate.translate(full.value, "cannot store the batch")
    assert isinstance(err, StoreFull)
    assert str(err) == "cannot store the batch: database or disk is full"
    assert err.hint is not None and "free disk space" in err.hint
    io = migrate.translate(sqlite3.OperationalError("disk I/O error"), "cannot store")
    assert type(io) is StoreIOError
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        no_room = migrate.translate_os(OSError(code, os.strerror(code)), "cannot create x")
        assert isinstance(no_room, StoreFull) and str(no_room).startswith("cannot create x: ")
    denied = migrate.translate_os(OSError(errno.EACCES, "Permission denied"), "cannot create x")
    assert type(denied) is StoreIOError and str(denied) == "cannot create x: Permission denied"


def test_state_heads_name_each_stored_records_hash_and_count(store: Store, keys: Keys,
                                                             recs: list[Record]) -> None:
    load(store, keys, recs[:2])
    missing = recs[2].pith
    heads = store.state_heads([recs[0].pith, recs[1].pith, missing])
    assert set(heads) == {recs[0].pith, recs[1].pith}
    for pith, (sha, count) in heads.items():
        st = store.state(pith)
        assert st is not None and (sha, count) == (st.state_sha256, st.event_count)


def test_states_are_the_merge_of_stored_events(store: Store, spec: NetworkSpec, keys: Keys,
                                               recs: list[Record]) -> None:
    load(store, keys, recs)
    assert_states_fresh(store, spec)
    rec = recs[0]
    st = store.state(rec.pith)
    assert st is not None
    # the invalid (node-signed author attestation) and the equivocation are recorded
    assert (st.invalid_count, st.equivocation_count) == (1, 1)
    forged = rec.natives[7]
    assert store.invalid_reason(forged.event_id) == "signer_not_authorised"
    assert store.invalid_reason(rec.natives[0].event_id) is None
    stats = store.stats()
    assert stats.records == len(recs)
    assert stats.events == len(recs) * (len(rec.natives) + 1)
    assert stats.invalid == len(recs)
    assert stats.objects == stats.events
    counts = store.counts()
    assert (counts.records, counts.events, counts.invalid) == (
        stats.records, stats.events, stats.invalid)
    assert counts.file_bytes > 0  # (it moves as the WAL is checkpointed in the background)
    assert stats.bytes == sum(len(store.event_bytes(e.event_id) or b"")
                              for r in recs for e in r.natives) + sum(
        len(e.canonical_bytes()) for p in store.records() for e in store.events(p)
        if e.event_type == "registry_import")


def test_batches_are_bounded(store: Store, keys: Keys, recs: list[Record]) -> None:
    too_many = recs[0].natives * (MAX_BATCH_EVENTS // len(recs[0].natives) + 1)
    with pytest.raises(BatchTooLarge):
        store.ingest(too_many, source="x", received_at=T0)
    seen = []
    summary = store.ingest_many([e for r in recs for e in r.natives], source="x",
                                received_at=T0, batch_events=7,
                                on_batch=lambda r: seen.append(len(r.outcomes)))
    assert summary.new == sum(len(r.natives) for r in recs)
    assert seen == [7] * (summary.new // 7) + ([summary.new % 7] if summary.new % 7 else [])


def test_ingest_group_commits_parts_together(store: Store, recs: list[Record]) -> None:
    a, b = recs[0].natives[:3], recs[1].natives[:2] + recs[0].natives[:1]
    ra, rb = store.ingest_group([(a, "peer-a", T0), (b, "peer-b", T0 + 1)])
    assert [o.outcome for o in ra.outcomes] == ["new"] * 3
    assert [o.outcome for o in rb.outcomes] == ["new", "new", "duplicate"]
    prov = store.provenance(b[0].event_id)
    assert prov is not None and prov.source == "peer-b"


# -- reads ----------------------------------------------------------------------------------
def test_lookups_by_every_identifier(tmp_path: Path, keys: Keys, recs: list[Record]) -> None:
    spec = mainnet_spec(keys.node)
    with Store(tmp_path / "store.sqlite", spec) as s:
        res = s.ingest_document(GOLDEN.read_bytes(), source=GOLDEN.name, node_key=keys.node,
                                node_id="test-node", received_at=T0)
        assert res.ok and res.registry_admitted == 2
        for ident in [GOLDEN_PITH, "pith:2018:32uk2zwi5aoevo5bzhzclhzwzl",
                      "32UK2ZWI5AOEVO5BZHZCLHZWZL", "pith:32UK2ZWI", "32UK2ZWI",
                      "pith:32UK2ZWI5AOE", "32UK2ZWI5AOEVO5B", "1812.04754", "1812.04754v1",
                      "arXiv:1812.04754", "arxiv:1812.04754v1", "10.48550/arxiv.1812.04754",
                      "10.48550/ARXIV.1812.04754", "doi:10.48550/arXiv.1812.04754",
                      "https://doi.org/10.48550/ARXIV.1812.04754"]:
            assert s.resolve(ident) == GOLDEN_PITH, ident
            st = s.state(ident)
            assert st is not None and st.data == GOLDEN.read_bytes()
        for unknown in ["1812.04755", "1812.04754v2", "pith:2019:32UK2ZWI5AOEVO5BZHZCLHZWZL",
                        "pith:AAAAAAAA", "10.48550/arxiv.1812.04755"]:
            assert s.resolve(unknown) is None, unknown
            assert s.state(unknown) is None
            assert s.bundle(unknown) is None


def test_synthetic_lookups_and_versions(store: Store, keys: Keys, recs: list[Record]) -> None:
    load(store, keys, recs)
    for rec in recs:
        suffix = rec.pith.rsplit(":", 1)[1]
        for ident in (rec.pith, f"pith:{suffix[:8]}", suffix[:12], suffix[:16], rec.arxiv,
                      f"arXiv:{rec.arxiv}v1", f"10.48550/ARXIV.{rec.arxiv}"):
            assert store.resolve(ident) == rec.pith, ident
    assert store.resolve_all(recs[0].arxiv) == [recs[0].pith]


def test_event_reads(store: Store, keys: Keys, recs: list[Record]) -> None:
    load(store, keys, recs[:2])
    rec = recs[0]
    ev = rec.natives[3]
    assert store.event(ev.event_id) == ev
    assert store.event(bytes.fromhex(ev.event_id[7:])) == ev
    assert store.event_bytes(ev.event_id) == ev.canonical_bytes()
    ids = [e.event_id for e in rec.natives[:4]] + ["sha256:" + "0" * 64]
    assert store.events_by_ids(reversed(ids)) == list(reversed(rec.natives[:4]))
    assert store.raw_events([sync_item(e)[1] for e in rec.natives[:2]]) == [
        e.canonical_bytes() for e in rec.natives[:2]]
    # a registry event, carried by the import attestation
    assert store.event(rec.registry[0].event_id) == rec.registry[0]
    registry, aliases = store.admitted(rec.pith)
    assert sorted(e.event_id for e in registry) == sorted(e.event_id for e in rec.registry)
    assert {a["alias_value"] for a in aliases} >= {rec.arxiv}
    events = store.events(rec.pith)
    assert events[0].event_type == "registry_import"
    assert sorted(e.event_id for e in events[1:]) == sorted(e.event_id for e in rec.natives)
    assert store.bundle(rec.pith) == store.bundle(rec.arxiv)


def test_sync_items_are_ordered_and_scoped(store: Store, keys: Keys,
                                           recs: list[Record]) -> None:
    load(store, keys, recs)
    every = [sync_item(e) for p in store.records() for e in store.events(p)]
    assert list(store.iter_sync_items()) == sorted(every)
    assert list(store.iter_sync_items(page=3)) == sorted(every)
    assert list(store.iter_sync_items([])) == sorted(every)
    prefix = recs[0].pith.rsplit(":", 1)[1][:3]
    scoped = sorted(sync_item(e) for p in store.records() for e in store.events(p)
                    if p.rsplit(":", 1)[1].startswith(prefix))
    assert list(store.iter_sync_items([prefix])) == scoped
    assert list(store.iter_sync_items(["77777777"])) == []


# -- codec ----------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
CODEC_KEY = key_from("codec")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON, signer_id=st.text(min_size=1, max_size=12))
def test_event_codec_gives_back_the_exact_bytes(value: object, signer_id: str) -> None:
    ev = make_native_event(CODEC_KEY, event_type="correction",
                           subject="pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL",
                           payload={"field": "x", "value": value, "reason": "r"},
                           created_at="2026-01-01T00:00:00Z", signer_id=signer_id,
                           signer_type="author")
    canonical = ev.canonical_bytes()
    codec, blob = encode_event(ev, canonical)
    assert codec == CODEC_EVENT
    assert decode_bytes(codec, blob, len(canonical)) == canonical


# -- fsck -----------------------------------------------------------------------------------
def flip(db: Path, object_id: int, position: int) -> tuple[str, bytes]:
    conn = sqlite3.connect(db)
    sha, data = conn.execute("SELECT sha256, data FROM objects WHERE id = ?",
                             (object_id,)).fetchone()
    damaged = bytearray(data)
    damaged[position % len(damaged)] ^= 0xFF
    conn.execute("UPDATE objects SET data = ? WHERE id = ?", (bytes(damaged), object_id))
    conn.commit()
    conn.close()
    return sha.hex(), data


def restore(db: Path, object_id: int, data: bytes) -> None:
    conn = sqlite3.connect(db)
    conn.execute("UPDATE objects SET data = ? WHERE id = ?", (data, object_id))
    conn.commit()
    conn.close()


def test_fsck_is_clean_after_ingest(store: Store, keys: Keys, recs: list[Record]) -> None:
    load(store, keys, recs)
    report = store.fsck()
    assert report.clean, report.problems
    assert (report.objects, report.records) == (store.stats().objects, len(recs))
    assert store.fsck(verify_signatures=True).clean


def test_fsck_names_any_object_with_a_flipped_byte(store: Store, db: Path, keys: Keys,
                                                   recs: list[Record]) -> None:
    load(store, keys, recs[:3])
    conn = sqlite3.connect(db)
    objects = [(i, n) for i, n in conn.execute("SELECT id, length(data) FROM objects")]
    conn.close()
    rng = random.Random(42)
    for object_id, length in objects:
        sha, original = flip(db, object_id, rng.randrange(length))
        report = store.fsck()
        assert report.corrupt_objects == [sha]
        assert any(p.kind == "object" and p.subject == sha for p in report.problems)
        restore(db, object_id, original)
    assert store.fsck().clean


def test_fsck_repair_drops_a_damaged_object(store: Store, db: Path, spec: NetworkSpec,
                                            keys: Keys, recs: list[Record]) -> None:
    load(store, keys, recs[:3])
    victim = recs[1].natives[2]
    conn = sqlite3.connect(db)
    (object_id,) = conn.execute("SELECT id FROM events WHERE eid = ?",
                                (bytes.fromhex(victim.event_id[7:]),)).fetchone()
    conn.close()
    sha, _ = flip(db, object_id, 17)
    with pytest.raises(StoreError, match=sha):
        store.events(recs[1].pith)
    report = store.fsck(repair=True)
    assert report.corrupt_objects == [sha]
    assert report.dropped_events == [victim.event_id]
    assert report.repaired and report.remaining == []
    assert store.fsck().clean
    assert store.event(victim.event_id) is None
    assert victim not in store.events(recs[1].pith)
    assert_states_fresh(store, spec)
    # the event can come back (from a peer) and is new again
    result = store.ingest([victim], source="peer", received_at=T0 + 9)
    assert result.outcomes[0].outcome == "new"
    assert store.fsck().clean


def test_a_read_failing_part_way_leaves_no_stale_snapshot(store: Store, db: Path, keys: Keys,
                                                          recs: list[Record]) -> None:
    """A read that raises at a damaged object part way through its rows must not put its
    (pooled) connection back on the snapshot of that moment, while the exception, and the
    cursor its traceback holds, live on: later reads would not see the repair."""
    load(store, keys, recs[:3])
    natives = [e for rec in recs[:3] for e in rec.natives]
    ids = [bytes.fromhex(e.event_id[7:]) for e in natives]
    victim = min(natives, key=lambda e: e.event_id)  # the first row of an eid lookup
    conn = sqlite3.connect(db)
    (object_id,) = conn.execute("SELECT id FROM events WHERE eid = ?",
                                (bytes.fromhex(victim.event_id[7:]),)).fetchone()
    conn.close()
    sha, _ = flip(db, object_id, 17)
    with pytest.raises(StoreError, match=sha) as failed:
        store.raw_events(ids)
    report = store.fsck(repair=True)
    assert report.dropped_events == [victim.event_id]
    assert store.events_by_ids([victim.event_id]) == []
    assert len(store.raw_events(ids)) == len(ids) - 1
    assert failed.value.__traceback__ is not None  # alive throughout


def test_fsck_repair_rebuilds_indexes_and_states(store: Store, db: Path, spec: NetworkSpec,
                                                 keys: Keys, recs: list[Record]) -> None:
    load(store, keys, recs[:3])
    good = {p: store.state(p) for p in store.records()}
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("UPDATE events SET created_s = created_s + 1 WHERE id = 3")
    conn.execute("DELETE FROM states WHERE record = 1")
    conn.execute("UPDATE states SET state_sha256 = zeroblob(32) WHERE record = 2")
    conn.execute("DELETE FROM aliases WHERE kind = 'arxiv'")
    conn.execute("DELETE FROM carried")
    conn.execute("DELETE FROM invalid_events WHERE record = 3")
    conn.execute("DELETE FROM events WHERE id = 5")  # its object stays: an orphan
    conn.commit()
    conn.close()
    report = store.fsck()
    kinds = {p.kind for p in report.problems}
    assert kinds >= {"event", "state", "alias", "carried", "invalid", "object"}
    repaired = store.fsck(repair=True)
    assert repaired.repaired, repaired.remaining
    assert repaired.dropped_events == []
    assert store.fsck().clean
    assert {p: store.state(p) for p in store.records()} == good
    assert store.resolve(recs[0].arxiv) == recs[0].pith
    assert_states_fresh(store, spec)


def test_spec_change_is_noticed_and_repaired(db: Path, keys: Keys, recs: list[Record]) -> None:
    trusting = net_spec(keys, keys.node)
    with Store(db, trusting) as s:
        load(s, keys, recs[:2])
    distrusting = net_spec(keys)
    with Store(db, distrusting) as s:
        assert s.spec_changed
        report = s.fsck()
        assert {p.kind for p in report.problems} == {"spec", "state", "alias"}
        assert s.fsck(repair=True).repaired
        st = s.state(recs[0].pith)
        assert st is not None and b'"canonical_record":null' in st.data
    with Store(db, distrusting) as s:
        assert not s.spec_changed


# -- the trio service -------------------------------------------------------------------------
async def test_store_service_commits_and_reads(store: Store, recs: list[Record]) -> None:
    service = StoreService(store, queue_size=2, clock=lambda: T0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        results: dict[int, object] = {}

        async def send(i: int, events: list[Event]) -> None:
            results[i] = await service.ingest(events, source=f"peer-{i}")

        with trio.fail_after(30):
            async with trio.open_nursery() as senders:
                for i, rec in enumerate(recs):
                    senders.start_soon(send, i, rec.natives)
                senders.start_soon(send, 99, recs[0].natives[:2])
        assert sum(r.new for r in results.values()) == sum(len(r.natives) for r in recs)
        assert service.batches <= len(recs) + 1
        with trio.fail_after(30):
            new, dup, rej = await service.ingest_events(recs[0].natives, source="again")
            assert (new, dup, rej) == (0, len(recs[0].natives), 0)
            items = await service.sync_items([])
            assert len(items) == store.stats().events
            raw = await service.raw_events([i for _, i in items[:3]])
            assert [hashlib.sha256(r).digest() for r in raw] == [
                hashlib.sha256(store.event_bytes(i) or b"").digest() for _, i in items[:3]]
            pith = recs[0].pith
            st = await service.state(pith)
            assert st is not None and st.pith_number == pith
            assert await service.resolve(pith) == pith
            prov = await service.provenance(recs[0].natives[0].event_id)
            assert prov is not None and prov.received_at == T0
            assert (await service.stats()).events == len(items)
        nursery.cancel_scope.cancel()
    with pytest.raises(StoreError, match="not running"):
        await service.ingest(recs[0].natives, source="late")


class GatedCommits:
    """A real store whose first commit waits (on its worker thread) until a second group
    has been checked, or gives up after ``TIMEOUT_S``."""

    TIMEOUT_S = 20.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self.checks = 0
        self.second_checked = threading.Event()
        self.first_commit_started = threading.Event()
        self.overlapped: bool | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def check_group(self, parts: list[tuple[list[Event], str, float]]) -> object:
        batch = self.store.check_group(parts)
        self.checks += 1
        if self.checks == 2:
            self.second_checked.set()
        return batch

    def commit_group(self, batch: object) -> object:
        if self.overlapped is None:
            self.first_commit_started.set()
            self.overlapped = self.second_checked.wait(self.TIMEOUT_S)
        return self.store.commit_group(batch)  # type: ignore[arg-type]


async def test_store_service_checks_the_next_group_while_one_commits(
        store: Store, recs: list[Record]) -> None:
    gated = GatedCommits(store)
    service = StoreService(gated, clock=lambda: T0)  # type: ignore[arg-type]
    results: list[object] = []

    async def send(events: list[Event]) -> None:
        results.append(await service.ingest(events, source="peer"))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            async with trio.open_nursery() as senders:
                senders.start_soon(send, recs[0].natives)
                await trio.to_thread.run_sync(gated.first_commit_started.wait)
                senders.start_soon(send, recs[1].natives)
            nursery.cancel_scope.cancel()
    assert gated.overlapped is True  # the second group was checked during the first commit
    assert [r.new for r in results] == [len(recs[0].natives), len(recs[1].natives)]
    assert store.counts().events == len(recs[0].natives) + len(recs[1].natives)


async def test_a_checked_group_not_yet_committed_fails_cleanly_at_shutdown(
        store: Store, recs: list[Record]) -> None:
    gated = GatedCommits(store)
    service = StoreService(gated, clock=lambda: T0)  # type: ignore[arg-type]
    outcomes: dict[int, object] = {}

    async def send(i: int, events: list[Event]) -> None:
        try:
            outcomes[i] = await service.ingest(events, source="peer")
        except StoreClosed as exc:
            outcomes[i] = exc

    with trio.fail_after(60):
        async with trio.open_nursery() as senders, trio.open_nursery() as running:
            await running.start(service.run)
            senders.start_soon(send, 0, recs[0].natives)
            await trio.to_thread.run_sync(gated.first_commit_started.wait)
            senders.start_soon(send, 1, recs[1].natives)
            await trio.to_thread.run_sync(gated.second_checked.wait)
            running.cancel_scope.cancel()  # the first commit finishes; the second never runs
    first, second = outcomes[0], outcomes[1]
    assert isinstance(first, IngestResult) and first.new == len(recs[0].natives)
    assert isinstance(second, StoreClosed)
    assert store.counts().events == len(recs[0].natives)  # what was reported committed, only


def test_commits_are_checkpointed_beside_the_writer(store: Store, db: Path,
                                                     recs: list[Record]) -> None:
    writer_threshold = sqlite3.connect(db).execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert writer_threshold == 1000  # a new connection's default; the store's writer:
    assert store._writer().execute("PRAGMA wal_autocheckpoint").fetchone()[0] \
        == WRITER_AUTOCHECKPOINT_PAGES
    assert store.checkpoints == (0, 0)
    for rec in recs[:3]:
        store.ingest(rec.natives, source="peer", received_at=T0)
    deadline = time.monotonic() + 30
    while store.checkpoints[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    runs, frames = store.checkpoints
    assert runs >= 1 and frames > 0
    store.close()
    store.close()  # idempotent, and the checkpointer thread is gone
    assert not any(t.name == "store-checkpoint" and t.is_alive()
                   for t in threading.enumerate())


class CountingReads:
    """A real store that counts reads of its sync items."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def iter_sync_items(self, prefixes: list[str] | None = None) -> object:
        self.reads += 1
        return self.store.iter_sync_items(prefixes)


async def test_sync_items_are_kept_and_brought_up_to_date(
        store: Store, db: Path, recs: list[Record], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_service, "SYNC_ITEMS_CACHE_MIN", 1)  # (a few dozen events here)
    counting = CountingReads(store)
    service = StoreService(counting, clock=lambda: T0)  # type: ignore[arg-type]
    scope = [recs[1].pith.rsplit(":", 1)[-1][:3].lower()]  # one record's, as a peer spells it
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await service.ingest(recs[0].natives, source="peer")
            assert await service.sync_items([]) == list(store.iter_sync_items())
            assert counting.reads == 1
            for rec in recs[1:4]:
                await service.ingest(rec.natives, source="peer")
            assert await service.sync_items([]) == list(store.iter_sync_items())
            assert counting.reads == 1  # the kept items, with the new events merged in
            # a partial scope is read every time (only a full mirror's items are kept)
            assert await service.sync_items(scope) == list(store.iter_sync_items(scope))
            assert await service.sync_items(scope) == list(store.iter_sync_items(scope))
            assert counting.reads == 3
            assert await service.sync_items([]) == list(store.iter_sync_items())
            assert counting.reads == 3
            # an event removed behind the service's back (another connection) is noticed
            with sqlite3.connect(db) as conn:
                conn.execute("DELETE FROM carried WHERE import IN (SELECT id FROM events "
                             "WHERE eid = ?)", (sync_item(recs[2].natives[1])[1],))
                conn.execute("DELETE FROM events WHERE eid = ?",
                             (sync_item(recs[2].natives[1])[1],))
            assert await service.sync_items([]) == list(store.iter_sync_items())
            assert counting.reads == 4
            await service.repair()
            assert await service.sync_items([]) == list(store.iter_sync_items())
            assert counting.reads == 5  # a repair drops what was kept
            nursery.cancel_scope.cancel()
    assert 0 < len(list(store.iter_sync_items(scope))) < len(list(store.iter_sync_items()))


async def test_sessions_asking_at_once_share_one_read(store: Store, recs: list[Record]) -> None:
    """(A store this small is read again for each later session: under SYNC_ITEMS_CACHE_MIN
    events, reading costs less than keeping them.)"""
    counting = CountingReads(store)
    service = StoreService(counting, clock=lambda: T0)  # type: ignore[arg-type]
    store.ingest(recs[0].natives, source="peer", received_at=T0)
    got: list[list[tuple[int, bytes]]] = []

    async def ask() -> None:
        got.append(await service.sync_items([]))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ask)
    assert counting.reads == 1
    assert got == [list(store.iter_sync_items())] * 3
    assert await service.sync_items([]) == got[0]
    assert counting.reads == 2


def test_a_close_racing_the_checkpointer_never_leaves_it_waiting(store: Store, db: Path) -> None:
    """close() landing between the thread's wait for the delay and its clear() of the wake
    flag (forced here: the flag's clear() does what close() does first) must still end the
    thread; before, the thread went back to waiting on a flag nobody would set again."""
    checkpointer = WalCheckpointer(db, delay_s=0.01)

    class CloseLandsHere(threading.Event):
        def clear(self) -> None:
            checkpointer._stopped.set()
            self.set()
            super().clear()

    checkpointer._wake = CloseLandsHere()
    checkpointer.committed()
    thread = checkpointer._thread
    assert thread is not None
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert checkpointer.runs == 1  # the checkpoint it had started was finished
