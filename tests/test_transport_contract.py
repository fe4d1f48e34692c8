"""One contract suite for every Transport implementation (libp2p on 127.0.0.1, in-memory).

Each test gets ``nodes``: a factory of started transports of one kind. libp2p nodes listen on
/ip4/127.0.0.1/tcp/0 only. Every multi-node await sits inside ``trio.fail_after``; nothing
sleeps. The memory-only tests at the end cover partitions, under trio's MockClock.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

if TYPE_CHECKING:
    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

from pithnode.node.libp2p_transport import Libp2pTransport
from pithnode.node.memory_transport import MemoryNetwork
from pithnode.node.transport import (
    Counters,
    DialError,
    FramedStream,
    FrameTooLarge,
    GossipMessage,
    PeerAddress,
    PeerEvent,
    PeerEventKind,
    PeerId,
    ProtocolNotSupported,
    Stream,
    StreamClosed,
    StreamTruncated,
    Transport,
    TransportConfig,
    TransportError,
    encode_uvarint,
)

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TIMEOUT = 10.0
ECHO = "/pith/test/echo/1.0.0"
TOPIC = "pith/test/1"


class Nodes:
    """Creates and starts transports of one kind; each runs in its own cancel scope."""

    def __init__(self, kind: str, nursery: trio.Nursery) -> None:
        self.kind = kind
        self._nursery = nursery
        self.network = MemoryNetwork()
        self._stoppers: dict[int, tuple[trio.CancelScope, trio.Event]] = {}
        self._created = 0

    def config(self, **overrides: Any) -> TransportConfig:
        listen = ("/memory/0",) if self.kind == "memory" else (LOOPBACK,)
        settings: dict[str, Any] = {"listen_addrs": listen, "dial_timeout": 5.0,
                                    "stream_open_timeout": 5.0}
        settings.update(overrides)
        return TransportConfig(**settings)

    def create(self, seed: bytes | None = None, **overrides: Any) -> Transport:
        self._created += 1
        if seed is None:
            seed = hashlib.sha256(b"contract node %d" % self._created).digest()
        config = self.config(**overrides)
        if self.kind == "memory":
            return self.network.create(seed, config)
        return Libp2pTransport(seed, config)

    async def start(self, transport: Transport) -> Transport:
        scope = trio.CancelScope()
        done = trio.Event()

        async def runner(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
            try:
                with scope:
                    await transport.run(task_status=task_status)
            finally:
                done.set()

        with trio.fail_after(TIMEOUT):
            await self._nursery.start(runner)
        self._stoppers[id(transport)] = (scope, done)
        return transport

    async def make(self, count: int, **overrides: Any) -> list[Transport]:
        return [await self.start(self.create(**overrides)) for _ in range(count)]

    async def stop(self, transport: Transport) -> None:
        scope, done = self._stoppers.pop(id(transport))
        scope.cancel()
        with trio.fail_after(TIMEOUT):
            await done.wait()


@pytest.fixture(params=["memory", "libp2p"])
async def nodes(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[Nodes]:
    yield Nodes(request.param, nursery)


# ---------------------------------------------------------------- helpers


def address_of(node: Transport) -> PeerAddress:
    return PeerAddress.parse(node.listen_addresses()[0])


async def connect(a: Transport, b: Transport) -> None:
    with trio.fail_after(TIMEOUT):
        await a.connect(address_of(b))


async def wait_event(events: trio.MemoryReceiveChannel[PeerEvent], expected: PeerEvent) -> None:
    with trio.fail_after(TIMEOUT):
        async for event in events:
            if event == expected:
                return
    raise AssertionError(f"event channel closed before {expected}")


async def echo(stream: Stream) -> None:
    while True:
        try:
            frame = await stream.receive_frame()
        except StreamClosed:
            return
        await stream.send_frame(frame)


def accept_all(sender: PeerId, data: bytes) -> bool:
    return True


class ValidatorLog:
    """A validator that records its calls and signals when it has seen ``expected`` of them."""

    def __init__(self, expected: int) -> None:
        self.calls: list[bytes] = []
        self.expected = expected
        self.done = trio.Event()

    def __call__(self, sender: PeerId, data: bytes) -> bool:
        self.calls.append(data)
        if len(self.calls) >= self.expected:
            self.done.set()
        if data.startswith(b"boom"):
            raise ValueError("validator bug triggered by input")
        return not data.startswith(b"bad")


async def receive(channel: trio.MemoryReceiveChannel[GossipMessage]) -> GossipMessage:
    with trio.fail_after(TIMEOUT):
        return await channel.receive()


def framed(stream: Stream) -> FramedStream:
    assert isinstance(stream, FramedStream)
    return stream


# ---------------------------------------------------------------- connections


async def test_connect_and_disconnect_emit_peer_events(nodes: Nodes) -> None:
    a, b = await nodes.make(2)
    events_a, events_b = a.peer_events(), b.peer_events()

    await connect(a, b)
    await wait_event(events_a, PeerEvent(PeerEventKind.CONNECTED, b.peer_id))
    await wait_event(events_b, PeerEvent(PeerEventKind.CONNECTED, a.peer_id))
    assert a.connected_peers() == [b.peer_id]
    assert b.connected_peers() == [a.peer_id]

    with trio.fail_after(TIMEOUT):
        await a.disconnect(b.peer_id)
    await wait_event(events_a, PeerEvent(PeerEventKind.DISCONNECTED, b.peer_id))
    await wait_event(events_b, PeerEvent(PeerEventKind.DISCONNECTED, a.peer_id))
    assert a.connected_peers() == []
    assert b.connected_peers() == []


async def test_peer_limit_refuses_extra_peers(nodes: Nodes) -> None:
    hub = await nodes.start(nodes.create(max_peers=1))
    b, c = await nodes.make(2)
    await connect(hub, b)

    with pytest.raises(DialError), trio.fail_after(TIMEOUT):
        await hub.connect(address_of(c))  # outbound beyond the limit
    with pytest.raises(DialError), trio.fail_after(TIMEOUT):
        await c.connect(address_of(hub))  # inbound beyond the limit
    assert hub.connected_peers() == [b.peer_id]


async def test_dial_to_stopped_node_fails(nodes: Nodes) -> None:
    a, b = await nodes.make(2)
    address = address_of(b)
    await nodes.stop(b)
    with pytest.raises(DialError), trio.fail_after(TIMEOUT):
        await a.connect(address)


# ---------------------------------------------------------------- streams


async def test_stream_echo_round_trip_of_several_frames(nodes: Nodes) -> None:
    a, b = await nodes.make(2)
    b.set_stream_handler(ECHO, echo)
    await connect(a, b)
    frames = [b"", b"x", bytes(range(256)) * 4, b"y" * 100_000, b"last"]

    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, ECHO)
        assert stream.remote_peer == b.peer_id
        assert stream.protocol_id == ECHO
        for frame in frames:
            await stream.send_frame(frame)
            assert await stream.receive_frame() == frame
        await stream.close()
        with pytest.raises(StreamClosed):
            await stream.receive_frame()
        with pytest.raises(StreamClosed):
            await stream.send_frame(b"after close")

    stats = a.stats()
    assert stats.frames_out == len(frames)
    assert stats.frames_in == len(frames)
    assert stats.bytes_out == stats.bytes_in > sum(map(len, frames))


async def test_frame_limit_is_enforced_by_the_sender(nodes: Nodes) -> None:
    a = await nodes.start(nodes.create(max_frame_bytes=1024))
    b = await nodes.start(nodes.create(max_frame_bytes=1024))
    b.set_stream_handler(ECHO, echo)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, ECHO)
        with pytest.raises(FrameTooLarge):
            await stream.send_frame(b"z" * 1025)
        await stream.send_frame(b"z" * 1024)  # nothing was sent: the stream still works
        assert await stream.receive_frame() == b"z" * 1024
    assert a.stats().frames_out == 1


async def test_frame_limit_is_enforced_by_the_receiver(nodes: Nodes) -> None:
    a = await nodes.start(nodes.create(max_frame_bytes=1 << 20))
    b = await nodes.start(nodes.create(max_frame_bytes=1024))
    b.set_stream_handler(ECHO, echo)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, ECHO)
        await stream.send_frame(b"z" * 2000)  # fine for a, too large for b
        with pytest.raises(StreamTruncated):
            await stream.receive_frame()
    stats = b.stats()
    assert stats.frames_too_large == 1
    assert stats.handler_stream_errors == 1
    assert stats.handler_errors == 0


async def test_handler_exception_does_not_crash_the_host(nodes: Nodes) -> None:
    a, b = await nodes.make(2)

    async def crash(stream: Stream) -> None:
        await stream.receive_frame()
        raise ValueError("handler bug triggered by remote input")

    b.set_stream_handler(ECHO, echo)
    b.set_stream_handler("/pith/test/crash/1.0.0", crash)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        before = await a.open_stream(b.peer_id, ECHO)
        await before.send_frame(b"one")
        assert await before.receive_frame() == b"one"

        crashing = await a.open_stream(b.peer_id, "/pith/test/crash/1.0.0")
        await crashing.send_frame(b"anything")
        with pytest.raises(StreamTruncated):
            await crashing.receive_frame()

        await before.send_frame(b"two")  # a stream opened before the crash keeps working
        assert await before.receive_frame() == b"two"
        after = await a.open_stream(b.peer_id, ECHO)  # and new streams still open
        await after.send_frame(b"three")
        assert await after.receive_frame() == b"three"
    assert b.stats().handler_errors == 1
    assert b.connected_peers() == [a.peer_id]


async def test_clean_close_is_stream_closed(nodes: Nodes) -> None:
    a, b = await nodes.make(2)

    async def two_frames(stream: Stream) -> None:
        await stream.send_frame(b"first")
        await stream.send_frame(b"second")
        # returning closes the stream cleanly

    b.set_stream_handler("/pith/test/two/1.0.0", two_frames)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, "/pith/test/two/1.0.0")
        assert await stream.receive_frame() == b"first"
        assert await stream.receive_frame() == b"second"
        with pytest.raises(StreamClosed):
            await stream.receive_frame()


@pytest.mark.parametrize("ending", ["reset", "close"])
async def test_cut_mid_frame_is_stream_truncated(nodes: Nodes, ending: str) -> None:
    a, b = await nodes.make(2)

    async def half_a_frame(stream: Stream) -> None:
        raw = framed(stream).raw
        await raw.write_all(encode_uvarint(100) + b"only ten b")  # 10 of 100 body bytes
        if ending == "reset":
            await stream.reset()
        else:
            await raw.close_write()

    b.set_stream_handler("/pith/test/half/1.0.0", half_a_frame)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, "/pith/test/half/1.0.0")
        with pytest.raises(StreamTruncated):
            await stream.receive_frame()


async def test_peer_stopping_mid_stream_is_stream_truncated(nodes: Nodes) -> None:
    a, b = await nodes.make(2)
    b.set_stream_handler(ECHO, echo)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, ECHO)
        await stream.send_frame(b"ping")
        assert await stream.receive_frame() == b"ping"
    await nodes.stop(b)
    with pytest.raises(StreamTruncated), trio.fail_after(TIMEOUT):
        await stream.receive_frame()
    with trio.fail_after(TIMEOUT):
        await stream.close()  # closing or resetting a cut stream is harmless
        await stream.reset()
    with pytest.raises(StreamClosed):
        await stream.send_frame(b"after reset")


async def test_open_stream_redials_a_known_peer(nodes: Nodes) -> None:
    a, b = await nodes.make(2)
    b.set_stream_handler(ECHO, echo)
    await connect(a, b)
    await connect(a, b)  # connecting twice is harmless
    events = b.peer_events()
    with trio.fail_after(TIMEOUT):
        await a.disconnect(b.peer_id)
    await wait_event(events, PeerEvent(PeerEventKind.DISCONNECTED, a.peer_id))
    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, ECHO)  # dials the address it learned
        await stream.send_frame(b"back")
        assert await stream.receive_frame() == b"back"
    stranger = nodes.create()
    with pytest.raises(DialError):
        await a.open_stream(stranger.peer_id, ECHO)  # never heard of: no address to dial


async def test_unknown_protocol_is_protocol_not_supported(nodes: Nodes) -> None:
    a, b = await nodes.make(2)
    b.set_stream_handler(ECHO, echo)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ProtocolNotSupported):
            await a.open_stream(b.peer_id, "/pith/test/nobody-serves-this/1.0.0")
        stream = await a.open_stream(b.peer_id, ECHO)  # the connection is unharmed
        await stream.send_frame(b"still fine")
        assert await stream.receive_frame() == b"still fine"


async def test_malformed_frame_headers_do_not_crash_the_host(nodes: Nodes) -> None:
    a, b = await nodes.make(2)
    b.set_stream_handler(ECHO, echo)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        for garbage in (b"\xff" * 11, encode_uvarint(1 << 40)):
            stream = await a.open_stream(b.peer_id, ECHO)
            await framed(stream).raw.write_all(garbage)
            with pytest.raises(StreamTruncated):
                await stream.receive_frame()
        stream = await a.open_stream(b.peer_id, ECHO)
        await stream.send_frame(b"after garbage")
        assert await stream.receive_frame() == b"after garbage"
    assert b.stats().frames_too_large == 2
    assert b.stats().handler_errors == 0


# ---------------------------------------------------------------- gossip


async def test_publish_reaches_three_nodes_through_a_line(nodes: Nodes) -> None:
    a, b, c = await nodes.make(3)
    inbox = {node.peer_id: node.subscribe(TOPIC, accept_all) for node in (a, b, c)}
    await connect(a, b)
    await connect(b, c)  # a and c are not connected: b must forward
    with trio.fail_after(TIMEOUT):
        await a.wait_for_topic_peers(TOPIC, [b.peer_id])
        await b.wait_for_topic_peers(TOPIC, [a.peer_id, c.peer_id])
        await c.wait_for_topic_peers(TOPIC, [b.peer_id])

    await a.publish(TOPIC, b"from a")
    assert await receive(inbox[b.peer_id]) == GossipMessage(a.peer_id, b"from a")
    assert await receive(inbox[c.peer_id]) == GossipMessage(a.peer_id, b"from a")

    await c.publish(TOPIC, b"from c")
    assert await receive(inbox[b.peer_id]) == GossipMessage(c.peer_id, b"from c")
    assert await receive(inbox[a.peer_id]) == GossipMessage(c.peer_id, b"from c")

    # Own publishes are not delivered back; "from a" would have come before "from c".
    for node in (a, b, c):
        with pytest.raises(trio.WouldBlock):
            inbox[node.peer_id].receive_nowait()
    assert a.stats().messages_published == 1
    assert c.stats().messages_delivered == 1


async def test_validator_rejections_are_counted_and_not_forwarded(nodes: Nodes) -> None:
    a, b, c = await nodes.make(3)
    b_validator = ValidatorLog(expected=3)
    c_validator = ValidatorLog(expected=1)
    inbox_b = b.subscribe(TOPIC, b_validator)
    inbox_c = c.subscribe(TOPIC, c_validator)
    await connect(a, b)
    await connect(b, c)
    with trio.fail_after(TIMEOUT):
        await a.wait_for_topic_peers(TOPIC, [b.peer_id])  # a publishes without subscribing
        await b.wait_for_topic_peers(TOPIC, [c.peer_id])

    for data in (b"bad: returns False", b"boom: validator raises", b"good"):
        await a.publish(TOPIC, data)
    with trio.fail_after(TIMEOUT):
        await b_validator.done.wait()
    assert sorted(b_validator.calls) == sorted(
        [b"bad: returns False", b"boom: validator raises", b"good"]
    )
    assert b.stats().messages_rejected == 2

    assert await receive(inbox_b) == GossipMessage(a.peer_id, b"good")
    assert await receive(inbox_c) == GossipMessage(a.peer_id, b"good")
    assert c_validator.calls == [b"good"]  # b forwarded only what it accepted
    with pytest.raises(trio.WouldBlock):
        inbox_b.receive_nowait()
    assert c.stats().messages_rejected == 0


async def test_oversized_gossip_is_refused_on_both_sides(nodes: Nodes) -> None:
    a = await nodes.start(nodes.create(max_message_bytes=4096))
    b = await nodes.start(nodes.create(max_message_bytes=1024))
    validator = ValidatorLog(expected=1)
    inbox = b.subscribe(TOPIC, validator)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        await a.wait_for_topic_peers(TOPIC, [b.peer_id])

    with pytest.raises(FrameTooLarge):
        await a.publish(TOPIC, b"x" * 4097)
    await a.publish(TOPIC, b"x" * 2048)  # fine for a, too large for b
    await a.publish(TOPIC, b"small")
    # Messages from one forwarder are validated in order, so once b has seen "small" it has
    # already refused the large one (without calling the validator).
    assert await receive(inbox) == GossipMessage(a.peer_id, b"small")
    assert validator.calls == [b"small"]
    assert b.stats().messages_rejected == 1
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_full_subscription_channel_drops_and_counts(nodes: Nodes) -> None:
    a = await nodes.start(nodes.create())
    b = await nodes.start(nodes.create(subscription_buffer=2))
    validator = ValidatorLog(expected=5)
    inbox = b.subscribe(TOPIC, validator)
    await connect(a, b)
    with trio.fail_after(TIMEOUT):
        await a.wait_for_topic_peers(TOPIC, [b.peer_id])
    for index in range(5):
        await a.publish(TOPIC, b"message %d" % index)
    with trio.fail_after(TIMEOUT):
        await validator.done.wait()
        # Delivery follows validation; wait until the three that did not fit are counted.
        while b.stats().messages_delivered + b.stats().messages_dropped < 5:
            await trio.testing.wait_all_tasks_blocked()
    assert b.stats().messages_delivered == 2
    assert b.stats().messages_dropped == 3
    assert len({(await receive(inbox)).data for _ in range(2)}) == 2


# ---------------------------------------------------------------- the shared framing


class ScriptedBytes:
    """A ByteStream replaying fixed chunks, then ending cleanly or with a cut."""

    def __init__(self, chunks: list[bytes], *, cut: bool = False) -> None:
        self._chunks = list(chunks)
        self._cut = cut
        self.was_reset = False

    async def read_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        if self._chunks:
            chunk = self._chunks.pop(0)
            if len(chunk) > max_bytes:
                self._chunks.insert(0, chunk[max_bytes:])
            return chunk[:max_bytes]
        if self._cut:
            raise StreamTruncated("scripted cut")
        return b""

    async def write_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def close_write(self) -> None:
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        await trio.lowlevel.checkpoint()
        self.was_reset = True


def read_all(raw: ScriptedBytes, max_frame_bytes: int = 1 << 20) -> tuple[list[bytes], str]:
    """Receive frames until an error; return them and the error's class name."""
    stream = FramedStream(raw, remote_peer=PeerId("peer"), protocol_id="/t",
                          max_frame_bytes=max_frame_bytes, counters=Counters())
    frames: list[bytes] = []

    async def main() -> str:
        while True:
            try:
                frames.append(await stream.receive_frame())
            except TransportError as exc:
                return type(exc).__name__

    return frames, trio.run(main)


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
    return [wire[start:end] for start, end in itertools.pairwise(points)]


frame_lists = st.lists(st.binary(max_size=300), max_size=6)
cut_lists = st.lists(st.integers(min_value=0), max_size=8)


@given(frames=frame_lists, cuts=cut_lists)
def test_frames_survive_any_chunking(frames: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_uvarint(len(frame)) + frame for frame in frames)
    assert read_all(ScriptedBytes(split(wire, cuts))) == (frames, "StreamClosed")


@given(frames=frame_lists, cuts=cut_lists, data=st.data())
def test_an_end_inside_a_frame_is_truncation(
    frames: list[bytes], cuts: list[int], data: st.DataObject
) -> None:
    frames = [*frames, b"last"]  # at least one frame with a body to end inside
    wire = b"".join(encode_uvarint(len(frame)) + frame for frame in frames)
    boundaries = set(itertools.accumulate(len(encode_uvarint(len(f))) + len(f) for f in frames))
    end = data.draw(st.sampled_from([n for n in range(1, len(wire)) if n not in boundaries]))
    received, error = read_all(ScriptedBytes(split(wire[:end], cuts)))
    assert error == "StreamTruncated"
    assert received == frames[: len(received)]


@pytest.mark.parametrize("cut_at_boundary", [True, False])
def test_a_cut_is_truncation_even_at_a_frame_boundary(cut_at_boundary: bool) -> None:
    wire = encode_uvarint(3) + b"abc" + (b"" if cut_at_boundary else encode_uvarint(9))
    assert read_all(ScriptedBytes([wire], cut=True)) == ([b"abc"], "StreamTruncated")


@pytest.mark.parametrize("header", [encode_uvarint(1025), b"\xff" * 11, b"\x80" * 10])
def test_oversized_or_malformed_headers_are_refused_before_the_body(header: bytes) -> None:
    raw = ScriptedBytes([header])  # no body follows: the check must not wait for one
    assert read_all(raw, max_frame_bytes=1024) == ([], "FrameTooLarge")
    assert raw.was_reset


def test_peer_address_parsing_and_config_validation() -> None:
    address = PeerAddress.parse("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc")
    assert address == PeerAddress(PeerId("12D3KooWabc"), ("/ip4/127.0.0.1/tcp/4001",))
    for bad in ("/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4001/p2p/", "12D3KooWabc"):
        with pytest.raises(ValueError):
            PeerAddress.parse(bad)
    with pytest.raises(ValueError, match="max_peers"):
        TransportConfig(max_peers=0)
    with pytest.raises(ValueError, match="redial_backoff_max"):
        TransportConfig(redial_backoff_min=2.0, redial_backoff_max=1.0)
    with pytest.raises(TypeError):
        TransportConfig(listen_addrs="/ip4/127.0.0.1/tcp/0")  # type: ignore[arg-type]
    assert TransportConfig().enable_mdns is False


# ---------------------------------------------------------------- memory-only: partitions


async def test_memory_partition_cuts_connections_streams_and_gossip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    config = TransportConfig(listen_addrs=("/memory/0",))
    async with trio.open_nursery() as nursery:
        a, b, c = (network.create(config=config) for _ in range(3))
        for node in (a, b, c):
            await nursery.start(node.run)
        inbox_b = b.subscribe(TOPIC, accept_all)
        inbox_c = c.subscribe(TOPIC, accept_all)
        events_a = a.peer_events()
        a.set_stream_handler(ECHO, echo)
        await connect(a, b)
        await connect(a, c)
        stream = await b.open_stream(a.peer_id, ECHO)

        network.partition([a], [b])
        await wait_event(events_a, PeerEvent(PeerEventKind.DISCONNECTED, b.peer_id))
        assert a.connected_peers() == [c.peer_id]
        with pytest.raises(StreamTruncated):
            await stream.receive_frame()
        with pytest.raises(DialError):
            await b.connect(address_of(a))

        await a.publish(TOPIC, b"during partition")
        assert await receive(inbox_c) == GossipMessage(a.peer_id, b"during partition")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            inbox_b.receive_nowait()

        network.heal()
        await connect(b, a)
        assert sorted(a.connected_peers()) == sorted([b.peer_id, c.peer_id])
        nursery.cancel_scope.cancel()


async def test_memory_redial_loop_reconnects_after_heal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        hub = network.create(config=TransportConfig(listen_addrs=("/memory/0",)))
        await nursery.start(hub.run)
        leaf = network.create(config=TransportConfig(
            listen_addrs=("/memory/0",),
            bootstrap=(hub.listen_addresses()[0],),
            redial_backoff_min=0.5,
            redial_backoff_max=8.0,
        ))
        events = leaf.peer_events()
        await nursery.start(leaf.run)
        await wait_event(events, PeerEvent(PeerEventKind.CONNECTED, hub.peer_id))

        network.partition([hub], [leaf])
        await wait_event(events, PeerEvent(PeerEventKind.DISCONNECTED, hub.peer_id))
        with trio.move_on_after(30):  # virtual time: the redial loop keeps failing
            async for event in events:
                raise AssertionError(f"unexpected {event} while partitioned")
        assert leaf.stats().dials_failed >= 3
        assert leaf.connected_peers() == []

        network.heal()  # the next backed-off attempt (at most 8 s away) succeeds
        await wait_event(events, PeerEvent(PeerEventKind.CONNECTED, hub.peer_id))
        nursery.cancel_scope.cancel()


async def test_memory_restart_with_same_seed_and_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    seed = bytes(32)
    config = TransportConfig(listen_addrs=("/memory/7",))
    first = network.create(seed, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        address = first.listen_addresses()
        with pytest.raises(Exception, match="runs once"):
            await first.run()
        nursery.cancel_scope.cancel()
    assert first.listen_addresses() == []

    second = network.create(seed, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert second.listen_addresses() == address == [f"/memory/7/p2p/{first.peer_id}"]
        nursery.cancel_scope.cancel()
