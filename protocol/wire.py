"""Peer-to-peer wire messages: gossip batches and the sync session, sans-io.

Every frame is one CBOR map with ``v`` (version, 1) and ``t`` (type). Events travel as their
canonical JSON bytes, so what a peer signed is what we verify. Frames are size-checked before
decoding, events are parsed and their signatures checked by :func:`decode_events`.

Sync session over one stream (``/pith/sync/1.0.0``), initiator I and responder R::

    I: hello{prefixes}            R: hello{prefixes}
    I: neg{m}                     R: neg{m}            (until I's Negentropy is done)
    I: get{ids}                   R: events{events}... then end{count}   (repeat, bounded;
                                  up to MAX_GETS_IN_FLIGHT gets pipelined, answered in order)
    I: put{events}                R: ack{new, duplicate, rejected}       (repeat, bounded;
                                  up to MAX_PUTS_IN_FLIGHT puts before their acks)
    I: done                       R: done

A stream that ends without ``done`` (or ``end`` for a ``get``) is a failure, never a clean
end. The session machine below keeps its transitions in one table; an input with no entry
raises :class:`UnexpectedMessage` naming the state and the input.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from .errors import DecodeError, InputError, ProtocolError, TooLarge
from .events import MAX_EVENT_BYTES, Event, event_from_bytes

__all__ = [
    "GOSSIP_VERSION",
    "MAX_FRAME_BYTES",
    "MAX_GETS_IN_FLIGHT",
    "MAX_GOSSIP_BYTES",
    "MAX_GOSSIP_EVENTS",
    "MAX_IDS_PER_GET",
    "MAX_PUTS_IN_FLIGHT",
    "Role",
    "SessionMachine",
    "SyncState",
    "UnexpectedMessage",
    "decode_events",
    "decode_frame",
    "decode_gossip",
    "encode_frame",
    "encode_gossip",
    "prefixes_match",
]

WIRE_VERSION = 1
GOSSIP_VERSION = 1
#: One frame on a stream, and one gossip message.
MAX_FRAME_BYTES = 4 << 20
MAX_GOSSIP_BYTES = 1 << 20
MAX_GOSSIP_EVENTS = 5000
MAX_IDS_PER_GET = 2000
MAX_EVENTS_PER_FRAME = 2000
MAX_PREFIXES = 64
_B32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class UnexpectedMessage(ProtocolError):
    """A peer sent a message the session does not allow in its current state."""

    def __init__(self, state: SyncState, kind: str) -> None:
        super().__init__(f"unexpected {kind!r} in state {state.name}")
        self.state = state
        self.kind = kind


def _refuse_semantic_tag(decoder: Any) -> Any:
    raise cbor2.CBORDecodeError("a CBOR semantic tag, which this protocol does not use")


#: CBOR semantic tags cbor2 would decode into Python objects (dates, decimals, rationals, IP
#: addresses, UUIDs, regular expressions, shared values, string references, sets, the
#: self-describe mark). Our messages use none of them, and some of cbor2's decoders (6.3)
#: format a peer's value into their error message, which fails for an integer of more than
#: 4,300 digits and is reported as an unraisable exception: refused before their content is
#: decoded. Bignums (tags 2 and 3) decode to ints, which every field's check bounds.
REFUSED_SEMANTIC_TAGS = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261,
                         262, 263, 266, 1004, 55799)
_SEMANTIC_DECODERS = {tag: _refuse_semantic_tag for tag in REFUSED_SEMANTIC_TAGS}


def cbor_loads(data: bytes) -> Any:
    """``cbor2.loads`` for a peer's bytes: plain CBOR only (no semantic tags but bignums).
    Raises cbor2's and Python's decoding errors; :func:`_cbor_loads` types them."""
    return cbor2.loads(data, semantic_decoders=_SEMANTIC_DECODERS)


def _cbor_loads(data: bytes, limit: int) -> Any:
    if len(data) > limit:
        raise TooLarge("frame_too_large", f"frame of {len(data)} bytes exceeds {limit}")
    try:
        return cbor_loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
            MemoryError) as exc:
        raise DecodeError("bad_cbor", f"malformed CBOR: {type(exc).__name__}") from exc


def _describe(value: Any) -> str:
    """A short description of a peer's value that cannot itself fail (huge ints, bytes)."""
    if isinstance(value, str):
        return repr(value[:20])
    return f"of type {type(value).__name__}"


def _bytes_list(value: Any, limit: int, item_limit: int, name: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > limit:
        raise DecodeError("bad_frame", f"{name} must be a list of at most {limit}")
    if not all(isinstance(x, bytes) and len(x) <= item_limit for x in value):
        raise DecodeError("bad_frame", f"{name} holds items that are not bounded byte strings")
    return value


def prefixes_match(suffix: str, prefixes: Iterable[str]) -> bool:
    """True when the record (by Pith suffix) is in scope; no prefixes means everything."""
    prefixes = tuple(prefixes)
    return not prefixes or any(suffix.startswith(p) for p in prefixes)


def _prefixes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_PREFIXES or not all(
            isinstance(p, str) and 0 < len(p) <= 26 and set(p) <= _B32 for p in value):
        raise DecodeError("bad_frame", "prefixes must be a short list of base32 prefixes")
    return tuple(value)


# -- frames --------------------------------------------------------------------------------
_FIELDS: Mapping[str, Mapping[str, str]] = {
    "hello": {"prefixes": "prefixes"},
    "neg": {"m": "bytes"},
    "get": {"ids": "ids"},
    "events": {"events": "events"},
    "end": {"count": "int"},
    "put": {"events": "events"},
    "ack": {"new": "int", "duplicate": "int", "rejected": "int"},
    "done": {},
    "error": {"reason": "str"},
}


@dataclass(frozen=True, slots=True)
class Frame:
    kind: str
    fields: Mapping[str, Any]


def encode_frame(kind: str, **fields: Any) -> bytes:
    if kind not in _FIELDS or set(fields) != set(_FIELDS[kind]):
        raise ValueError(f"bad frame {kind} {sorted(fields)}")
    data: bytes = cbor2.dumps({"v": WIRE_VERSION, "t": kind, **fields})
    if len(data) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return data


def decode_frame(data: bytes) -> Frame:
    obj = _cbor_loads(data, MAX_FRAME_BYTES)
    if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION:
        raise DecodeError("bad_version", "not a version-1 sync frame")
    kind = obj.get("t")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise DecodeError("bad_frame", f"unknown frame type {_describe(kind)}")
    spec = _FIELDS[kind]
    if set(obj) != {"v", "t", *spec}:
        raise DecodeError("bad_frame", f"{kind} frame has wrong fields")
    out: dict[str, Any] = {}
    for name, typ in spec.items():
        value = obj[name]
        if typ == "prefixes":
            out[name] = _prefixes(value)
        elif typ == "bytes":
            if not isinstance(value, bytes):
                raise DecodeError("bad_frame", f"{name} must be bytes")
            out[name] = value
        elif typ == "ids":
            ids = _bytes_list(value, MAX_IDS_PER_GET, 32, name)
            if any(len(i) != 32 for i in ids):
                raise DecodeError("bad_frame", "ids are 32 bytes")
            out[name] = ids
        elif typ == "events":
            out[name] = _bytes_list(value, MAX_EVENTS_PER_FRAME, MAX_EVENT_BYTES, name)
        elif typ == "int":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 40:
                raise DecodeError("bad_frame", f"{name} must be a small non-negative integer")
            out[name] = value
        else:
            if not isinstance(value, str) or len(value) > 200:
                raise DecodeError("bad_frame", f"{name} must be a short string")
            out[name] = value
    return Frame(kind, out)


def decode_events(raw: Iterable[bytes]) -> list[Event]:
    """Parse each event's canonical JSON bytes; the first bad one raises InputError."""
    out = []
    for data in raw:
        out.append(event_from_bytes(data, limit=MAX_EVENT_BYTES))
    return out


# -- gossip --------------------------------------------------------------------------------
def encode_gossip(events: Iterable[bytes]) -> bytes:
    """A gossip message: a batch of events' canonical bytes."""
    data: bytes = cbor2.dumps({"v": GOSSIP_VERSION, "events": list(events)})
    if len(data) > MAX_GOSSIP_BYTES:
        raise ValueError(f"gossip batch of {len(data)} bytes exceeds {MAX_GOSSIP_BYTES}")
    return data


def decode_gossip(data: bytes) -> list[bytes]:
    obj = _cbor_loads(data, MAX_GOSSIP_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"v", "events"} or obj["v"] != GOSSIP_VERSION:
        raise DecodeError("bad_gossip", "not a version-1 gossip batch")
    events = _bytes_list(obj["events"], MAX_GOSSIP_EVENTS, MAX_EVENT_BYTES, "events")
    if not events:
        raise DecodeError("bad_gossip", "empty gossip batch")
    return events


# -- the session state machine -------------------------------------------------------------
class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class SyncState(enum.Enum):
    HELLO = enum.auto()        # waiting for the peer's hello
    RECONCILING = enum.auto()  # Negentropy rounds
    TRANSFER = enum.auto()     # get/events/end and put/ack
    RECEIVING = enum.auto()    # initiator: inside a get's events ... end
    DONE = enum.auto()


#: (role, state, received kind) -> next state
_TRANSITIONS: Mapping[tuple[Role, SyncState, str], SyncState] = {
    (Role.INITIATOR, SyncState.HELLO, "hello"): SyncState.RECONCILING,
    (Role.INITIATOR, SyncState.RECONCILING, "neg"): SyncState.RECONCILING,
    (Role.INITIATOR, SyncState.RECEIVING, "events"): SyncState.RECEIVING,
    (Role.INITIATOR, SyncState.RECEIVING, "end"): SyncState.TRANSFER,
    (Role.INITIATOR, SyncState.TRANSFER, "ack"): SyncState.TRANSFER,
    (Role.INITIATOR, SyncState.TRANSFER, "done"): SyncState.DONE,
    (Role.RESPONDER, SyncState.HELLO, "hello"): SyncState.RECONCILING,
    (Role.RESPONDER, SyncState.RECONCILING, "neg"): SyncState.RECONCILING,
    (Role.RESPONDER, SyncState.RECONCILING, "get"): SyncState.TRANSFER,
    (Role.RESPONDER, SyncState.RECONCILING, "put"): SyncState.TRANSFER,
    (Role.RESPONDER, SyncState.RECONCILING, "done"): SyncState.DONE,
    (Role.RESPONDER, SyncState.TRANSFER, "get"): SyncState.TRANSFER,
    (Role.RESPONDER, SyncState.TRANSFER, "put"): SyncState.TRANSFER,
    (Role.RESPONDER, SyncState.TRANSFER, "done"): SyncState.DONE,
}


#: ``get`` requests an initiator may have outstanding at once (the responder answers them in
#: order, so fetching overlaps with ingesting what already arrived).
MAX_GETS_IN_FLIGHT = 4
#: ``put`` frames an initiator may send before reading their acks (the responder ingests
#: them while it reads the next, and reads no further while this many wait).
MAX_PUTS_IN_FLIGHT = 4


class SessionMachine:
    """Which frame may come next. ``receive`` returns the frame or raises.

    An initiator may pipeline up to :data:`MAX_GETS_IN_FLIGHT` ``get`` requests; each is
    answered by ``events`` frames and one ``end``, in the order the gets were sent.
    """

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = SyncState.HELLO
        self.gets_in_flight = 0

    def receive(self, data: bytes) -> Frame:
        frame = decode_frame(data)
        if frame.kind == "error":
            raise InputError("peer_error", f"peer reported: {frame.fields['reason']}")
        nxt = _TRANSITIONS.get((self.role, self.state, frame.kind))
        if nxt is None:
            raise UnexpectedMessage(self.state, frame.kind)
        if self.state is SyncState.RECEIVING and frame.kind == "end":
            self.gets_in_flight -= 1
            if self.gets_in_flight:
                nxt = SyncState.RECEIVING
        self.state = nxt
        return frame

    def sent_get(self) -> None:
        """Initiator: a get was sent; events and an end must follow (after those of the
        gets still in flight)."""
        if self.role is not Role.INITIATOR or self.state not in (
                SyncState.RECONCILING, SyncState.TRANSFER, SyncState.RECEIVING):
            raise ProtocolError(f"cannot send get in state {self.state.name}")
        if self.gets_in_flight >= MAX_GETS_IN_FLIGHT:
            raise ProtocolError(f"more than {MAX_GETS_IN_FLIGHT} gets in flight")
        self.gets_in_flight += 1
        self.state = SyncState.RECEIVING

    def reconciled(self) -> None:
        """Initiator: Negentropy finished; transfers may start."""
        if self.role is not Role.INITIATOR or self.state is not SyncState.RECONCILING:
            raise ProtocolError(f"cannot finish reconciling in state {self.state.name}")
        self.state = SyncState.TRANSFER
