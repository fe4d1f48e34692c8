"""The node's transport interfaces, shared types and the framing both implementations use.

Two implementations satisfy :class:`Transport`: ``libp2p_transport.Libp2pTransport`` (the only
module that imports libp2p) and ``memory_transport.MemoryTransport`` (an in-process network for
tests). ``tests/test_transport_contract.py`` runs one suite against both.

Semantics every implementation follows:

* A stream carries length-prefixed frames (unsigned-varint length, then the body). The length
  is checked against ``max_frame_bytes`` before the body is read, on both sides.
  ``receive_frame`` raises :class:`StreamClosed` when the peer closed its side at a frame
  boundary and :class:`StreamTruncated` when the stream ended inside a frame, was reset by the
  peer or lost its connection. ``close()`` is a half-close: the peer reads the remaining frames
  and then gets ``StreamClosed``; frames from the peer can still be received.
* A stream handler that raises is logged and counted, and its stream is reset; the node keeps
  running. When a handler returns, its stream is closed if it was not already.
* Gossip: ``subscribe`` returns a bounded channel; when it is full, messages are dropped and
  counted. A validator that returns False or raises rejects the message (counted, neither
  delivered nor forwarded). Own publishes pass through the local validator too, and are not
  delivered back to the publisher.
* Peer events go through bounded channels; when one is full, events are dropped and counted.
* A transport object runs once. To restart a node, create a new transport with the same seed.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, NewType, Protocol

import trio

if TYPE_CHECKING:
    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

PeerId = NewType("PeerId", str)
"""The libp2p peer id in its text form (base58btc, e.g. ``12D3KooW...``)."""

MAX_FRAME_BYTES = 1 << 20
"""Default largest frame body on a stream."""
MAX_MESSAGE_BYTES = 512 * 1024
"""Default largest gossip payload (py-libp2p caps a whole pubsub RPC at 1 MiB)."""
_MAX_VARINT_BYTES = 10
_READ_CHUNK = 64 * 1024


# ---------------------------------------------------------------- errors


class TransportError(Exception):
    """Root of every error the transport layer raises."""


class DialError(TransportError):
    """A peer could not be connected to (unreachable, refused, peer limit, bad address)."""


class StreamClosed(TransportError):
    """The stream ended cleanly (at a frame boundary) or was closed/reset on this side."""


class StreamTruncated(TransportError):
    """The stream was cut: it ended mid-frame, was reset by the peer or lost its connection."""


class FrameTooLarge(TransportError):
    """A frame or gossip message is larger than the configured maximum."""


class ProtocolNotSupported(TransportError):
    """The peer has no handler for the requested protocol id."""


class TransportTimeout(TransportError):
    """A dial or stream negotiation did not finish within its configured timeout."""


# ---------------------------------------------------------------- identity


_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rem = divmod(number, 58)
        digits.append(_B58_ALPHABET[rem])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(digits))


def peer_id_from_ed25519_public_key(pub32: bytes) -> PeerId:
    """The libp2p peer id naming a raw 32-byte Ed25519 public key.

    libp2p inlines small keys: the id is the identity multihash of the protobuf ``PublicKey``
    message (``KeyType.Ed25519 = 1``), in base58btc.
    """
    if len(pub32) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(pub32)}")
    protobuf_key = b"\x08\x01\x12\x20" + pub32
    multihash = b"\x00" + bytes([len(protobuf_key)]) + protobuf_key
    return PeerId(_b58encode(multihash))


def short_id(peer: PeerId) -> str:
    """The last 6 characters of a peer id, for log lines."""
    return peer[-6:]


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A peer id and the multiaddrs (without ``/p2p/``) it can be dialled on."""

    peer_id: PeerId
    addrs: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.peer_id:
            raise ValueError("PeerAddress needs a peer id")
        if isinstance(self.addrs, str):
            raise TypeError("PeerAddress.addrs is a sequence of multiaddr strings, not one str")
        object.__setattr__(self, "addrs", tuple(self.addrs))

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        """Parse ``<multiaddr>/p2p/<peer id>`` (the form ``listen_addresses()`` returns)."""
        addr, sep, peer = text.rpartition("/p2p/")
        if not sep or not peer or "/" in peer:
            raise ValueError(f"not a multiaddr ending in /p2p/<peer id>: {text!r}")
        return cls(PeerId(peer), (addr,) if addr else ())


# ---------------------------------------------------------------- config and stats


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Everything a transport needs besides its identity seed."""

    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    """``<multiaddr>/p2p/<peer id>`` strings kept connected by the redial loop."""
    max_peers: int = 64
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    dial_timeout: float = 10.0
    stream_open_timeout: float = 10.0
    redial_backoff_min: float = 0.5
    redial_backoff_max: float = 60.0
    gossip_heartbeat_seconds: int = 1
    gossip_degree: int = 6
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12
    subscription_buffer: int = 256
    peer_event_buffer: int = 64
    publish_queue_high_water: int = 16
    """Publish waits while any pubsub per-peer queue holds this many RPCs (py-libp2p: 32)."""
    publish_backpressure_timeout: float = 5.0
    enable_mdns: bool = False
    libp2p_log_level: int = logging.WARNING

    def __post_init__(self) -> None:
        positive = {
            "max_peers": self.max_peers,
            "max_frame_bytes": self.max_frame_bytes,
            "max_message_bytes": self.max_message_bytes,
            "dial_timeout": self.dial_timeout,
            "stream_open_timeout": self.stream_open_timeout,
            "redial_backoff_min": self.redial_backoff_min,
            "gossip_heartbeat_seconds": self.gossip_heartbeat_seconds,
            "subscription_buffer": self.subscription_buffer,
            "peer_event_buffer": self.peer_event_buffer,
            "publish_queue_high_water": self.publish_queue_high_water,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"TransportConfig.{name} must be positive, got {value!r}")
        if self.redial_backoff_max < self.redial_backoff_min:
            raise ValueError("TransportConfig.redial_backoff_max is below redial_backoff_min")
        if not self.gossip_degree_low <= self.gossip_degree <= self.gossip_degree_high:
            raise ValueError("TransportConfig needs gossip_degree_low <= degree <= degree_high")
        if self.max_message_bytes > 1_000_000:
            raise ValueError("TransportConfig.max_message_bytes must stay below 1 MB")
        for field_name in ("listen_addrs", "bootstrap"):
            value = getattr(self, field_name)
            if isinstance(value, str):
                raise TypeError(f"TransportConfig.{field_name} is a tuple of str, not one str")
            object.__setattr__(self, field_name, tuple(value))


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A snapshot of a transport's counters."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames_too_large: int = 0
    messages_published: int = 0
    messages_delivered: int = 0
    messages_dropped: int = 0
    """Gossip dropped because a subscription channel (or a memory peer queue) was full."""
    messages_rejected: int = 0
    """Gossip rejected by a validator (False, an exception, or over max_message_bytes)."""
    publish_backpressure_timeouts: int = 0
    handler_errors: int = 0
    """Stream handlers that raised something other than a TransportError (a bug or bad input)."""
    handler_stream_errors: int = 0
    """Stream handlers ended by a TransportError (the peer went away or sent bad frames)."""
    peer_events_dropped: int = 0
    dials_failed: int = 0
    connections_refused: int = 0


@dataclass(slots=True)
class Counters:
    """The mutable counters behind :class:`TransportStats` (same fields)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames_too_large: int = 0
    messages_published: int = 0
    messages_delivered: int = 0
    messages_dropped: int = 0
    messages_rejected: int = 0
    publish_backpressure_timeouts: int = 0
    handler_errors: int = 0
    handler_stream_errors: int = 0
    peer_events_dropped: int = 0
    dials_failed: int = 0
    connections_refused: int = 0

    def snapshot(self) -> TransportStats:
        return TransportStats(**dataclasses.asdict(self))


# ---------------------------------------------------------------- events and messages


class PeerEventKind(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class PeerEvent:
    kind: PeerEventKind
    peer: PeerId


class GossipMessage(NamedTuple):
    """A validated gossip message: ``sender`` is the originating (signing) peer."""

    sender: PeerId
    data: bytes


Validator = Callable[[PeerId, bytes], bool]
"""``validator(sender, data)``: ``True`` accepts; anything else, or an exception, rejects.

It runs synchronously on the trio thread (keep it cheap; do heavy checks after delivery).
"""


class PeerEventHub:
    """Fans peer events out to any number of bounded channels; full channels drop and count."""

    def __init__(self, buffer: int, counters: Counters) -> None:
        self._buffer = buffer
        self._counters = counters
        self._channels: list[trio.MemorySendChannel[PeerEvent]] = []

    def open(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        send, receive = trio.open_memory_channel[PeerEvent](self._buffer)
        self._channels.append(send)
        return receive

    def emit(self, kind: PeerEventKind, peer: PeerId) -> None:
        event = PeerEvent(kind, peer)
        for channel in list(self._channels):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self._counters.peer_events_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._channels.remove(channel)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()


class TopicSubscription:
    """Our side of one topic subscription: the validator and the bounded delivery channel."""

    def __init__(self, topic: str, validator: Validator, buffer: int, counters: Counters) -> None:
        self.topic = topic
        self._validator = validator
        self._counters = counters
        self.send, self.receive = trio.open_memory_channel[GossipMessage](buffer)

    def validate(self, sender: PeerId, data: bytes, max_bytes: int) -> bool:
        """Run the validator; an exception counts as a rejection (no input may crash us)."""
        if len(data) > max_bytes:
            accepted = False
        else:
            try:
                accepted = self._validator(sender, data) is True
            except Exception:
                log.warning(
                    "validator for %r raised on a message from %s; rejected",
                    self.topic,
                    short_id(sender),
                    exc_info=True,
                )
                accepted = False
        if not accepted:
            self._counters.messages_rejected += 1
        return accepted

    def deliver(self, message: GossipMessage) -> bool:
        """Hand a message to the subscriber. Returns False once the subscriber has gone."""
        try:
            self.send.send_nowait(message)
        except trio.WouldBlock:
            self._counters.messages_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        else:
            self._counters.messages_delivered += 1
        return True


# ---------------------------------------------------------------- framing


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse_frame_header(buf: bytes | bytearray, max_frame_bytes: int) -> tuple[int, int] | None:
    """``(body_length, header_length)`` from the start of ``buf``, or None if incomplete.

    Raises :class:`FrameTooLarge` as soon as the announced length exceeds the maximum,
    including for over-long (malformed) varints.
    """
    value = 0
    for index in range(min(len(buf), _MAX_VARINT_BYTES)):
        byte = buf[index]
        value |= (byte & 0x7F) << (7 * index)
        if value > max_frame_bytes:
            raise FrameTooLarge(f"frame announces more than max_frame_bytes={max_frame_bytes}")
        if not byte & 0x80:
            return value, index + 1
    if len(buf) >= _MAX_VARINT_BYTES:
        raise FrameTooLarge("malformed frame header (varint longer than 10 bytes)")
    return None


class ByteStream(Protocol):
    """What an implementation provides under :class:`FramedStream`.

    ``read_some`` returns ``b""`` at a clean end of stream, raises :class:`StreamTruncated` if
    the peer reset the stream or the connection was lost and :class:`StreamClosed` after a
    local reset. ``write_all`` raises the same two. ``close_write`` (half-close) and ``reset``
    never raise: on a stream that is already cut there is nothing left to do.
    """

    async def read_some(self, max_bytes: int) -> bytes: ...

    async def write_all(self, data: bytes) -> None: ...

    async def close_write(self) -> None: ...

    async def reset(self) -> None: ...


class Stream(Protocol):
    """A bidirectional stream of frames to one peer, opened for one protocol id."""

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def protocol_id(self) -> str: ...

    async def send_frame(self, data: bytes) -> None: ...

    async def receive_frame(self) -> bytes: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


StreamHandler = Callable[[Stream], Awaitable[None]]


class FramedStream:
    """Length-prefixed frames over a :class:`ByteStream`; both transports use this class.

    ``raw`` is public so tests can write malformed bytes under the framing.
    """

    def __init__(
        self,
        raw: ByteStream,
        *,
        remote_peer: PeerId,
        protocol_id: str,
        max_frame_bytes: int,
        counters: Counters,
    ) -> None:
        self.raw = raw
        self._remote_peer = remote_peer
        self._protocol_id = protocol_id
        self._max = max_frame_bytes
        self._counters = counters
        self._buf = bytearray()
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._write_closed = False
        self._reset = False

    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def protocol_id(self) -> str:
        return self._protocol_id

    async def send_frame(self, data: bytes) -> None:
        if len(data) > self._max:
            raise FrameTooLarge(f"frame of {len(data)} bytes exceeds max_frame_bytes={self._max}")
        frame = encode_uvarint(len(data)) + data
        async with self._send_lock:
            if self._reset or self._write_closed:
                raise StreamClosed("stream is closed for sending")
            sent = False
            try:
                await self.raw.write_all(frame)
                sent = True
            finally:
                if not sent:
                    # Part of the frame may be on the wire (cancelled or failed write): the
                    # stream cannot carry another frame, so make the peer see a truncation.
                    await self._abort()
        self._counters.frames_out += 1
        self._counters.bytes_out += len(frame)

    async def receive_frame(self) -> bytes:
        async with self._receive_lock:
            while True:
                try:
                    header = parse_frame_header(self._buf, self._max)
                except FrameTooLarge:
                    self._counters.frames_too_large += 1
                    await self._abort()
                    raise
                if header is not None:
                    length, header_length = header
                    end = header_length + length
                    if len(self._buf) >= end:
                        body = bytes(self._buf[header_length:end])
                        del self._buf[:end]
                        self._counters.frames_in += 1
                        self._counters.bytes_in += end
                        return body
                if self._reset:
                    raise StreamClosed("stream was reset locally")
                try:
                    chunk = await self.raw.read_some(_READ_CHUNK)
                except StreamTruncated:
                    if self._reset:  # we reset it ourselves, from another task
                        raise StreamClosed("stream was reset locally") from None
                    raise
                if not chunk:
                    if self._buf:
                        raise StreamTruncated(
                            f"stream ended inside a frame ({len(self._buf)} bytes buffered)"
                        )
                    raise StreamClosed("peer closed the stream")
                self._buf += chunk

    async def close(self) -> None:
        """Half-close: the peer gets StreamClosed after our last frame; we can still receive.

        Idempotent; does nothing on a stream that is already cut.
        """
        async with self._send_lock:
            if self._reset or self._write_closed:
                return
            self._write_closed = True
            await self.raw.close_write()

    async def reset(self) -> None:
        """Abort both directions; the peer sees StreamTruncated. Idempotent, never raises."""
        await self._abort()

    async def _abort(self) -> None:
        if self._reset:
            return
        self._reset = True
        self._write_closed = True
        self._buf.clear()
        with trio.CancelScope(shield=True):
            await self.raw.reset()


async def serve_guarded(
    handler: StreamHandler, stream: FramedStream, counters: Counters, logger: logging.Logger
) -> None:
    """Run a stream handler so that nothing it raises can reach the transport's tasks."""
    peer = short_id(stream.remote_peer)
    try:
        await handler(stream)
    except TransportError as exc:
        counters.handler_stream_errors += 1
        logger.info("%s handler for %s ended by a stream error: %r", stream.protocol_id, peer, exc)
        await stream.reset()
    except Exception:
        counters.handler_errors += 1
        logger.exception("%s handler for %s raised; stream reset", stream.protocol_id, peer)
        await stream.reset()
    else:
        try:
            await stream.close()
        except TransportError as exc:
            logger.debug("closing %s stream to %s after its handler: %r", stream.protocol_id,
                         peer, exc)


# ---------------------------------------------------------------- the transport interface


class Transport(Protocol):
    """A node's view of the network: connections, framed streams, gossip, peer events."""

    @property
    def peer_id(self) -> PeerId: ...

    def listen_addresses(self) -> list[str]:
        """``<multiaddr>/p2p/<peer id>`` strings; empty until ``run`` has started."""
        ...

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, call ``task_status.started()``, serve until cancelled, then shut down."""
        ...

    async def connect(self, address: PeerAddress) -> None: ...

    async def disconnect(self, peer: PeerId) -> None: ...

    def connected_peers(self) -> list[PeerId]: ...

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None: ...

    async def open_stream(self, peer: PeerId, protocol_id: str) -> Stream: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    def subscribe(
        self, topic: str, validator: Validator
    ) -> trio.MemoryReceiveChannel[GossipMessage]: ...

    async def unsubscribe(self, topic: str) -> None: ...

    async def wait_for_topic_peers(self, topic: str, peers: Collection[PeerId]) -> None:
        """Return once a publish here on ``topic`` would go straight to each of ``peers``.

        (They are subscribed and, if we are subscribed too, in our GossipSub mesh.) Waits
        indefinitely: wrap it in ``trio.fail_after``.
        """
        ...

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]: ...

    def stats(self) -> TransportStats: ...


# ---------------------------------------------------------------- redial loop


async def keep_connected(
    address: PeerAddress,
    *,
    connect: Callable[[PeerAddress], Awaitable[None]],
    wait_disconnected: Callable[[PeerId], Awaitable[None]],
    before_dial: Callable[[PeerId], None],
    backoff_min: float,
    backoff_max: float,
    logger: logging.Logger,
) -> None:
    """Keep one (bootstrap) peer connected: redial with exponential backoff, forever.

    ``before_dial`` runs before every attempt (libp2p: forget the swarm's negative dial cache).
    After a disconnect we wait ``backoff_min`` first so a flapping peer cannot spin us.
    """
    delay = backoff_min
    peer = address.peer_id
    while True:
        before_dial(peer)
        try:
            await connect(address)
        except TransportError as exc:
            logger.info("dial %s failed (%s); retry in %.2fs", short_id(peer), exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, backoff_max)
            continue
        connected_at = trio.current_time()
        await wait_disconnected(peer)
        if trio.current_time() - connected_at >= backoff_max:
            delay = backoff_min
        logger.info("lost %s; redial in %.2fs", short_id(peer), delay)
        await trio.sleep(delay)
        delay = min(delay * 2, backoff_max)


def parse_bootstrap(addrs: Sequence[str]) -> list[PeerAddress]:
    """Parse the configured bootstrap strings, failing with the offending value."""
    parsed: list[PeerAddress] = []
    for text in addrs:
        try:
            parsed.append(PeerAddress.parse(text))
        except ValueError as exc:
            raise TransportError(f"bad bootstrap address {text!r}: {exc}") from exc
    return parsed
