"""The storage audit challenge (protocol/audit.py): holder, challenger session, wire, fuzz."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pithnode.protocol.audit import (
    MAX_AUDIT_MESSAGE_BYTES,
    MAX_OBJECTS_PER_CHALLENGE,
    Answer,
    AnswerRejected,
    AuditError,
    AuditMessageTooLarge,
    AuditResult,
    AuditState,
    AuditStateError,
    Challenge,
    ChallengerSession,
    MalformedAuditMessage,
    answer_challenge,
    decode_audit_message,
    encode_audit_message,
    majority_outcome,
    nonce_digest,
    storage_audit_payload,
)
from pithnode.protocol.errors import ProtocolError
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.payloads import check_payload

CHALLENGER = SigningKey(bytes(range(32)))
HOLDER = SigningKey(bytes(range(1, 33)))
OTHER = SigningKey(bytes(range(2, 34)))
T0 = 1_767_225_600
OBJECTS = {hashlib.sha256(data).digest(): data for data in (
    bytes([i]) * 1024 for i in range(8))}
IDS = tuple(OBJECTS)
ATTESTATION = "sha256:" + "ab" * 32


def challenge(n: int = 1, ids: tuple[bytes, ...] = IDS, cid: int = 0) -> Challenge:
    return Challenge(challenge_id=bytes([cid]) * 16, nonce=hashlib.sha256(b"nonce%d" % n).digest(),
                     object_ids=ids, issued_at=T0, challenger=CHALLENGER.fingerprint)


def session(ch: Challenge, read_own: Callable[[bytes], bytes | None] = OBJECTS.get,
            holder: SigningKey = HOLDER) -> ChallengerSession:
    s = ChallengerSession(ch, holder_public_key=holder.public_key, read_own=read_own,
                          timeout=60)
    assert s.send(T0) is ch
    return s


def outcomes(result: AuditResult) -> list[tuple[str, str]]:
    return [(o.outcome, o.reason) for o in result.outcomes]


# -- known answers -------------------------------------------------------------------------
def test_challenge_and_answer_vectors() -> None:
    objs = [b"object one", b"object two"]
    ids = tuple(hashlib.sha256(o).digest() for o in objs)
    ch = Challenge(challenge_id=bytes(range(16)), nonce=bytes(range(32, 64)), object_ids=ids,
                   issued_at=T0, challenger=CHALLENGER.fingerprint)
    assert ch.canonical_bytes() == (
        b'{"challenge_id":"000102030405060708090a0b0c0d0e0f",'
        b'"challenger":"56475aa75463474c0285df5dbf2bcab7","issued_at":1767225600,'
        b'"nonce":"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",'
        b'"object_ids":["9f4a853fbb258f42889c0e1b998d0cb2040384e1f95752be52988058332ad036",'
        b'"140b7e8d903a24899d89a5384710a593bb366709e81199e9886bfc6958d8b6df"],'
        b'"type":"pithnode_audit_challenge","version":1}')
    assert ch.challenge_sha256() == (
        "08df666a840773d225decd4555fa65d96838a4d8496ea87d259e03de3d8ef970")
    answer = answer_challenge(ch, dict(zip(ids, objs, strict=True)).get, HOLDER)
    assert [d.hex() if d else None for d in answer.digests] == [
        "7920ca43a3f81c1a00ef953fa43ec0b77df87213f476f323713409e25f22c73d",
        "4efa30325b38364ec0196504ab9fea2af70efc0a9a4279a0c65eaba9baeae1cc"]
    assert answer.digests[0] == hashlib.sha256(bytes(range(32, 64)) + b"object one").digest()
    assert answer.signing_digest().hex() == (
        "41d937399e37ec83a207cf6739bb05718e88e0b37b2126544893fce115b89059")
    assert answer.signature.hex() == (
        "ddea1b8b635b4d4f64ef82ed6b879b1e8479bc06f81a1fdfdc317b98399294845f0ef3bd2ce5a2059a09"
        "8fe83cdac901647c5169ba25812631049cbb0a401908")
    assert encode_audit_message(ch).hex().startswith("a761760161746f61756469745f6368616c6c")


# -- the exchange --------------------------------------------------------------------------
def test_honest_holder_is_verified() -> None:
    ch = challenge()
    s = session(ch)
    assert s.state is AuditState.SENT and s.deadline == T0 + 60
    received = decode_audit_message(encode_audit_message(ch))
    assert isinstance(received, Challenge)
    wire = encode_audit_message(answer_challenge(received, OBJECTS.get, HOLDER))
    answer = decode_audit_message(wire)
    assert isinstance(answer, Answer)
    result = s.receive_answer(answer, T0 + 5)
    assert s.state is AuditState.ANSWERED and s.result is result
    assert outcomes(result) == [("verified", "digest_matches")] * len(IDS)
    payload = storage_audit_payload(result, IDS[0], ATTESTATION)
    assert check_payload("storage_audit", payload) is None
    assert payload == {"attestation_event_id": ATTESTATION, "object_sha256": IDS[0].hex(),
                       "holder_fingerprint": HOLDER.fingerprint, "outcome": "verified",
                       "challenge_sha256": ch.challenge_sha256()}


def test_holder_answering_from_digests_of_an_earlier_nonce_fails() -> None:
    old = challenge(1)
    cached = answer_challenge(old, OBJECTS.get, HOLDER).digests
    new = challenge(2)
    fields: dict[str, Any] = {
        "challenge_id": new.challenge_id, "holder": HOLDER.fingerprint, "digests": cached,
        "challenge_sha256": hashlib.sha256(new.canonical_bytes()).digest()}
    digest = Answer(**fields, signature=bytes(64)).signing_digest()
    forged = Answer(**fields, signature=HOLDER.sign_digest(digest))  # validly signed
    result = session(new).receive_answer(forged, T0 + 1)
    assert outcomes(result) == [("failed", "digest_differs")] * len(IDS)
    assert storage_audit_payload(result, IDS[3], ATTESTATION)["outcome"] == "failed"


def test_replayed_answers_are_rejected() -> None:
    old_answer = answer_challenge(challenge(1, cid=1), OBJECTS.get, HOLDER)
    s = session(challenge(2, cid=2))
    with pytest.raises(AnswerRejected) as exc:
        s.receive_answer(old_answer, T0 + 1)
    assert exc.value.reason == "wrong_challenge"
    # the same challenge id reused with a fresh nonce: the old answer is stale
    s = session(challenge(3, cid=1))
    with pytest.raises(AnswerRejected) as exc:
        s.receive_answer(old_answer, T0 + 1)
    assert exc.value.reason == "stale_answer"
    assert s.state is AuditState.SENT  # a rejected answer leaves the session waiting
    good = answer_challenge(challenge(3, cid=1), OBJECTS.get, HOLDER)
    assert s.receive_answer(good, T0 + 2).outcomes[0].outcome == "verified"


def test_holder_without_the_bytes_answers_missing() -> None:
    partial = {k: v for i, (k, v) in enumerate(OBJECTS.items()) if i % 2 == 0}
    result = session(challenge()).receive_answer(
        answer_challenge(challenge(), partial.get, HOLDER), T0 + 1)
    assert outcomes(result) == [("verified", "digest_matches"),
                                ("missing", "holder_lacks_object")] * (len(IDS) // 2)
    assert storage_audit_payload(result, IDS[1], ATTESTATION)["outcome"] == "failed"


def test_wrong_signer_is_rejected() -> None:
    s = session(challenge())
    with pytest.raises(AnswerRejected) as exc:
        s.receive_answer(answer_challenge(challenge(), OBJECTS.get, OTHER), T0 + 1)
    assert exc.value.reason == "wrong_holder"
    honest = answer_challenge(challenge(), OBJECTS.get, HOLDER)
    forged = Answer(challenge_id=honest.challenge_id, challenge_sha256=honest.challenge_sha256,
                    holder=HOLDER.fingerprint, digests=honest.digests,
                    signature=OTHER.sign_digest(honest.signing_digest()))
    with pytest.raises(AnswerRejected) as exc:
        s.receive_answer(forged, T0 + 1)
    assert exc.value.reason == "bad_signature"
    tampered = Answer(challenge_id=honest.challenge_id,
                      challenge_sha256=honest.challenge_sha256, holder=HOLDER.fingerprint,
                      digests=(None, *honest.digests[1:]), signature=honest.signature)
    with pytest.raises(AnswerRejected) as exc:
        s.receive_answer(tampered, T0 + 1)
    assert exc.value.reason == "bad_signature"


def test_corrupted_object_fails_or_is_reported_missing() -> None:
    corrupt = dict(OBJECTS)
    corrupt[IDS[2]] = b"\x00" + corrupt[IDS[2]][1:] + b"!"
    naive = answer_challenge(challenge(), corrupt.get, HOLDER, check_own_copy=False)
    result = session(challenge()).receive_answer(naive, T0 + 1)
    assert result.outcome_for(IDS[2]).outcome == "failed"
    assert result.outcome_for(IDS[2]).reason == "digest_differs"
    assert result.outcome_for(IDS[1]).outcome == "verified"
    careful = answer_challenge(challenge(), corrupt.get, HOLDER)
    result = session(challenge()).receive_answer(careful, T0 + 1)
    assert result.outcome_for(IDS[2]).outcome == "missing"


def test_challenger_without_a_copy_gets_unknown_then_majority_settles() -> None:
    lacks: dict[bytes, bytes] = {}
    ch = challenge()
    holders = [HOLDER, OTHER, SigningKey(bytes(range(3, 35)))]
    corrupt = dict(OBJECTS)
    corrupt[IDS[0]] = b"bad"
    stores = [OBJECTS, OBJECTS, corrupt]
    results = {}
    for key, store in zip(holders, stores, strict=True):
        r = session(ch, lacks.get, key).receive_answer(
            answer_challenge(ch, store.get, key, check_own_copy=False), T0 + 1)
        assert {o.outcome for o in r.outcomes} == {"unknown"}
        results[key.fingerprint] = r
    settled = majority_outcome(results)
    assert outcomes(settled[HOLDER.fingerprint]) == [("verified", "matches_majority")] * len(IDS)
    third = settled[holders[2].fingerprint]
    assert third.outcome_for(IDS[0]).outcome == "failed"
    assert third.outcome_for(IDS[0]).reason == "differs_from_majority"
    assert third.outcome_for(IDS[1]).outcome == "verified"
    # two holders that disagree: no majority
    two = majority_outcome({k: results[k] for k in (HOLDER.fingerprint,
                                                    holders[2].fingerprint)})
    assert two[HOLDER.fingerprint].outcome_for(IDS[0]).reason == "no_majority"
    assert two[HOLDER.fingerprint].outcome_for(IDS[1]).outcome == "verified"
    # one holder alone never settles anything (quorum 2)
    alone = majority_outcome({HOLDER.fingerprint: results[HOLDER.fingerprint]})
    assert {o.outcome for o in alone[HOLDER.fingerprint].outcomes} == {"unknown"}
    with pytest.raises(ProtocolError):
        storage_audit_payload(alone[HOLDER.fingerprint], IDS[0], ATTESTATION)
    other_nonce = session(challenge(9), lacks.get).receive_answer(
        answer_challenge(challenge(9), OBJECTS.get, HOLDER), T0 + 1)
    with pytest.raises(ProtocolError):
        majority_outcome({"a": results[HOLDER.fingerprint], "b": other_nonce})


def test_expiry_uses_the_callers_clock() -> None:
    s = session(challenge())
    assert s.expire(T0 + 59) is None and s.state is AuditState.SENT
    result = s.expire(T0 + 60)
    assert result is not None and s.state is AuditState.EXPIRED
    assert outcomes(result) == [("missing", "no_answer_before_deadline")] * len(IDS)
    with pytest.raises(AuditStateError) as exc:
        s.receive_answer(answer_challenge(challenge(), OBJECTS.get, HOLDER), T0 + 61)
    assert (exc.value.state, exc.value.input) == (AuditState.EXPIRED, "answer")
    assert "EXPIRED" in str(exc.value) and "answer" in str(exc.value)
    late = session(challenge())
    got = late.receive_answer(answer_challenge(challenge(), OBJECTS.get, HOLDER), T0 + 600)
    assert late.state is AuditState.EXPIRED and got.outcomes[0].outcome == "missing"


def test_out_of_order_inputs_name_state_and_input() -> None:
    s = ChallengerSession(challenge(), holder_public_key=HOLDER.public_key,
                          read_own=OBJECTS.get)
    with pytest.raises(AuditStateError) as exc:
        s.receive_answer(answer_challenge(challenge(), OBJECTS.get, HOLDER), T0)
    assert (exc.value.state, exc.value.input) == (AuditState.CREATED, "answer")
    with pytest.raises(AuditStateError) as exc:
        s.expire(T0)
    assert (exc.value.state, exc.value.input) == (AuditState.CREATED, "expire")
    s.send(T0)
    with pytest.raises(AuditStateError) as exc:
        s.send(T0)
    assert str(exc.value) == "no transition from state SENT on input 'send'"
    s.receive_answer(answer_challenge(challenge(), OBJECTS.get, HOLDER), T0)
    with pytest.raises(AuditStateError):
        s.expire(T0 + 1000)


# -- wire: round trips, limits, fuzz -------------------------------------------------------
def test_wire_round_trip() -> None:
    ch = challenge()
    assert Challenge.from_wire(ch.to_wire()) == ch
    assert decode_audit_message(encode_audit_message(ch)) == ch
    a = answer_challenge(ch, {IDS[0]: OBJECTS[IDS[0]]}.get, HOLDER)
    assert a.digests[1] is None
    assert Answer.from_wire(a.to_wire()) == a
    assert decode_audit_message(encode_audit_message(a)) == a
    full = challenge(ids=tuple(hashlib.sha256(b"%d" % i).digest()
                               for i in range(MAX_OBJECTS_PER_CHALLENGE)))
    assert len(encode_audit_message(full)) < MAX_AUDIT_MESSAGE_BYTES
    assert nonce_digest(ch.nonce, b"x") == hashlib.sha256(ch.nonce + b"x").digest()


def _with(wire: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(wire)
    for k, v in changes.items():
        if v is KeyError:
            del out[k]
        else:
            out[k] = v
    return out


CH_WIRE = challenge().to_wire()
AN_WIRE = answer_challenge(challenge(), OBJECTS.get, HOLDER).to_wire()


@pytest.mark.parametrize(("cls", "wire", "reason"), [
    (Challenge, _with(CH_WIRE, v=2), "bad_version"),
    (Challenge, _with(CH_WIRE, v=KeyError), "bad_version"),
    (Challenge, _with(CH_WIRE, v=True), "bad_version"),
    (Challenge, _with(CH_WIRE, extra=1), "bad_audit_message"),
    (Challenge, _with(CH_WIRE, nonce=b"short"), "bad_audit_message"),
    (Challenge, _with(CH_WIRE, object_ids=[]), "bad_audit_message"),
    (Challenge, _with(CH_WIRE, object_ids=[IDS[0]] * 2), "bad_audit_message"),
    (Challenge, _with(CH_WIRE, object_ids=[b"\x01" * 32] * (MAX_OBJECTS_PER_CHALLENGE + 1)),
     "bad_audit_message"),
    (Challenge, _with(CH_WIRE, issued_at=-1), "bad_audit_message"),
    (Challenge, _with(CH_WIRE, challenger="AB" * 16), "bad_audit_message"),
    (Challenge, _with(CH_WIRE, t="audit_answer"), "bad_audit_message"),
    (Answer, _with(AN_WIRE, digests=[b"\x00" * 31]), "bad_audit_message"),
    (Answer, _with(AN_WIRE, digests=[None] * (MAX_OBJECTS_PER_CHALLENGE + 1)),
     "bad_audit_message"),
    (Answer, _with(AN_WIRE, signature=b"\x00" * 63), "bad_audit_message"),
    (Answer, _with(AN_WIRE, holder=None), "bad_audit_message"),
    (Answer, [], "bad_audit_message"),
])
def test_malformed_wire_messages(cls: Any, wire: Any, reason: str) -> None:
    with pytest.raises(MalformedAuditMessage) as exc:
        cls.from_wire(wire)
    assert exc.value.reason == reason


def test_oversized_and_undecodable_bytes() -> None:
    with pytest.raises(AuditMessageTooLarge):
        decode_audit_message(b"\xa0" * (MAX_AUDIT_MESSAGE_BYTES + 1))
    for data in (b"", b"\xff", b"\x9f", cbor2.dumps([1, 2]), cbor2.dumps({"t": "x"})):
        with pytest.raises(MalformedAuditMessage):
            decode_audit_message(data)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.binary(max_size=40) | st.text(max_size=40) | st.floats(allow_nan=True)
    | st.sampled_from([1, "audit_challenge", "audit_answer", b"\x00" * 16, b"\x00" * 32,
                       b"\x00" * 64, "0" * 32]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
_keys = st.sampled_from(sorted(set(CH_WIRE) | set(AN_WIRE))) | st.text(max_size=6) | \
    st.integers()


REASONS = {"bad_version", "bad_audit_message", "bad_cbor", "audit_message_too_large"}


def _only_typed_errors(decode: Callable[[], Challenge | Answer]) -> None:
    try:
        msg = decode()
    except AuditError as exc:
        assert exc.reason in REASONS
    else:  # whatever is accepted is a valid message that survives a round trip
        assert decode_audit_message(encode_audit_message(msg)) == msg


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=9))
def test_from_wire_on_random_dicts_raises_only_typed_errors(obj: dict[Any, Any]) -> None:
    _only_typed_errors(lambda: Challenge.from_wire(obj))
    _only_typed_errors(lambda: Answer.from_wire(obj))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([CH_WIRE, AN_WIRE]), st.sampled_from(sorted(set(CH_WIRE) | set(AN_WIRE))),
       _values)
def test_from_wire_with_one_field_replaced_raises_only_typed_errors(
        wire: dict[str, Any], key: str, value: Any) -> None:
    _only_typed_errors(lambda: decode_audit_message(cbor2.dumps(_with(wire, **{key: value}))))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_random_bytes_raises_only_typed_errors(data: bytes) -> None:
    _only_typed_errors(lambda: decode_audit_message(data))
