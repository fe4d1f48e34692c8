"""Negentropy range-based set reconciliation, protocol version 1 (0x61).

Sans-io implementation of the wire protocol specified by the hoytech/negentropy project
(docs/negentropy-protocol-v1.md). Messages produced here are byte-for-byte identical to the
reference implementations for the same inputs and frame size limit.

Items are ``(timestamp, id)`` pairs: a uint64 timestamp (``2**64 - 1`` is reserved as
"infinity") and a 32-byte id, ordered by timestamp, then by id bytes.

Typical use::

    client = Negentropy(VectorStorage.from_items(mine))
    msg = client.initiate()
    while msg is not None:
        reply = server.reconcile(msg)  # on the remote peer
        msg, have, need = client.reconcile_initiator(reply)
"""

from __future__ import annotations

import enum
import hashlib
import operator
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import accumulate, islice
from typing import NamedTuple, Protocol

__all__ = [
    "BUCKETS",
    "FINGERPRINT_SIZE",
    "FRAME_SIZE_MARGIN",
    "ID_LIST_THRESHOLD",
    "ID_SIZE",
    "INFINITY",
    "INFINITY_BOUND",
    "MAX_ID_LIST_ITEMS",
    "MAX_MESSAGE_BYTES",
    "MAX_RANGES_PER_MESSAGE",
    "MAX_VARINT_BYTES",
    "MIN_FRAME_SIZE_LIMIT",
    "PROTOCOL_VERSION",
    "Bound",
    "InvalidArgument",
    "Item",
    "MalformedMessage",
    "Mode",
    "Negentropy",
    "NegentropyError",
    "ProtocolStateError",
    "Range",
    "ReconcileResult",
    "State",
    "Storage",
    "UnsupportedProtocolVersion",
    "VectorStorage",
    "decode_message",
    "decode_varint",
    "encode_message",
    "encode_varint",
    "fingerprint_of",
    "minimal_bound",
]

PROTOCOL_VERSION = 0x61
"""Version byte of protocol v1; versions 0x60..0x6F are reserved for the protocol."""
_VERSION_RANGE = range(0x60, 0x70)
ID_SIZE = 32
FINGERPRINT_SIZE = 16
INFINITY = 2**64 - 1
"""Reserved timestamp meaning "infinity"; items may not use it."""
MAX_VARINT_BYTES = 10
"""A uint64 needs at most 10 base-128 digits; longer varints are rejected."""
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Default cap on the size of a message we accept from a peer."""
MAX_ID_LIST_ITEMS = MAX_MESSAGE_BYTES // ID_SIZE
"""Default cap on the number of ids declared in one IdList range."""
MAX_RANGES_PER_MESSAGE = 1 << 20
"""Default cap on the number of ranges in one incoming message (bounds CPU per message)."""
MIN_FRAME_SIZE_LIMIT = 4096
FRAME_SIZE_MARGIN = 200
"""Bytes the reference keeps free below frameSizeLimit before stopping range processing."""
BUCKETS = 16
ID_LIST_THRESHOLD = 2 * BUCKETS
"""Ranges with fewer items than this are sent as IdList instead of being split."""

_MOD = 1 << 256
_ZERO_ID = bytes(ID_SIZE)
_UINT64_MAX = 2**64 - 1


# --------------------------------------------------------------------------------------------
# Errors


class NegentropyError(Exception):
    """Root of all errors raised by this module."""


class MalformedMessage(NegentropyError):
    """The peer sent bytes that are not a valid message."""


class UnsupportedProtocolVersion(MalformedMessage):
    """The message uses a protocol version in 0x60..0x6F other than 0x61."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported negentropy protocol version byte 0x{version:02x}")
        self.version = version


class ProtocolStateError(NegentropyError):
    """A method was called in a state that does not allow it (local misuse)."""


class InvalidArgument(NegentropyError, ValueError):
    """A locally supplied argument is invalid (bad item, duplicate, bad frame size limit)."""


# --------------------------------------------------------------------------------------------
# Basic types


class Mode(enum.IntEnum):
    """Range mode on the wire."""

    SKIP = 0
    FINGERPRINT = 1
    ID_LIST = 2


class Item(NamedTuple):
    """A stored record: timestamp and 32-byte id. Tuple order is the protocol's sort order."""

    timestamp: int
    id: bytes


class Bound(NamedTuple):
    """Range bound: a timestamp and an id prefix of 0..32 bytes (zero-padded for comparison)."""

    timestamp: int
    id_prefix: bytes = b""

    def key(self) -> Item:
        """The item this bound compares equal to (prefix padded with zero bytes)."""
        return Item(self.timestamp, self.id_prefix.ljust(ID_SIZE, b"\0"))


INFINITY_BOUND = Bound(INFINITY, b"")


class Range(NamedTuple):
    """One decoded range: exclusive upper bound, mode and raw payload.

    The payload is empty for SKIP, 16 bytes for FINGERPRINT and the concatenated ids for
    ID_LIST.
    """

    upper_bound: Bound
    mode: Mode
    payload: bytes = b""

    def ids(self) -> list[bytes]:
        """Split an ID_LIST payload into 32-byte ids."""
        p = self.payload
        return [p[i : i + ID_SIZE] for i in range(0, len(p), ID_SIZE)]


# --------------------------------------------------------------------------------------------
# Encoding


def encode_varint(n: int) -> bytes:
    """Encode a non-negative integer as a big-endian base-128 varint (minimal length)."""
    if n < 0:
        raise InvalidArgument(f"varint must be non-negative, got {n}")
    digits = [n & 0x7F]
    n >>= 7
    while n:
        digits.append((n & 0x7F) | 0x80)
        n >>= 7
    digits.reverse()
    return bytes(digits)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a varint at ``offset``; return ``(value, next_offset)``.

    Raises MalformedMessage if truncated, longer than MAX_VARINT_BYTES or above 2**64-1.
    """
    value = 0
    end = len(data)
    for count in range(MAX_VARINT_BYTES):
        pos = offset + count
        if pos >= end:
            raise MalformedMessage("truncated varint")
        byte = data[pos]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if value > _UINT64_MAX:
                raise MalformedMessage("varint exceeds 64 bits")
            return value, pos + 1
    raise MalformedMessage(f"varint longer than {MAX_VARINT_BYTES} bytes")


_VARINT_CACHE = [encode_varint(i) for i in range(128)]


def _varint(n: int) -> bytes:
    return _VARINT_CACHE[n] if n < 128 else encode_varint(n)


class _BoundEncoder:
    """Encodes bounds with the per-message timestamp delta state."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def encode(self, bound: Bound) -> bytes:
        ts = bound.timestamp
        if ts == INFINITY:
            self._last = INFINITY
            head = b"\x00"
        else:
            delta = ts - self._last
            if delta < 0:
                raise ProtocolStateError("bounds must be encoded in ascending order")
            self._last = ts
            head = _varint(delta + 1)
        prefix = bound.id_prefix
        return head + _varint(len(prefix)) + prefix


def fingerprint_of(ids: Iterable[bytes]) -> bytes:
    """Fingerprint of a set of ids as defined by the spec (reference algorithm, O(n))."""
    total = 0
    count = 0
    for id_ in ids:
        total += int.from_bytes(id_, "little")
        count += 1
    return _fingerprint(total % _MOD, count)


def _fingerprint(sum_mod: int, count: int) -> bytes:
    data = sum_mod.to_bytes(ID_SIZE, "little") + _varint(count)
    return hashlib.sha256(data).digest()[:FINGERPRINT_SIZE]


def minimal_bound(prev: Item, curr: Item) -> Bound:
    """Shortest bound separating ``prev`` from the following item ``curr``."""
    if curr.timestamp != prev.timestamp:
        return Bound(curr.timestamp, b"")
    diff = int.from_bytes(curr.id, "big") ^ int.from_bytes(prev.id, "big")
    shared = (ID_SIZE * 8 - diff.bit_length()) // 8
    return Bound(curr.timestamp, curr.id[: shared + 1])


def encode_message(ranges: Iterable[Range]) -> bytes:
    """Encode a full v1 message (version byte followed by ranges)."""
    enc = _BoundEncoder()
    out = bytearray([PROTOCOL_VERSION])
    for rng in ranges:
        out += enc.encode(rng.upper_bound)
        out += _varint(int(rng.mode))
        if rng.mode is Mode.ID_LIST:
            if len(rng.payload) % ID_SIZE:
                raise InvalidArgument("IdList payload must be a multiple of 32 bytes")
            out += _varint(len(rng.payload) // ID_SIZE)
        elif rng.mode is Mode.FINGERPRINT and len(rng.payload) != FINGERPRINT_SIZE:
            raise InvalidArgument("fingerprint payload must be 16 bytes")
        out += rng.payload
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Decoding


def _check_header(data: bytes, max_message_bytes: int) -> None:
    """Validate size and version byte; raise before any range is looked at."""
    if len(data) > max_message_bytes:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds limit {max_message_bytes}")
    if not data:
        raise MalformedMessage("empty message (missing protocol version byte)")
    version = data[0]
    if version not in _VERSION_RANGE:
        raise MalformedMessage(f"invalid negentropy protocol version byte 0x{version:02x}")
    if version != PROTOCOL_VERSION:
        raise UnsupportedProtocolVersion(version)


def _iter_ranges(data: bytes, max_id_list_items: int, max_ranges: int) -> Iterator[Range]:
    """Lazily decode and validate the ranges after the version byte.

    Memory use is independent of the number of ranges; errors surface as MalformedMessage
    when the offending range is reached.
    """
    try:
        yield from _decode_ranges(data, max_id_list_items, max_ranges)
    except NegentropyError:
        raise
    except (IndexError, ValueError, OverflowError) as exc:  # defensive: never leak these
        raise MalformedMessage(f"undecodable message: {exc}") from exc


def _decode_ranges(data: bytes, max_id_list_items: int, max_ranges: int) -> Iterator[Range]:
    end = len(data)
    pos = 1
    last_ts = 0
    prev_ts = 0
    prev_padded = _ZERO_ID
    count = 0
    while pos < end:
        count += 1
        if count > max_ranges:
            raise MalformedMessage(f"message has more than {max_ranges} ranges")
        # Bound: encoded timestamp, prefix length, prefix. Single-byte varints take a fast path.
        byte = data[pos]
        if byte < 0x80:
            encoded, pos = byte, pos + 1
        else:
            encoded, pos = decode_varint(data, pos)
        # 0 is infinity; otherwise 1 + delta, added with saturation (as the reference does).
        ts = INFINITY if encoded == 0 else min(last_ts + encoded - 1, INFINITY)
        last_ts = ts
        if pos < end and data[pos] < 0x80:
            length, pos = data[pos], pos + 1
        else:
            length, pos = decode_varint(data, pos)
        if length > ID_SIZE:
            raise MalformedMessage(f"bound id prefix too long: {length} bytes")
        if pos + length > end:
            raise MalformedMessage("truncated bound id prefix")
        prefix = data[pos : pos + length]
        pos += length
        padded = prefix + _ZERO_ID[length:] if length else _ZERO_ID
        if ts < prev_ts or (ts == prev_ts and padded < prev_padded):
            raise MalformedMessage("range bounds are not in ascending order")
        prev_ts, prev_padded = ts, padded
        bound = Bound(ts, prefix)

        if pos < end and data[pos] < 0x80:
            raw_mode, pos = data[pos], pos + 1
        else:
            raw_mode, pos = decode_varint(data, pos)
        if raw_mode == Mode.SKIP:
            yield Range(bound, Mode.SKIP)
        elif raw_mode == Mode.FINGERPRINT:
            if pos + FINGERPRINT_SIZE > end:
                raise MalformedMessage("truncated fingerprint")
            yield Range(bound, Mode.FINGERPRINT, data[pos : pos + FINGERPRINT_SIZE])
            pos += FINGERPRINT_SIZE
        elif raw_mode == Mode.ID_LIST:
            n_ids, pos = decode_varint(data, pos)
            if n_ids > max_id_list_items:
                raise MalformedMessage(f"IdList declares {n_ids} ids, limit {max_id_list_items}")
            size = n_ids * ID_SIZE
            if pos + size > end:
                raise MalformedMessage(f"truncated IdList: {n_ids} ids declared")
            yield Range(bound, Mode.ID_LIST, data[pos : pos + size])
            pos += size
        else:
            raise MalformedMessage(f"unknown range mode {raw_mode}")


def decode_message(
    data: bytes,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_ranges: int = MAX_RANGES_PER_MESSAGE,
) -> list[Range]:
    """Decode and validate a complete message.

    Raises UnsupportedProtocolVersion for version bytes 0x60..0x6F other than 0x61 and
    MalformedMessage for anything else that is not a well-formed v1 message, including bounds
    that go backwards and messages, IdLists or range counts above the limits.
    """
    data = bytes(data)
    _check_header(data, max_message_bytes)
    return list(_iter_ranges(data, max_message_bytes // ID_SIZE, max_ranges))


# --------------------------------------------------------------------------------------------
# Storage


class Storage(Protocol):
    """Sorted, read-only view of one side's items, as used by the protocol."""

    def size(self) -> int:
        """Number of items."""
        ...

    def get_item(self, i: int) -> Item:
        """Item at sorted index ``i``."""
        ...

    def iterate(self, begin: int, end: int) -> Iterator[Item]:
        """Items with indices in ``[begin, end)``, in order."""
        ...

    def find_lower_bound(self, begin: int, end: int, bound: Bound) -> int:
        """First index in ``[begin, end)`` whose item is not less than ``bound`` (else end)."""
        ...

    def fingerprint(self, begin: int, end: int) -> bytes:
        """Fingerprint of the items with indices in ``[begin, end)``."""
        ...


_LITTLE_ENDIAN = partial(int.from_bytes, byteorder="little")


def _prefix_sums(ids: Iterable[bytes]) -> list[int]:
    """0, then the running sums of the ids read as little-endian integers: a range's
    fingerprint sum is the difference of two of them."""
    return [0, *accumulate(map(_LITTLE_ENDIAN, ids))]


class VectorStorage:
    """In-memory storage: insert items, then seal() to sort and freeze them.

    Sealing builds prefix sums of the ids so that fingerprint() is O(1).
    """

    __slots__ = ("_items", "_prefix", "_sealed")

    def __init__(self) -> None:
        self._items: list[tuple[int, bytes]] = []
        self._prefix: list[int] = []
        self._sealed = False

    @classmethod
    def from_items(cls, items: Iterable[tuple[int, bytes]]) -> VectorStorage:
        """Build and seal a storage from ``(timestamp, id)`` pairs.

        Pairs already sorted and unique (a store reads them in index order) are checked and
        summed in whole-list passes, several times faster than one insert each; any other
        input takes the item-by-item path, with its errors.
        """
        rows = list(items)
        fast = cls._sorted_unique(rows)
        if fast is not None:
            return fast
        storage = cls()
        for timestamp, id_ in rows:
            storage.insert(timestamp, id_)
        storage.seal()
        return storage

    @classmethod
    def _sorted_unique(cls, rows: list[tuple[int, bytes]]) -> VectorStorage | None:
        """The sealed storage of ``rows`` if they are well-formed, strictly increasing
        ``(int, bytes)`` pairs in range, else None."""
        if not all(type(r) is tuple and len(r) == 2 for r in rows):
            return None
        stamps = [r[0] for r in rows]
        ids = [r[1] for r in rows]
        if (set(map(type, stamps)) - {int} or set(map(type, ids)) - {bytes}
                or set(map(len, ids)) - {ID_SIZE}):
            return None
        if rows and not 0 <= stamps[0] <= stamps[-1] < INFINITY:
            return None
        if not all(map(operator.lt, rows, islice(rows, 1, None))):
            return None
        storage = cls()
        storage._items = rows  # plain tuples: made into Items only when read out
        storage._prefix = _prefix_sums(ids)
        storage._sealed = True
        return storage

    @property
    def sealed(self) -> bool:
        return self._sealed

    def insert(self, timestamp: int, id_: bytes) -> None:
        """Add an item; only allowed before seal()."""
        if self._sealed:
            raise ProtocolStateError("VectorStorage is sealed; cannot insert")
        if not 0 <= timestamp < INFINITY:
            raise InvalidArgument(f"timestamp out of range [0, 2**64-1): {timestamp}")
        if len(id_) != ID_SIZE:
            raise InvalidArgument(f"id must be {ID_SIZE} bytes, got {len(id_)}")
        self._items.append(Item(timestamp, bytes(id_)))

    def seal(self) -> None:
        """Sort the items, reject duplicates and precompute fingerprint prefix sums."""
        if self._sealed:
            raise ProtocolStateError("VectorStorage already sealed")
        items = self._items
        items.sort()
        for i in range(1, len(items)):
            if items[i - 1] == items[i]:
                raise InvalidArgument(f"duplicate item inserted: {items[i]!r}")
        self._prefix = _prefix_sums(item[1] for item in items)
        self._sealed = True

    def _check(self, begin: int, end: int) -> None:
        if not self._sealed:
            raise ProtocolStateError("VectorStorage is not sealed")
        if not 0 <= begin <= end <= len(self._items):
            raise ProtocolStateError(f"bad range [{begin}, {end}) for {len(self._items)} items")

    def size(self) -> int:
        if not self._sealed:
            raise ProtocolStateError("VectorStorage is not sealed")
        return len(self._items)

    def get_item(self, i: int) -> Item:
        self._check(i, i + 1)
        return Item._make(self._items[i])

    def iterate(self, begin: int, end: int) -> Iterator[Item]:
        self._check(begin, end)
        return map(Item._make, self._items[begin:end])

    def find_lower_bound(self, begin: int, end: int, bound: Bound) -> int:
        self._check(begin, end)
        return bisect_left(self._items, bound.key(), begin, end)

    def fingerprint(self, begin: int, end: int) -> bytes:
        self._check(begin, end)
        return _fingerprint((self._prefix[end] - self._prefix[begin]) % _MOD, end - begin)


# --------------------------------------------------------------------------------------------
# Protocol state machine


class State(enum.Enum):
    """Role of a Negentropy instance."""

    IDLE = "idle"
    INITIATOR = "initiator"
    RESPONDER = "responder"
    DONE = "done"


class ReconcileResult(NamedTuple):
    """Initiator result: next message (None when reconciliation is complete) and id deltas."""

    next_message: bytes | None
    have_ids: list[bytes]
    need_ids: list[bytes]


_VERSION_ONLY = bytes([PROTOCOL_VERSION])


class Negentropy:
    """One side of a reconciliation session over a sealed Storage.

    The initiator calls initiate() once, then reconcile_initiator() on every reply until it
    returns ``next_message=None``. The responder calls reconcile() on every incoming message.
    Messages are never larger than ``frame_size_limit`` bytes unless it is 0 (no limit).
    With a frame size limit, an id may be reported in have/need more than once.
    """

    def __init__(
        self,
        storage: Storage,
        frame_size_limit: int = 0,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_ranges: int = MAX_RANGES_PER_MESSAGE,
    ) -> None:
        if frame_size_limit != 0 and frame_size_limit < MIN_FRAME_SIZE_LIMIT:
            raise InvalidArgument(
                f"frame_size_limit must be 0 or >= {MIN_FRAME_SIZE_LIMIT}, got {frame_size_limit}"
            )
        if max_message_bytes < 1 or max_ranges < 1:
            raise InvalidArgument("max_message_bytes and max_ranges must be positive")
        self._storage = storage
        self.frame_size_limit = frame_size_limit
        self.max_message_bytes = max_message_bytes
        self.max_ranges = max_ranges
        self._state = State.IDLE

    @property
    def state(self) -> State:
        return self._state

    def _require(self, method: str, *allowed: State) -> None:
        if self._state not in allowed:
            want = " or ".join(s.name for s in allowed)
            raise ProtocolStateError(
                f"{method}() not allowed in state {self._state.name} (requires {want})"
            )

    def _ranges(self, message: bytes) -> Iterator[Range]:
        """Check the header now; decode the ranges lazily while they are processed."""
        data = bytes(message)
        _check_header(data, self.max_message_bytes)
        return _iter_ranges(data, self.max_message_bytes // ID_SIZE, self.max_ranges)

    def initiate(self) -> bytes:
        """Start a session as initiator; return the first message."""
        self._require("initiate", State.IDLE)
        size = self._storage.size()
        out = _VERSION_ONLY + self._split_range(0, size, INFINITY_BOUND, _BoundEncoder())
        self._state = State.INITIATOR
        return out

    def reconcile(self, message: bytes) -> bytes:
        """Responder: process a message from the initiator and return the reply.

        A message with an unknown protocol version in 0x60..0x6F gets the single byte 0x61 as
        reply (version negotiation, as in the reference); other bad input raises
        MalformedMessage.
        """
        self._require("reconcile", State.IDLE, State.RESPONDER)
        self._state = State.RESPONDER
        try:
            ranges = self._ranges(message)
        except UnsupportedProtocolVersion:
            return _VERSION_ONLY
        return self._process(ranges, None, None)

    def reconcile_initiator(self, message: bytes) -> ReconcileResult:
        """Initiator: process a reply; return the next message (or None) and id deltas.

        ``have_ids`` are ids we hold that the peer lacks; ``need_ids`` the reverse.
        """
        self._require("reconcile_initiator", State.INITIATOR)
        ranges = self._ranges(message)
        have: list[bytes] = []
        need: list[bytes] = []
        out = self._process(ranges, have, need)
        if len(out) == 1:
            self._state = State.DONE
            return ReconcileResult(None, have, need)
        return ReconcileResult(out, have, need)

    def _exceeded(self, n: int) -> bool:
        limit = self.frame_size_limit
        return bool(limit) and n > limit - FRAME_SIZE_MARGIN

    def _process(
        self, ranges: Iterator[Range], have: list[bytes] | None, need: list[bytes] | None
    ) -> bytes:
        """Build the reply to ``ranges``; initiator iff ``have`` is not None.

        Ranges left unprocessed because the frame is full are still decoded, so malformed
        input is always rejected whatever the frame size limit.
        """
        storage = self._storage
        enc = _BoundEncoder()
        full = bytearray(_VERSION_ONLY)
        size = storage.size()
        prev_bound = Bound(0, b"")
        prev_index = 0
        skip = False

        for rng in ranges:
            out = bytearray()
            curr_bound = rng.upper_bound
            lower = prev_index
            upper = storage.find_lower_bound(prev_index, size, curr_bound)

            if rng.mode is Mode.SKIP:
                skip = True
            elif rng.mode is Mode.FINGERPRINT:
                if rng.payload == storage.fingerprint(lower, upper):
                    skip = True
                else:
                    if skip:
                        skip = False
                        out += enc.encode(prev_bound) + _varint(Mode.SKIP)
                    out += self._split_range(lower, upper, curr_bound, enc)
            elif have is not None and need is not None:  # ID_LIST, initiator side
                skip = True
                theirs = dict.fromkeys(rng.ids())
                for item in storage.iterate(lower, upper):
                    if item.id in theirs:
                        del theirs[item.id]
                    else:
                        have.append(item.id)
                need.extend(theirs)
            else:  # ID_LIST, responder side: reply with our ids for the range
                if skip:
                    skip = False
                    out += enc.encode(prev_bound) + _varint(Mode.SKIP)
                response = bytearray()
                count = 0
                end_bound = curr_bound
                for index, item in enumerate(storage.iterate(lower, upper), lower):
                    if self._exceeded(len(full) + len(response)):
                        end_bound = Bound(item.timestamp, item.id)
                        upper = index  # the remainder is covered by the final fingerprint
                        break
                    response += item.id
                    count += 1
                out += enc.encode(end_bound) + _varint(Mode.ID_LIST) + _varint(count)
                out += response
                full += out
                out = bytearray()

            if self._exceeded(len(full) + len(out)):
                # Frame full: drop this range's output, cover the rest with one fingerprint.
                full += enc.encode(INFINITY_BOUND) + _varint(Mode.FINGERPRINT)
                full += storage.fingerprint(upper, size)
                for _ in ranges:  # validate the rest of the message
                    pass
                break
            full += out
            prev_index = upper
            prev_bound = curr_bound

        return bytes(full)

    def _split_range(self, lower: int, upper: int, upper_bound: Bound, enc: _BoundEncoder) -> bytes:
        """Encode ``[lower, upper)`` as one IdList or BUCKETS fingerprint sub-ranges."""
        storage = self._storage
        n = upper - lower
        out = bytearray()
        if n < ID_LIST_THRESHOLD:
            out += enc.encode(upper_bound) + _varint(Mode.ID_LIST) + _varint(n)
            for item in storage.iterate(lower, upper):
                out += item.id
            return bytes(out)

        per_bucket, with_extra = divmod(n, BUCKETS)
        curr = lower
        for i in range(BUCKETS):
            bucket = per_bucket + (1 if i < with_extra else 0)
            fp = storage.fingerprint(curr, curr + bucket)
            curr += bucket
            if curr == upper:
                bound = upper_bound
            else:
                bound = minimal_bound(storage.get_item(curr - 1), storage.get_item(curr))
            out += enc.encode(bound) + _varint(Mode.FINGERPRINT) + fp
        return bytes(out)
