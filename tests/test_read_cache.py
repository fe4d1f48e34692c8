"""The read cache: bounded, and never serving a state older than the last committed ingest.

Three levels: :class:`ReadCache` on its own (bounds, LRU order, tickets, invalidation);
:class:`StoreService` over a real store (an alias a new record takes over, a repair); and a
running :class:`Node` on the in-memory network, whose query socket and HTTP mirror must
serve the new state (and a new ETag) as soon as an ingest that touched the record is
answered.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import threading
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from pithnode.node.api import Served
from pithnode.node.config import CacheConfig, HttpConfig, NodeConfig, SyncConfig
from pithnode.node.daemon import Node
from pithnode.node.memory_transport import MemoryNetwork
from pithnode.node.query_socket import QueryClient, open_query_client
from pithnode.node.read_cache import (
    DOCUMENT_OVERHEAD,
    MAX_ENTRY_FRACTION,
    MAX_INFLATE_BYTES,
    NAME_BYTES,
    CacheLimits,
    ReadCache,
)
from pithnode.node.store_service import StoreService
from pithnode.node.synth import SynthConfig, SynthRecord, generate, synth_keys, synth_record
from pithnode.node.transport import TransportConfig
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.spec import NetworkSpec
from pithnode.storage.codec import CODEC_DEFLATE, encode_bytes
from pithnode.storage.errors import StoreClosed
from pithnode.storage.results import StoredState
from pithnode.storage.store import Store

TIMEOUT = 30
KEYS = synth_keys(23)
CFG = SynthConfig(seed=23)
RECORDS: list[SynthRecord] = list(generate(KEYS, 3, CFG))
#: A record made later than RECORDS[0] with the same arXiv id (index + 1,100,000 gives the
#: same year and number; this one also draws the same month): its alias is newer, so the
#: arXiv id resolves to it once it is stored.
LATER_TWIN = synth_record(KEYS, 1_100_000, CFG)
NODE_KEY = SigningKey(bytes(range(3, 35)))


def spec() -> NetworkSpec:
    return KEYS.spec()  # a fresh object per store (the merge memoises on it)


def arxiv_of(rec: SynthRecord) -> str:
    return str(rec.canonical_record["source"]["id"])


def state(pith: str, data: bytes) -> StoredState:
    return StoredState(pith, data, hashlib.sha256(data).hexdigest(), "00" * 32, 1, 1, 1, 0, 0)


def pith(i: int) -> str:
    """A stand-in Pith Number (the cache keeps what the store resolved; it checks nothing)."""
    return f"pith:2020:P{i}"


def doi(i: int) -> str:
    """An identifier that resolved to ``pith(i)``."""
    return f"10.1000/{i}"


# ---------------------------------------------------------------- ReadCache on its own
def test_documents_are_bounded_by_bytes_and_evicted_least_recently_used() -> None:
    size = 4000
    cache = ReadCache(CacheLimits(max_bytes=20 * (size + DOCUMENT_OVERHEAD), max_names=100))
    for i in range(20):
        cache.put_state(cache.ticket, doi(i), state(pith(i), bytes([i]) * size))
    assert cache.documents == 20 and cache.bytes == cache.limits.max_bytes
    assert cache.state(doi(0)) is not None  # read: now the most recently used
    for i in range(20, 25):
        cache.put_state(cache.ticket, doi(i), state(pith(i), bytes([i]) * size))
        assert cache.bytes <= cache.limits.max_bytes
    held = [i for i in range(25) if cache.state(doi(i)) is not None]
    assert held == [0, *range(6, 25)]
    assert cache.stats.evictions == 5


def test_a_document_too_large_for_its_share_is_served_but_not_kept() -> None:
    cache = ReadCache(CacheLimits(max_bytes=MAX_ENTRY_FRACTION * 1000))
    cache.put_state(cache.ticket, doi(1), state(pith(1), b"x" * 1000))
    cache.put_state(cache.ticket, doi(2), state(pith(2), b"x" * 100))
    assert cache.state(doi(1)) is None
    assert cache.state(doi(2)) is not None
    assert cache.pith_of(doi(1)) == pith(1)  # the name is still worth keeping


def compressed_state(pith_number: str, data: bytes) -> StoredState:
    """A state as the store returns one it keeps deflated: the served bytes and the blob."""
    codec, blob = encode_bytes(data)
    assert codec == CODEC_DEFLATE
    return dataclasses.replace(state(pith_number, data), stored_codec=codec,
                               stored_blob=blob)


def test_a_compressed_state_is_held_compressed_and_served_exactly() -> None:
    data = json.dumps({"events": [{"n": i, "text": "lorem ipsum " * 4} for i in range(60)]},
                      separators=(",", ":")).encode()
    st = compressed_state(pith(1), data)
    assert len(st.stored_blob) * 3 < len(data)
    cache = ReadCache()
    cache.put_state(cache.ticket, doi(1), st)
    assert cache.bytes == len(st.stored_blob) + DOCUMENT_OVERHEAD  # the smaller form counts
    assert cache.state(doi(1)) == st and cache.state(doi(1)).data == data  # type: ignore[union-attr]
    served = cache.served_state(doi(1))
    assert served == Served(pith(1), data, st.state_sha256)
    assert cache.peek_state(pith(1)) == served
    # a large state is held inflated: no hit inflates more than MAX_INFLATE_BYTES
    big = b"[" + b"1," * MAX_INFLATE_BYTES + b"1]"
    cache.put_state(cache.ticket, doi(2), compressed_state(pith(2), big))
    assert cache.bytes == (len(st.stored_blob) + DOCUMENT_OVERHEAD
                           + len(big) + DOCUMENT_OVERHEAD)
    assert cache.state(doi(2)).data == big  # type: ignore[union-attr]


def test_names_are_bounded_and_unusable_ones_are_not_kept() -> None:
    cache = ReadCache(CacheLimits(max_names=3))
    for i in range(5):
        cache.put_name(cache.ticket, doi(i), pith(i))
    assert cache.names == 3
    assert [cache.pith_of(doi(i)) for i in range(5)] == [None, None, pith(2), pith(3),
                                                         pith(4)]
    cache.put_name(cache.ticket, "x" * 200, pith(0))  # longer than any name kept
    cache.put_name(cache.ticket, "not an identifier", pith(0))
    assert cache.pith_of("x" * 200) is None and cache.pith_of("not an identifier") is None


def test_a_zero_byte_cache_keeps_no_documents() -> None:
    cache = ReadCache(CacheLimits(max_bytes=0, max_names=0))
    cache.put_state(cache.ticket, doi(1), state(pith(1), b"{}"))
    assert (cache.documents, cache.names, cache.bytes) == (0, 0, 0)


def test_a_fill_read_before_an_invalidation_is_not_kept() -> None:
    cache = ReadCache()
    ticket = cache.ticket  # a read starts ...
    cache.invalidate({pith(1)}, set())  # ... a commit touches the record ...
    cache.put_state(ticket, pith(1), state(pith(1), b"old"))  # ... the old read arrives
    cache.put_name(ticket, "2301.00001", pith(1))
    assert cache.state(pith(1)) is None and cache.pith_of("2301.00001") is None
    assert cache.stats.stale_fills == 2
    # an invalidation of other records also starts a new generation: conservative
    ticket = cache.ticket
    cache.invalidate({pith(9)}, set())
    cache.put_state(ticket, doi(1), state(pith(1), b"maybe old"))
    assert cache.state(doi(1)) is None


def test_invalidate_drops_documents_their_names_and_names_taken_over() -> None:
    cache = ReadCache()
    a, b = pith(1), pith(2)
    cache.put_state(cache.ticket, "2301.00001", state(a, b"a"))
    cache.put_bundle(cache.ticket, "2301.00001v1", Served(a, b"{}", "ab" * 32))
    cache.put_state(cache.ticket, doi(2), state(b, b"b"))
    cache.put_name(cache.ticket, "2301.00002v3", b)
    cache.put_name(cache.ticket, "arXiv:2301.00002", b)
    assert cache.documents == 3 and cache.names == 5
    # a commit touched record a, which now also carries the alias arxiv 2301.00002 (newer
    # than b's): every name that resolved to a goes, and so do the names with that key
    cache.invalidate({a}, {("arxiv", "2301.00001"), ("arxiv", "2301.00002")})
    assert cache.state("2301.00001") is None and cache.bundle("2301.00001v1") is None
    assert cache.pith_of("2301.00001") is None and cache.pith_of("2301.00001v1") is None
    assert cache.pith_of("arXiv:2301.00002") is None  # normalised, its key matched
    assert cache.pith_of("2301.00002v3") == b  # another key (arxiv_version): kept
    assert cache.state(doi(2)) is not None
    assert cache.documents == 1 and cache.bytes == DOCUMENT_OVERHEAD + 1
    assert cache.stats.invalidated == 2
    # alias keys unknown: every name goes, the untouched documents stay
    cache.invalidate({a}, None)
    assert cache.names == 0 and cache.documents == 1
    cache.clear()
    assert (cache.documents, cache.names, cache.bytes) == (0, 0, 0)


def test_the_memory_a_full_cache_holds_is_bounded() -> None:
    """Filled far beyond its bounds, the cache holds about max_bytes of documents plus
    max_names names, whatever it was offered (measured with tracemalloc)."""
    max_bytes, max_names, doc = 2 << 20, 2000, 6000
    cache = ReadCache(CacheLimits(max_bytes=max_bytes, max_names=max_names))
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            cache.put_state(cache.ticket, doi(i), state(pith(i), i.to_bytes(4, "big") *
                                                        (doc // 4)))
            cache.put_name(cache.ticket, f"arXiv:2301.{i:05d}", pith(i))
            cache.state(doi(i))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert cache.bytes <= max_bytes and cache.names <= max_names
    assert cache.stats.evictions > 4000
    # documents within their counted size, names about NAME_BYTES each, and a little for
    # what the first calls allocate once (regex caches)
    assert held <= max_bytes + max_names * NAME_BYTES + (64 << 10), held


def test_a_full_cache_gives_the_garbage_collector_nothing_to_track() -> None:
    """Entries are tuples of atomic values, which the collector stops tracking: a full
    collection does not walk a big cache (it stalled the trio thread for 0.7 s when the
    entries were objects)."""
    cache = ReadCache(CacheLimits(max_bytes=64 << 20, max_names=20_000))
    gc.collect()
    tracked = len(gc.get_objects())
    for i in range(10_000):
        cache.put_state(cache.ticket, doi(i), state(pith(i), b"{}"))
        cache.put_name(cache.ticket, f"arXiv:2301.{i:05d}", pith(i))
        cache.put_bundle(cache.ticket, pith(i), Served(pith(i), b"{}", "ab" * 32))
    assert (cache.documents, cache.names) == (20_000, 20_000)
    gc.collect()
    assert len(gc.get_objects()) - tracked < 100


def test_a_full_pith_number_needs_no_name() -> None:
    cache = ReadCache()
    p = "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL"
    cache.put_state(cache.ticket, p, state(p, b"{}"))
    assert cache.names == 0
    assert cache.pith_of(p) == p and cache.served_state(p) == Served(p, b"{}",
                                                                     state(p, b"{}").state_sha256)
    assert cache.state("pith:2018:32uk2zwi5aoevo5bzhzclhzwzl") is None  # another spelling
    cache.invalidate({p}, set())
    assert cache.pith_of(p) is None and cache.served_state(p) is None


# ---------------------------------------------------------------- StoreService, real store
@pytest.fixture
async def service(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[StoreService]:
    with Store(tmp_path / "store.sqlite", spec()) as store:
        store.ingest_many([e for r in RECORDS for e in r.events], source="synth",
                          received_at=0.0)
        svc = StoreService(store, cache=ReadCache())
        with trio.fail_after(TIMEOUT):
            await nursery.start(svc.run)
        yield svc
        nursery.cancel_scope.cancel()


async def test_a_new_record_taking_over_an_alias_is_resolved_at_once(
        service: StoreService) -> None:
    rec, twin = RECORDS[0], LATER_TWIN
    assert arxiv_of(twin) == arxiv_of(rec) and twin.pith_number != rec.pith_number
    with trio.fail_after(TIMEOUT):
        st = await service.state(arxiv_of(rec))
        assert st is not None and st.pith_number == rec.pith_number
        assert await service.resolve(arxiv_of(rec)) == rec.pith_number
        assert service.cache.state(arxiv_of(rec)) == st  # served from memory now
        # the store keeps states deflated; the cache holds that blob, a third of the bytes
        assert st.stored_codec == CODEC_DEFLATE and len(st.stored_blob) * 2 < len(st.data)
        assert service.cache.bytes == len(st.stored_blob) + DOCUMENT_OVERHEAD
        assert service.cache.state(arxiv_of(rec)).data == st.data  # type: ignore[union-attr]
        result = await service.ingest(twin.events, source="test")
        assert twin.pith_number in result.records_touched
        assert rec.pith_number not in result.records_touched
        assert await service.resolve(arxiv_of(rec)) == twin.pith_number
        st = await service.state(arxiv_of(rec))
    assert st is not None and st.pith_number == twin.pith_number
    assert st == service.store.state(arxiv_of(rec))


async def test_a_repair_starts_the_cache_afresh(service: StoreService) -> None:
    with trio.fail_after(TIMEOUT):
        assert await service.state(RECORDS[1].pith_number) is not None
        bundle = await service.bundle(RECORDS[1].pith_number)
        assert bundle is not None and bundle.etag == hashlib.sha256(bundle.data).hexdigest()
        assert service.cache.documents == 2
        report = await service.repair()
    assert not report.dropped_events
    assert (service.cache.documents, service.cache.names) == (0, 0)


class GatedStore:
    """Stands in for a Store: ``state`` answers at once, except for "slow", which waits in
    its worker thread until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[str] = []

    def state(self, identifier: str) -> StoredState | None:
        self.calls.append(identifier)
        if identifier == "slow":
            self.entered.set()
            self.gate.wait(TIMEOUT)
        return state(pith(len(self.calls)), identifier.encode())


async def test_store_reads_queued_meanwhile_go_to_a_thread_in_one_batch(
        nursery: trio.Nursery) -> None:
    store = GatedStore()
    svc = StoreService(store, cache=ReadCache(), read_lanes=1)  # type: ignore[arg-type]
    results: dict[str, StoredState | None] = {}

    async def ask(identifier: str) -> None:
        results[identifier] = await svc.state(identifier)

    with trio.fail_after(TIMEOUT):
        await nursery.start(svc.run)
        nursery.start_soon(ask, "slow")
        await trio.to_thread.run_sync(store.entered.wait)
        async with trio.open_nursery() as asking:
            for i in range(10):
                asking.start_soon(ask, doi(i))
            await trio.testing.wait_all_tasks_blocked()
            assert svc.read_batches == 0  # all ten wait behind the slow read
            store.gate.set()
    assert svc.read_batches == 2
    assert {k: v.data for k, v in results.items() if v is not None} == {
        k: k.encode() for k in ["slow", *map(doi, range(10))]}


async def test_reads_queued_when_the_service_stops_fail_cleanly() -> None:
    store = GatedStore()
    svc = StoreService(store, cache=ReadCache(), read_lanes=1)  # type: ignore[arg-type]
    outcomes: list[BaseException | None] = []

    async def ask(identifier: str) -> None:
        try:
            await svc.state(identifier)
        except StoreClosed as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, trio.open_nursery() as service:
            await service.start(svc.run)
            nursery.start_soon(ask, "slow")
            await trio.to_thread.run_sync(store.entered.wait)
            for i in range(3):
                nursery.start_soon(ask, doi(i))
            await trio.testing.wait_all_tasks_blocked()
            service.cancel_scope.cancel()  # the lane finishes the slow read, then stops
            store.gate.set()
        assert outcomes[0] is None and len(outcomes) == 4
        assert all(isinstance(o, StoreClosed) for o in outcomes[1:])
        # with no lane running, reads go straight to a worker thread
        assert (await svc.state(doi(7))) is not None


# ---------------------------------------------------------------- a running node
@dataclass
class Running:
    node: Node
    url: str
    client: QueryClient
    http: httpx.AsyncClient


@pytest.fixture
async def running(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Running]:
    """A node holding RECORDS, except the last event of RECORDS[0] (kept back to submit)."""
    d = tmp_path / "n"
    d.mkdir()
    held = [e for r in RECORDS for e in r.events if e is not RECORDS[0].events[-1]]
    with Store(d / "store.sqlite", spec()) as s:
        s.ingest_many(held, source="synth", received_at=0.0)
    cfg = NodeConfig(http=HttpConfig(port=0), sync=SyncConfig(interval_s=3600.0, jitter_s=0.0),
                     cache=CacheConfig(max_bytes=1 << 20))
    transport = MemoryNetwork().create(seed=NODE_KEY.seed,
                                       config=TransportConfig(listen_addrs=("/memory/0",)))
    node = Node(cfg, data_dir=d, spec=spec(), key=NODE_KEY, transport=transport, attest=False)
    with trio.fail_after(TIMEOUT):
        await nursery.start(node.run)
    assert node.http_url is not None
    async with open_query_client(node.socket_path) as client, \
            httpx.AsyncClient(base_url=node.http_url, trust_env=False) as http:
        yield Running(node, node.http_url, client, http)
    nursery.cancel_scope.cancel()


async def test_an_ingest_is_seen_by_the_next_socket_and_http_read(running: Running) -> None:
    rec = RECORDS[0]
    node, client, http = running.node, running.client, running.http
    assert node.service is not None
    cache = node.service.cache
    path = f"/pith/{rec.pith_number.rsplit(':', 1)[1]}/state.json"
    with trio.fail_after(TIMEOUT):
        before = await client.call("record.state", {"id": arxiv_of(rec)})
        r1 = await http.get(path)
        hits = cache.stats.hits
        again = await client.call("record.state", {"id": arxiv_of(rec)})
        r2 = await http.get(path, headers={"If-None-Match": r1.headers["etag"]})
        bundle_before = await client.call("record.bundle", {"id": arxiv_of(rec)})
        assert cache.stats.hits >= hits + 2  # the cache answered: this test is about it

        submitted = await client.call("events.submit", {"events": [rec.events[-1].to_json()]})
        assert submitted["new"] == 1  # answered after the durable commit

        after = await client.call("record.state", {"id": arxiv_of(rec)})
        r3 = await http.get(path, headers={"If-None-Match": r1.headers["etag"]})
        r4 = await http.get(path, headers={"If-None-Match": r3.headers["etag"]})
        bundle_after = await client.call("record.bundle", {"id": arxiv_of(rec)})
    assert again == before
    assert r1.status_code == 200 and r2.status_code == 304
    assert r1.headers["etag"] == f'"{before["state_sha256"]}"'
    assert json.loads(r1.content) == before["state"]
    # the next reads: the new state, byte for byte what the store now holds
    assert node.store is not None
    stored = node.store.state(rec.pith_number)
    assert stored is not None and stored.state_sha256 != before["state_sha256"]
    assert after["state_sha256"] == stored.state_sha256
    assert after["state"]["event_count"] == before["state"]["event_count"] + 1
    assert r3.status_code == 200 and r3.content == stored.data
    assert r3.headers["etag"] == f'"{stored.state_sha256}"' != r1.headers["etag"]
    assert r4.status_code == 304
    assert bundle_after != bundle_before
    assert len(bundle_after["bundle"]["events"]) == len(bundle_before["bundle"]["events"]) + 1
    # untouched records stay cached across the commit
    other = RECORDS[1].pith_number
    with trio.fail_after(TIMEOUT):
        await client.call("record.state", {"id": other})
        hits = cache.stats.hits
        await client.call("events.submit", {"events": [RECORDS[2].events[0].to_json()]})
        await client.call("record.state", {"id": other})
    assert cache.stats.hits == hits + 1


async def test_cache_figures_in_status_and_metrics(running: Running) -> None:
    rec = RECORDS[1]
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            await running.client.call("record.state", {"id": rec.pith_number})
        status = await running.client.call("node.status")
        metrics = (await running.http.get("/metrics")).text
    figures = status["read_cache"]
    assert (figures["hits"], figures["misses"], figures["documents"]) == (2, 1, 1)
    assert figures["max_bytes"] == 1 << 20 and 0 < figures["bytes"] <= 1 << 20
    assert 'pithnode_read_cache_lookups_total{result="hit"} 2.0' in metrics
    assert 'pithnode_read_cache_lookups_total{result="miss"} 1.0' in metrics
    assert "pithnode_read_cache_documents 1.0" in metrics
