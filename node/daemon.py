"""The node daemon: store, libp2p host, gossip, sync, query socket and HTTP mirror.

One trio program under one nursery. :class:`Node` implements :class:`NodeAPI` for the query
socket and the HTTP mirror; the store's ingest path notifies subscribers, feeds metrics and
hands locally submitted events to gossip.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, event_from_json
from pithnode.protocol.identifiers import normalise_alias
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.receipts import check_receipt
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.wire import prefixes_match
from pithnode.storage.errors import StoreCorrupt, StoreError
from pithnode.storage.store import Store

from .api import NotFound, RecordView, Served, SubmitOutcome
from .attest import Attestor
from .config import NodeConfig
from .gossip import Gossip
from .http_mirror import serve_http
from .metrics import NodeMetrics
from .paths import socket_path
from .pull import run_scheduled_pull
from .query_socket import QuerySocketServer
from .read_cache import CacheLimits, ReadCache
from .store_service import StoreService
from .sync import SYNC_PROTOCOL, SyncEngine, SyncFailed, SyncResult
from .transport import (
    PeerAddress,
    PeerEventKind,
    PeerId,
    Stream,
    Transport,
    TransportConfig,
    TransportError,
    short_id,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

RECENT_EVENTS = 1000
SUBSCRIBER_QUEUE = 256
MAX_SUBSCRIBERS = 64
MAX_CONCURRENT_SYNCS = 4
MAX_SUBMIT_EVENTS = 4096


@dataclass(frozen=True, slots=True)
class Ready:
    """What the daemon prints once it is serving."""

    peer_id: str
    listen: tuple[str, ...]
    socket: str
    http: str | None
    data_dir: str
    network: str

    def line(self) -> str:
        return ("pithnode ready: " + json.dumps({
            "peer_id": self.peer_id, "listen": list(self.listen), "socket": self.socket,
            "http": self.http, "data_dir": self.data_dir, "network": self.network}))


@dataclass(slots=True)
class PeerInfo:
    peer_id: str
    addrs: tuple[str, ...] = ()
    connected: bool = False
    connected_since: float | None = None
    last_sync: float | None = None
    last_sync_result: dict[str, Any] | None = None
    syncs: int = 0
    sync_errors: int = 0
    received: int = 0


@dataclass(slots=True)
class SyncTotals:
    rounds: int = 0
    errors: int = 0
    fetched: int = 0
    pushed: int = 0
    last: dict[str, Any] | None = None
    by_reason: dict[str, int] = field(default_factory=dict)


class Node:
    """A running node. Construct, then ``await nursery.start(node.run)``."""

    def __init__(self, cfg: NodeConfig, *, data_dir: Path, spec: NetworkSpec,
                 key: SigningKey, transport: Transport,
                 wall_clock: Callable[[], float] = time.time, attest: bool = True) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self.spec = spec
        self.key = key
        self.transport = transport
        self.wall = wall_clock
        self.name = cfg.node.name or str(transport.peer_id)
        self.metrics = NodeMetrics()
        self.store: Store | None = None
        self.service: StoreService | None = None
        self.prefixes = cfg.p2p.mirror_prefixes
        self.sync = SyncEngine(self, prefixes=self.prefixes, timeout_s=cfg.sync.timeout_s,
                               fetch_batch=cfg.sync.fetch_batch,
                               frame_size_limit=cfg.sync.frame_size_limit)
        self.gossip = Gossip(transport, self, spec, prefixes=self.prefixes,
                             max_batch_events=cfg.gossip.max_batch_events,
                             max_batch_bytes=cfg.gossip.max_batch_bytes,
                             flush_interval_s=cfg.gossip.flush_interval_s,
                             rate_per_signer=cfg.gossip.rate_per_signer)
        self.socket_path = cfg.socket.path or socket_path(data_dir)
        self.http_url: str | None = None
        self.started_at = 0.0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.peers_info: dict[str, PeerInfo] = {}
        self.sync_totals = SyncTotals()
        self._subscribers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._sync_limit = trio.Semaphore(MAX_CONCURRENT_SYNCS)
        #: sync sessions running with each peer, either role
        self._sessions: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None
        self.ready: Ready | None = None
        self._gossip_exported: dict[tuple[str, str], int] = {}
        self._cache_exported: dict[str, int] = {}
        #: the attestation services; tests may run their own (``attest=False``) and set it
        self.attestor: Attestor | None = (Attestor(self, cfg.attest)
                                          if attest and cfg.attest.enabled else None)

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[Ready] = trio.TASK_STATUS_IGNORED) -> None:
        store_path = self.data_dir / "store.sqlite"
        self.store = await trio.to_thread.run_sync(lambda: Store(store_path, self.spec))
        cache = ReadCache(CacheLimits(self.cfg.cache.max_bytes, self.cfg.cache.max_names))
        self.service = StoreService(self.store, clock=self.wall, cache=cache)
        self.started_at = self.wall()
        attest_enabled = self.attestor is not None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.service.run)
                self.transport.set_stream_handler(SYNC_PROTOCOL, self._on_sync_stream)
                if attest_here := self.attestor if attest_enabled else None:
                    attest_here.install_handlers()
                await nursery.start(self.transport.run)
                await nursery.start(self.gossip.run)
                nursery.start_soon(self._watch_peers)
                nursery.start_soon(self._sync_loop)
                nursery.start_soon(self._refresh_gauges)
                await nursery.start(QuerySocketServer(self, self.socket_path).run)
                if self.cfg.http.enabled:
                    self.http_url = await nursery.start(self._serve_http)
                if attest_here is not None:
                    await nursery.start(attest_here.run)
                if self.cfg.pull.sources:
                    await nursery.start(partial(run_scheduled_pull, self, self.cfg.pull.sources,
                                                self.cfg.pull.interval_s, self.cfg.pull.records))
                self.ready = Ready(str(self.transport.peer_id),
                                   tuple(self.transport.listen_addresses()),
                                   str(self.socket_path), self.http_url, str(self.data_dir),
                                   self.spec.name)
                log.info("%s", self.ready.line())
                task_status.started(self.ready)
        finally:
            with trio.CancelScope(shield=True):
                store = self.store
                if store is not None:
                    await trio.to_thread.run_sync(store.close)
                for chan in list(self._subscribers):
                    chan.close()

    async def _serve_http(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        base = self.cfg.http.public_url or None
        await serve_http(self, host=self.cfg.http.host, port=self.cfg.http.port, base_url=base,
                         metrics=self.metrics, task_status=task_status)

    def _svc(self) -> StoreService:
        if self.service is None:
            raise RuntimeError("the node is not running")
        return self.service

    # -- the store as sync/gossip see it (SyncStore) -------------------------------------------
    async def sync_items(self, prefixes: Sequence[str]) -> list[tuple[int, bytes]]:
        return await self._svc().sync_items(prefixes)

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]:
        """Exact bytes of the stored events among ``ids``, for a sync peer.

        An event whose object is damaged is left out, as an unknown one is, and the damage
        is reported for repair: one damaged object must neither fail a whole sync session
        nor, by escaping the sync task, stop the node.
        """
        svc = self._svc()
        try:
            return await svc.raw_events(ids)
        except StoreCorrupt as exc:
            log.error("serving events to a sync peer: %s; serving the intact ones", exc)
        intact: list[bytes] = []
        for one in ids:  # the damaged path only: read one by one, skip what fails
            try:
                intact += await svc.raw_events([one])
            except StoreCorrupt:
                log.warning("event %s not served: its object is damaged", one.hex()[:12])
        if self.attestor is not None:
            self.attestor.report_damage()
        return intact

    async def ingest_events(self, events: Sequence[Event], *, source: str
                            ) -> tuple[int, int, int]:
        outcomes = await self.ingest(events, source=source)
        new = sum(1 for o in outcomes if o.outcome == "new")
        dup = sum(1 for o in outcomes if o.outcome == "duplicate")
        return new, dup, len(outcomes) - new - dup

    async def ingest(self, events: Sequence[Event], *, source: str) -> list[SubmitOutcome]:
        """Every ingest goes through here: commit, then metrics and notifications."""
        in_scope = [e for e in events
                    if prefixes_match(e.subject.rsplit(":", 1)[-1], self.prefixes)]
        try:
            result = await self._svc().ingest(in_scope, source=source)
        except StoreCorrupt as exc:  # a damaged object in a touched record: repair, go on
            log.error("ingest from %s refused, the store is damaged: %s", source, exc)
            if self.attestor is not None:
                self.attestor.report_damage()
            self.metrics.events_rejected.labels("store_damaged").inc(len(events))
            return [SubmitOutcome(e.event_id, "rejected", "store_damaged") for e in events]
        by_id = {e.event_id: e for e in in_scope}
        outcomes = [SubmitOutcome(o.event_id, o.outcome, o.reason) for o in result.outcomes]
        outcomes += [SubmitOutcome(e.event_id, "rejected", "out_of_scope")
                     for e in events if e.event_id not in by_id]
        now = self.wall()
        for o in outcomes:
            self.metrics.events_ingested.labels(o.outcome).inc()
            if o.outcome == "rejected":
                self.metrics.events_rejected.labels(o.reason or "unknown").inc()
            elif o.outcome == "new" and o.event_id in by_id:
                ev = by_id[o.event_id]
                item = {"event_id": ev.event_id, "event_type": ev.event_type,
                        "subject": ev.subject, "received_at": now, "source": source}
                self.recent.appendleft(item)
                self._notify({"kind": "event", **item})
        if self._subscribers and result.records_touched:
            touched = sorted(result.records_touched)
            try:
                heads = await self._svc().state_heads(touched)
            except StoreError as exc:  # committed already: the outcomes stand, only the
                # notifications of the new states are lost
                log.warning("no state notifications for %d records: %s", len(touched), exc)
                heads = {}
            for subject in touched:
                if subject in heads:
                    sha, count = heads[subject]
                    self._notify({"kind": "state", "pith_number": subject,
                                  "state_sha256": sha, "event_count": count})
        peer = source.split(":", 1)[1] if ":" in source else None
        if peer in self.peers_info:
            self.peers_info[peer].received += sum(1 for o in outcomes if o.outcome == "new")
        return outcomes

    def _notify(self, note: dict[str, Any]) -> None:
        for chan in list(self._subscribers):
            try:
                chan.send_nowait(note)
            except trio.WouldBlock:
                pass  # the subscriber is behind; the socket server counts what it drops
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(chan)

    # -- peers and sync -------------------------------------------------------------------------
    def _peer(self, peer: str) -> PeerInfo:
        info = self.peers_info.get(peer)
        if info is None:
            info = self.peers_info[peer] = PeerInfo(peer)
        return info

    async def _watch_peers(self) -> None:
        for addr in self.cfg.p2p.bootstrap:
            try:
                pa = PeerAddress.parse(addr)
            except ValueError:
                continue
            self._peer(str(pa.peer_id)).addrs = pa.addrs
        async for event in self.transport.peer_events():
            info = self._peer(str(event.peer))
            if event.kind is PeerEventKind.CONNECTED:
                info.connected, info.connected_since = True, self.wall()
                # one session per new connection, opened by the side whose peer id sorts
                # first (a session moves events both ways); the periodic loop covers the
                # case where that session fails
                if str(self.transport.peer_id) < str(event.peer):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._sync_quietly, event.peer)
            else:
                info.connected = False
            self.metrics.peers_connected.set(len(self.transport.connected_peers()))

    async def _sync_loop(self) -> None:
        rng = random.Random()
        while True:
            await trio.sleep(self.cfg.sync.interval_s + rng.uniform(0, self.cfg.sync.jitter_s))
            peers = self.idle_peers()
            if peers:
                await self._sync_quietly(rng.choice(peers))

    async def _sync_quietly(self, peer: PeerId) -> None:
        try:
            await self.sync_with(peer)
        except (SyncFailed, TransportError) as exc:
            log.info("sync with %s failed: %s", short_id(peer), exc)

    async def sync_with(self, peer: PeerId) -> SyncResult:
        info = self._peer(str(peer))
        async with self._sync_limit:
            with self._in_session(str(peer)):
                try:
                    with trio.fail_after(self.cfg.sync.timeout_s):
                        stream = await self.transport.open_stream(peer, SYNC_PROTOCOL)
                    result = await self.sync.sync_with(peer, stream)
                except (SyncFailed, TransportError, trio.TooSlowError) as exc:
                    reason = type(exc.__cause__ or exc).__name__
                    self.sync_totals.errors += 1
                    by_reason = self.sync_totals.by_reason
                    by_reason[reason] = by_reason.get(reason, 0) + 1
                    info.sync_errors += 1
                    self.metrics.sync_errors.labels(reason).inc()
                    raise SyncFailed(str(exc)) from exc
        self._record_sync(info, result)
        return result

    def _record_sync(self, info: PeerInfo, result: SyncResult) -> None:
        figures = {"peer": result.peer, "role": result.role, "have": result.have,
                   "need": result.need, "fetched_new": result.fetched_new,
                   "pushed": result.pushed, "rejected": result.rejected,
                   "rounds": result.rounds, "bytes_in": result.bytes_in,
                   "bytes_out": result.bytes_out, "at": self.wall()}
        info.last_sync, info.last_sync_result = self.wall(), figures
        info.syncs += 1
        self.sync_totals.rounds += 1
        self.sync_totals.fetched += result.fetched_new
        self.sync_totals.pushed += result.pushed
        self.sync_totals.last = figures
        self.metrics.sync_rounds.inc()
        self.metrics.sync_events_fetched.inc(result.fetched_new)
        self.metrics.sync_bytes.labels("in").inc(result.bytes_in)
        self.metrics.sync_bytes.labels("out").inc(result.bytes_out)

    def idle_peers(self) -> list[PeerId]:
        """Connected peers with no sync session running with us, either role: the periodic
        sync picks among them (a bulk catch-up can outlast the interval, and a second
        session beside it would fetch the same events again)."""
        return [p for p in self.transport.connected_peers() if not self._sessions[str(p)]]

    @contextmanager
    def _in_session(self, peer: str) -> Iterator[None]:
        self._sessions[peer] += 1
        try:
            yield
        finally:
            self._sessions[peer] -= 1
            if not self._sessions[peer]:
                del self._sessions[peer]

    async def _on_sync_stream(self, stream: Stream) -> None:
        if self._sync_limit.value == 0:
            await stream.reset()
            return
        async with self._sync_limit:
            with self._in_session(str(stream.remote_peer)):
                result = await self.sync.handle_stream(stream)
        info = self._peer(str(stream.remote_peer))
        if result.errors:
            info.sync_errors += 1
            for reason in result.errors:
                self.metrics.sync_errors.labels(reason).inc()
        else:
            self._record_sync(info, result)

    async def _refresh_gauges(self) -> None:
        while True:
            counts = await self._svc().counts()  # not stats(): that scans every object
            self.metrics.records.set(counts.records)
            self.metrics.events.set(counts.events)
            self.metrics.store_size_bytes.set(counts.file_bytes)
            self._export_gossip_counters()
            self._export_cache_figures()
            await trio.sleep(5)

    def _export_cache_figures(self) -> None:
        cache = self._svc().cache
        for result, value in (("hit", cache.stats.hits), ("miss", cache.stats.misses)):
            delta = value - self._cache_exported.get(result, 0)
            if delta > 0:
                self.metrics.read_cache_lookups.labels(result).inc(delta)
            self._cache_exported[result] = value
        self.metrics.read_cache_bytes.set(cache.bytes)
        self.metrics.read_cache_documents.set(cache.documents)

    def _export_gossip_counters(self) -> None:
        """Prometheus counters only go up: add what the gossip engine counted since last."""
        g = self.gossip.stats
        now = {("messages", "in"): g.messages_in, ("messages", "out"): g.messages_out,
               ("events", "in"): g.events_in, ("events", "out"): g.events_out,
               ("rejected", "invalid"): g.rejected_messages,
               ("rejected", "rate_limited"): g.rate_limited}
        for (kind, label), value in now.items():
            delta = value - self._gossip_exported.get((kind, label), 0)
            if delta > 0:
                counter = {"messages": self.metrics.gossip_messages,
                           "events": self.metrics.gossip_events,
                           "rejected": self.metrics.gossip_rejected}[kind]
                counter.labels(label).inc(delta)
        self._gossip_exported = now

    # -- NodeAPI ----------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        stats = await self._svc().counts()  # not stats(): that scans every object
        g = self.gossip.stats
        return {
            "peer_id": str(self.transport.peer_id),
            "name": self.name,
            "network": self.spec.name,
            "key_fingerprint": self.key.fingerprint,
            "uptime_s": round(self.wall() - self.started_at, 1),
            "records": stats.records,
            "events": stats.events,
            "invalid": stats.invalid,
            "store_bytes": stats.file_bytes,
            "peers": len(self.transport.connected_peers()),
            "listen_addrs": self.transport.listen_addresses(),
            "http_url": self.http_url,
            "socket_path": str(self.socket_path),
            "mirror_prefixes": list(self.prefixes),
            "sync": {"rounds": self.sync_totals.rounds, "errors": self.sync_totals.errors,
                     "fetched": self.sync_totals.fetched, "pushed": self.sync_totals.pushed,
                     "errors_by_reason": dict(self.sync_totals.by_reason),
                     "last": self.sync_totals.last},
            "gossip": {"messages_in": g.messages_in, "messages_out": g.messages_out,
                       "events_in": g.events_in, "events_new": g.events_new,
                       "events_out": g.events_out, "rejected": g.rejected_messages,
                       "rate_limited": g.rate_limited, "duplicates": g.duplicates},
            "attest": self.attestor.status() if self.attestor is not None else None,
            "read_cache": self._cache_status(),
        }

    def _cache_status(self) -> dict[str, Any]:
        cache = self._svc().cache
        s = cache.stats
        return {"max_bytes": cache.limits.max_bytes, "bytes": cache.bytes,
                "documents": cache.documents, "names": cache.names, "hits": s.hits,
                "misses": s.misses, "evictions": s.evictions, "invalidated": s.invalidated,
                "stale_fills": s.stale_fills}

    async def peers(self) -> list[dict[str, Any]]:
        connected = {str(p) for p in self.transport.connected_peers()}
        for p in connected:
            self._peer(p).connected = True
        return [{"peer_id": i.peer_id, "addrs": list(i.addrs), "connected": i.peer_id in connected,
                 "connected_since": i.connected_since, "last_sync": i.last_sync,
                 "last_sync_result": i.last_sync_result, "syncs": i.syncs,
                 "sync_errors": i.sync_errors, "received": i.received}
                for i in sorted(self.peers_info.values(), key=lambda i: i.peer_id)]

    async def resolve(self, identifier: str) -> str | None:
        try:
            return await self._svc().resolve(identifier)
        except InputError:
            return None

    async def served_state(self, identifier: str) -> Served | None:
        try:
            return await self._svc().served_state(identifier)
        except InputError:
            return None

    async def served_bundle(self, identifier: str) -> Served | None:
        try:
            return await self._svc().bundle(identifier)
        except InputError:
            return None

    def cached_state(self, identifier: str) -> Served | None:
        return None if self.service is None else self.service.cache.peek_state(identifier)

    def cached_bundle(self, identifier: str) -> Served | None:
        return None if self.service is None else self.service.cache.peek_bundle(identifier)

    async def events(self, pith_number: str) -> list[dict[str, Any]]:
        subject = await self.resolve(pith_number)
        if subject is None:
            raise NotFound(f"no record {pith_number}")
        events = await self._svc().events(subject)
        events.sort(key=lambda e: (e.time_key, e.event_id))
        return [e.to_json() for e in events]

    async def record_view(self, pith_number: str) -> RecordView | None:
        st = await self._svc().state(pith_number)
        if st is None:
            return None
        doc = json.loads(st.data)
        return record_view_from_state(doc, self.spec)

    async def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return list(self.recent)[:max(0, limit)]

    async def submit(self, events: list[Any]) -> list[SubmitOutcome]:
        if len(events) > MAX_SUBMIT_EVENTS:
            raise InputError("too_many_events", f"submit at most {MAX_SUBMIT_EVENTS} events")
        parsed: list[Event] = []
        outcomes: dict[int, SubmitOutcome] = {}
        for i, obj in enumerate(events):
            try:
                parsed.append(event_from_json(obj))
            except InputError as exc:
                eid = obj.get("event_id") if isinstance(obj, dict) else None
                outcomes[i] = SubmitOutcome(eid if isinstance(eid, str) else None, "rejected",
                                            exc.reason)
        results = iter(await self.ingest(parsed, source="socket") if parsed else [])
        ordered = [outcomes[i] if i in outcomes else next(results) for i in range(len(events))]
        new = [e for e in parsed if any(o.event_id == e.event_id and o.outcome == "new"
                                        for o in ordered)]
        if new:
            self.gossip.mark_seen([e.event_id for e in new])
            await self.gossip.publish([e.canonical_bytes() for e in new])
        return ordered

    async def explain(self, identifier: str) -> dict[str, Any]:
        svc = self._svc()
        if identifier.startswith("sha256:"):
            ev = await svc.event(identifier)
            if ev is None:
                return {"id": identifier, "kind": "event", "known": False,
                        "why": "no stored event has this id: it never reached this node, or "
                               "it was rejected on arrival (bad signature or untrusted "
                               "importer), or its record is outside mirror_prefixes"}
            prov = await svc.provenance(identifier)
            st = await svc.state(ev.subject)
            doc = json.loads(st.data) if st else {}
            invalid = {e["event_id"]: e["reason"] for e in doc.get("invalid_events", [])}
            equivocating = [q for q in doc.get("equivocations", [])
                            if ev.event_id in q.get("event_ids", [])]
            applied = ev.event_id in doc.get("applied_event_ids", [])
            if applied:
                why = "applied to the record's state"
            elif ev.event_id in invalid:
                why = f"invalid: {invalid[ev.event_id]}"
            elif equivocating:
                why = "not applied: its signer equivocated in this slot"
            elif ev.event_type == "registry_import":
                why = "an import attestation: it admits registry events, it is not a state event"
            else:
                why = "valid but superseded by a newer event of the same signer and slot"
            return {"id": identifier, "kind": "event", "known": True,
                    "event_type": ev.event_type, "subject": ev.subject,
                    "signer": ev.signer.to_json(), "created_at": ev.created_at,
                    "source": prov.source if prov else None,
                    "received_at": prov.received_at if prov else None,
                    "validation": invalid.get(ev.event_id, "valid"),
                    "in_state": applied, "equivocations": equivocating, "why": why}
        try:
            kind, _ = normalise_alias(identifier)
        except InputError as exc:
            return {"id": identifier, "kind": "unknown", "known": False, "why": str(exc)}
        subject = await self.resolve(identifier)
        if subject is None:
            return {"id": identifier, "kind": kind, "known": False,
                    "why": "no record with this identifier is stored here",
                    "mirror_prefixes": list(self.prefixes),
                    "peers_synced": sorted(p.peer_id for p in self.peers_info.values()
                                           if p.syncs)}
        st = await svc.state(subject)
        doc = json.loads(st.data) if st else {}
        events = await svc.events(subject)
        sources: dict[str, int] = {}
        for ev in events:
            prov = await svc.provenance(ev.event_id)
            if prov:
                sources[prov.source] = sources.get(prov.source, 0) + 1
        current = doc.get("current", {})
        return {
            "id": identifier, "kind": kind, "known": True, "pith_number": subject,
            "state_sha256": doc.get("state_sha256"), "event_count": doc.get("event_count"),
            "stored_events": len(events), "invalid_events": doc.get("invalid_events", []),
            "equivocations": doc.get("equivocations", []),
            "sources": sources,
            "attested_by": sorted({e["signer"]["signer_id"] for e in
                                   current.get("storage_attestations", [])}),
            "mirrors": [e["payload"] for e in current.get("mirror_hints", [])],
            "receipt": record_view_from_state(doc, self.spec).receipt_detail if doc else None,
            "why": "stored; its state is computed from the events listed",
        }

    async def trigger_sync(self, peer_id: str | None) -> dict[str, Any]:
        peers = self.transport.connected_peers()
        if peer_id is not None:
            matches = [p for p in peers if p == peer_id or p.endswith(peer_id)]
            if not matches:
                raise NotFound(f"not connected to a peer {peer_id}")
            peers = matches[:1]
        results: list[dict[str, Any]] = []
        for p in peers:
            try:
                r = await self.sync_with(p)
                results.append({"peer": str(p), "ok": True, "fetched_new": r.fetched_new,
                                "pushed": r.pushed, "need": r.need, "have": r.have,
                                "rounds": r.rounds})
            except SyncFailed as exc:
                results.append({"peer": str(p), "ok": False, "error": str(exc)})
        return {"peers": results}

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise InputError("too_many_subscribers", "too many subscribers")
        send, recv = trio.open_memory_channel[dict[str, Any]](SUBSCRIBER_QUEUE)
        self._subscribers.add(send)
        try:
            async with recv:
                async for note in recv:
                    yield note
        finally:
            self._subscribers.discard(send)
            send.close()

    async def manifest(self) -> dict[str, Any]:
        base = self.cfg.http.public_url or (self.http_url or "")
        mirrors = [{
            "name": self.name, "mirror_type": "pithnode", "base_url": base,
            "bundle_pattern": f"{base}/pith/{{suffix}}/bundle.json",
            "state_pattern": f"{base}/pith/{{suffix}}/state.json",
            "well_known_pattern": f"{base}/.well-known/pith/{{suffix}}/bundle.json",
            "peer_id": str(self.transport.peer_id),
            "multiaddrs": self.transport.listen_addresses(),
            "public_key": {"key_id": self.key.key_id, "algorithm": "ed25519", "format": "raw",
                           "public_key_hex": self.key.public_key.hex(),
                           "fingerprint_sha256_hex": self.key.fingerprint,
                           "fingerprint_sha256_b32_first128bits": self.key.fingerprint_b32},
            "mirror_prefixes": list(self.prefixes),
            "status": "self",
        }]
        for source in self.cfg.pull.sources:
            mirrors.append({"name": source, "mirror_type": "https", "base_url": source,
                            "status": "source"})
        return {
            "manifest_type": "pith_mirror_manifest", "manifest_version": "1.0",
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall())),
            "merge_version": self.spec.merge_version, "mirrors": mirrors,
            "notes": "Any conforming mirror may host the same Pith Open Graph bundles. Current "
                     "state is computed by deterministic merge, not by trusting this manifest.",
        }

    async def checkpoint(self) -> dict[str, Any]:
        if self.attestor is None:
            raise NotFound("this node runs no attestation services")
        return (await self.attestor.checkpoint_now()).to_json()

    async def split_views(self) -> list[dict[str, Any]]:
        return self.attestor.split_views() if self.attestor is not None else []

    def metrics_text(self) -> bytes:
        self._export_gossip_counters()
        if self.service is not None:
            self._export_cache_figures()
        return self.metrics.render()


def record_view_from_state(doc: dict[str, Any], spec: NetworkSpec) -> RecordView:
    """What a person sees of a record, from its state document."""
    current = doc.get("current", {})
    paper: dict[str, Any] = {}
    for snap in reversed(current.get("graph_snapshots", [])):
        p = snap.get("payload", {}).get("graph_snapshot", {}).get("paper")
        if isinstance(p, dict):
            paper = p
            break
    created = current.get("record_created") or {}
    payload = created.get("payload", {}) if isinstance(created, dict) else {}
    reason = check_receipt(payload.get("receipt"), str(payload.get("canonical_sha256")), spec) \
        if payload else "no record_created event"
    record = current.get("canonical_record") or {}
    lists = {k: v for k, v in current.items()
             if isinstance(v, list) and k != "source_aliases"}
    return RecordView(
        pith_number=doc.get("pith_number", ""),
        state_sha256=doc.get("state_sha256", ""),
        title=paper.get("title"),
        authors=paper.get("authors_text"),
        abstract=paper.get("abstract_excerpt"),
        submitted_at=(record.get("metadata") or {}).get("submitted_at"),
        source=record.get("source"),
        aliases=list(current.get("source_aliases", [])),
        counts={k: doc.get(k, 0) for k in ("event_count", "valid_event_count",
                                            "invalid_event_count", "equivocation_count")},
        receipt_valid=reason is None,
        receipt_detail="valid, signed by " + str(payload.get("receipt", {}).get("key_id"))
        if reason is None else str(reason),
        lists=lists,
        invalid_events=list(doc.get("invalid_events", [])),
        equivocations=list(doc.get("equivocations", [])),
    )


def transport_config(cfg: NodeConfig) -> TransportConfig:
    from pithnode.protocol.wire import MAX_FRAME_BYTES

    return TransportConfig(
        listen_addrs=cfg.p2p.listen, bootstrap=cfg.p2p.bootstrap, max_peers=cfg.p2p.max_peers,
        max_frame_bytes=MAX_FRAME_BYTES, redial_backoff_min=cfg.p2p.redial_min_s,
        redial_backoff_max=cfg.p2p.redial_max_s,
        gossip_heartbeat_seconds=max(1, int(cfg.gossip.heartbeat_s)), enable_mdns=cfg.p2p.mdns)
