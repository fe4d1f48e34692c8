"""Sync and gossip between in-process nodes over the in-memory network (no sleeps)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import cbor2
import pytest
import trio
import trio.testing

from pithnode.node.gossip import Gossip
from pithnode.node.memory_transport import MemoryNetwork, MemoryTransport
from pithnode.node.sync import SYNC_PROTOCOL, SyncEngine, SyncFailed, SyncResult
from pithnode.node.synth import SynthConfig, generate, synth_keys
from pithnode.node.transport import PeerAddress, Stream, TransportConfig
from pithnode.protocol.events import Event
from pithnode.protocol.wire import encode_frame, encode_gossip
from tests.mem_store import MemStore

KEYS = synth_keys(11)
SPEC = KEYS.spec()
RECORDS = list(generate(KEYS, 40, SynthConfig(seed=11)))
ALL: list[Event] = [e for r in RECORDS for e in r.events]


def engine(store: MemStore, prefixes: tuple[str, ...] = (), timeout: float = 5.0) -> SyncEngine:
    return SyncEngine(store, prefixes=prefixes, timeout_s=timeout, fetch_batch=50,
                      frame_size_limit=4096)


@asynccontextmanager
async def pair(handler_b: Callable[[Stream], object] | None = None
               ) -> AsyncIterator[tuple[MemoryTransport, MemoryTransport, trio.Nursery]]:
    net = MemoryNetwork()
    cfg = TransportConfig(listen_addrs=("/memory/0",))
    a, b = net.create(config=cfg), net.create(config=cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        if handler_b is not None:
            b.set_stream_handler(SYNC_PROTOCOL, handler_b)  # type: ignore[arg-type]
        with trio.fail_after(5):
            await a.connect(PeerAddress.parse(b.listen_addresses()[0]))
        yield a, b, nursery
        nursery.cancel_scope.cancel()


async def run_sync(store_a: MemStore, store_b: MemStore, *, prefixes_a: tuple[str, ...] = (),
                   prefixes_b: tuple[str, ...] = ()) -> None:
    eng_b = engine(store_b, prefixes_b)

    async def handle(stream: Stream) -> None:
        await eng_b.handle_stream(stream)

    async with pair(handle) as (a, b, _):
        with trio.fail_after(30):
            stream = await a.open_stream(b.peer_id, SYNC_PROTOCOL)
            await engine(store_a, prefixes_a).sync_with(b.peer_id, stream)


async def test_two_nodes_converge_on_the_union() -> None:
    rnd = random.Random(1)
    a_events = [e for e in ALL if rnd.random() < 0.7]
    b_events = [e for e in ALL if rnd.random() < 0.7]
    a, b = MemStore(SPEC, a_events), MemStore(SPEC, b_events)
    union = a.ids() | b.ids()
    assert a.ids() != union and b.ids() != union
    await run_sync(a, b)
    assert a.ids() == b.ids() == union
    assert a.states() == b.states()


async def test_empty_node_catches_up_and_a_second_sync_moves_nothing() -> None:
    full, empty = MemStore(SPEC, ALL), MemStore(SPEC)
    await run_sync(empty, full)
    assert empty.ids() == full.ids()
    before = dict(empty.sources)
    await run_sync(empty, full)
    assert empty.sources == before


async def test_partial_mirrors_exchange_only_records_in_scope() -> None:
    prefix = RECORDS[0].pith_number.split(":")[2][:1]
    in_scope = {e.event_id for e in ALL if e.subject.split(":")[2].startswith(prefix)}
    assert 0 < len(in_scope) < len(ALL)
    partial, full = MemStore(SPEC), MemStore(SPEC, ALL)
    await run_sync(partial, full, prefixes_a=(prefix,))
    assert partial.ids() == in_scope
    # the partial node never pushes out-of-scope events either
    extra = MemStore(SPEC, ALL)
    target = MemStore(SPEC)
    await run_sync(target, extra, prefixes_b=(prefix,))
    assert target.ids() == in_scope


class _CountingStream:
    """A responder's stream that counts the frames of one type (``get``) it has read."""

    def __init__(self, inner: Stream, gets_seen: Callable[[int], None],
                 kind: str = "get") -> None:
        self._inner, self._gets_seen, self.gets, self.kind = inner, gets_seen, 0, kind

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def receive_frame(self) -> bytes:
        data = await self._inner.receive_frame()
        if cbor2.loads(data).get("t") == self.kind:
            self.gets += 1
            self._gets_seen(self.gets)
        return data


class _GatedStore(MemStore):
    """An empty store whose ingests wait until ``gate`` is set."""

    def __init__(self, gate: trio.Event) -> None:
        super().__init__(SPEC)
        self.gate = gate

    async def ingest_events(self, events: Sequence[Event], *, source: str
                            ) -> tuple[int, int, int]:
        await self.gate.wait()
        return await super().ingest_events(events, source=source)


async def _sync_into_a_gated_store(kind: str) -> SyncResult:
    """Sync a full store into an empty one whose ingests wait until the responder has read
    three ``kind`` frames: the empty one fetches (``get``), or the full one pushes
    (``put``). A transfer that waited for each batch's ingest would never get there."""
    three = trio.Event()
    full, empty = MemStore(SPEC, ALL), _GatedStore(three)
    initiator, responder = (empty, full) if kind == "get" else (full, empty)
    eng_b = engine(responder)

    async def handle(stream: Stream) -> None:
        await eng_b.handle_stream(_CountingStream(  # type: ignore[arg-type]
            stream, lambda n: three.set() if n >= 3 else None, kind=kind))

    async with pair(handle) as (a, b, _):
        with trio.fail_after(30):
            stream = await a.open_stream(b.peer_id, SYNC_PROTOCOL)
            result = await SyncEngine(initiator, prefixes=(), timeout_s=5.0, fetch_batch=10,
                                      frame_size_limit=4096).sync_with(b.peer_id, stream)
    assert empty.ids() == full.ids()
    assert empty.states() == full.states()
    return result


async def test_fetches_are_pipelined_while_the_first_batch_is_ingested() -> None:
    """The first ingest waits until the responder has read three gets: a fetch loop that
    ingested each batch before asking for the next would never get there and time out."""
    await _sync_into_a_gated_store("get")


async def test_pushes_are_pipelined_while_the_first_batch_is_ingested() -> None:
    """The responder's first ingest of pushed events waits until it has read three puts: an
    initiator that waited for each ack before the next put would never get there."""
    result = await _sync_into_a_gated_store("put")
    assert result.pushed == len(ALL)


async def _expect_failure(handler: Callable[[Stream], object], timeout: float = 5.0) -> MemStore:
    store = MemStore(SPEC)
    async with pair(handler) as (a, b, _):
        stream = await a.open_stream(b.peer_id, SYNC_PROTOCOL)
        with pytest.raises(SyncFailed):
            await engine(store, timeout=timeout).sync_with(b.peer_id, stream)
    return store


async def test_peer_sending_unrequested_events_fails_the_session() -> None:
    forged = MemStore(SPEC, ALL[:5])

    async def liar(stream: Stream) -> None:
        await stream.receive_frame()
        await stream.send_frame(encode_frame("hello", prefixes=()))
        await stream.receive_frame()  # neg
        # pretend to hold nothing, then answer the (empty) session with unasked events
        await stream.send_frame(encode_frame("get", ids=[]))

    store = await _expect_failure(liar)
    assert not store.ids()
    assert forged.ids()


@pytest.mark.parametrize("reply", [
    b"", b"\xff\x00garbage", cbor2.dumps({"v": 1, "t": "neg", "m": b"\x00"}),
    cbor2.dumps({"v": 9, "t": "hello", "prefixes": []}),
    encode_frame("events", events=[b"{}"]),
])
async def test_malformed_replies_fail_cleanly(reply: bytes) -> None:
    async def bad(stream: Stream) -> None:
        await stream.receive_frame()
        await stream.send_frame(reply)

    store = await _expect_failure(bad)
    assert not store.ids()


async def test_stalled_partner_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def stall(stream: Stream) -> None:
        await stream.receive_frame()
        await trio.sleep_forever()

    await _expect_failure(stall, timeout=30.0)


async def test_forged_events_pushed_by_a_peer_are_not_stored() -> None:
    honest = MemStore(SPEC)
    eng = engine(honest)
    ev = ALL[3]
    tampered = ev.canonical_bytes().replace(b'"node"', b'"author"', 1)

    async def handle(stream: Stream) -> None:
        await eng.handle_stream(stream)

    async with pair(handle) as (a, b, _):
        stream = await a.open_stream(b.peer_id, SYNC_PROTOCOL)
        for frame in (encode_frame("hello", prefixes=()), encode_frame("put", events=[tampered])):
            await stream.send_frame(frame)
        await stream.receive_frame()  # hello
        ack = cbor2.loads(await stream.receive_frame())
        assert ack["t"] == "ack" and ack["rejected"] == 1 and ack["new"] == 0
    assert not honest.ids()


async def test_gossip_delivers_batches_and_rejects_forgeries() -> None:
    net = MemoryNetwork()
    cfg = TransportConfig(listen_addrs=("/memory/0",))
    nodes = [net.create(config=cfg) for _ in range(3)]
    stores = [MemStore(SPEC) for _ in nodes]
    gossips = [Gossip(t, s, SPEC, prefixes=(), max_batch_events=50, max_batch_bytes=200_000,
                      flush_interval_s=0.01, rate_per_signer=10_000)
               for t, s in zip(nodes, stores, strict=True)]
    async with trio.open_nursery() as nursery:
        for t in nodes:
            await nursery.start(t.run)
        for g in gossips:
            await nursery.start(g.run)
        for t in nodes[1:]:
            await t.connect(PeerAddress.parse(nodes[0].listen_addresses()[0]))
        await nodes[1].connect(PeerAddress.parse(nodes[2].listen_addresses()[0]))
        with trio.fail_after(10):
            await nodes[0].wait_for_topic_peers(SPEC.gossip_topic,
                                                [nodes[1].peer_id, nodes[2].peer_id])
        await nodes[0].publish(SPEC.gossip_topic, b"junk")
        bad = ALL[0].canonical_bytes().replace(b'"payload":{', b'"payload":{"x":1,', 1)
        await nodes[0].publish(SPEC.gossip_topic, encode_gossip([bad]))
        stores[0].events.update({k: v for k, v in MemStore(SPEC, ALL).events.items()})
        await gossips[0].publish([e.canonical_bytes() for e in ALL])
        with trio.fail_after(20):
            while not all(s.ids() == {e.event_id for e in ALL} for s in stores[1:]):
                await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert gossips[0].stats.events_out == len(ALL)
    assert gossips[0].stats.messages_out < len(ALL)  # batched
    assert gossips[0].stats.rejected_messages >= 2  # own junk is validated too
    assert stores[1].states() == stores[2].states() == stores[0].states()
