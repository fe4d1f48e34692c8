"""Fuzzing what peers send: sync frames, gossip batches, events, Negentropy, the validator.

Seeds: valid frames of every type from ``encode_frame``, gossip batches of synthetic events,
and the messages of a real Negentropy reconciliation (frame size limit 4096, several rounds).
Inputs are random bytes, random CBOR values, the seeds mutated byte by byte, and the seeds'
decoded maps with fields deleted, renamed or swapped for other CBOR values (huge integers,
tags, nesting).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pithnode.node.gossip import Gossip
from pithnode.node.memory_transport import MemoryNetwork
from pithnode.node.synth import SynthConfig, synth_keys, synth_record
from pithnode.node.transport import PeerId, TransportConfig
from pithnode.protocol.errors import InputError, ProtocolError
from pithnode.protocol.events import MAX_EVENT_BYTES
from pithnode.protocol.ingest import accept, sync_item
from pithnode.protocol.negentropy import (
    ID_SIZE,
    INFINITY,
    Bound,
    Mode,
    Negentropy,
    NegentropyError,
    Range,
    VectorStorage,
    decode_message,
    encode_message,
    encode_varint,
)
from pithnode.protocol.wire import (
    MAX_GOSSIP_EVENTS,
    Role,
    SessionMachine,
    SyncState,
    UnexpectedMessage,
    decode_events,
    decode_frame,
    decode_gossip,
    encode_frame,
    encode_gossip,
)
from tests.fuzz import (
    EXTRA_CHECKS_BYTES,
    Target,
    cbor_values,
    check,
    corpus_cases,
    fuzz_settings,
    mutated_bytes,
    mutated_tree,
    peak_allocation,
    replay,
)
from tests.mem_store import MemStore

KEYS = synth_keys(2)
SPEC = KEYS.spec()
RECORDS = [synth_record(KEYS, i, SynthConfig(seed=2)) for i in range(3)]
RAW = [e.canonical_bytes() for r in RECORDS for e in r.events]
IDS = [sync_item(e)[1] for r in RECORDS for e in r.events]

# A reconciliation transcript: client B (50 items of its own) against server A (300 items).
_rng = random.Random(7)
_ITEMS = [(1_767_225_600 + _rng.randrange(2000), _rng.randbytes(ID_SIZE)) for _ in range(350)]
FRAME_LIMIT = 4096
STORE_A = VectorStorage.from_items(_ITEMS[:300])
STORE_B = VectorStorage.from_items(_ITEMS[250:])


def _transcript() -> list[bytes]:
    client, server = Negentropy(STORE_B, FRAME_LIMIT), Negentropy(STORE_A, FRAME_LIMIT)
    msgs = []
    msg: bytes | None = client.initiate()
    while msg is not None:
        reply = server.reconcile(msg)
        msgs += [msg, reply]
        msg = client.reconcile_initiator(reply).next_message
    return msgs


NEG_MESSAGES = _transcript()
FRAMES = [
    encode_frame("hello", prefixes=("AB", "7")), encode_frame("hello", prefixes=()),
    *(encode_frame("neg", m=m) for m in NEG_MESSAGES[:3]),
    encode_frame("get", ids=IDS[:5]), encode_frame("events", events=RAW[:4]),
    encode_frame("end", count=4), encode_frame("put", events=RAW[4:6]),
    encode_frame("ack", new=1, duplicate=0, rejected=2), encode_frame("done"),
    encode_frame("error", reason="busy"),
]
FRAME_OBJS: list[Any] = [cbor2.loads(f) for f in FRAMES]
GOSSIP = [encode_gossip(RAW[:1]), encode_gossip(RAW[:6]), encode_gossip(RAW)]
GOSSIP_OBJS: list[Any] = [cbor2.loads(g) for g in GOSSIP]


def _cbor(data: bytes) -> Any:
    """The corpus form of a structured target is CBOR; None when it does not decode."""
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return None


# ---------------------------------------------------------------------------- targets


def run_decode_frame(data: bytes) -> object:
    frame = decode_frame(data)
    if len(data) <= EXTRA_CHECKS_BYTES:
        again = decode_frame(encode_frame(frame.kind, **frame.fields))
        assert again == frame, (frame, again)
    return frame


def run_decode_gossip(data: bytes) -> object:
    events = decode_gossip(data)
    assert 0 < len(events) <= MAX_GOSSIP_EVENTS
    assert all(isinstance(e, bytes) and len(e) <= MAX_EVENT_BYTES for e in events)
    return events


def run_decode_events(data: bytes) -> object:
    raw = _cbor(data)
    if not isinstance(raw, list) or not all(isinstance(x, bytes) for x in raw):
        return None
    return decode_events(raw)


#: Items of a session script besides frames: the initiator's own moves.
SENT_GET, RECONCILED = 0, 1


def run_session(data: bytes) -> object:
    """CBOR ``[initiator?, [frame bytes | SENT_GET | RECONCILED, ...]]``."""
    script = _cbor(data)
    if not (isinstance(script, list) and len(script) == 2 and isinstance(script[1], list)):
        return None
    machine = SessionMachine(Role.INITIATOR if script[0] else Role.RESPONDER)
    for item in script[1]:
        before = machine.state
        try:
            if isinstance(item, bytes):
                machine.receive(item)
            elif item == SENT_GET:
                machine.sent_get()
            elif item == RECONCILED:
                machine.reconciled()
        except (InputError, UnexpectedMessage):
            assert machine.state is before  # a rejected frame moves nothing
        except ProtocolError:
            assert not isinstance(item, bytes)  # only our own moves may be refused so
            assert machine.state is before
        assert isinstance(machine.state, SyncState)
    return machine.state


def run_negentropy_decode(data: bytes) -> object:
    ranges = decode_message(data)
    if len(data) <= EXTRA_CHECKS_BYTES:  # re-encoding round trip
        assert decode_message(encode_message(ranges)) == ranges
    return ranges


def run_negentropy_responder(data: bytes) -> object:
    reply = Negentropy(STORE_A, FRAME_LIMIT).reconcile(data)
    assert len(reply) <= FRAME_LIMIT, len(reply)
    decode_message(reply)  # we answer with well-formed messages only
    return reply


def run_negentropy_initiator(data: bytes) -> object:
    client = Negentropy(STORE_B, FRAME_LIMIT)
    client.initiate()
    result = client.reconcile_initiator(data)
    if result.next_message is not None:
        assert len(result.next_message) <= FRAME_LIMIT, len(result.next_message)
        decode_message(result.next_message)
    return result


class _Clock:
    """A clock for the token buckets: 10 ms pass per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


GOSSIP_ENGINE = Gossip(MemoryNetwork().create(config=TransportConfig(listen_addrs=("/memory/0",))),
                       MemStore(SPEC), SPEC, prefixes=(), max_batch_events=200,
                       max_batch_bytes=256 << 10, flush_interval_s=0.05, rate_per_signer=200.0,
                       clock=_Clock())
PEER = PeerId("12D3KooWFuzzPeer")


def run_gossip_validate(data: bytes) -> object:
    ok = GOSSIP_ENGINE.validate(PEER, data)
    assert isinstance(ok, bool)
    if ok:
        assert all(accept(e, SPEC) is None for e in decode_events(decode_gossip(data)))
    return ok


DECODE_FRAME = Target("decode_frame", run_decode_frame, (InputError,),
                      known_bugs=())
DECODE_GOSSIP = Target("decode_gossip", run_decode_gossip, (InputError,))
DECODE_EVENTS = Target("decode_events", run_decode_events, (InputError,))
SESSION = Target("session_machine", run_session, (), known_bugs=())
NEG_DECODE = Target("negentropy_decode", run_negentropy_decode, (NegentropyError,))
NEG_RESPONDER = Target("negentropy_responder", run_negentropy_responder, (NegentropyError,))
NEG_INITIATOR = Target("negentropy_initiator", run_negentropy_initiator, (NegentropyError,))
GOSSIP_VALIDATE = Target("gossip_validate", run_gossip_validate, ())
TARGETS = (DECODE_FRAME, DECODE_GOSSIP, DECODE_EVENTS, SESSION, NEG_DECODE, NEG_RESPONDER,
           NEG_INITIATOR, GOSSIP_VALIDATE)


# ---------------------------------------------------------------------------- inputs


def _scrub(value: Any) -> Any:
    """CBOR text cannot hold lone surrogates: such strings become byte strings."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _scrub(value.value))
    return value


def cbor_bytes(value: Any) -> bytes:
    try:
        return cbor2.dumps(value)
    except UnicodeEncodeError:
        return cbor2.dumps(_scrub(value))


frame_bytes = st.one_of(
    st.binary(max_size=256),
    cbor_values().map(cbor_bytes),
    mutated_bytes(FRAMES),
    mutated_tree(FRAME_OBJS, cbor_values(6)).map(cbor_bytes),
    st.sampled_from(FRAMES),
)
gossip_bytes = st.one_of(
    st.binary(max_size=256),
    cbor_values().map(cbor_bytes),
    mutated_bytes(GOSSIP, max_ops=2),
    mutated_tree(GOSSIP_OBJS, cbor_values(6)).map(cbor_bytes),
    st.lists(mutated_bytes(RAW, max_ops=2) | st.sampled_from(RAW), min_size=1,
             max_size=8).map(encode_gossip),
    st.sampled_from(GOSSIP),
)
event_lists = st.lists(
    st.sampled_from(RAW) | mutated_bytes(RAW, max_ops=3) | st.binary(max_size=64),
    max_size=6).map(cbor_bytes)
session_scripts = st.tuples(
    st.booleans(),
    st.lists(st.sampled_from(FRAMES) | frame_bytes | st.sampled_from((SENT_GET, RECONCILED)),
             max_size=12),
).map(lambda s: cbor_bytes([s[0], s[1]]))


@st.composite
def range_lists(draw: st.DrawFn) -> bytes:
    """Ranges encoded by the reference encoder: ascending bounds, any modes and payloads."""
    ts = sorted(draw(st.lists(st.integers(0, 2**64 - 2) | st.integers(1_767_225_600,
                                                                      1_767_227_600),
                              max_size=20)))
    ranges = []
    for t in ts:
        prefix = draw(st.binary(max_size=ID_SIZE))
        mode = draw(st.sampled_from(Mode))
        payload = b""
        if mode is Mode.FINGERPRINT:
            payload = draw(st.binary(min_size=16, max_size=16))
        elif mode is Mode.ID_LIST:
            payload = b"".join(draw(st.lists(st.sampled_from([i for _, i in _ITEMS])
                                             | st.binary(min_size=ID_SIZE, max_size=ID_SIZE),
                                             max_size=40)))
        ranges.append(Range(Bound(t, prefix), mode, payload))
    if draw(st.booleans()):
        ranges.append(Range(Bound(INFINITY), draw(st.sampled_from(Mode)), b""))
    try:
        return encode_message(ranges)
    except NegentropyError:  # e.g. equal timestamps with prefixes out of order
        return encode_message([])


neg_bytes = st.one_of(
    st.binary(max_size=256),
    st.binary(max_size=256).map(lambda b: b"\x61" + b),
    mutated_bytes(NEG_MESSAGES),
    range_lists(),
    st.sampled_from(NEG_MESSAGES),
)


# ---------------------------------------------------------------------------- properties


@fuzz_settings(300)
@given(frame_bytes)
def test_decode_frame(data: bytes) -> None:
    check(DECODE_FRAME, data)


@fuzz_settings(300)
@given(gossip_bytes)
def test_decode_gossip(data: bytes) -> None:
    check(DECODE_GOSSIP, data)


@fuzz_settings(200)
@given(event_lists)
def test_decode_events(data: bytes) -> None:
    check(DECODE_EVENTS, data)


@fuzz_settings(200)
@given(session_scripts)
def test_session_machine(data: bytes) -> None:
    check(SESSION, data)


@fuzz_settings(300)
@given(neg_bytes)
def test_negentropy_decode(data: bytes) -> None:
    check(NEG_DECODE, data)


@fuzz_settings(200)
@given(neg_bytes)
def test_negentropy_responder(data: bytes) -> None:
    check(NEG_RESPONDER, data)


@fuzz_settings(200)
@given(neg_bytes)
def test_negentropy_initiator(data: bytes) -> None:
    check(NEG_INITIATOR, data)


@fuzz_settings(150)
@given(gossip_bytes)
def test_gossip_validate(data: bytes) -> None:
    check(GOSSIP_VALIDATE, data)


def test_seeds_are_valid() -> None:
    assert len(NEG_MESSAGES) >= 4  # several rounds under the frame limit
    for f in FRAMES:
        decode_frame(f)
    for g in GOSSIP:
        assert GOSSIP_ENGINE.validate(PEER, g)


@pytest.mark.parametrize(("target", "path"), corpus_cases(TARGETS))
def test_corpus(target: Target, path: Path) -> None:
    replay(target, path)


# ---------------------------------------------------------------------------- big inputs

MIB = 1 << 20


def _array(unit: bytes, size: int = MIB) -> bytes:
    n = (size - 5) // len(unit)
    return b"\x9a" + n.to_bytes(4, "big") + unit * n


BIG_CBOR = {
    "zeros": _array(b"\x00"),
    "empty_maps": _array(b"\xa0"),
    "tagged_maps": _array(b"\xc6\xa0"),
    "byte_strings": _array(b"\x41\x00"),
    "one_string": b"\x5a" + (MIB - 5).to_bytes(4, "big") + b"\x00" * (MIB - 5),
    "nested": b"\x9f" * MIB,
    "frame_of_ids": encode_frame("get", ids=[bytes(32)] * 2000) + b"\x00" * (MIB - 70_000),
    "random": bytes(range(256)) * (MIB // 256),
}
#: Peak bytes per input byte for CBOR. Measured worst: 97 (tagged empty maps: a CBORTag and
#: a dict per 2 bytes); a 4 MiB sync frame can so cost ~400 MB before it is rejected.
CBOR_FACTOR = 128
#: Negentropy messages decode lazily inside reconcile; decode_message builds a list of
#: Range tuples (~45 bytes per 3-byte SKIP range).
NEG_FACTOR = 64


@pytest.mark.parametrize(("target", "shape"), [
    *((DECODE_FRAME, s) for s in sorted(BIG_CBOR)),
    *((DECODE_GOSSIP, s) for s in ("byte_strings", "nested")),
    *((GOSSIP_VALIDATE, s) for s in ("byte_strings", "random")),
], ids=lambda v: v.name if isinstance(v, Target) else v)
def test_one_mib_frames_stay_bounded(target: Target, shape: str) -> None:
    data = BIG_CBOR[shape]
    peak = peak_allocation(target, data)
    assert peak <= CBOR_FACTOR * len(data), (shape, peak)


#: 44k SKIP ranges. At 1 MiB (350k ranges) decoding takes 0.75 s plain but ~10 s under
#: tracemalloc; the cost per byte is the same, so 128 KiB checks the multiple.
SKIPS = b"\x61" + b"\x01\x00\x00" * (MIB // 24)
_N_IDS = (MIB - 16) // ID_SIZE
IDLIST = b"\x61\x01\x00\x02" + encode_varint(_N_IDS) + bytes(ID_SIZE) * _N_IDS


@pytest.mark.parametrize(("target", "data"), [
    (NEG_DECODE, SKIPS), (NEG_RESPONDER, SKIPS),
    (NEG_DECODE, IDLIST), (NEG_RESPONDER, IDLIST), (NEG_INITIATOR, IDLIST),
], ids=["decode-skips", "responder-skips", "decode-idlist", "responder-idlist",
        "initiator-idlist"])
def test_big_negentropy_messages_stay_bounded(target: Target, data: bytes) -> None:
    peak = peak_allocation(target, data)
    assert peak <= NEG_FACTOR * len(data), peak
