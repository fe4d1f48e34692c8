"""The node's query interface: what the local socket, the HTTP mirror and the CLI ask of it.

``NodeAPI`` is implemented by the running daemon (``node/daemon.py``) and, for fast unit
tests of the front ends, by small fakes. Every method is async and safe to call from trio
tasks; results are plain JSON-able values or served document bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["NodeAPI", "NotFound", "RecordView", "Served", "SubmitOutcome"]


class NotFound(Exception):
    """The identifier names no record or event this node knows."""


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    event_id: str | None
    outcome: str  # "new" | "duplicate" | "rejected"
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "outcome": self.outcome, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Served:
    """A served document of a record: its exact bytes and the ETag value naming them."""

    pith_number: str
    data: bytes
    #: a state's ``state_sha256``; a bundle's SHA-256 of its bytes (hex)
    etag: str


@dataclass(frozen=True, slots=True)
class RecordView:
    """What a person wants to see about a record (the HTML page, ``pithnode get``)."""

    pith_number: str
    state_sha256: str
    title: str | None
    authors: str | None
    abstract: str | None
    submitted_at: str | None
    source: dict[str, Any] | None
    aliases: list[dict[str, str]]
    counts: dict[str, int]
    receipt_valid: bool
    receipt_detail: str
    lists: dict[str, list[dict[str, Any]]]  # current's lists: attestations, mirrors, ...
    invalid_events: list[dict[str, str]]
    equivocations: list[dict[str, Any]]


class NodeAPI(Protocol):
    async def status(self) -> dict[str, Any]:
        """peer_id, network, uptime_s, records, events, invalid, peers, listen_addrs,
        http_url, socket_path, sync (rounds, errors, last), gossip (in, out, rejected)."""

    async def peers(self) -> list[dict[str, Any]]:
        """One dict per known peer: peer_id, addrs, connected, last_sync, received, rejected."""

    async def resolve(self, identifier: str) -> str | None:
        """Full Pith Number for a Pith Number, short form, arXiv id or DOI; None if unknown."""

    async def served_state(self, identifier: str) -> Served | None:
        """The served state of the record an identifier names (anything ``resolve`` takes),
        with its Pith Number and state_sha256, in one lookup; None if no record is known
        as that (or it is no identifier)."""

    async def served_bundle(self, identifier: str) -> Served | None:
        """The served bundle of the record an identifier names, like ``served_state``; the
        ETag is the SHA-256 of the bundle's bytes."""

    def cached_state(self, identifier: str) -> Served | None:
        """What ``served_state`` would answer, if the node holds it in memory now; None
        means "ask ``served_state``" (not "unknown"). Not async: the query socket answers
        from it inline, without starting a task."""

    def cached_bundle(self, identifier: str) -> Served | None:
        """What ``served_bundle`` would answer, if held in memory now (else None)."""

    async def events(self, pith_number: str) -> list[dict[str, Any]]:
        """Every stored event of a record (wire form), in (created_at, event_id) order."""

    async def record_view(self, pith_number: str) -> RecordView | None: ...

    async def recent_events(self, limit: int) -> list[dict[str, Any]]:
        """Newest arrivals first: event_id, event_type, subject, received_at, source."""

    async def submit(self, events: list[Any]) -> list[SubmitOutcome]:
        """Ingest wire-form events; returns after the batch is durably committed."""

    async def explain(self, identifier: str) -> dict[str, Any]:
        """Why is a record or event (not) here: known, from whom and when, validation,
        in the state or not, attested by whom, held by which mirrors."""

    async def trigger_sync(self, peer_id: str | None) -> dict[str, Any]:
        """Reconcile now with one peer (or every connected peer); returns figures."""

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Notifications: {"kind": "event", ...} and {"kind": "state", ...}."""
        ...

    async def manifest(self) -> dict[str, Any]:
        """This node's /pith-mirrors.json in Pith's manifest format."""

    async def checkpoint(self) -> dict[str, Any]:
        """Latest signed checkpoint: note, origin, tree_size, root_hex, mirror_prefixes,
        signed_at."""

    async def split_views(self) -> list[dict[str, Any]]:
        """Possible split views: both roots, the differing records and an explanation."""

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of the node's metrics."""
        ...
