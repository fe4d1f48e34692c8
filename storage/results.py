"""What the store's operations return: outcomes, summaries, states, statistics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DocumentResult",
    "EventOutcome",
    "IngestResult",
    "IngestSummary",
    "Outcome",
    "Provenance",
    "StoreStats",
    "StoredState",
]

Outcome = Literal["new", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class EventOutcome:
    event_id: str
    outcome: Outcome
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one batch did; it was committed before this was returned."""

    outcomes: tuple[EventOutcome, ...]
    records_touched: tuple[str, ...]

    @property
    def new(self) -> int:
        return sum(1 for o in self.outcomes if o.outcome == "new")

    @property
    def duplicate(self) -> int:
        return sum(1 for o in self.outcomes if o.outcome == "duplicate")

    @property
    def rejected(self) -> int:
        return sum(1 for o in self.outcomes if o.outcome == "rejected")

    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(o.reason or "" for o in self.outcomes if o.outcome == "rejected"))

    def new_event_ids(self) -> list[str]:
        return [o.event_id for o in self.outcomes if o.outcome == "new"]


@dataclass(slots=True)
class IngestSummary:
    """Totals over many batches (an import of many files)."""

    new: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    records_touched: set[str] = field(default_factory=set)
    batches: int = 0

    def add(self, result: IngestResult) -> None:
        self.batches += 1
        self.new += result.new
        self.duplicate += result.duplicate
        self.rejected.update(result.rejected_by_reason())
        self.records_touched.update(result.records_touched)

    def merge_from(self, other: IngestSummary) -> None:
        self.batches += other.batches
        self.new += other.new
        self.duplicate += other.duplicate
        self.rejected.update(other.rejected)
        self.records_touched.update(other.records_touched)

    @property
    def events(self) -> int:
        return self.new + self.duplicate + sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class StoredState:
    """A record's materialised state: the served bytes and what is known about them.

    ``stored_codec`` and ``stored_blob``: the blob the bytes were decoded from, when the
    store keeps them compressed (``storage.codec.CODEC_DEFLATE``), so that a cache can keep
    the smaller form; else ``CODEC_RAW`` (0) and no blob.
    """

    pith_number: str
    data: bytes
    state_sha256: str
    fingerprint: str
    stored_events: int
    event_count: int
    valid_count: int
    invalid_count: int
    equivocation_count: int
    stored_codec: int = field(default=0, compare=False, repr=False)
    stored_blob: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Provenance:
    event_id: str
    source: str
    received_at: float
    arrival: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    records: int
    events: int
    objects: int
    invalid: int
    #: exact bytes of all objects (the events' canonical bytes)
    bytes: int
    #: bytes the object blobs take in the database
    stored_bytes: int
    #: database file plus its WAL
    file_bytes: int


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """The cheap part of :class:`StoreStats` (no scan of the objects table)."""

    records: int
    events: int
    #: database file plus its WAL
    file_bytes: int
    #: events held as invalid (a state lists them with their reason)
    invalid: int = 0


@dataclass(slots=True)
class DocumentResult:
    """What importing one document (or one JSON Lines stream) did.

    ``error`` is set when the input could not be used: for a document nothing of it was
    stored; for JSON Lines, the batches before the bad line were (``summary`` counts them).
    """

    source: str
    kind: str = "unknown"
    summary: IngestSummary = field(default_factory=IngestSummary)
    subjects: set[str] = field(default_factory=set)
    #: registry (Pith, unsigned) events the input holds
    registry_events: int = 0
    #: of those, admitted by an import attestation (made now or held before)
    registry_admitted: int = 0
    #: registry events left out because the node key is not a trusted importer
    registry_not_admitted: int = 0
    #: import attestations made by this import (new or already held)
    attestations: int = 0
    #: native entries of a state document: states carry no signatures, so they are skipped
    unsigned: int = 0
    lines: int = 0
    error: str | None = None
    error_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
