"""The store for trio code: one writer task owns every write, reads run in worker threads.

:class:`StoreService` sits in front of a synchronous :class:`~pithnode.storage.store.Store`.
``ingest`` queues a batch into a bounded channel (full policy: **block** the caller, so a
fast peer slows down instead of growing memory) and waits until the writer task has
committed it. The writer takes whatever else is already queued, up to one store batch, checks
it (``Store.check_group``) and commits it all in one transaction (``Store.commit_group``), each
on a worker thread, so the trio thread never blocks on SQLite; the next group is checked while
the one before commits. Reads go to the store's read connections through
``trio.to_thread.run_sync``. The service also implements what sync and gossip need of a
store (``node.sync.SyncStore``).

Served documents and resolved names are kept in a :class:`~pithnode.node.read_cache.ReadCache`:
``state``, ``served_state``, ``bundle`` and ``resolve`` answer what it holds on the trio
thread, and read the store only on a miss. The writer invalidates the records each commit
touched before it wakes the callers waiting for that commit, so a caller that saw its ingest
committed reads the new state. ``repair`` (a fsck repair) clears the cache.

A miss of ``state``, ``served_state`` or ``resolve`` (one short read each) joins a queue that
reader lanes (tasks started by :meth:`StoreService.run`) drain: each lane hands every read
queued meanwhile, up to ``MAX_READ_BATCH``, to one worker thread, so a burst of misses costs
the trio thread one hand-off rather than one each. The queue is bounded by its callers (each
waits for its own read, so it holds at most one read per waiting task). Without running
lanes (before ``run``, after it stops) reads go to a worker thread each, as other reads do.
"""

from __future__ import annotations

import hashlib
import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import outcome
import trio

from pithnode.protocol.events import Event
from pithnode.protocol.ingest import sync_item
from pithnode.protocol.wire import prefixes_match
from pithnode.storage.batch import Batch
from pithnode.storage.errors import StoreClosed, StoreError
from pithnode.storage.results import (
    EventOutcome,
    IngestResult,
    Provenance,
    StoreCounts,
    StoredState,
    StoreStats,
)
from pithnode.storage.store import MAX_BATCH_EVENTS, FsckReport, Store

from .api import Served
from .read_cache import ReadCache

if TYPE_CHECKING:
    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

__all__ = ["DEFAULT_QUEUE", "StoreService"]

log = logging.getLogger(__name__)

#: Ingest requests that may wait for the writer before ``ingest`` blocks.
DEFAULT_QUEUE = 64
#: Worker threads reading at once.
DEFAULT_READERS = 8
#: Reader lanes for the query path's store reads (states, names): each hands the reads
#: queued meanwhile, up to MAX_READ_BATCH, to one worker thread at once.
DEFAULT_READ_LANES = 2
MAX_READ_BATCH = 32
#: Sync items kept between sessions: only for a full mirror with at least ``..._MIN`` events
#: (fewer are read in under 30 ms) and at most ``..._MAX`` (about 150 bytes each: 30 MB);
#: other stores read them for every session.
SYNC_ITEMS_CACHE_MIN = 50_000
SYNC_ITEMS_CACHE_MAX = 200_000

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Read:
    fn: Callable[[], Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome[Any] | None = None


def _run_reads(batch: Sequence[_Read]) -> list[outcome.Outcome[Any]]:
    return [outcome.capture(r.fn) for r in batch]


def _finish(batch: Sequence[_Read], results: Sequence[outcome.Outcome[Any]]) -> None:
    """Hand each read its result; reads without one get StoreClosed."""
    for i, read in enumerate(batch):
        read.result = results[i] if i < len(results) else outcome.Error(
            StoreClosed("the store service stopped"))
        read.done.set()


def _merged(items: list[tuple[int, bytes]], new: list[tuple[int, bytes]]
            ) -> list[tuple[int, bytes]]:
    """``items`` (sorted) with ``new`` inserted in order: slices between the insertion
    points, a few milliseconds for 200,000 items (sorting the lot takes ~90)."""
    out: list[tuple[int, bytes]] = []
    start = 0
    for item in sorted(new):
        at = bisect_left(items, item, start)
        out += items[start:at]
        out.append(item)
        start = at
    out += items[start:]
    return out


@dataclass(eq=False, slots=True)
class _Reading:
    """A read of sync items in progress; ``items`` once it succeeded."""

    done: trio.Event = field(default_factory=trio.Event)
    items: list[tuple[int, bytes]] | None = None


@dataclass(eq=False, slots=True)
class _SyncItems:
    """The sync items of one scope, and those of events committed since (unsorted)."""

    scope: tuple[str, ...]
    items: list[tuple[int, bytes]]
    pending: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Request:
    events: Sequence[Event]
    source: str
    received_at: float
    done: trio.Event = field(default_factory=trio.Event)
    result: IngestResult | None = None
    error: StoreError | None = None

    def finish(self, result: IngestResult | None, error: StoreError | None) -> None:
        self.result, self.error = result, error
        self.done.set()


class StoreService:
    """Async front of a :class:`Store`. Run :meth:`run` in a nursery before ingesting.

    ``clock`` gives the wall-clock time recorded as ``received_at`` when a caller gives
    none (injected, so tests control it).
    """

    def __init__(self, store: Store, *, queue_size: int = DEFAULT_QUEUE,
                 clock: Callable[[], float] = time.time,
                 readers: int = DEFAULT_READERS, cache: ReadCache | None = None,
                 read_lanes: int = DEFAULT_READ_LANES) -> None:
        self.store = store
        self.cache = cache if cache is not None else ReadCache()
        self._clock = clock
        self._send, self._receive = trio.open_memory_channel[_Request](queue_size)
        self._limiter = trio.CapacityLimiter(readers)
        self._closed = False
        self.batches = 0
        self._lanes = read_lanes
        self._lanes_running = False
        self._reads: deque[_Read] = deque()
        self._reads_queued = trio.Event()
        self.read_batches = 0
        self._sync_cache: _SyncItems | None = None
        self._sync_reading: dict[tuple[str, ...], _Reading] = {}
        #: changes with every commit and repair
        self._generation = 0

    # -- the writer ------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The writer task, and the reader lanes: commit queued batches until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._lanes):
                nursery.start_soon(self._read_lane)
            self._lanes_running = True
            await self._write_loop(task_status)

    async def _write_loop(self, task_status: TaskStatus[None]) -> None:
        """Two stages joined by an unbuffered channel: this task takes the queued requests
        (up to one store batch) and checks them on a worker thread (signatures, encoding:
        ``Store.check_group``) while the commit task commits the group before on another
        (``Store.commit_group``), so checking and committing overlap as in a bulk import.
        Groups commit in the order they were queued."""
        checked_send, checked_recv = trio.open_memory_channel[tuple[list[_Request], Batch]](0)
        inflight: list[list[_Request]] = []
        carry: _Request | None = None
        try:
            async with self._receive, trio.open_nursery() as nursery:
                nursery.start_soon(self._commit_loop, checked_recv, inflight)
                task_status.started()
                async with checked_send:
                    while True:
                        first = carry if carry is not None else await self._receive.receive()
                        group, carry = self._group(first)
                        inflight.append(group)
                        batch = await self._check(group)
                        if batch is None:
                            inflight.remove(group)
                            continue
                        await checked_send.send((group, batch))
        finally:
            self._closed = True
            pending = [carry] if carry is not None else []
            while True:
                try:
                    pending.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                    break
            for req in [r for group in inflight for r in group] + pending:
                if not req.done.is_set():  # not committed: its caller must not count on it
                    req.finish(None, StoreClosed("the store service stopped"))

    def _group(self, first: _Request) -> tuple[list[_Request], _Request | None]:
        """``first`` and the requests queued behind it, up to one store batch; and the one
        request that did not fit, if any."""
        group = [first]
        size = len(first.events)
        while size < MAX_BATCH_EVENTS:
            try:
                nxt = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            if size + len(nxt.events) > MAX_BATCH_EVENTS:
                return group, nxt
            group.append(nxt)
            size += len(nxt.events)
        return group, None

    async def _check(self, group: list[_Request]) -> Batch | None:
        parts = [(r.events, r.source, r.received_at) for r in group]
        try:
            return await trio.to_thread.run_sync(self.store.check_group, parts)
        except StoreError as exc:
            self._failed(group, exc)
            return None

    async def _commit_loop(self, checked: trio.MemoryReceiveChannel[tuple[list[_Request], Batch]],
                           inflight: list[list[_Request]]) -> None:
        async with checked:
            async for group, batch in checked:
                await self._commit(group, batch)
                inflight.remove(group)

    async def _commit(self, group: list[_Request], batch: Batch) -> None:
        try:
            results, touched, keys = await trio.to_thread.run_sync(self._write, batch)
        except StoreError as exc:
            self._failed(group, exc)
            return
        # before anyone learns of the commit: no read after it may see a cached old state
        self.cache.invalidate(touched, keys)
        self._note_new(group, results)
        self.batches += 1
        for req, result in zip(group, results, strict=True):
            req.finish(result, None)

    @staticmethod
    def _failed(group: list[_Request], exc: StoreError) -> None:
        # the batch is not stored; its callers get the error, the writer carries on
        log.error("ingest of %d events failed: %s", sum(len(r.events) for r in group), exc)
        for req in group:
            req.finish(None, exc)

    def _write(self, batch: Batch
               ) -> tuple[list[IngestResult], set[str], set[tuple[str, str]] | None]:
        """(worker thread) Commit; then the touched records and their alias keys now."""
        results = self.store.commit_group(batch)
        touched = {s for r in results for s in r.records_touched}
        try:
            keys = self.store.alias_keys(touched) if touched else set()
        except StoreError as exc:  # committed all the same: the cache forgets every name
            log.warning("cannot read the aliases of the records a commit touched: %s", exc)
            keys = None
        return results, touched, keys

    # -- the reader lanes --------------------------------------------------------------------
    async def _read_lane(self) -> None:
        try:
            while True:
                while not self._reads:
                    if self._reads_queued.is_set():
                        self._reads_queued = trio.Event()
                    await self._reads_queued.wait()
                batch = [self._reads.popleft()
                         for _ in range(min(len(self._reads), MAX_READ_BATCH))]
                results: list[outcome.Outcome[Any]] = []
                try:
                    results = await trio.to_thread.run_sync(_run_reads, batch)
                    self.read_batches += 1
                finally:  # (cancelled before the thread started: the batch is failed)
                    _finish(batch, results)
        finally:
            self._lanes_running = False
            _finish(list(self._reads), [])
            self._reads.clear()

    async def _read(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a worker thread, in a reader lane's next batch."""
        if not self._lanes_running:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        read = _Read(fn)
        self._reads.append(read)
        self._reads_queued.set()
        await read.done.wait()  # cancelled meanwhile: the read still runs; its result is lost
        assert read.result is not None
        value: T = read.result.unwrap()
        return value

    # -- writes ------------------------------------------------------------------------------
    async def ingest(self, events: Sequence[Event], *, source: str,
                     received_at: float | None = None) -> IngestResult:
        """Queue a batch and wait until it is durably committed; outcomes in order.

        More than ``MAX_BATCH_EVENTS`` events are committed as several batches.
        """
        when = self._clock() if received_at is None else received_at
        if len(events) > MAX_BATCH_EVENTS:
            outcomes: list[EventOutcome] = []
            touched: set[str] = set()
            for i in range(0, len(events), MAX_BATCH_EVENTS):
                part = await self.ingest(events[i:i + MAX_BATCH_EVENTS], source=source,
                                         received_at=when)
                outcomes.extend(part.outcomes)
                touched.update(part.records_touched)
            return IngestResult(tuple(outcomes), tuple(sorted(touched)))
        if self._closed:
            raise StoreClosed("the store service is not running")
        req = _Request(events, source, when)
        try:
            await self._send.send(req)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StoreClosed("the store service is not running") from exc
        await req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    async def ingest_events(self, events: Sequence[Event], *, source: str
                            ) -> tuple[int, int, int]:
        """(new, duplicate, rejected) once committed (``node.sync.SyncStore``)."""
        result = await self.ingest(events, source=source)
        return result.new, result.duplicate, result.rejected

    async def repair(self, *, verify_signatures: bool = False) -> FsckReport:
        """Rebuild every index and state from the objects (``Store.fsck(repair=True)``),
        dropping damaged objects; the read cache and the kept sync items start afresh."""
        self._forget_all()
        try:
            return await trio.to_thread.run_sync(partial(
                self.store.fsck, repair=True, verify_signatures=verify_signatures))
        finally:
            self._forget_all()

    def _forget_all(self) -> None:
        """The read cache and the kept sync items start afresh (around a repair); a read of
        sync items in progress is not kept."""
        self.cache.clear()
        self._sync_cache = None
        self._generation += 1

    # -- reads -------------------------------------------------------------------------------
    async def resolve(self, identifier: str) -> str | None:
        """The full Pith Number ``identifier`` names; raises ``InputError`` for text that is
        no identifier (unless cached, which it then is)."""
        cache = self.cache
        pith = cache.pith_of(identifier)
        if pith is not None:
            return pith
        ticket = cache.ticket
        pith = await self._read(partial(self.store.resolve, identifier))
        if pith is not None:
            cache.put_name(ticket, identifier, pith)
        return pith

    async def state(self, identifier: str, *, cached: bool = True) -> StoredState | None:
        """The state of the record ``identifier`` names: cached, or one store read.

        ``cached=False`` reads the store and leaves the cache as it is: for scans over many
        records (attestations, notifications of a bulk ingest), which would evict what
        clients ask for, and which want a damaged stored state found now.
        """
        if not cached:
            return await trio.to_thread.run_sync(self.store.state, identifier,
                                                 limiter=self._limiter)
        cache = self.cache
        st = cache.state(identifier)
        if st is not None:
            return st
        ticket = cache.ticket
        st = await self._read(partial(self.store.state, identifier))
        if st is not None:
            cache.put_state(ticket, identifier, st)
        return st

    async def state_heads(self, subjects: Sequence[str]) -> dict[str, tuple[str, int]]:
        """(state_sha256, event_count) of the stored records among ``subjects``; one read,
        past the cache."""
        return await trio.to_thread.run_sync(self.store.state_heads, subjects,
                                             limiter=self._limiter)

    async def served_state(self, identifier: str) -> Served | None:
        """The served state document of the record ``identifier`` names (ETag: its
        state_sha256): the query path, answered on the trio thread when cached."""
        cache = self.cache
        served = cache.served_state(identifier)
        if served is not None:
            return served
        ticket = cache.ticket
        st = await self._read(partial(self.store.state, identifier))
        if st is None:
            return None
        cache.put_state(ticket, identifier, st)
        return Served(st.pith_number, st.data, st.state_sha256)

    async def bundle(self, identifier: str) -> Served | None:
        """The served bundle of the record ``identifier`` names (ETag: its SHA-256)."""
        cache = self.cache
        served = cache.bundle(identifier)
        if served is not None:
            return served
        ticket = cache.ticket
        served = await trio.to_thread.run_sync(self._read_bundle, identifier,
                                               limiter=self._limiter)
        if served is not None:
            cache.put_bundle(ticket, identifier, served)
        return served

    def _read_bundle(self, identifier: str) -> Served | None:
        found = self.store.record_bundle(identifier)
        if found is None:
            return None
        pith, data = found
        return Served(pith, data, hashlib.sha256(data).hexdigest())

    async def events(self, identifier: str) -> list[Event]:
        return await trio.to_thread.run_sync(self.store.events, identifier,
                                             limiter=self._limiter)

    async def event(self, event_id: str | bytes) -> Event | None:
        return await trio.to_thread.run_sync(self.store.event, event_id,
                                             limiter=self._limiter)

    async def events_by_ids(self, ids: Sequence[str | bytes]) -> list[Event]:
        return await trio.to_thread.run_sync(self.store.events_by_ids, ids,
                                             limiter=self._limiter)

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]:
        """Exact bytes of the stored events among ``ids`` (``node.sync.SyncStore``)."""
        return await trio.to_thread.run_sync(self.store.raw_events, ids,
                                             limiter=self._limiter)

    async def sync_items(self, prefixes: Sequence[str]) -> list[tuple[int, bytes]]:
        """(seconds, raw id) of the stored events in scope, sorted (``SyncStore``).

        A full mirror's items (every record in scope) are kept, from
        ``SYNC_ITEMS_CACHE_MIN`` up to ``SYNC_ITEMS_CACHE_MAX``, and brought up to date
        with the events committed since rather than read again for every session. Sessions
        asking at once share one read. Before they are used, the store's count
        of events must equal theirs (events removed behind the service's back, by another
        connection, are noticed); a repair drops them.
        """
        scope = tuple(sorted({p.upper() for p in prefixes}))
        while (reading := self._sync_reading.get(scope)) is not None:
            await reading.done.wait()  # another session's read of this scope: share it
            if reading.items is not None:
                return list(reading.items)
        cached = self._sync_cache
        if cached is not None and cached.scope == scope:
            if cached.pending:  # the events committed since, merged in (no await: atomic)
                cached.items = _merged(cached.items, cached.pending)
                cached.pending = []
            items = cached.items
            count = (await self.counts()).events
            if self._sync_cache is cached and count == len(items) and not cached.pending:
                return list(items)
            log.debug("the store holds %d events, the kept sync items %d: reading them again",
                      count, len(items))
            self._sync_cache = None

        def read() -> list[tuple[int, bytes]]:
            return list(self.store.iter_sync_items(scope or None))

        generation = self._generation
        reading = self._sync_reading[scope] = _Reading()
        try:
            items = reading.items = await trio.to_thread.run_sync(read, limiter=self._limiter)
        finally:
            del self._sync_reading[scope]
            reading.done.set()
        # a commit during the read may or may not be in it: keep only a clean snapshot
        if (not scope and generation == self._generation
                and SYNC_ITEMS_CACHE_MIN <= len(items) <= SYNC_ITEMS_CACHE_MAX):
            self._sync_cache = _SyncItems(scope, items)
        return list(items)

    def _note_new(self, group: Sequence[_Request], results: Sequence[IngestResult]) -> None:
        """Add a commit's new events to the kept sync items (or drop them: too many)."""
        self._generation += 1
        cached = self._sync_cache
        if cached is None:
            return
        for req, result in zip(group, results, strict=True):
            for ev, out in zip(req.events, result.outcomes, strict=True):
                if out.outcome == "new" and prefixes_match(ev.subject.rsplit(":", 1)[-1],
                                                           cached.scope):
                    cached.pending.append(sync_item(ev))
        if len(cached.items) + len(cached.pending) > SYNC_ITEMS_CACHE_MAX:
            self._sync_cache = None

    async def record_fingerprint(self, subject: str) -> str | None:
        return await trio.to_thread.run_sync(self.store.record_fingerprint, subject,
                                             limiter=self._limiter)

    async def provenance(self, event_id: str | bytes) -> Provenance | None:
        return await trio.to_thread.run_sync(self.store.provenance, event_id,
                                             limiter=self._limiter)

    async def stats(self) -> StoreStats:
        return await trio.to_thread.run_sync(self.store.stats, limiter=self._limiter)

    async def counts(self) -> StoreCounts:
        return await trio.to_thread.run_sync(self.store.counts, limiter=self._limiter)
