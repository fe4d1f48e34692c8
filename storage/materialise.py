"""What the store derives from its events: states, invalid events, aliases, carried ids.

Functions here run on a connection inside a transaction the caller owns (ingest, or a fsck
repair); they never commit.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pithnode.protocol.canonical import canonical_sha256
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event
from pithnode.protocol.identifiers import normalise_alias, parse_pith_number
from pithnode.protocol.ingest import event_set_fingerprint
from pithnode.protocol.merge import merge
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.state import StateDocument

from .codec import CodecError, decode_event, encode_bytes
from .errors import StoreCorrupt

__all__ = [
    "IN_CHUNK",
    "MaterialisedState",
    "alias_rows",
    "carried_ids",
    "encode_state",
    "in_lists",
    "load_events",
    "materialise",
    "prefix_alias_rows",
    "raw_event_id",
    "spec_digest",
    "write_state",
    "write_states",
]

ORIGIN_PITH = 0
ORIGIN_STATE = 1
_ID_PREFIX = "sha256:"


def raw_event_id(event_id: Any) -> bytes | None:
    """32 raw bytes of ``sha256:<64 lowercase hex>``; None for any other spelling."""
    if not isinstance(event_id, str) or len(event_id) != 71 or not event_id.startswith(
            _ID_PREFIX):
        return None
    try:
        raw = bytes.fromhex(event_id[7:])
    except ValueError:
        return None
    return raw if raw.hex() == event_id[7:] else None


def spec_digest(spec: NetworkSpec) -> str:
    """SHA-256 of what in a network spec decides merged states (trust, authorisation)."""
    digest: str = canonical_sha256({
        "name": spec.name,
        "merge_version": spec.merge_version,
        "state_version": spec.state_version,
        "registry_keys": sorted([k.key_id, k.signer_id, k.public_key.hex()]
                                for k in spec.registry_keys),
        "trusted_importers": sorted(k.public_key.hex() for k in spec.trusted_importers),
        "authorisation": {k: sorted(v) for k, v in sorted(spec.authorisation.items())},
        "allowed_signers": {k: sorted(v) for k, v in sorted(spec.allowed_signers.items())},
    })
    return digest


def prefix_alias_rows(record_id: int, pith: str) -> list[tuple[str, str, int, str, int]]:
    """The Pith Number's own lookup names: its bare suffix and its 8/12/16 prefixes."""
    suffix = parse_pith_number(pith).suffix
    rows = [("pith", suffix, record_id, "", ORIGIN_PITH)]
    rows += [(f"pith_short_{n}", suffix[:n], record_id, "", ORIGIN_PITH) for n in (8, 12, 16)]
    return rows


def alias_rows(record_id: int, aliases: Iterable[dict[str, Any]]
               ) -> list[tuple[str, str, int, str, int]]:
    """Rows for a state's ``source_aliases``, normalised as lookups normalise them."""
    rows = []
    for a in aliases:
        kind, value, created = a["alias_kind"], a["alias_value"], a["created_at"]
        try:
            nkind, nvalue = normalise_alias(value)
        except InputError:
            nkind, nvalue = kind, value
        if nkind == kind:
            value = nvalue
        rows.append((kind, value, record_id, created, ORIGIN_STATE))
    return rows


def carried_ids(ev: Event) -> list[bytes]:
    """Raw ids of the registry events an import attestation carries (well-formed ones)."""
    payload = ev.payload if isinstance(ev.payload, dict) else {}
    carried = payload.get("events")
    out = []
    for e in carried if isinstance(carried, list) else []:
        raw = raw_event_id(e.get("event_id")) if isinstance(e, dict) else None
        if raw is not None:
            out.append(raw)
    return sorted(set(out))


def load_events(conn: sqlite3.Connection, record_id: int,
                fresh: dict[bytes, Event] | None = None) -> Iterator[tuple[bytes, Event]]:
    """Every stored event of a record as ``(raw id, Event)``, in arrival order.

    Events in ``fresh`` (just inserted, already in memory) are not decoded again. Raises
    :class:`StoreCorrupt` naming the object whose bytes do not match their SHA-256.
    """
    rows = conn.execute(
        "SELECT e.eid, o.codec, o.data, o.size, o.sha256 FROM events e "
        "JOIN objects o ON o.id = e.id WHERE e.record = ? ORDER BY e.id", (record_id,))
    for eid, codec, data, size, sha in rows:
        ev = fresh.get(eid) if fresh else None
        if ev is None:
            try:
                ev, _ = decode_event(codec, data, size, sha)
            except CodecError as exc:
                raise StoreCorrupt(f"object {sha.hex()} is damaged: {exc}") from exc
        yield eid, ev


@dataclass(frozen=True, slots=True)
class MaterialisedState:
    """One record's state and the rows derived from it."""

    state: StateDocument
    served: bytes
    fingerprint: str
    stored_events: int

    @property
    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.state.doc
        return doc


def materialise(subject: str, events: Sequence[tuple[bytes, Event]],
                spec: NetworkSpec) -> MaterialisedState:
    """Merge a record's stored events (their signatures were checked on the way in)."""
    state = merge(subject, [ev for _, ev in events], spec, verify_signatures=False)
    fingerprint = event_set_fingerprint(_ID_PREFIX + eid.hex() for eid, _ in events)
    return MaterialisedState(state, state.served_bytes(), fingerprint, len(events))


#: Host parameters per ``IN (...)`` list.
IN_CHUNK = 500

_T = TypeVar("_T")


def in_lists(values: Sequence[_T]) -> Iterator[tuple[list[_T], str]]:
    """``values`` in chunks of at most IN_CHUNK, each with its ``?,?,...`` placeholders."""
    for i in range(0, len(values), IN_CHUNK):
        chunk = list(values[i:i + IN_CHUNK])
        yield chunk, ",".join("?" * len(chunk))


def encode_state(served: bytes) -> tuple[int, bytes, bytes]:
    """``(codec, blob, sha256)`` of a served state; zlib and hashlib release the GIL, so
    this may run in a helper thread while the next record is merged."""
    codec, blob = encode_bytes(served)
    return codec, blob, hashlib.sha256(served).digest()


def write_state(conn: sqlite3.Connection, record_id: int, m: MaterialisedState) -> None:
    """Replace a record's materialised state, invalid events and state-derived aliases."""
    write_states(conn, [(record_id, m, encode_state(m.served))])


def write_states(conn: sqlite3.Connection,
                 states: Sequence[tuple[int, MaterialisedState, tuple[int, bytes, bytes]]]
                 ) -> None:
    """:func:`write_state` for many records in a few statements; each entry is
    ``(record id, state, encode_state(state.served))``."""
    rows, invalid, aliases = [], [], []
    for record_id, m, (codec, blob, data_sha) in states:
        doc = m.doc
        rows.append((record_id, bytes.fromhex(m.state.state_sha256), bytes.fromhex(m.fingerprint),
                     m.stored_events, doc["event_count"], doc["valid_event_count"],
                     doc["invalid_event_count"], doc["equivocation_count"], codec,
                     len(m.served), data_sha, blob))
        invalid += [(record_id, raw, e["event_type"], e["reason"])
                    for e in doc["invalid_events"]
                    if (raw := raw_event_id(e["event_id"])) is not None]
        aliases += alias_rows(record_id, doc["current"]["source_aliases"])
    conn.executemany(
        "INSERT OR REPLACE INTO states (record, state_sha256, fingerprint, stored_events, "
        "event_count, valid_count, invalid_count, equivocation_count, codec, size, "
        "data_sha256, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    for chunk, marks in in_lists([r[0] for r in rows]):
        conn.execute(f"DELETE FROM invalid_events WHERE record IN ({marks})", chunk)
        conn.execute(f"DELETE FROM aliases WHERE origin = ? AND record IN ({marks})",
                     [ORIGIN_STATE, *chunk])
    if invalid:
        conn.executemany("INSERT OR REPLACE INTO invalid_events (record, eid, event_type, "
                         "reason) VALUES (?,?,?,?)", invalid)
    if aliases:
        conn.executemany("INSERT OR IGNORE INTO aliases (kind, value, record, created_at, "
                         "origin) VALUES (?,?,?,?,?)", aliases)
