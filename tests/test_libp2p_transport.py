"""libp2p-specific tests: security options, restart/redial, private-API pins, identity.

Everything listens on /ip4/127.0.0.1/tcp/0 (the restart test rebinds the port it was given).
The behaviour shared with the in-memory transport is in test_transport_contract.py.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import nacl.signing
import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.basic_host import BasicHost
from libp2p.host.exceptions import StreamFailure
from libp2p.network.stream.net_stream import NetStream
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from pithnode.node import libp2p_transport
from pithnode.node.libp2p_transport import Libp2pTransport, peer_id_from_ed25519_public_key
from pithnode.node.memory_transport import MemoryNetwork
from pithnode.node.transport import (
    DialError,
    FramedStream,
    PeerAddress,
    PeerEvent,
    PeerEventKind,
    Stream,
    StreamClosed,
    TransportConfig,
    TransportError,
    encode_uvarint,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TIMEOUT = 10.0
ECHO = "/pith/test/echo/1.0.0"
SEED_A = hashlib.sha256(b"libp2p test node a").digest()
SEED_B = hashlib.sha256(b"libp2p test node b").digest()


def config(**overrides: object) -> TransportConfig:
    settings: dict[str, object] = {"listen_addrs": (LOOPBACK,), "dial_timeout": 5.0}
    settings.update(overrides)
    return TransportConfig(**settings)  # type: ignore[arg-type]


class Running:
    """A transport started in a nursery that can be stopped on its own."""

    def __init__(self, transport: Libp2pTransport) -> None:
        self.transport = transport
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def start(self, nursery: trio.Nursery) -> Libp2pTransport:
        async def runner(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with self._scope:
                    await self.transport.run(task_status=task_status)
            finally:
                self._done.set()

        with trio.fail_after(TIMEOUT):
            await nursery.start(runner)
        return self.transport

    async def stop(self) -> None:
        self._scope.cancel()
        with trio.fail_after(TIMEOUT):
            await self._done.wait()


def port_of(node: Libp2pTransport) -> int:
    address = node.listen_addresses()[0]
    parts = address.split("/")
    assert parts[1:4] == ["ip4", "127.0.0.1", "tcp"], address
    return int(parts[4])


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


# ---------------------------------------------------------------- identity and listening


def test_peer_id_from_seed_matches_libp2p_and_the_memory_transport() -> None:
    seed = bytes(range(32))
    public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
    expected = ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()

    assert peer_id_from_ed25519_public_key(public_key) == expected
    assert Libp2pTransport(seed, config()).peer_id == expected
    assert MemoryNetwork().create(seed).peer_id == expected
    # Known answer: if this changes, every stored peer id changes with it.
    assert expected == "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"


def test_peer_id_known_answer_for_the_rfc8032_test_key() -> None:
    # RFC 8032 section 7.1, TEST 1 public key.
    public_key = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert peer_id_from_ed25519_public_key(public_key) == (
        "12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV"
    )


def test_identity_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Libp2pTransport(b"short", config())
    with pytest.raises(ValueError, match="32 bytes"):
        peer_id_from_ed25519_public_key(b"short")


async def test_listens_on_loopback_only_and_configures_logging(nursery: trio.Nursery) -> None:
    node = await Running(Libp2pTransport(SEED_A, config())).start(nursery)
    addresses = node.listen_addresses()
    assert addresses
    for address in addresses:
        assert address.startswith("/ip4/127.0.0.1/tcp/")
        assert address.endswith(f"/p2p/{node.peer_id}")
    assert port_of(node) != 0
    assert logging.getLogger("libp2p").propagate is True
    host = node._host
    assert isinstance(host, BasicHost)
    assert host.mDNS is None  # mDNS stays off unless the config asks for it


async def test_shutdown_releases_the_listening_port(nursery: trio.Nursery) -> None:
    running = Running(Libp2pTransport(SEED_A, config()))
    port = port_of(await running.start(nursery))
    await running.stop()
    with pytest.raises(OSError):  # P6: without host.close() the listener would outlive run()
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_run_fails_cleanly_when_the_port_is_taken() -> None:
    with trio.socket.socket() as blocker:  # no SO_REUSEPORT: libp2p cannot share the port
        await blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        node = Libp2pTransport(SEED_A, config(listen_addrs=(f"/ip4/127.0.0.1/tcp/{port}",)))
        with pytest.raises(TransportError, match="could not listen"), trio.fail_after(TIMEOUT):
            await node.run()
    assert node.listen_addresses() == []


# ---------------------------------------------------------------- security


class _Multistream:
    """Just enough multistream-select to ask a listener which security protocols it speaks."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def send(self, message: str) -> None:
        body = message.encode() + b"\n"
        await self._stream.send_all(encode_uvarint(len(body)) + body)

    async def receive(self) -> str:
        while True:
            if self._buf and not self._buf[0] & 0x80:  # one-byte length: all we need here
                length = self._buf[0]
                if len(self._buf) > length:
                    body = bytes(self._buf[1 : 1 + length])
                    del self._buf[: 1 + length]
                    return body.decode().rstrip("\n")
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                raise EOFError("listener closed the connection")
            self._buf += chunk


async def test_only_noise_is_offered(nursery: trio.Nursery) -> None:
    node = await Running(Libp2pTransport(SEED_A, config())).start(nursery)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(node))
        async with stream:
            session = _Multistream(stream)
            await session.send("/multistream/1.0.0")
            assert await session.receive() == "/multistream/1.0.0"
            for refused in ("/plaintext/2.0.0", "/plaintext/1.0.0", "/secio/1.0.0",
                            "/tls/1.0.0"):
                await session.send(refused)
                assert await session.receive() == "na", refused
            await session.send("/noise")
            assert await session.receive() == "/noise"


# ---------------------------------------------------------------- redial


async def test_redial_after_the_peer_restarts_on_the_same_port(nursery: trio.Nursery) -> None:
    first_b = Running(Libp2pTransport(SEED_B, config()))
    b = await first_b.start(nursery)
    b_address = b.listen_addresses()[0]
    port = port_of(b)

    a = Libp2pTransport(SEED_A, config(
        bootstrap=(b_address,), redial_backoff_min=0.05, redial_backoff_max=0.2,
    ))
    events = a.peer_events()
    await Running(a).start(nursery)
    await wait_event(events, PeerEvent(PeerEventKind.CONNECTED, b.peer_id))

    await first_b.stop()
    await wait_event(events, PeerEvent(PeerEventKind.DISCONNECTED, b.peer_id))
    with pytest.raises(DialError), trio.fail_after(TIMEOUT):
        await a.connect(PeerAddress.parse(b_address))
    swarm = a._host.get_network()
    assert isinstance(swarm, Swarm)
    # The failed dial put b in the swarm's 60 s negative cache (P8): without the eviction
    # before every redial, the restarted b would stay unreachable for a minute.
    assert swarm._negative_peer_cache.is_blocked(str(ID.from_base58(b.peer_id)))

    restarted = Libp2pTransport(SEED_B, config(listen_addrs=(f"/ip4/127.0.0.1/tcp/{port}",)))
    restarted.set_stream_handler(ECHO, echo)
    await Running(restarted).start(nursery)
    assert restarted.listen_addresses() == [b_address]
    await wait_event(events, PeerEvent(PeerEventKind.CONNECTED, b.peer_id))
    assert a.connected_peers() == [b.peer_id]
    with trio.fail_after(TIMEOUT):
        stream = await a.open_stream(b.peer_id, ECHO)
        await stream.send_frame(b"hello again")
        assert await stream.receive_frame() == b"hello again"


# ---------------------------------------------------------------- private-API pins


def test_negative_dial_cache_eviction_still_works() -> None:
    node = Libp2pTransport(SEED_A, config())
    other = ID.from_base58(Libp2pTransport(SEED_B, config()).peer_id)
    swarm = node._host.get_network()
    assert isinstance(swarm, Swarm)
    swarm._negative_peer_cache.mark_failed(str(other))
    assert swarm._negative_peer_cache.is_blocked(str(other))
    libp2p_transport._unblock_dial(node._host, other)
    assert not swarm._negative_peer_cache.is_blocked(str(other))
    assert swarm.retry_config.max_retries == 0  # set by _new_host: our loop retries


def test_protocol_not_supported_is_recognised_by_its_message() -> None:
    def failure(message: str) -> StreamFailure:
        error = StreamFailure("failed to open a stream")
        error.__cause__ = MultiselectClientError(message)
        return error

    assert libp2p_transport._is_protocol_not_supported(
        failure("protocols not supported: tried ['/x/1'], timeout=10s")
    )
    assert not libp2p_transport._is_protocol_not_supported(
        failure("response timed out after 10s, protocols tried: ['/x/1']")
    )
    assert not libp2p_transport._is_protocol_not_supported(StreamFailure("no cause"))


async def test_publish_back_pressure_reads_pubsub_peer_queues(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = Libp2pTransport(SEED_A, config(publish_queue_high_water=2,
                                          publish_backpressure_timeout=5.0))
    assert libp2p_transport._pubsub_queue_depths(node._pubsub) == []
    queue = RpcQueue()
    node._pubsub.peer_queues[ID.from_base58(node.peer_id)] = queue
    assert queue.push(rpc_pb2.RPC()) and queue.push(rpc_pb2.RPC())
    assert libp2p_transport._pubsub_queue_depths(node._pubsub) == [2]

    room = trio.Event()

    async def publisher() -> None:
        await node._wait_for_queue_room()
        room.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert not room.is_set()  # still waiting: the queue is at the high-water mark
        await queue.pop()
        with trio.fail_after(1):
            await room.wait()
    assert node.stats().publish_backpressure_timeouts == 0

    queue.push(rpc_pb2.RPC())
    with trio.fail_after(10):  # a stuck peer delays a publish by the timeout, then it goes
        await node._wait_for_queue_room()
    assert node.stats().publish_backpressure_timeouts == 1


async def test_stream_cut_detection_reads_yamux_state(nursery: trio.Nursery) -> None:
    a = await Running(Libp2pTransport(SEED_A, config())).start(nursery)
    b = await Running(Libp2pTransport(SEED_B, config())).start(nursery)
    b.set_stream_handler(ECHO, echo)
    with trio.fail_after(TIMEOUT):
        await a.connect(PeerAddress.parse(b.listen_addresses()[0]))
        stream = await a.open_stream(b.peer_id, ECHO)
    assert isinstance(stream, FramedStream)
    raw = stream.raw
    assert isinstance(raw, libp2p_transport._Libp2pByteStream)
    net_stream = raw._stream
    assert isinstance(net_stream, NetStream)
    assert isinstance(net_stream.muxed_stream, YamuxStream)
    assert isinstance(net_stream.muxed_conn, Yamux)
    assert net_stream.muxed_stream.reset_received is False
    assert not net_stream.muxed_conn.event_shutting_down.is_set()
    assert libp2p_transport._stream_was_cut(net_stream) is False


def test_gossipsub_equivocation_check_keeps_digests_not_messages() -> None:
    """A message with a (sender, seqno) seen before passes only with the same content, and
    the check holds 32-byte digests for at most EQUIVOCATION_MEMORY pairs, never messages."""
    router = libp2p_transport._LeanGossipSub(
        protocols=[libp2p_transport.PROTOCOL_ID_V12], degree=6, degree_low=4,
        degree_high=12)

    def message(seqno: int, data: bytes, topic: str = "t") -> rpc_pb2.Message:
        return rpc_pb2.Message(from_id=b"peer-a", seqno=seqno.to_bytes(8, "big"), data=data,
                               topicIDs=[topic])

    assert router._check_equivocation(message(1, b"x" * 50_000))
    assert router._check_equivocation(message(1, b"x" * 50_000))  # the same again: fine
    assert not router._check_equivocation(message(1, b"y" * 50_000))
    assert not router._check_equivocation(message(1, b"x" * 50_000, topic="u"))
    for seqno in range(2, 3 * libp2p_transport.EQUIVOCATION_MEMORY):
        assert router._check_equivocation(message(seqno, b"z" * 10_000))
    assert len(router._first_digests) == libp2p_transport.EQUIVOCATION_MEMORY
    assert all(len(d) == 32 for d in router._first_digests.values())
    assert router.equivocation_detection == {}  # 0.8.1's table of whole messages stays empty
