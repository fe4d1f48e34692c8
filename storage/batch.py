"""An ingest batch on its way in: checked and encoded before the write transaction.

Checking (the protocol's ``accept``, the store's own rule, canonical bytes and their object
encoding) needs no database, so it runs on any thread, in parallel, and overlaps with the
commit of the batch before. Classification against the stored events happens twice: once
before checking (exact copies of stored events skip signature checks) and again under the
write lock (what was committed meanwhile).
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pithnode.protocol.errors import InputError
from pithnode.protocol.events import MAX_EVENT_BYTES, Event, SignatureJob
from pithnode.protocol.identifiers import parse_pith_number
from pithnode.protocol.ingest import accept, accept_deferred
from pithnode.protocol.merge import precheck
from pithnode.protocol.spec import NetworkSpec

from .codec import encode_event
from .errors import BatchTooLarge, StoreError
from .materialise import in_lists, raw_event_id
from .results import EventOutcome, IngestResult, Outcome

__all__ = [
    "DEFAULT_BATCH_EVENTS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_SOURCE_CHARS",
    "Batch",
    "Item",
    "Part",
    "check_item",
    "chunked",
    "classify",
    "make_batch",
    "mark_exact_copies",
    "results",
    "settle_signatures",
    "store_rule",
    "stored_digests",
]

#: Most events one ingest transaction takes; callers split larger input (ingest_many).
MAX_BATCH_EVENTS = 5000
#: Most canonical bytes of new events one ingest transaction takes.
MAX_BATCH_BYTES = 64 << 20
DEFAULT_BATCH_EVENTS = 1000
MAX_SOURCE_CHARS = 1024
_WHOLE_SECONDS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")

#: Events with the source they came from and when they were received.
Part = tuple[Sequence[Event], str, float]


@dataclass(slots=True)
class Item:
    """One event of a batch."""

    ev: Event
    part: int
    eid: bytes | None
    outcome: Outcome = "rejected"
    reason: str | None = None
    canonical: bytes = b""
    sha: bytes = b""
    codec: int = 0
    blob: bytes = b""
    created_s: int = 0
    #: a deferred Ed25519 check (``check_item(..., defer_signature=True)``)
    job: SignatureJob | None = None


@dataclass(slots=True)
class Batch:
    parts: Sequence[Part]
    items: list[Item]


def make_batch(parts: Sequence[Part]) -> Batch:
    if sum(len(p[0]) for p in parts) > MAX_BATCH_EVENTS:
        raise BatchTooLarge(f"an ingest batch takes at most {MAX_BATCH_EVENTS} events")
    for _, source, received_at in parts:
        if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE_CHARS:
            raise StoreError(f"source must be 1..{MAX_SOURCE_CHARS} characters")
        if not math.isfinite(received_at):
            raise StoreError("received_at must be a finite number of seconds")
    return Batch(parts, [Item(ev, n, raw_event_id(ev.event_id))
                         for n, (events, _, _) in enumerate(parts) for ev in events])


def chunked(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for ev in events:
        batch.append(ev)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def stored_digests(conn: sqlite3.Connection, ids: Iterable[bytes | None]) -> dict[bytes, bytes]:
    """Object SHA-256 of the stored events among ``ids``."""
    out: dict[bytes, bytes] = {}
    unique = sorted({i for i in ids if i is not None})
    for chunk, marks in in_lists(unique):
        out.update(conn.execute(f"SELECT e.eid, o.sha256 FROM events e JOIN objects o "
                                f"ON o.id = e.id WHERE e.eid IN ({marks})", chunk))
    return out


def mark_exact_copies(batch: Batch, stored: dict[bytes, bytes]) -> list[Item]:
    """Mark byte-for-byte copies of stored events duplicate (they were checked when they
    came in); returns the items still to check."""
    rest = []
    for it in batch.items:
        have = stored.get(it.eid) if it.eid is not None else None
        if have is not None:
            try:
                same = hashlib.sha256(it.ev.canonical_bytes()).digest() == have
            except (TypeError, ValueError):
                same = False
            if same:
                it.outcome = "duplicate"
                continue
        rest.append(it)
    return rest


def created_seconds(ev: Event) -> int:
    """Seconds of ``created_at``: a fast path for whole-second UTC times, else the
    protocol's parser (which raises ``InputError`` for an unusable time)."""
    m = _WHOLE_SECONDS.fullmatch(ev.created_at) if isinstance(ev.created_at, str) else None
    if m is not None:
        try:
            y, mo, d, h, mi, sec = (int(g) for g in m.groups())
            return int(datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp())
        except ValueError:
            pass
    seconds: int = ev.time_key // 1_000_000
    return seconds


def store_rule(ev: Event) -> tuple[str | None, int, bytes]:
    """What the store adds to ``accept``: a canonical subject, a usable timestamp, a size.

    Returns ``(reason or None, created_at seconds, canonical bytes)``.
    """
    try:
        pn = parse_pith_number(ev.subject)
    except InputError:
        return "bad_subject", 0, b""
    if not pn.is_full or str(pn) != ev.subject:
        return "bad_subject", 0, b""
    try:
        created_s = created_seconds(ev)
    except InputError:
        return "bad_created_at", 0, b""
    canonical: bytes = ev.canonical_bytes()
    if len(canonical) > MAX_EVENT_BYTES:
        return "event_too_large", 0, b""
    return None, created_s, canonical


def check_item(it: Item, spec: NetworkSpec, *, defer_signature: bool = False) -> None:
    """Accept (id, signature, trust), the store's rule, and encoding; thread-safe.

    ``defer_signature`` leaves the Ed25519 check in ``it.job``, for
    :func:`settle_signatures` to run (many at once, on other threads).
    """
    try:
        if defer_signature:
            reason, it.job = accept_deferred(it.ev, spec)
        else:
            reason = accept(it.ev, spec)
        if reason is None:
            reason, it.created_s, it.canonical = store_rule(it.ev)
        if reason is None:
            precheck(it.ev, spec)
    except (TypeError, ValueError):  # a payload with no canonical JSON form
        reason = "not_canonical"
    if reason is None and it.eid is None:  # accept() checked the id; defensive
        reason = "bad_event_id"
    it.reason = reason
    if reason is None:
        it.sha = hashlib.sha256(it.canonical).digest()
        it.codec, it.blob = encode_event(it.ev, it.canonical)


def settle_signatures(items: Sequence[Item], verified: Sequence[bool]) -> None:
    """Apply the outcomes of the deferred Ed25519 checks: ``verified[i]`` for ``items[i]``
    (each with a ``job``). A refused signature makes the event ``bad_signature``, whatever
    the checks after it found, as :func:`~pithnode.protocol.ingest.accept` would."""
    for it, ok in zip(items, verified, strict=True):
        it.job = None
        refused = it.ev.settle_signature(ok)
        if refused is not None:
            it.reason = refused
            it.canonical = it.sha = it.blob = b""
            it.codec = it.created_s = 0


def classify(batch: Batch, stored: dict[bytes, bytes]) -> list[Item]:
    """Final outcomes, given what is stored now; returns the new items in batch order."""
    seen: set[bytes] = set()
    new = []
    for it in batch.items:
        if it.outcome == "duplicate":
            continue
        if it.reason is not None or it.eid is None:
            it.outcome = "rejected"
        elif it.eid in stored or it.eid in seen:
            it.outcome = "duplicate"
        else:
            it.outcome = "new"
            seen.add(it.eid)
            new.append(it)
    if sum(len(it.canonical) for it in new) > MAX_BATCH_BYTES:
        raise BatchTooLarge(f"an ingest batch takes at most {MAX_BATCH_BYTES} bytes")
    return new


def results(batch: Batch, touched: Sequence[set[str]]) -> list[IngestResult]:
    out = []
    for n in range(len(batch.parts)):
        outcomes = tuple(EventOutcome(it.ev.event_id, it.outcome, it.reason)
                         for it in batch.items if it.part == n)
        out.append(IngestResult(outcomes, tuple(sorted(touched[n]))))
    return out
