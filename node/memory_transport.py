"""An in-process network implementing :class:`pithnode.node.transport.Transport` for tests.

``MemoryNetwork`` is the hub: it creates :class:`MemoryTransport` objects, routes dials by
``/memory/<port>`` address and can partition groups of nodes. Semantics match the libp2p
adapter (the same :class:`FramedStream` framing, guarded handlers, validators, bounded
channels with drop-and-count, peer events); ``tests/test_transport_contract.py`` checks both.

Nothing here sleeps on the wall clock: it runs under ``trio.testing.MockClock``. Gossip is
flooded along connections to subscribed peers, validated and de-duplicated at every hop, like
a GossipSub mesh in a small network.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import nacl.signing
import trio

if TYPE_CHECKING:
    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

from .transport import (
    Counters,
    DialError,
    FramedStream,
    FrameTooLarge,
    GossipMessage,
    PeerAddress,
    PeerEvent,
    PeerEventHub,
    PeerEventKind,
    PeerId,
    ProtocolNotSupported,
    Stream,
    StreamClosed,
    StreamHandler,
    StreamTruncated,
    TopicSubscription,
    TransportConfig,
    TransportError,
    TransportStats,
    Validator,
    keep_connected,
    parse_bootstrap,
    peer_id_from_ed25519_public_key,
    serve_guarded,
    short_id,
)

log = logging.getLogger(__name__)

STREAM_WINDOW = 256 * 1024
"""Bytes a stream direction buffers before the writer blocks (Yamux's initial window)."""
GOSSIP_INBOX = 256
"""Gossip messages a node queues for processing; forwarding beyond that drops and counts."""
SEEN_CACHE = 10_000


def _memory_port(addr: str) -> int:
    parts = addr.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] != "memory" or not parts[2].isdigit():
        raise ValueError(f"not a /memory/<port> address: {addr!r}")
    return int(parts[2])


# ---------------------------------------------------------------- byte pipes


class _Pipe:
    """One direction of a stream: a bounded byte buffer with end and break markers."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.broken: str | None = None
        self._changed = trio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self) -> None:
        await self._changed.wait()

    def break_(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            self.buf.clear()
            self.notify()


class _MemoryByteStream:
    """One end of an in-memory stream: reads ``inbound``, writes ``outbound``."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe, connection: _Connection) -> None:
        self._in = inbound
        self._out = outbound
        self._connection = connection
        self._reset = False
        self._write_closed = False

    async def read_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        while True:
            if self._reset:
                raise StreamClosed("stream was reset locally")
            if self._in.broken is not None:
                raise StreamTruncated(self._in.broken)
            if self._in.buf:
                data = bytes(self._in.buf[:max_bytes])
                del self._in.buf[:max_bytes]
                self._in.notify()
                return data
            if self._in.eof:
                return b""
            await self._in.wait()

    async def write_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        view = memoryview(data)
        while view:
            if self._reset or self._write_closed:
                raise StreamClosed("stream is closed for sending")
            if self._out.broken is not None:
                raise StreamTruncated(self._out.broken)
            room = STREAM_WINDOW - len(self._out.buf)
            if room <= 0:
                await self._out.wait()
                continue
            self._out.buf += view[:room]
            view = view[room:]
            self._out.notify()

    async def close_write(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._reset or self._write_closed or self._out.broken is not None:
            return  # nothing to finish on a stream that is already cut
        self._write_closed = True
        self._out.eof = True
        self._out.notify()
        self._connection.forget_if_done(self._in, self._out)

    async def reset(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._reset:
            return
        self._reset = True
        self._in.break_("stream reset by peer")
        self._out.break_("stream reset by peer")
        self._connection.forget_if_done(self._in, self._out)


# ---------------------------------------------------------------- connections


class _Connection:
    """A connection between two running transports; closing it cuts all its streams."""

    def __init__(self, a: MemoryTransport, b: MemoryTransport) -> None:
        self.ends = (a, b)
        self.pipes: set[tuple[_Pipe, _Pipe]] = set()
        self.closed = False

    def other(self, me: MemoryTransport) -> MemoryTransport:
        return self.ends[1] if self.ends[0] is me else self.ends[0]

    def new_stream(self) -> tuple[_Pipe, _Pipe]:
        forward, backward = _Pipe(), _Pipe()
        self.pipes.add((forward, backward))
        return forward, backward

    def forget_if_done(self, first: _Pipe, second: _Pipe) -> None:
        done = all(pipe.eof or pipe.broken is not None for pipe in (first, second))
        if done:
            self.pipes.discard((first, second))
            self.pipes.discard((second, first))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for forward, backward in self.pipes:
            forward.break_("connection lost")
            backward.break_("connection lost")
        self.pipes.clear()
        a, b = self.ends
        a._drop_connection(b.peer_id, self)
        b._drop_connection(a.peer_id, self)


@dataclass(frozen=True, slots=True)
class _Envelope:
    topic: str
    origin: PeerId
    seqno: int
    data: bytes
    forwarder: PeerId


# ---------------------------------------------------------------- the network hub


class MemoryNetwork:
    """Creates :class:`MemoryTransport` nodes and connects them; supports partitions."""

    def __init__(self) -> None:
        self._listening: dict[int, MemoryTransport] = {}
        self._next_port = 1
        self._created = 0
        self._blocked: set[frozenset[PeerId]] = set()
        self._changed = trio.Event()

    def create(self, seed: bytes | None = None, config: TransportConfig | None = None
               ) -> MemoryTransport:
        """A new node. Without a seed, one is derived from a counter (deterministic)."""
        self._created += 1
        if seed is None:
            seed = hashlib.sha256(b"pithnode memory transport %d" % self._created).digest()
        return MemoryTransport(self, seed, config if config is not None else
                               TransportConfig(listen_addrs=("/memory/0",)))

    def partition(
        self,
        group_a: Iterable[MemoryTransport | PeerId],
        group_b: Iterable[MemoryTransport | PeerId],
    ) -> None:
        """Cut every connection between the groups and refuse new ones until :meth:`heal`."""
        peers_a = {_peer_of(node) for node in group_a}
        peers_b = {_peer_of(node) for node in group_b}
        for a in peers_a:
            for b in peers_b:
                if a != b:
                    self._blocked.add(frozenset((a, b)))
        for node in list(self._listening.values()):
            for peer, connection in list(node._connections.items()):
                if frozenset((node.peer_id, peer)) in self._blocked:
                    connection.close()
        self.notify_changed()

    def heal(self) -> None:
        """Lift all partitions. Redial loops reconnect bootstrap peers on their own."""
        self._blocked.clear()
        self.notify_changed()

    def reachable(self, a: PeerId, b: PeerId) -> bool:
        return frozenset((a, b)) not in self._blocked

    def notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _allocate(self, port: int, node: MemoryTransport) -> int:
        if port == 0:
            while self._next_port in self._listening:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        if port in self._listening:
            raise TransportError(f"/memory/{port} is already in use")
        self._listening[port] = node
        return port

    def _release(self, port: int, node: MemoryTransport) -> None:
        if self._listening.get(port) is node:
            del self._listening[port]

    def _resolve(self, addr: str) -> MemoryTransport | None:
        try:
            port = _memory_port(addr)
        except ValueError:
            return None
        return self._listening.get(port)


def _peer_of(node: MemoryTransport | PeerId) -> PeerId:
    return node.peer_id if isinstance(node, MemoryTransport) else node


# ---------------------------------------------------------------- the transport


class MemoryTransport:
    """:class:`Transport` inside one :class:`MemoryNetwork`. Runs once, like the real one."""

    def __init__(self, network: MemoryNetwork, seed: bytes, config: TransportConfig) -> None:
        if len(seed) != 32:
            raise ValueError(f"the identity seed is 32 bytes, got {len(seed)}")
        for addr in config.listen_addrs:
            _memory_port(addr)  # ValueError names the bad address
        self._network = network
        self._config = config
        self._bootstrap = parse_bootstrap(config.bootstrap)
        public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
        self._peer_id = peer_id_from_ed25519_public_key(public_key)
        self._counters = Counters()
        self._events = PeerEventHub(config.peer_event_buffer, self._counters)
        self._connections: dict[PeerId, _Connection] = {}
        self._disconnect_waiters: dict[PeerId, trio.Event] = {}
        self._address_book: dict[PeerId, tuple[str, ...]] = {}
        self._handlers: dict[str, StreamHandler] = {}
        self._subscriptions: dict[str, TopicSubscription] = {}
        self._seen: OrderedDict[tuple[PeerId, int], None] = OrderedDict()
        self._seqno = 0
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[_Envelope](GOSSIP_INBOX)
        self._ports: list[int] = []
        self._nursery: trio.Nursery | None = None
        self._started = False

    # -- identity and state

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    def listen_addresses(self) -> list[str]:
        return [f"/memory/{port}/p2p/{self._peer_id}" for port in self._ports]

    def connected_peers(self) -> list[PeerId]:
        return sorted(self._connections)

    def stats(self) -> TransportStats:
        return self._counters.snapshot()

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        return self._events.open()

    def _running_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise TransportError("the transport is not running")
        return self._nursery

    # -- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise TransportError("a transport runs once; create a new one to restart")
        self._started = True
        try:
            for addr in self._config.listen_addrs:
                self._ports.append(self._network._allocate(_memory_port(addr), self))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._process_gossip)
                for address in self._bootstrap:
                    nursery.start_soon(self._keep_connected, address)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for port in self._ports:
                self._network._release(port, self)
            self._ports = []
            for connection in list(self._connections.values()):
                connection.close()
            self._inbox_send.close()
            self._events.close()
            for subscription in self._subscriptions.values():
                subscription.send.close()

    # -- connections

    async def connect(self, address: PeerAddress) -> None:
        await trio.lowlevel.checkpoint()
        self._running_nursery()
        peer = address.peer_id
        if peer == self._peer_id:
            raise DialError("refusing to dial ourselves")
        if address.addrs:
            self._address_book[peer] = address.addrs
        if peer in self._connections:
            return
        addrs = self._address_book.get(peer, ())
        if not addrs:
            raise DialError(f"no known address for {short_id(peer)}")
        if len(self._connections) >= self._config.max_peers:
            self._counters.dials_failed += 1
            raise DialError(f"max_peers={self._config.max_peers} reached")
        target = next(
            (node for node in map(self._network._resolve, addrs)
             if node is not None and node.peer_id == peer),
            None,
        )
        if target is None:
            self._counters.dials_failed += 1
            raise DialError(f"nothing with id {short_id(peer)} listens on {list(addrs)}")
        if not self._network.reachable(self._peer_id, peer):
            self._counters.dials_failed += 1
            raise DialError(f"{short_id(peer)} is unreachable (partitioned)")
        if len(target._connections) >= target._config.max_peers:
            target._counters.connections_refused += 1
            self._counters.dials_failed += 1
            raise DialError(f"{short_id(peer)} refused the connection (its peer limit)")
        connection = _Connection(self, target)
        self._add_connection(peer, connection)
        target._add_connection(self._peer_id, connection)

    def _add_connection(self, peer: PeerId, connection: _Connection) -> None:
        self._connections[peer] = connection
        self._events.emit(PeerEventKind.CONNECTED, peer)
        self._network.notify_changed()

    def _drop_connection(self, peer: PeerId, connection: _Connection) -> None:
        if self._connections.get(peer) is not connection:
            return
        del self._connections[peer]
        self._events.emit(PeerEventKind.DISCONNECTED, peer)
        waiter = self._disconnect_waiters.pop(peer, None)
        if waiter is not None:
            waiter.set()
        self._network.notify_changed()

    async def disconnect(self, peer: PeerId) -> None:
        await trio.lowlevel.checkpoint()
        connection = self._connections.get(peer)
        if connection is not None:
            connection.close()

    async def _wait_disconnected(self, peer: PeerId) -> None:
        if peer not in self._connections:
            await trio.lowlevel.checkpoint()
            return
        await self._disconnect_waiters.setdefault(peer, trio.Event()).wait()

    async def _keep_connected(self, address: PeerAddress) -> None:
        await keep_connected(
            address,
            connect=self.connect,
            wait_disconnected=self._wait_disconnected,
            before_dial=lambda peer: None,
            backoff_min=self._config.redial_backoff_min,
            backoff_max=self._config.redial_backoff_max,
            logger=log,
        )

    # -- streams

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        self._handlers[protocol_id] = handler

    async def open_stream(self, peer: PeerId, protocol_id: str) -> Stream:
        await trio.lowlevel.checkpoint()
        self._running_nursery()
        if peer not in self._connections:
            await self.connect(PeerAddress(peer, self._address_book.get(peer, ())))
        connection = self._connections[peer]
        remote = connection.other(self)
        handler = remote._handlers.get(protocol_id)
        if handler is None:
            raise ProtocolNotSupported(f"{short_id(peer)} does not serve {protocol_id}")
        forward, backward = connection.new_stream()
        local = FramedStream(
            _MemoryByteStream(backward, forward, connection),
            remote_peer=peer,
            protocol_id=protocol_id,
            max_frame_bytes=self._config.max_frame_bytes,
            counters=self._counters,
        )
        served = FramedStream(
            _MemoryByteStream(forward, backward, connection),
            remote_peer=self._peer_id,
            protocol_id=protocol_id,
            max_frame_bytes=remote._config.max_frame_bytes,
            counters=remote._counters,
        )
        remote._running_nursery().start_soon(serve_guarded, handler, served, remote._counters, log)
        return local

    # -- gossip

    def subscribe(
        self, topic: str, validator: Validator
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        if topic in self._subscriptions:
            raise TransportError(f"already subscribed to {topic!r}")
        subscription = TopicSubscription(
            topic, validator, self._config.subscription_buffer, self._counters
        )
        self._subscriptions[topic] = subscription
        self._network.notify_changed()
        return subscription.receive

    async def unsubscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()
        subscription = self._subscriptions.pop(topic, None)
        if subscription is not None:
            subscription.send.close()
            self._network.notify_changed()

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self._config.max_message_bytes:
            raise FrameTooLarge(
                f"message of {len(data)} bytes exceeds "
                f"max_message_bytes={self._config.max_message_bytes}"
            )
        await trio.lowlevel.checkpoint()
        self._running_nursery()
        self._counters.messages_published += 1
        self._seqno += 1
        envelope = _Envelope(topic, self._peer_id, self._seqno, bytes(data), self._peer_id)
        self._mark_seen(envelope)
        subscription = self._subscriptions.get(topic)
        if subscription is not None and not subscription.validate(
            self._peer_id, envelope.data, self._config.max_message_bytes
        ):
            return  # like libp2p: own publishes are validated too, and dropped if rejected
        for target in self._gossip_targets(envelope):
            try:
                # Back-pressure: the app's publish waits for room in each peer's inbox.
                await target._inbox_send.send(envelope)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # that node stopped meanwhile

    def _gossip_targets(self, envelope: _Envelope) -> list[MemoryTransport]:
        skip = {envelope.origin, envelope.forwarder}
        return [
            connection.other(self)
            for peer, connection in sorted(self._connections.items())
            if peer not in skip and envelope.topic in connection.other(self)._subscriptions
        ]

    def _mark_seen(self, envelope: _Envelope) -> bool:
        """Remember a message id; False if it was already seen."""
        key = (envelope.origin, envelope.seqno)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN_CACHE:
            self._seen.popitem(last=False)
        return True

    async def _process_gossip(self) -> None:
        async for envelope in self._inbox_receive:
            self._on_gossip(envelope)

    def _on_gossip(self, envelope: _Envelope) -> None:
        if envelope.origin == self._peer_id or not self._mark_seen(envelope):
            return
        subscription = self._subscriptions.get(envelope.topic)
        if subscription is None:
            return
        if not subscription.validate(envelope.origin, envelope.data,
                                     self._config.max_message_bytes):
            return
        if not subscription.deliver(GossipMessage(envelope.origin, envelope.data)):
            self._subscriptions.pop(envelope.topic, None)
        forwarded = replace(envelope, forwarder=self._peer_id)
        for target in self._gossip_targets(envelope):
            try:
                target._inbox_send.send_nowait(forwarded)
            except trio.WouldBlock:
                self._counters.messages_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue

    async def wait_for_topic_peers(self, topic: str, peers: Collection[PeerId]) -> None:
        self._running_nursery()
        await trio.lowlevel.checkpoint()
        while not all(
            peer in self._connections
            and topic in self._connections[peer].other(self)._subscriptions
            for peer in peers
        ):
            await self._network.wait_changed()
