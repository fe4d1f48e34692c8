"""Wire frames and the sync session machine: round trips, limits and fuzzing."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pithnode.protocol.errors import InputError, ProtocolError
from pithnode.protocol.wire import (
    MAX_FRAME_BYTES,
    MAX_GETS_IN_FLIGHT,
    MAX_GOSSIP_BYTES,
    Role,
    SessionMachine,
    SyncState,
    UnexpectedMessage,
    decode_events,
    decode_frame,
    decode_gossip,
    encode_frame,
    encode_gossip,
    prefixes_match,
)
from tests.protocol_pool import build_pool

POOL = build_pool()
RAW = [e.canonical_bytes() for e in POOL.events[:5]]


@pytest.mark.parametrize(("kind", "fields"), [
    ("hello", {"prefixes": ("AB", "7")}),
    ("neg", {"m": b"\x61"}),
    ("get", {"ids": [b"\x01" * 32]}),
    ("events", {"events": RAW}),
    ("end", {"count": 5}),
    ("put", {"events": RAW}),
    ("ack", {"new": 1, "duplicate": 2, "rejected": 0}),
    ("done", {}),
    ("error", {"reason": "busy"}),
])
def test_frames_round_trip(kind: str, fields: dict) -> None:
    frame = decode_frame(encode_frame(kind, **fields))
    assert frame.kind == kind
    assert {k: (tuple(v) if k == "prefixes" else v) for k, v in frame.fields.items()} == fields


@pytest.mark.parametrize("data", [
    b"", b"\xff", cbor2.dumps([1]), cbor2.dumps({"v": 2, "t": "done"}),
    cbor2.dumps({"v": 1, "t": "nope"}), cbor2.dumps({"v": 1, "t": "done", "x": 1}),
    cbor2.dumps({"v": 1, "t": "get", "ids": [b"short"]}),
    cbor2.dumps({"v": 1, "t": "get", "ids": [b"\x00" * 32] * 2001}),
    cbor2.dumps({"v": 1, "t": "hello", "prefixes": ["ab"]}),
    cbor2.dumps({"v": 1, "t": "end", "count": -1}),
    cbor2.dumps({"v": 1, "t": "end", "count": True}),
    b"\x9f" * 10_000,  # deeply nested indefinite arrays
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # a byte string claiming 2**64 bytes
])
def test_malformed_frames_raise_input_errors(data: bytes) -> None:
    with pytest.raises(InputError):
        decode_frame(data)


def test_oversized_frames_are_refused_before_decoding() -> None:
    with pytest.raises(InputError) as exc:
        decode_frame(b"\x00" * (MAX_FRAME_BYTES + 1))
    assert exc.value.reason == "frame_too_large"
    with pytest.raises(InputError):
        decode_gossip(b"\x00" * (MAX_GOSSIP_BYTES + 1))


def test_gossip_batches_round_trip_and_events_parse() -> None:
    raw = decode_gossip(encode_gossip(RAW))
    assert [e.event_id for e in decode_events(raw)] == [e.event_id for e in POOL.events[:5]]
    with pytest.raises(InputError):
        decode_gossip(encode_gossip([]))
    with pytest.raises(InputError):
        decode_events([b"{not json"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_frames_and_gossip_only_raise_input_errors(data: bytes) -> None:
    for decoder in (decode_frame, decode_gossip):
        with contextlib.suppress(InputError):
            decoder(data)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=40)
                    | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c,
                                                                        max_size=4),
                    max_leaves=20))
def test_fuzz_structured_cbor(value: object) -> None:
    for wrapped in (value, {"v": 1, "t": "get", "ids": value}, {"v": 1, "events": value}):
        data = cbor2.dumps(wrapped)
        for decoder in (decode_frame, decode_gossip):
            with contextlib.suppress(InputError):
                decoder(data)


def test_session_machine_follows_the_table() -> None:
    i, r = SessionMachine(Role.INITIATOR), SessionMachine(Role.RESPONDER)
    r.receive(encode_frame("hello", prefixes=()))
    i.receive(encode_frame("hello", prefixes=()))
    r.receive(encode_frame("neg", m=b"\x61"))
    i.receive(encode_frame("neg", m=b"\x61"))
    i.reconciled()
    r.receive(encode_frame("get", ids=[]))
    i.sent_get()
    i.receive(encode_frame("events", events=[]))
    i.receive(encode_frame("end", count=0))
    r.receive(encode_frame("put", events=[]))
    i.receive(encode_frame("ack", new=0, duplicate=0, rejected=0))
    r.receive(encode_frame("done"))
    i.receive(encode_frame("done"))
    assert i.state is SyncState.DONE and r.state is SyncState.DONE


def test_initiator_pipelines_gets_up_to_the_limit_and_ends_come_in_order() -> None:
    i = SessionMachine(Role.INITIATOR)
    i.receive(encode_frame("hello", prefixes=()))
    i.receive(encode_frame("neg", m=b"\x61"))
    i.reconciled()
    for _ in range(MAX_GETS_IN_FLIGHT):
        i.sent_get()
    with pytest.raises(ProtocolError, match="in flight"):
        i.sent_get()
    assert i.gets_in_flight == MAX_GETS_IN_FLIGHT
    for left in range(MAX_GETS_IN_FLIGHT - 1, -1, -1):
        i.receive(encode_frame("events", events=[]))
        i.receive(encode_frame("end", count=0))
        assert i.gets_in_flight == left
        assert i.state is (SyncState.RECEIVING if left else SyncState.TRANSFER)
    with pytest.raises(UnexpectedMessage):  # no get outstanding: an end is out of place
        i.receive(encode_frame("end", count=0))


@pytest.mark.parametrize(("role", "kind"), [
    (Role.INITIATOR, "get"), (Role.INITIATOR, "events"), (Role.RESPONDER, "events"),
    (Role.RESPONDER, "ack"), (Role.RESPONDER, "neg"),
])
def test_unexpected_messages_name_state_and_input(role: Role, kind: str) -> None:
    m = SessionMachine(role)
    fields = {"get": {"ids": []}, "events": {"events": []}, "ack": {"new": 0, "duplicate": 0,
              "rejected": 0}, "neg": {"m": b"a"}}[kind]
    with pytest.raises(UnexpectedMessage) as exc:
        m.receive(encode_frame(kind, **fields))
    assert "HELLO" in str(exc.value) and kind in str(exc.value)


def test_error_frames_and_misuse() -> None:
    m = SessionMachine(Role.INITIATOR)
    with pytest.raises(InputError, match="peer reported: busy"):
        m.receive(encode_frame("error", reason="busy"))
    with pytest.raises(ProtocolError):
        m.reconciled()
    with pytest.raises(ValueError):
        encode_frame("done", extra=1)


def test_prefix_scope() -> None:
    assert prefixes_match("32UK2ZWI", ())
    assert prefixes_match("32UK2ZWI", ("3", "Z"))
    assert not prefixes_match("32UK2ZWI", ("4",))
