"""State documents: assembly in Pith's served key order, ``state_sha256``, parsing.

The served file keeps Pith's key order and is written compactly; ``state_sha256`` is over
the *sorted* canonical form of the document without the ``state_sha256`` key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .canonical import canonical_json, compact_json, key_sorted, sha256_hex
from .errors import DecodeError, InputError
from .events import STATE_LISTS, Event, event_from_state_entry
from .identifiers import parse_pith_number
from .spec import MERGE_VERSION, STATE_VERSION

__all__ = ["CURRENT_LISTS", "StateDocument", "build_state", "parse_state", "served_json"]

STATE_TYPE = "pith_open_graph_state"
#: ``current`` keys in served order (``record_created`` last, one object).
CURRENT_LISTS = (
    "graph_snapshots", "author_attestations", "timestamp_anchors", "storage_attestations",
    "citation_signatures", "replication_records", "corrections", "mirror_hints",
)
TOP_KEYS = (
    "state_type", "state_version", "pith_number", "merge_version", "event_count",
    "valid_event_count", "invalid_event_count", "equivocation_count", "current",
    "equivocations", "invalid_events", "applied_event_ids", "state_sha256",
)

def _sorted(obj: Any) -> Any:
    """Keys sorted; only for what the merge puts in a state (its floats are finite)."""
    return key_sorted(obj, finite=True)

def _entry(ev: Event) -> dict[str, Any]:
    e = ev.state_entry()
    return {"event_id": e["event_id"], "target": e["target"], "created_at": e["created_at"],
            "signer": _sorted(e["signer"]), "payload": _sorted(e["payload"])}

@dataclass(frozen=True, slots=True)
class StateDocument:
    """A state document as a plain dict in served key order; ``merged`` when the merge
    built it (so it holds only the payloads of events whose canonical bytes exist)."""

    doc: dict[str, Any]
    merged: bool = field(default=False, compare=False)

    @property
    def pith_number(self) -> str:
        return str(self.doc["pith_number"])

    @property
    def state_sha256(self) -> str:
        return str(self.doc["state_sha256"])

    def served_bytes(self) -> bytes:
        return served_json(self.doc, finite=self.merged)

def served_json(doc: Any, *, finite: bool = False) -> bytes:
    """Compact JSON in the document's own key order, no trailing newline (Pith's form);
    ``finite`` as for :func:`~pithnode.protocol.canonical.canonical_json`."""
    return compact_json(doc, finite=finite)

def state_hash(doc: dict[str, Any], *, merged: bool = False) -> str:
    """``state_sha256`` of a state document; ``merged`` when the merge built it."""
    return sha256_hex(canonical_json({k: v for k, v in doc.items() if k != "state_sha256"},
                                     finite=merged))

def build_state(
    subject: str,
    *,
    candidates_count: int,
    applied: Sequence[Event],
    invalid: Sequence[dict[str, str]],
    equivocations: Sequence[dict[str, Any]],
    aliases: Sequence[dict[str, str]],
) -> StateDocument:
    """Assemble the document (docs/PROTOCOL.md, "State document" and "Ordering")."""
    order = sorted(applied, key=lambda e: (e.event_type != "record_created", e.time_key,
                                           e.event_id))
    lists: dict[str, list[dict[str, Any]]] = {name: [] for name in CURRENT_LISTS}
    created: dict[str, Any] | None = None
    for ev in order:
        name = STATE_LISTS[ev.event_type]
        if name == "record_created":
            created = _entry(ev)
        else:
            lists[name].append(_entry(ev))
    record = _sorted(created["payload"].get("canonical_record")) if created else None
    current: dict[str, Any] = {"canonical_record": record,
                               "source_aliases": [dict(a) for a in aliases]}
    current.update(lists)
    current["record_created"] = created
    doc: dict[str, Any] = {
        "state_type": STATE_TYPE,
        "state_version": STATE_VERSION,
        "pith_number": subject,
        "merge_version": MERGE_VERSION,
        "event_count": candidates_count,
        "valid_event_count": candidates_count - len(invalid),
        "invalid_event_count": len(invalid),
        "equivocation_count": len(equivocations),
        "current": current,
        "equivocations": [_sorted(e) for e in equivocations],
        "invalid_events": [dict(e) for e in invalid],
        "applied_event_ids": [e.event_id for e in order],
    }
    doc["state_sha256"] = state_hash(doc, merged=True)
    return StateDocument(doc, merged=True)

@dataclass(frozen=True, slots=True)
class ParsedState:
    pith_number: str
    events: tuple[Event, ...]
    source_aliases: tuple[dict[str, str], ...]
    claimed_sha256: str
    doc: dict[str, Any]

def parse_state(doc: Any) -> ParsedState:
    """Take a state document apart into its applied events and aliases."""
    if not isinstance(doc, dict) or doc.get("state_type") != STATE_TYPE:
        raise DecodeError("wrong_document_type", "not a Pith state document")
    if doc.get("state_version") != STATE_VERSION:
        raise DecodeError("bad_version", f"unsupported state_version {doc.get('state_version')!r}")
    missing = [k for k in TOP_KEYS if k not in doc]
    if missing:
        raise DecodeError("bad_state", f"state document lacks {missing[0]!r}")
    subject = doc["pith_number"]
    try:
        canonical = isinstance(subject, str) and str(parse_pith_number(subject)) == subject
    except InputError:
        canonical = False
    if not canonical or not subject.count(":") == 2:
        raise DecodeError("bad_state", "pith_number must be a full Pith Number in canonical form")
    current = doc["current"]
    if not isinstance(current, dict):
        raise DecodeError("bad_state", "current must be an object")
    events: list[Event] = []
    for name in CURRENT_LISTS:
        entries = current.get(name, [])
        if not isinstance(entries, list):
            raise DecodeError("bad_state", f"current.{name} must be a list")
        events.extend(event_from_state_entry(name, e, subject) for e in entries)
    if current.get("record_created") is not None:
        events.append(event_from_state_entry("record_created", current["record_created"],
                                              subject))
    aliases = current.get("source_aliases", [])
    if not isinstance(aliases, list) or not all(
        isinstance(a, dict) and all(isinstance(a.get(k), str) for k in
                                    ("alias_kind", "alias_value", "created_at"))
        and len(a) == 3 for a in aliases
    ):
        raise DecodeError("bad_state", "current.source_aliases is malformed")
    claimed = doc["state_sha256"]
    if not isinstance(claimed, str):
        raise DecodeError("bad_state", "state_sha256 must be a string")
    return ParsedState(subject, tuple(events), tuple(aliases), claimed, doc)

_ = STATE_LISTS  # re-exported for callers that route by list name
