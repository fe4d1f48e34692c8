"""The libp2p adapter: the only module in the project that imports libp2p (py-libp2p 0.8.1).

It implements :class:`pithnode.node.transport.Transport` with TCP + Noise + Yamux, GossipSub
v1.1/v1.2, and the hardening listed in /work/shared/LIBP2P-NOTES.md (P-numbers below refer to
its pitfall table). No libp2p type leaves this module.

Private libp2p APIs used here are each isolated in one function and pinned by a test in
``tests/test_libp2p_transport.py``, so an upgrade that renames them fails loudly:

* :func:`_unblock_dial` forgets the swarm's negative dial cache (P8).
* :func:`_pubsub_queue_depths` reads ``Pubsub.peer_queues`` for publish back-pressure (P2).
* :func:`_is_protocol_not_supported` recognises a peer's "na" answer by its message text.
* :func:`_stream_was_cut` reads Yamux stream/connection state to tell a cut from an EOF (P10).
"""

from __future__ import annotations

import hashlib
import logging
import math
import weakref
from collections import OrderedDict
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from google.protobuf.message import DecodeError as ProtobufDecodeError
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.io.exceptions import IOException
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.stream.net_stream import NetStream
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.tools.anyio_service import background_trio_service

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
    TransportTimeout,
    Validator,
    keep_connected,
    parse_bootstrap,
    peer_id_from_ed25519_public_key,
    serve_guarded,
    short_id,
)

__all__ = ["Libp2pTransport", "peer_id_from_ed25519_public_key"]

log = logging.getLogger(__name__)

_SHUTDOWN_GRACE = 5.0
"""Seconds the shielded ``host.close()`` and the services' exit may each take on shutdown."""
_STARTUP_TIMEOUT = 10.0
_BACKPRESSURE_POLL = 0.002
_MDNS_BUFFER = 32


# ---------------------------------------------------------------- private-API shims


def _unblock_dial(host: IHost, peer: ID) -> None:
    """Forget a failed dial so the next one really dials (P8: 60 s negative cache).

    ``Swarm.unblock_peer`` (which evicts the private ``Swarm._negative_peer_cache``) is not
    part of ``INetworkService``, hence the Swarm check.
    """
    _swarm_of(host).unblock_peer(peer)


def _swarm_of(host: IHost) -> Swarm:
    network = host.get_network()
    if not isinstance(network, Swarm):
        raise TransportError(f"expected a libp2p Swarm, got {type(network).__name__}")
    return network


class _GuardedPubsub(Pubsub):
    """py-libp2p's Pubsub with two faults of 0.8.1 closed (P13).

    * Its per-peer sending loop and GossipSub (flushing pending and recent messages) write
      RPCs to the same stream from different tasks; a large RPC goes out as several yamux
      frames, so two writes can interleave and the peer reads garbage. Writes to one
      stream are serialised here.
    * Its inbound handler catches StreamError, ParseError and IncompleteReadError but not
      protobuf's DecodeError: one malformed RPC from any peer escapes into the Swarm and
      stops the whole node. Such a peer's stream is reset and the peer dropped instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary())

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            return await super().write_msg(stream, rpc_msg)

    async def stream_handler(self, stream: INetStream) -> None:
        try:
            await super().stream_handler(stream)
        except ProtobufDecodeError:
            peer = stream.muxed_conn.peer_id
            log.info("pubsub: peer %s sent a malformed RPC; its stream is reset",
                     str(peer)[-6:])
            with trio.CancelScope(shield=True):
                await stream.reset()
            self._handle_dead_peer(peer)


#: (sender, seqno) pairs whose first message's digest GossipSub's equivocation check keeps.
EQUIVOCATION_MEMORY = 1000


def _message_digest(msg: rpc_pb2.Message) -> bytes:
    """What two messages with one (sender, seqno) must agree on: their data and topics
    (length-prefixed, so no two different messages share the input)."""
    h = hashlib.sha256()
    for part in (msg.data, *(t.encode() for t in msg.topicIDs)):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class _LeanGossipSub(GossipSub):
    """GossipSub whose message-level equivocation check (same sender and seqno, other
    content) keeps a 32-byte digest per (sender, seqno) instead of the whole first message.

    0.8.1 keeps every forwarded message in ``equivocation_detection`` until there are 1,000
    of them (then 500): up to 1,000 whole batches of events held only to compare them,
    filling over minutes at a low rate and reaching tens of MB at a high one. The check is
    the same (a differing message is refused and, with a scorer, penalised), within the
    same 1,000-entry window.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_digests: OrderedDict[bytes, bytes] = OrderedDict()

    def _check_equivocation(self, msg: rpc_pb2.Message) -> bool:
        key = msg.from_id + msg.seqno
        digest = _message_digest(msg)
        first = self._first_digests.get(key)
        if first is None:
            self._first_digests[key] = digest
            if len(self._first_digests) > EQUIVOCATION_MEMORY:
                self._first_digests.popitem(last=False)
            return True
        if first == digest:
            return True
        log.warning("pubsub: equivocation by %s (one seqno, two messages)",
                    str(ID(msg.from_id))[-6:])
        if self.scorer is not None:
            self.scorer.penalize_equivocation(ID(msg.from_id), 100.0)
        return False


def _pubsub_queue_depths(pubsub: Pubsub) -> list[int]:
    """Lengths of pubsub's per-peer outbound RPC queues (P2).

    ``Pubsub.peer_queues`` is undocumented; each queue holds 32 RPCs and silently drops beyond
    that, so publish waits while any queue is above our high-water mark.
    """
    return [len(queue) for queue in pubsub.peer_queues.values()]


def _is_protocol_not_supported(exc: BaseException) -> bool:
    """Whether ``host.new_stream`` failed because the peer answered "na" to every protocol.

    py-libp2p 0.8.1 raises ``StreamFailure`` from a ``MultiselectClientError`` whose text
    starts with "protocols not supported" (no distinct exception type survives).
    """
    cause = exc.__cause__
    return isinstance(cause, MultiselectClientError) and str(cause).startswith(
        "protocols not supported"
    )


def _stream_was_cut(stream: INetStream) -> bool:
    """Whether an end of stream was really a cut (P10: resets and lost connections look
    like a clean EOF once Yamux has dropped the stream's state).

    Reads ``YamuxStream.reset_received`` and ``Yamux.event_shutting_down``.
    """
    if isinstance(stream, NetStream):
        muxed_stream = stream.muxed_stream
        if isinstance(muxed_stream, YamuxStream) and muxed_stream.reset_received:
            return True
    muxed = stream.muxed_conn
    return isinstance(muxed, Yamux) and (muxed.event_shutting_down.is_set() or muxed.is_closed)


def _configure_libp2p_logging(level: int) -> None:
    """P15: route libp2p's records to our handlers at a level we choose.

    On import libp2p sets its logger to ``propagate=False`` with no handler, so its records
    reach stderr through logging's last-resort handler. ``auto_connector`` sets its own
    level to INFO on import, so it gets ours too.
    """
    for name in ("libp2p", "libp2p.network.auto_connector"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = True


# ---------------------------------------------------------------- host construction


def _new_host(seed: bytes, config: TransportConfig) -> IHost:
    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        # P5: Noise only; the default list also offers plaintext and secio.
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        # P14: these only select transports (TCP); run() listens.
        listen_addrs=[multiaddr.Multiaddr(addr) for addr in config.listen_addrs],
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,  # P3: otherwise every connect() waits 250 ms
            max_connections=config.max_peers,
            high_watermark=config.max_peers,
            # P18: no background auto-dialling of peerstore entries; we redial ourselves.
            low_watermark=0,
            min_connections=0,
            dial_timeout=config.dial_timeout,
        ),
        enable_mDNS=config.enable_mdns,
    )
    # Our redial loop does the retrying; the swarm's own 3 retries only delay errors.
    _swarm_of(host).retry_config = RetryConfig(max_retries=0)
    return host


def _peer_id_text(peer: ID) -> PeerId:
    return PeerId(peer.to_base58())


def _parse_peer(peer: PeerId) -> ID:
    try:
        return ID.from_base58(peer)
    except Exception as exc:  # base58/multihash errors of several types
        raise DialError(f"not a peer id: {peer!r}") from exc


# ---------------------------------------------------------------- streams


class _Libp2pByteStream:
    """The :class:`ByteStream` under our framing, over one libp2p stream."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self._reset = False

    async def read_some(self, max_bytes: int) -> bytes:
        if self._reset:
            raise StreamClosed("stream was reset locally")
        try:
            data = await self._stream.read(max_bytes)
        except StreamEOF as exc:
            if _stream_was_cut(self._stream):
                raise StreamTruncated("stream reset by peer or connection lost") from exc
            return b""
        except IOException as exc:  # StreamReset, StreamError, muxer errors
            raise StreamTruncated(f"stream broken: {exc!r}") from exc
        if not data and _stream_was_cut(self._stream):
            raise StreamTruncated("stream reset by peer or connection lost")
        return data

    async def write_all(self, data: bytes) -> None:
        if self._reset:
            raise StreamClosed("stream was reset locally")
        try:
            await self._stream.write(data)
        except IOException as exc:
            raise StreamTruncated(f"stream broken: {exc!r}") from exc

    async def close_write(self) -> None:
        try:
            await self._stream.close()
        except IOException as exc:  # already cut: the peer sees a truncation either way
            log.debug("closing a broken libp2p stream: %r", exc)

    async def reset(self) -> None:
        if self._reset:
            return
        self._reset = True
        try:
            await self._stream.reset()
        except Exception as exc:  # reset is best effort; the connection may already be gone
            log.debug("libp2p stream reset failed: %r", exc)


# ---------------------------------------------------------------- peer notifications


class _PeerNotifee(INotifee):
    """Forwards swarm connect/disconnect notifications to the transport."""

    def __init__(self, transport: Libp2pTransport) -> None:
        self._transport = transport

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._on_disconnected(conn.muxed_conn.peer_id)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


# ---------------------------------------------------------------- the transport


class Libp2pTransport:
    """:class:`Transport` over py-libp2p. Runs once; restart with a new object, same seed."""

    def __init__(self, seed: bytes, config: TransportConfig | None = None) -> None:
        if len(seed) != 32:
            raise ValueError(f"the identity seed is 32 bytes, got {len(seed)}")
        self._config = config if config is not None else TransportConfig()
        self._bootstrap = parse_bootstrap(self._config.bootstrap)
        for address in self._bootstrap:
            try:
                _parse_peer(address.peer_id)
            except DialError as exc:
                raise TransportError(f"bad bootstrap peer id {address.peer_id!r}") from exc
        self._host = _new_host(seed, self._config)
        self._peer_id = _peer_id_text(self._host.get_id())
        self._router = _LeanGossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            degree=self._config.gossip_degree,
            degree_low=self._config.gossip_degree_low,
            degree_high=self._config.gossip_degree_high,
            heartbeat_interval=self._config.gossip_heartbeat_seconds,
            spam_protection_enabled=False,  # P1: 10 msg/s cap, own publishes included
            adaptive_gossip_enabled=False,  # P4: stretches the heartbeat to 60 s
        )
        self._pubsub = _GuardedPubsub(self._host, self._router)
        self._counters = Counters()
        self._events = PeerEventHub(self._config.peer_event_buffer, self._counters)
        self._connected: set[PeerId] = set()
        self._disconnect_waiters: dict[PeerId, trio.Event] = {}
        self._address_book: dict[PeerId, tuple[str, ...]] = {}
        self._subscriptions: dict[str, TopicSubscription] = {}
        self._consumers: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._services_scope: trio.CancelScope | None = None
        self._host_closed = trio.Event()
        self._started = False
        self._host.get_network().register_notifee(_PeerNotifee(self))

    # -- identity and state

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    def listen_addresses(self) -> list[str]:
        if self._nursery is None:
            return []
        # The bound listeners only: get_addrs() may append addresses peers observed.
        return [f"{addr}/p2p/{self._peer_id}" for addr in self._host.get_transport_addrs()]

    def connected_peers(self) -> list[PeerId]:
        return sorted(self._connected)

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
        _configure_libp2p_logging(self._config.libp2p_log_level)
        failure: TransportError | None = None
        async with trio.open_nursery() as nursery:
            failure = await nursery.start(self._serve)
            if failure is None:
                log.info("libp2p transport %s listening on %s", short_id(self._peer_id),
                         self.listen_addresses())
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + _SHUTDOWN_GRACE
                        await self._shutdown()
        if failure is not None:
            raise failure

    async def _serve(self, *, task_status: TaskStatus[TransportError | None]) -> None:
        """Own libp2p's services, shielded from the cancellation of run().

        P6/P13: if run()'s cancellation reached libp2p's internal tasks directly, they would
        tear connections down half-way (sockets left open, "nursery is closed" races) and the
        listener would outlive us. Instead _shutdown() closes the host first; only then do the
        services exit, within a deadline.
        """
        listen = [multiaddr.Multiaddr(addr) for addr in self._config.listen_addrs]
        with trio.CancelScope(shield=True) as services_scope:
            self._services_scope = services_scope
            services_scope.deadline = trio.current_time() + _STARTUP_TIMEOUT
            async with (
                self._host.run(listen_addrs=listen),
                background_trio_service(self._pubsub),
                background_trio_service(self._router),
            ):
                bound = self._host.get_transport_addrs()
                if len(bound) < len(listen):
                    await self._host.close()
                    task_status.started(TransportError(
                        f"could not listen on all of {list(self._config.listen_addrs)}; "
                        f"bound {[str(addr) for addr in bound]}"
                    ))
                    return
                await self._pubsub.wait_until_ready()
                services_scope.deadline = math.inf
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for topic in self._subscriptions:
                        self._start_consumer(topic)
                    for address in self._bootstrap:
                        nursery.start_soon(self._keep_connected, address)
                    if self._config.enable_mdns:
                        nursery.start_soon(self._mdns_connector)
                    task_status.started(None)
                    await trio.sleep_forever()  # until _shutdown() cancels this nursery
                await self._host_closed.wait()

    async def _shutdown(self) -> None:
        nursery, self._nursery = self._nursery, None
        if nursery is not None:
            nursery.cancel_scope.cancel()  # redial loops, subscription consumers, mDNS
        try:
            await self._host.close()  # P6: closes the listener and every connection
        finally:
            if self._services_scope is not None:
                self._services_scope.deadline = trio.current_time() + _SHUTDOWN_GRACE
            self._host_closed.set()
            self._events.close()
            for subscription in self._subscriptions.values():
                subscription.send.close()

    # -- connections

    def _on_connected(self, peer: ID) -> None:
        peer_id = _peer_id_text(peer)
        if peer_id in self._connected:
            return
        if len(self._connected) >= self._config.max_peers:
            self._counters.connections_refused += 1
            log.info("refusing %s: max_peers=%d reached", short_id(peer_id),
                     self._config.max_peers)
            if self._nursery is not None:
                self._nursery.start_soon(self._refuse, peer)
            return
        self._connected.add(peer_id)
        self._events.emit(PeerEventKind.CONNECTED, peer_id)

    async def _refuse(self, peer: ID) -> None:
        try:
            await self._host.disconnect(peer)
        except Exception as exc:  # the peer may be gone already; nothing else to undo
            log.info("closing refused peer %s: %r", short_id(_peer_id_text(peer)), exc)

    def _on_disconnected(self, peer: ID) -> None:
        peer_id = _peer_id_text(peer)
        if peer_id not in self._connected or self._host.get_network().get_connections(peer):
            return
        self._connected.discard(peer_id)
        self._events.emit(PeerEventKind.DISCONNECTED, peer_id)
        waiter = self._disconnect_waiters.pop(peer_id, None)
        if waiter is not None:
            waiter.set()

    async def connect(self, address: PeerAddress) -> None:
        self._running_nursery()
        peer_id = address.peer_id
        if peer_id == self._peer_id:
            raise DialError("refusing to dial ourselves")
        peer = _parse_peer(peer_id)
        if address.addrs:
            self._address_book[peer_id] = address.addrs
        if peer_id in self._connected:
            return
        if len(self._connected) >= self._config.max_peers:
            self._counters.dials_failed += 1
            raise DialError(f"max_peers={self._config.max_peers} reached")
        addrs = self._address_book.get(peer_id, ())
        if not addrs:
            raise DialError(f"no known address for {short_id(peer_id)}")
        try:
            info = PeerInfo(peer, [multiaddr.Multiaddr(addr) for addr in addrs])
        except Exception as exc:  # multiaddr raises several error types
            raise DialError(f"bad address for {short_id(peer_id)}: {list(addrs)}") from exc
        try:
            with trio.fail_after(self._config.dial_timeout):
                # P9: always pass the addresses; the peerstore forgets them after 120 s.
                await self._host.connect(info)
        except trio.TooSlowError as exc:
            self._counters.dials_failed += 1
            raise TransportTimeout(f"dial {short_id(peer_id)} timed out") from exc
        except Exception as exc:  # the boundary: translate whatever libp2p raised
            self._counters.dials_failed += 1
            raise DialError(f"dial {short_id(peer_id)} failed: {exc}") from exc
        if peer_id not in self._connected:
            # The notifee refused it (peer limit) or it dropped at once.
            raise DialError(f"connection to {short_id(peer_id)} was not kept")

    async def disconnect(self, peer: PeerId) -> None:
        libp2p_peer = _parse_peer(peer)
        try:
            await self._host.disconnect(libp2p_peer)
        except Exception as exc:  # the boundary: translate whatever libp2p raised
            raise TransportError(f"disconnect {short_id(peer)} failed: {exc}") from exc

    async def _wait_disconnected(self, peer: PeerId) -> None:
        if peer not in self._connected:
            return
        await self._disconnect_waiters.setdefault(peer, trio.Event()).wait()

    def _before_dial(self, peer: PeerId) -> None:
        _unblock_dial(self._host, _parse_peer(peer))

    async def _keep_connected(self, address: PeerAddress) -> None:
        await keep_connected(
            address,
            connect=self.connect,
            wait_disconnected=self._wait_disconnected,
            before_dial=self._before_dial,
            backoff_min=self._config.redial_backoff_min,
            backoff_max=self._config.redial_backoff_max,
            logger=log,
        )

    async def _mdns_connector(self) -> None:
        """P16: discoveries arrive on zeroconf's thread through a process-global registry."""
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[PeerInfo](_MDNS_BUFFER)

        def deliver(info: PeerInfo) -> None:
            try:
                send.send_nowait(info)
            except (trio.WouldBlock, trio.ClosedResourceError):
                log.debug("mDNS discovery of %s dropped", info.peer_id)

        def on_found(info: PeerInfo) -> None:  # zeroconf's thread
            try:
                token.run_sync_soon(deliver, info)
            except trio.RunFinishedError:
                log.debug("mDNS discovery after shutdown ignored")

        peerDiscovery.register_peer_discovered_handler(on_found)
        try:
            async with receive:
                async for info in receive:
                    address = PeerAddress(_peer_id_text(info.peer_id),
                                          tuple(str(addr) for addr in info.addrs))
                    if address.peer_id == self._peer_id:
                        continue
                    try:
                        await self.connect(address)
                    except TransportError as exc:
                        log.info("mDNS peer %s: %s", short_id(address.peer_id), exc)
        finally:
            peerDiscovery.unregister_peer_discovered_handler(on_found)

    # -- streams

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        async def guarded(net_stream: INetStream) -> None:
            # P7: an exception escaping a libp2p stream handler tears the host down.
            stream = FramedStream(
                _Libp2pByteStream(net_stream),
                remote_peer=_peer_id_text(net_stream.muxed_conn.peer_id),
                protocol_id=protocol_id,
                max_frame_bytes=self._config.max_frame_bytes,
                counters=self._counters,
            )
            await serve_guarded(handler, stream, self._counters, log)

        self._host.set_stream_handler(TProtocol(protocol_id), guarded)

    async def open_stream(self, peer: PeerId, protocol_id: str) -> Stream:
        self._running_nursery()
        if peer not in self._connected:
            await self.connect(PeerAddress(peer, self._address_book.get(peer, ())))
        try:
            with trio.fail_after(self._config.stream_open_timeout):
                net_stream = await self._host.new_stream(
                    _parse_peer(peer), [TProtocol(protocol_id)]
                )
        except trio.TooSlowError as exc:
            raise TransportTimeout(f"opening {protocol_id} to {short_id(peer)} timed out") from exc
        except Exception as exc:  # the boundary: translate whatever libp2p raised
            if _is_protocol_not_supported(exc):
                raise ProtocolNotSupported(
                    f"{short_id(peer)} does not serve {protocol_id}"
                ) from exc
            raise DialError(f"opening {protocol_id} to {short_id(peer)} failed: {exc}") from exc
        return FramedStream(
            _Libp2pByteStream(net_stream),
            remote_peer=peer,
            protocol_id=protocol_id,
            max_frame_bytes=self._config.max_frame_bytes,
            counters=self._counters,
        )

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
        max_bytes = self._config.max_message_bytes

        def libp2p_validator(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            # P7: a raising sync validator would tear the host down; validate() catches.
            # The sender is the signed originator (strict signing), not the forwarder.
            sender = _peer_id_text(ID(msg.from_id))
            return subscription.validate(sender, bytes(msg.data), max_bytes)

        self._pubsub.set_topic_validator(topic, libp2p_validator, False)
        if self._nursery is not None:
            self._start_consumer(topic)
        return subscription.receive

    def _start_consumer(self, topic: str) -> None:
        scope = trio.CancelScope()
        self._consumers[topic] = scope
        self._running_nursery().start_soon(
            self._consume, topic, self._subscriptions[topic], scope
        )

    async def _consume(
        self, topic: str, subscription: TopicSubscription, scope: trio.CancelScope
    ) -> None:
        """P12: drain pubsub's 32-deep subscription buffer into our bounded channel."""
        own = self._host.get_id().to_bytes()
        with scope:
            libp2p_subscription = await self._pubsub.subscribe(topic)
            async for msg in libp2p_subscription:
                if msg.from_id == own:
                    continue  # own publishes come back; the publisher already has them
                message = GossipMessage(_peer_id_text(ID(msg.from_id)), bytes(msg.data))
                if not subscription.deliver(message):
                    break  # the subscriber closed its channel
        if not scope.cancel_called and self._subscriptions.get(topic) is subscription:
            await self.unsubscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        subscription = self._subscriptions.pop(topic, None)
        if subscription is None:
            return
        scope = self._consumers.pop(topic, None)
        if scope is not None:
            scope.cancel()
        self._pubsub.remove_topic_validator(topic)
        subscription.send.close()
        if self._nursery is not None:
            try:
                await self._pubsub.unsubscribe(topic)
            except Exception as exc:
                raise TransportError(f"unsubscribe {topic!r} failed: {exc}") from exc

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self._config.max_message_bytes:
            raise FrameTooLarge(
                f"message of {len(data)} bytes exceeds "
                f"max_message_bytes={self._config.max_message_bytes}"
            )
        self._running_nursery()
        await self._wait_for_queue_room()
        self._counters.messages_published += 1
        try:
            await self._pubsub.publish(topic, data)
        except Exception as exc:
            raise TransportError(f"publish to {topic!r} failed: {exc}") from exc

    async def _wait_for_queue_room(self) -> None:
        """P2: publish is fire-and-forget into 32-deep per-peer queues that drop silently.

        The queues expose no "drained" event, so poll their depth; bounded by
        ``publish_backpressure_timeout``, after which we publish anyway (gossip is best
        effort; one stuck peer must not stop publishing to the others).
        """
        high_water = self._config.publish_queue_high_water
        with trio.move_on_after(self._config.publish_backpressure_timeout) as scope:
            while any(depth >= high_water for depth in _pubsub_queue_depths(self._pubsub)):
                await trio.sleep(_BACKPRESSURE_POLL)
        if scope.cancelled_caught:
            self._counters.publish_backpressure_timeouts += 1

    async def wait_for_topic_peers(self, topic: str, peers: Collection[PeerId]) -> None:
        self._running_nursery()
        for peer in peers:
            peer_id = _parse_peer(peer)
            await self._pubsub.wait_for_subscription(peer_id, topic, timeout=math.inf)
            if topic in self._subscriptions:
                # Subscribed nodes publish to their mesh only (no flood publish in 0.8.1).
                await self._router.wait_for_mesh(peer_id, topic, timeout=math.inf)
