"""What a node accepts into its store, and the import attestations it makes.

Acceptance is narrower than validity: an event is *accepted* (stored, synced, merged) when
it is a well-formed native event whose id and signature check out and, for import
attestations, whose signer the network spec trusts. Accepted events may still be *invalid*
in the merge (an unauthorised signer type, a bad payload): those are recorded in the
state's ``invalid_events``. Rejected events are never stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .canonical import sha256_raw
from .errors import InputError
from .events import (
    MAX_EVENT_BYTES,
    NATIVE_TIMESTAMP,
    Event,
    SignatureJob,
    event_from_json,
    make_native_event,
    parse_timestamp,
)
from .identifiers import parse_pith_number
from .keys import SigningKey, public_key_from_key_id, verify_digest
from .merge import admission_from_import
from .spec import NetworkSpec

__all__ = [
    "MAX_IMPORT_EVENTS",
    "accept",
    "accept_deferred",
    "decode_event",
    "event_set_fingerprint",
    "make_registry_imports",
    "sync_item",
]

#: Registry events one import attestation carries; larger sets are split.
MAX_IMPORT_EVENTS = 64
#: Room left in an attestation for its envelope, aliases and signature.
IMPORT_OVERHEAD_BYTES = 64 * 1024


def decode_event(obj: Any) -> Event:
    """Parse one envelope; raises :class:`InputError` with a reason code."""
    return event_from_json(obj)


def accept(ev: Event, spec: NetworkSpec) -> str | None:
    """None if a node should store ``ev``, else the rejection reason code."""
    reason, job = _before_signature(ev)
    if reason is None and job is not None:
        reason = ev.settle_signature(verify_digest(*job))
    return reason if reason is not None else _after_signature(ev, spec)


def accept_deferred(ev: Event, spec: NetworkSpec) -> tuple[str | None, SignatureJob | None]:
    """:func:`accept` with its Ed25519 check left to the caller, who may run many at once
    on other threads: ``(reason, job)``. With a ``job``, the outcome is what
    ``ev.settle_signature(verify_digest(*job))`` returns when that is ``bad_signature``,
    whatever ``reason`` says (the checks after the signature's ran as if it were good), else
    ``reason``."""
    reason, job = _before_signature(ev)
    if reason is not None:
        return reason, None
    return _after_signature(ev, spec), job


def _before_signature(ev: Event) -> tuple[str | None, SignatureJob | None]:
    if ev.signature is None:
        return "unsigned_registry_event", None
    if ev.signature == b"":
        return "bad_signature", None
    try:
        if str(parse_pith_number(ev.subject)) != ev.subject:
            return "bad_subject", None
        if not NATIVE_TIMESTAMP.fullmatch(ev.created_at):
            return "bad_created_at", None
        parse_timestamp(ev.created_at)
        return ev.signature_job()
    except InputError as exc:  # no canonical form (e.g. a lone surrogate), bad date
        return exc.reason, None


def _after_signature(ev: Event, spec: NetworkSpec) -> str | None:
    if ev.event_type == "registry_import":
        try:
            trusted = spec.is_trusted_importer(public_key_from_key_id(ev.signer.key_id))
        except InputError:
            return "bad_key_id"
        if not trusted:
            return "importer_not_trusted"
        if admission_from_import(ev, spec) is None:
            return "bad_import"
    return None


def event_set_fingerprint(event_ids: Iterable[str]) -> str:
    """SHA-256 over the sorted raw 32-byte ids of a record's stored events, hex."""
    raw = sorted(bytes.fromhex(e.removeprefix("sha256:")) for e in event_ids)
    return sha256_raw(b"".join(raw)).hex()


def sync_item(ev: Event) -> tuple[int, bytes]:
    """The (timestamp, id) item Negentropy reconciles: seconds of created_at, raw id."""
    return ev.time_key // 1_000_000, bytes.fromhex(ev.event_id.removeprefix("sha256:"))


def make_registry_imports(
    key: SigningKey,
    *,
    subject: str,
    source: str,
    document: bytes,
    events: Sequence[Event],
    source_aliases: Sequence[dict[str, str]],
    created_at: str,
    signer_id: str,
) -> list[Event]:
    """Import attestations admitting ``events`` (registry events of one record).

    Carries at most :data:`MAX_IMPORT_EVENTS` events and stays under
    :data:`MAX_EVENT_BYTES` each; the aliases ride on the first.
    """
    registry = [e for e in events if e.signature is None]
    if not registry:
        return []
    doc_sha = sha256_raw(document).hex()
    chunks: list[list[Event]] = [[]]
    size = 0
    for ev in registry:
        n = len(ev.canonical_bytes())
        if chunks[-1] and (len(chunks[-1]) >= MAX_IMPORT_EVENTS
                           or size + n > MAX_EVENT_BYTES - IMPORT_OVERHEAD_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(ev)
        size += n
    out = []
    for i, chunk in enumerate(chunks):
        payload = {
            "source": source[:1024],
            "document_sha256": doc_sha,
            "events": [e.to_json() for e in chunk],
            "source_aliases": [dict(a) for a in source_aliases] if i == 0 else [],
        }
        imp = make_native_event(key, event_type="registry_import", subject=subject,
                                payload=payload, created_at=created_at,
                                signer_id=signer_id, signer_type="node")
        if len(imp.canonical_bytes()) > MAX_EVENT_BYTES:
            raise InputError("event_too_large",
                             f"registry event {chunk[0].event_id} is too large to import")
        out.append(imp)
    return out
