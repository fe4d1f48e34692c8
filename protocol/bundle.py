"""Pith bundle documents: the record, its aliases and its full events."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_sha256
from .errors import DecodeError, InputError
from .events import Event, event_from_json
from .identifiers import parse_pith_number
from .state import served_json

__all__ = ["BUNDLE_TYPE", "ParsedBundle", "build_bundle", "bundle_event_order", "parse_bundle"]

BUNDLE_TYPE = "pith_open_graph_bundle"
BUNDLE_VERSION = "1.0"
MAX_BUNDLE_EVENTS = 100_000
_BUNDLE_KEYS = ("bundle_type", "bundle_version", "pith_number", "short_pith_number",
                "canonical_record", "canonical_sha256", "source", "source_aliases", "events")


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    pith_number: str
    canonical_record: Any
    canonical_sha256: str | None
    source_aliases: tuple[dict[str, str], ...]
    events: tuple[Event, ...]
    doc: dict[str, Any]


def parse_bundle(doc: Any) -> ParsedBundle:
    if not isinstance(doc, dict) or doc.get("bundle_type") != BUNDLE_TYPE:
        raise DecodeError("wrong_document_type", "not a Pith bundle document")
    if doc.get("bundle_version") != BUNDLE_VERSION:
        raise DecodeError("bad_version",
                          f"unsupported bundle_version {doc.get('bundle_version')!r}")
    missing = [k for k in _BUNDLE_KEYS if k not in doc]
    if missing:
        raise DecodeError("bad_bundle", f"bundle lacks {missing[0]!r}")
    subject = doc["pith_number"]
    try:
        if (not isinstance(subject, str) or not parse_pith_number(subject).is_full
                or str(parse_pith_number(subject)) != subject):
            raise DecodeError("bad_bundle",
                              "pith_number must be a full Pith Number in canonical form")
    except InputError as exc:
        raise DecodeError("bad_bundle", str(exc)) from exc
    events = doc["events"]
    if not isinstance(events, list) or len(events) > MAX_BUNDLE_EVENTS:
        raise DecodeError("bad_bundle", f"events must be a list of at most {MAX_BUNDLE_EVENTS}")
    aliases = doc["source_aliases"]
    if not isinstance(aliases, list) or not all(
        isinstance(a, dict) and len(a) == 3
        and all(isinstance(a.get(k), str) for k in ("alias_kind", "alias_value", "created_at"))
        for a in aliases
    ):
        raise DecodeError("bad_bundle", "source_aliases is malformed")
    parsed = tuple(event_from_json(e) for e in events)
    for ev in parsed:
        if ev.subject != subject:
            raise DecodeError("bad_bundle", f"event {ev.event_id} is about another record")
    if not isinstance(doc["canonical_sha256"], str) and not (
            doc["canonical_sha256"] is None and doc["canonical_record"] is None):
        raise DecodeError("bad_bundle", "canonical_sha256 must be a string")
    return ParsedBundle(subject, doc["canonical_record"], doc["canonical_sha256"],
                        tuple(aliases), parsed, doc)


def bundle_event_order(events: Iterable[Event]) -> list[Event]:
    """Bundle order: record_created, other events by (time, id), import attestations last."""
    return sorted(events, key=lambda e: (e.event_type != "record_created",
                                         e.event_type == "registry_import", e.time_key,
                                         e.event_id))


def build_bundle(subject: str, canonical_record: Any, aliases: Sequence[dict[str, str]],
                 events: Iterable[Event]) -> bytes:
    """Served bytes of a bundle (deterministic for the same inputs)."""
    pn = parse_pith_number(subject)
    source = canonical_record.get("source") if isinstance(canonical_record, dict) else None
    doc = {
        "bundle_type": BUNDLE_TYPE,
        "bundle_version": BUNDLE_VERSION,
        "pith_number": subject,
        "short_pith_number": pn.short,
        "canonical_record": canonical_record,
        "canonical_sha256": canonical_sha256(canonical_record) if canonical_record else None,
        "source": source,
        "source_aliases": [dict(a) for a in aliases],
        "events": [e.to_json() for e in bundle_event_order(events)],
    }
    return served_json(doc)
