"""Offline verification of a state or bundle document, check by check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .bundle import parse_bundle
from .canonical import canonical_sha256
from .documents import decode_document
from .errors import DecodeError, InputError
from .events import Event
from .identifiers import parse_pith_number, pith_number_for_record
from .merge import Admission, merge
from .receipts import check_receipt
from .spec import NetworkSpec
from .state import StateDocument, parse_state, state_hash

__all__ = ["Check", "Report", "admissions_for", "verify_bytes"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Report:
    kind: str
    pith_number: str
    checks: list[Check] = field(default_factory=list)
    state_sha256: str | None = None

    @property
    def valid(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "document": self.kind,
            "pith_number": self.pith_number,
            "valid": self.valid,
            "state_sha256": self.state_sha256,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "failed": [c.name for c in self.checks if not c.ok],
        }


def _record_checks(report: Report, record: Any, claimed: Any, created: Event | None,
                   spec: NetworkSpec) -> None:
    try:
        digest = canonical_sha256(record)
        report.add("canonical_sha256", digest == claimed,
                   digest if digest == claimed else f"record hashes to {digest}, "
                   f"document claims {claimed}")
        derived = str(pith_number_for_record(record))
        report.add("pith_number", derived == report.pith_number,
                   derived if derived == report.pith_number
                   else f"record gives {derived}, document names {report.pith_number}")
    except (InputError, TypeError, ValueError) as exc:
        report.add("canonical_record", False, f"malformed canonical record: {exc}")
        return
    if created is None:
        report.add("receipt", False, "no record_created event carries a receipt")
        return
    payload = created.payload if isinstance(created.payload, dict) else {}
    if payload.get("canonical_record") != record:
        report.add("record_created", False,
                   "record_created carries a different canonical record")
    reason = check_receipt(payload.get("receipt"), str(claimed), spec)
    key = payload.get("receipt", {}).get("key_id") if isinstance(
        payload.get("receipt"), dict) else None
    report.add("receipt", reason is None,
               f"signed by {key}" if reason is None else f"{reason} (key {key})")


def admissions_for(events: tuple[Event, ...],
                   aliases: tuple[dict[str, str], ...]) -> tuple[list[Event], Admission]:
    """Split a trusted document's events: native ones stand alone, the rest are admitted."""
    native = [e for e in events if e.signature]
    admitted = tuple(e for e in events if not e.signature)
    return native, Admission(admitted, aliases)


def verify_bytes(data: bytes, spec: NetworkSpec) -> Report:
    """Verify a document. Raises :class:`DecodeError` for unusable input (exit 2)."""
    document = decode_document(data)
    if document.kind == "state":
        return _verify_state(data, document.doc, spec)
    if document.kind == "bundle":
        return _verify_bundle(document.doc, spec)
    raise DecodeError("wrong_document_type", "verify takes a state or bundle document")


def _verify_state(data: bytes, doc: dict[str, Any], spec: NetworkSpec) -> Report:
    parsed = parse_state(doc)
    report = Report("state", parsed.pith_number)
    current = doc["current"]
    created = next((e for e in parsed.events if e.event_type == "record_created"), None)
    record = current.get("canonical_record")
    claimed = created.payload.get("canonical_sha256") if created and isinstance(
        created.payload, dict) else None
    _record_checks(report, record, claimed, created, spec)
    for ev in parsed.events:
        if ev.signature is not None and ev.computed_id() != ev.event_id:
            report.add("event_id", False, f"{ev.event_type} {ev.event_id} does not match "
                       "its content")
    computed = state_hash(doc)
    report.add("state_sha256", computed == parsed.claimed_sha256,
               computed if computed == parsed.claimed_sha256
               else f"document hashes to {computed}, claims {parsed.claimed_sha256}")
    native, adm = admissions_for(parsed.events, parsed.source_aliases)
    merged = merge(parsed.pith_number, native, spec, admissions=[adm])
    report.state_sha256 = merged.state_sha256
    # a state lists only what it applied (not superseded, invalid or equivocating events),
    # so a re-merge of its entries can reproduce its current lists and applied ids
    same = all(merged.doc[k] == doc.get(k) for k in ("current", "applied_event_ids"))
    report.add("merge", same,
               "re-merge reproduces the document" + (
                   " byte for byte" if merged.served_bytes() == data else "")
               if same else _first_difference(merged, doc))
    return report


def _first_difference(merged: StateDocument, doc: dict[str, Any]) -> str:
    for key in ("current", "applied_event_ids"):
        if merged.doc.get(key) != doc.get(key):
            return f"re-merge differs at {key!r} (state_sha256 {merged.state_sha256})"
    return f"re-merge differs (state_sha256 {merged.state_sha256})"


def _verify_bundle(doc: dict[str, Any], spec: NetworkSpec) -> Report:
    parsed = parse_bundle(doc)
    report = Report("bundle", parsed.pith_number)
    short = doc.get("short_pith_number")
    pn = parse_pith_number(parsed.pith_number)
    report.add("short_pith_number", short == pn.short, str(short))
    created = next((e for e in parsed.events if e.event_type == "record_created"), None)
    _record_checks(report, parsed.canonical_record, parsed.canonical_sha256, created, spec)
    bad = [(e, e.verify_native()) for e in parsed.events if e.signature]
    for ev, reason in bad:
        if reason is not None:
            report.add("event_signature", False, f"{ev.event_type} {ev.event_id}: {reason}")
    n_native = sum(1 for e in parsed.events if e.signature)
    report.add("event_signatures", all(r is None for _, r in bad),
               f"{n_native} native event signature(s) checked")
    native, adm = admissions_for(parsed.events, parsed.source_aliases)
    merged = merge(parsed.pith_number, native, spec, admissions=[adm], verify_signatures=False)
    report.state_sha256 = merged.state_sha256
    n_invalid = merged.doc["invalid_event_count"]
    report.add("merge", True, f"{merged.doc['valid_event_count']} valid, {n_invalid} invalid, "
               f"{merged.doc['equivocation_count']} equivocation(s)")
    return report
