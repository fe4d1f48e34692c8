"""The deterministic merge ``pith-open-graph-merge-v1``: a set of events to a state document.

Pure: the same set of events (in any order, duplicated, in any batches) gives the same
state bytes. Rules are written out in docs/PROTOCOL.md; each step below names its section.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .canonical import canonical_json, sha256_raw
from .documents import loads
from .errors import InputError, ProtocolError
from .events import (
    STATE_LISTS,
    TARGETS,
    Event,
    event_from_json,
    parse_timestamp,
)
from .identifiers import parse_pith_number
from .keys import public_key_from_key_id
from .payloads import check_payload, slot_key
from .receipts import check_record_created
from .spec import MERGE_VERSION, STATE_VERSION, NetworkSpec
from .state import StateDocument, build_state

__all__ = ["Admission", "admission_from_import", "merge", "precheck", "record_created_reason"]

ALIAS_KEYS = ("alias_kind", "alias_value", "created_at")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Admission:
    """Registry events (and the record's aliases) admitted together.

    Made from a trusted importer's signed ``registry_import`` event, or locally by an
    operator who trusts a document (``by == "operator"``; never transmitted).
    """

    events: tuple[Event, ...]
    source_aliases: tuple[Mapping[str, str], ...] = ()
    by: str = "operator"


def _alias_ok(a: Any) -> bool:
    return (isinstance(a, dict) and set(a) == set(ALIAS_KEYS)
            and all(isinstance(a[k], str) and 0 < len(a[k]) <= 256 for k in ALIAS_KEYS))


#: Entries kept in a spec's memo (least recently used go first). An entry can hold a
#: whole admission (decoded registry events, ~10 KB), so this bounds it to about 10 MB;
#: enough for the records of one ingest batch, whose receipts are checked before merging.
MEMO_LIMIT = 1024


def _memo(spec: NetworkSpec, key: tuple[str, bytes | str], compute: Callable[[], T]) -> T:
    """A pure result cached on the spec. Keys are content ids (a native event id names its
    content, or a SHA-256 of the input), so a hit is the same computation on the same input.
    Thread-safe: the store's checking threads fill it while the writer reads it."""
    memo = spec.memo
    with spec.memo_lock:
        if key in memo:
            memo.move_to_end(key)
            return memo[key]  # type: ignore[no-any-return]
    value = compute()
    with spec.memo_lock:
        memo[key] = value
        while len(memo) > MEMO_LIMIT:
            memo.popitem(last=False)
    return value


def admission_from_import(ev: Event, spec: NetworkSpec) -> Admission | None:
    """The admission an import attestation carries, or None if it admits nothing.

    The signature must already have been checked (``Event.verify_native``).
    """
    if ev.event_type != "registry_import" or ev.signature is None:
        return None
    if ev.signature == b"":
        return _admission(ev, spec)
    return _memo(spec, ("admission", ev.event_id), lambda: _admission(ev, spec))


def _admission(ev: Event, spec: NetworkSpec) -> Admission | None:
    if check_payload("registry_import", ev.payload) is not None:
        return None
    if ev.signer.signer_type not in spec.authorisation.get("registry_import", frozenset()):
        return None
    try:
        if not spec.is_trusted_importer(public_key_from_key_id(ev.signer.key_id)):
            return None
        # through canonical bytes, so payload key order never depends on where the
        # attestation came from (made here, or parsed from a peer's bytes)
        finite = ev.known_finite
        events = tuple(event_from_json(loads(canonical_json(e, finite=finite)), finite=finite)
                       for e in ev.payload["events"])
    except InputError:
        return None
    if any(e.signature is not None or e.subject != ev.subject for e in events):
        return None
    aliases = ev.payload["source_aliases"]
    if not all(_alias_ok(a) for a in aliases):
        return None
    return Admission(events, tuple(aliases), by=ev.event_id)


def record_created_reason(ev: Event, subject: str, spec: NetworkSpec) -> str | None:
    """The receipt check of a ``record_created`` event (its Pith Number and the registry's
    signature), cached on the spec. Thread-safe: the store calls it from its checking
    threads, where the signature check runs beside the write path, before merging."""
    return _memo(spec, ("record_created", sha256_raw(canonical_json(
        [ev.payload, subject, ev.signer.key_id], finite=ev.known_finite))),
        lambda: check_record_created(ev.payload, subject, ev.signer.key_id, spec))


def precheck(ev: Event, spec: NetworkSpec) -> None:
    """Run the cached checks a merge of ``ev`` will ask for (receipts of ``record_created``
    events, its own or those an import attestation carries), so that they are done where
    this is called -- the store's checking threads -- rather than in the merge."""
    if ev.event_type == "record_created":
        record_created_reason(ev, ev.subject, spec)
    elif ev.event_type == "registry_import":
        adm = admission_from_import(ev, spec)
        for e in adm.events if adm is not None else ():
            if e.event_type == "record_created":
                record_created_reason(e, ev.subject, spec)


def _content_key(ev: Event) -> bytes:
    return canonical_json([ev.event_type, ev.subject, ev.state_entry()],
                          finite=ev.known_finite)


def _validate(ev: Event, subject: str, spec: NetworkSpec, verify_signatures: bool) -> str | None:
    """None if the event may be applied, else its reason code (docs: "Validity")."""
    if ev.signature is not None:
        if ev.signature == b"":
            # an entry rebuilt from a state document: only its content id can be checked
            if ev.computed_id() != ev.event_id:
                return "event_id_mismatch"
        elif verify_signatures:
            reason = ev.verify_native()
            if reason is not None:
                return reason
    if ev.event_type not in STATE_LISTS:
        return "unknown_event_type"
    if ev.target != TARGETS[ev.event_type]:
        return "wrong_target"
    try:
        parse_timestamp(ev.created_at)
    except InputError:
        return "bad_created_at"
    if ev.signature is not None and (len(ev.created_at) != 20 or "." in ev.created_at):
        return "bad_created_at"
    stype = ev.signer.signer_type
    if stype not in spec.authorisation.get(ev.event_type, frozenset()):
        return "signer_not_authorised"
    if stype == "pith_registry":
        key = spec.registry_key(ev.signer.key_id)
        if ev.signature is not None:  # a native event signed by a registry key
            try:
                pub = public_key_from_key_id(ev.signer.key_id)
            except InputError:
                return "unknown_registry_key"
            if not any(k.public_key == pub for k in spec.registry_keys):
                return "unknown_registry_key"
        elif (key is None or key.fingerprint != ev.signer.public_key_fingerprint
              or key.signer_id != ev.signer.signer_id):
            return "unknown_registry_key"
    else:
        allowed = spec.allowed_signers.get(stype)
        if allowed is not None and ev.signer.public_key_fingerprint not in allowed:
            return "signer_not_authorised"
    if ev.event_type == "record_created":
        return record_created_reason(ev, subject, spec)
    if ev.signature is None:  # registry payloads: Pith's own schema, objects only
        return None if isinstance(ev.payload, dict) else "bad_payload"
    return "bad_payload" if check_payload(ev.event_type, ev.payload) is not None else None


def merge(
    subject: str,
    events: Iterable[Event],
    spec: NetworkSpec,
    *,
    admissions: Iterable[Admission] = (),
    verify_signatures: bool = True,
) -> StateDocument:
    """Merge every event about ``subject`` into its state document.

    ``events`` are native events (including ``registry_import`` attestations, which admit
    registry events when their signer is a trusted importer). Registry events given here
    directly are not admitted; operators admit documents they trust through ``admissions``.
    ``verify_signatures=False`` is for callers whose events were verified on the way in.
    """
    if spec.merge_version != MERGE_VERSION or spec.state_version != STATE_VERSION:
        raise ProtocolError("unsupported network spec version")
    pn = parse_pith_number(subject)
    if not pn.is_full:
        raise ProtocolError(f"merge needs a full Pith Number, not {subject!r}")
    subject = str(pn)

    # 1. Collect candidates; import attestations turn into admissions ("Trust").
    adms = list(admissions)
    native: list[Event] = []
    for ev in events:
        if ev.subject != subject:
            raise ProtocolError(f"event {ev.event_id} is about {ev.subject}, not {subject}")
        if ev.event_type == "registry_import":
            if verify_signatures and ev.verify_native() is not None:
                continue
            adm = admission_from_import(ev, spec)
            if adm is not None:
                adms.append(adm)
        elif ev.signature is not None:
            native.append(ev)
    candidates: dict[str, Event] = {}
    keys: dict[str, bytes] = {}
    conflicts: set[str] = set()
    aliases: dict[tuple[str, str], str] = {}
    for ev in native + [e for a in adms for e in a.events]:
        if ev.subject != subject:
            raise ProtocolError(f"event {ev.event_id} is about {ev.subject}, not {subject}")
        # a verified native event's id names its content; anything else is compared whole
        key = (ev.event_id.encode() if ev.signature and not verify_signatures
               else _content_key(ev))
        have = keys.get(ev.event_id)
        if have is None:
            keys[ev.event_id] = key
            candidates[ev.event_id] = ev
        elif have != key:
            conflicts.add(ev.event_id)
        elif ev.signature and not candidates[ev.event_id].signature:
            candidates[ev.event_id] = ev  # prefer the signed copy of the same content
    for adm in adms:
        for a in adm.source_aliases:
            k = (a["alias_kind"], a["alias_value"])
            if k not in aliases or a["created_at"] < aliases[k]:
                aliases[k] = a["created_at"]

    # 2. Validity ("Validity"): a reason code for every event that cannot be applied.
    invalid: list[dict[str, str]] = []
    valid: list[Event] = []
    for eid in sorted(candidates):
        ev = candidates[eid]
        reason = "event_id_conflict" if eid in conflicts else _validate(
            ev, subject, spec, verify_signatures)
        if reason is None:
            valid.append(ev)
        else:
            invalid.append({"event_id": eid, "event_type": ev.event_type, "reason": reason})

    # 3. Slots, supersession and equivocation ("Slots and equivocation").
    slots: dict[tuple[str, str, str], list[Event]] = defaultdict(list)
    for ev in valid:
        who = "" if ev.event_type == "record_created" else ev.signer.public_key_fingerprint
        slots[(ev.event_type, slot_key(ev.event_type, ev.payload, ev.event_id), who)].append(ev)
    applied: list[Event] = []
    equivocations: list[dict[str, Any]] = []
    for (etype, slot, _who), group in sorted(slots.items()):
        newest = max(e.time_key for e in group)
        top = [e for e in group if e.time_key == newest]
        if len(top) == 1:
            applied.append(top[0])
            continue
        top.sort(key=lambda e: e.event_id)
        equivocations.append({
            "event_type": etype,
            "slot": slot,
            "signer": top[0].signer.to_json(),
            "created_at": top[0].created_at,
            "event_ids": [e.event_id for e in top],
        })

    alias_list = [{"alias_kind": k, "alias_value": v, "created_at": t}
                  for (k, v), t in sorted(aliases.items())]
    return build_state(subject, candidates_count=len(candidates), applied=applied,
                       invalid=invalid, equivocations=equivocations, aliases=alias_list)


