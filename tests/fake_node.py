"""An in-memory :class:`pithnode.node.api.NodeAPI` for testing the front ends.

``FakeNode`` holds Pith's golden record (the state document of
``tests/fixtures/32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json`` and a bundle built from its events
with :func:`build_bundle`), validates submitted events the way a node accepts them
(:func:`event_from_json` then :func:`accept` against a network spec) and fans notifications
out to subscribers from bounded trio memory channels the test pushes to with ``publish``.

Test hooks: ``failing`` (method names that raise ``RuntimeError``, for internal-error
paths), ``gate`` (when set, ``submit`` waits for it: a slow durable commit), ``calls`` (the
methods called, in order) and ``wait_until(predicate)``, which waits on an event set at
every change of the fake's state (subscribers, submits in progress) rather than polling.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pithnode.node.api import NotFound, RecordView, Served, SubmitOutcome
from pithnode.node.cli_context import load_spec
from pithnode.protocol.bundle import build_bundle
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, event_from_json
from pithnode.protocol.identifiers import normalise_alias, parse_pith_number
from pithnode.protocol.ingest import accept
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.state import CURRENT_LISTS, parse_state

GOLDEN = Path(__file__).parent / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
GOLDEN_PN = "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL"
GOLDEN_SHA = "a5230a63ad987fd126b508b92df25677176d2924b60993225c7ea63fe3180687"
GOLDEN_TITLE = "Gradient Descent Happens in a Tiny Subspace"
SUBSCRIBER_QUEUE = 1000
PEER_A = "12D3KooWFakePeerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PEER_B = "12D3KooWFakePeerBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


@dataclass
class FakeRecord:
    pith_number: str
    state_bytes: bytes
    state_sha256: str
    bundle_bytes: bytes
    doc: dict[str, Any]
    aliases: list[dict[str, str]]
    events: list[Event] = field(default_factory=list)


def golden_record() -> FakeRecord:
    data = GOLDEN.read_bytes()
    doc = json.loads(data)
    parsed = parse_state(doc)
    aliases = [dict(a) for a in parsed.source_aliases]
    bundle = build_bundle(parsed.pith_number, doc["current"]["canonical_record"], aliases,
                          parsed.events)
    events = sorted(parsed.events, key=lambda e: (e.time_key, e.event_id))
    return FakeRecord(parsed.pith_number, data, parsed.claimed_sha256, bundle, doc, aliases,
                      events)


def _title(doc: dict[str, Any]) -> str | None:
    for entry in reversed(doc["current"].get("graph_snapshots", [])):
        paper = entry.get("payload", {}).get("graph_snapshot", {}).get("paper", {})
        if isinstance(paper.get("title"), str):
            return str(paper["title"])
    return None


class FakeNode:
    """Implements every method of ``NodeAPI`` over in-memory data."""

    def __init__(self, spec: NetworkSpec | None = None,
                 records: list[FakeRecord] | None = None) -> None:
        self.spec = spec if spec is not None else load_spec(None)
        self.records = {r.pith_number: r for r in (records or [golden_record()])}
        self.stored: dict[str, Event] = {e.event_id: e for r in self.records.values()
                                         for e in r.events}
        self.arrivals: list[dict[str, Any]] = []
        self.peer_list: list[dict[str, Any]] = [
            {"peer_id": PEER_A, "addrs": ["/ip4/127.0.0.1/tcp/4001"], "connected": True,
             "last_sync": "2026-05-18T12:00:00Z", "received": 12, "rejected": 1},
            {"peer_id": PEER_B, "addrs": [], "connected": False, "last_sync": None,
             "received": 0, "rejected": 0},
        ]
        self.failing: set[str] = set()
        self.gate: trio.Event | None = None
        self.calls: list[str] = []
        self.submits_in_progress = 0
        self.sync_requests: list[str | None] = []
        self._subscribers: list[trio.MemorySendChannel[dict[str, Any]]] = []
        self._changed = trio.Event()

    # -- test hooks
    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait (on events, not by polling) until ``predicate()`` holds."""
        while not predicate():
            await self._changed.wait()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def publish(self, note: dict[str, Any]) -> None:
        """Hand a notification to every current subscriber."""
        for send in list(self._subscribers):
            await send.send(note)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if name in self.failing:
            raise RuntimeError(f"fake failure in {name}")

    # -- NodeAPI
    async def status(self) -> dict[str, Any]:
        self._enter("status")
        return {"peer_id": PEER_A, "network": self.spec.name, "uptime_s": 42,
                "records": len(self.records), "events": len(self.stored), "invalid": 0,
                "peers": len(self.peer_list), "listen_addrs": ["/ip4/127.0.0.1/tcp/4001"],
                "http_url": "http://127.0.0.1:8080", "socket_path": "/tmp/node.sock",
                "sync": {"rounds": 3, "errors": 0, "last": "2026-05-18T12:00:00Z"},
                "gossip": {"in": 5, "out": 4, "rejected": 1}}

    async def peers(self) -> list[dict[str, Any]]:
        self._enter("peers")
        return [dict(p) for p in self.peer_list]

    async def resolve(self, identifier: str) -> str | None:
        self._enter("resolve")
        try:
            kind, value = normalise_alias(identifier)
        except InputError:
            return None
        for rec in self.records.values():
            suffix = parse_pith_number(rec.pith_number).suffix
            if kind == "pith" and value in (rec.pith_number, suffix):
                return rec.pith_number
            if kind.startswith("pith_short_") and suffix.startswith(value):
                return rec.pith_number
            if any(a["alias_kind"] == kind and a["alias_value"] == value
                   for a in rec.aliases):
                return rec.pith_number
        return None

    async def served_state(self, identifier: str) -> Served | None:
        pn = await self.resolve(identifier)
        self._enter("served_state")
        rec = None if pn is None else self.records.get(pn)
        return None if rec is None else Served(rec.pith_number, rec.state_bytes,
                                               rec.state_sha256)

    async def served_bundle(self, identifier: str) -> Served | None:
        pn = await self.resolve(identifier)
        self._enter("served_bundle")
        rec = None if pn is None else self.records.get(pn)
        return None if rec is None else Served(rec.pith_number, rec.bundle_bytes,
                                               hashlib.sha256(rec.bundle_bytes).hexdigest())

    def cached_state(self, identifier: str) -> Served | None:
        """Like a node holding its records in memory by Pith Number: a full Pith Number is
        answered at once (the socket's inline path), anything else by ``served_state``."""
        self._enter("cached_state")
        rec = self.records.get(identifier)
        return None if rec is None else Served(rec.pith_number, rec.state_bytes,
                                               rec.state_sha256)

    def cached_bundle(self, identifier: str) -> Served | None:
        self._enter("cached_bundle")
        rec = self.records.get(identifier)
        return None if rec is None else Served(rec.pith_number, rec.bundle_bytes,
                                               hashlib.sha256(rec.bundle_bytes).hexdigest())

    async def events(self, pith_number: str) -> list[dict[str, Any]]:
        self._enter("events")
        rec = self.records.get(pith_number)
        if rec is None:
            raise NotFound(pith_number)
        return [e.to_json() for e in sorted(rec.events, key=lambda e: (e.time_key,
                                                                          e.event_id))]

    async def record_view(self, pith_number: str) -> RecordView | None:
        self._enter("record_view")
        rec = self.records.get(pith_number)
        if rec is None:
            return None
        doc, current = rec.doc, rec.doc["current"]
        paper: dict[str, Any] = {}
        for entry in current["graph_snapshots"]:
            paper = entry["payload"].get("graph_snapshot", {}).get("paper", paper)
        record = current.get("canonical_record") or {}
        return RecordView(
            pith_number=rec.pith_number, state_sha256=rec.state_sha256, title=_title(doc),
            authors=paper.get("authors_text"), abstract=paper.get("abstract_excerpt"),
            submitted_at=record.get("metadata", {}).get("submitted_at"),
            source=record.get("source"), aliases=[dict(a) for a in rec.aliases],
            counts={k: doc[k] for k in ("event_count", "valid_event_count",
                                        "invalid_event_count", "equivocation_count")},
            receipt_valid=True, receipt_detail="signed by pith-v1-2026-05",
            lists={name: list(current[name]) for name in CURRENT_LISTS},
            invalid_events=list(doc["invalid_events"]),
            equivocations=list(doc["equivocations"]))

    async def recent_events(self, limit: int) -> list[dict[str, Any]]:
        self._enter("recent_events")
        return list(reversed(self.arrivals))[:limit]

    async def submit(self, events: list[Any]) -> list[SubmitOutcome]:
        self._enter("submit")
        self.submits_in_progress += 1
        self._touch()
        try:
            if self.gate is not None:
                await self.gate.wait()
            return [self._ingest(obj) for obj in events]
        finally:
            self.submits_in_progress -= 1
            self._touch()

    def _ingest(self, obj: Any) -> SubmitOutcome:
        claimed = obj.get("event_id") if isinstance(obj, dict) else None
        claimed = claimed if isinstance(claimed, str) else None
        try:
            ev = event_from_json(obj)
        except InputError as exc:
            return SubmitOutcome(claimed, "rejected", exc.reason)
        reason = accept(ev, self.spec)
        if reason is not None:
            return SubmitOutcome(ev.event_id, "rejected", reason)
        if ev.event_id in self.stored:
            return SubmitOutcome(ev.event_id, "duplicate")
        self.stored[ev.event_id] = ev
        if ev.subject in self.records:
            self.records[ev.subject].events.append(ev)
        self.arrivals.append({"event_id": ev.event_id, "event_type": ev.event_type,
                              "subject": ev.subject, "received_at": "2026-05-18T12:00:00Z",
                              "source": "local"})
        return SubmitOutcome(ev.event_id, "new")

    async def explain(self, identifier: str) -> dict[str, Any]:
        self._enter("explain")
        ev = self.stored.get(identifier)
        if ev is not None:
            rec = self.records.get(ev.subject)
            applied = rec is not None and identifier in rec.doc["applied_event_ids"]
            return {"kind": "event", "event_id": ev.event_id, "event_type": ev.event_type,
                    "subject": ev.subject, "known": True, "in_state": applied,
                    "validation": "valid", "received_from": "local"}
        pn = await self.resolve(identifier)
        if pn is None:
            raise NotFound(f"nothing known as {identifier!r}")
        rec = self.records[pn]
        return {"kind": "record", "pith_number": pn, "known": True,
                "events": len(rec.events), "state_sha256": rec.state_sha256,
                "mirrors": []}

    async def trigger_sync(self, peer_id: str | None) -> dict[str, Any]:
        self._enter("trigger_sync")
        if peer_id is not None and peer_id not in {p["peer_id"] for p in self.peer_list}:
            raise NotFound(f"no peer {peer_id}")
        self.sync_requests.append(peer_id)
        peers = 1 if peer_id is not None else sum(p["connected"] for p in self.peer_list)
        return {"peers": peers, "rounds": 1, "received": 0, "sent": 0, "errors": 0}

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        send, recv = trio.open_memory_channel[dict[str, Any]](SUBSCRIBER_QUEUE)
        self._subscribers.append(send)
        self._touch()
        try:
            while True:
                try:
                    note = await recv.receive()
                except trio.EndOfChannel:
                    return
                yield note
        finally:
            self._subscribers.remove(send)
            recv.close()
            self._touch()

    async def manifest(self) -> dict[str, Any]:
        self._enter("manifest")
        return {"manifest_type": "pith_mirror_manifest", "mirrors": []}

    async def checkpoint(self) -> dict[str, Any]:
        self._enter("checkpoint")
        return {"note": "fake\n", "origin": "fake", "tree_size": len(self.records),
                "root_hex": "00" * 32, "mirror_prefixes": [], "signed_at": 0}

    async def split_views(self) -> list[dict[str, Any]]:
        self._enter("split_views")
        return []

    def metrics_text(self) -> bytes:
        return (b"# HELP pithnode_fake 1 if this is the fake node\n"
                b"# TYPE pithnode_fake gauge\npithnode_fake 1\n")
