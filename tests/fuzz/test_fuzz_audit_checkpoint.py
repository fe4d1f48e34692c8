"""Fuzzing the storage audit messages, signed notes (checkpoints) and record proofs.

Seeds: a challenge and its signed answer (``answer_challenge``), C2SP signed notes of a
record tree's checkpoint (one signature, then cosigned), and a complete record proof built
from synthetic records (as ``pithnode proof`` writes it). Inputs are random bytes and CBOR or
JSON values, the seeds mutated byte by byte, and their decoded forms mutated structurally.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pithnode.node.synth import SynthConfig, synth_keys, synth_record
from pithnode.protocol.audit import (
    Answer,
    AuditError,
    Challenge,
    answer_challenge,
    decode_audit_message,
    encode_audit_message,
)
from pithnode.protocol.bundle import build_bundle
from pithnode.protocol.checkpoint import (
    CheckpointError,
    RecordTree,
    build_proof,
    checkpoint_origin,
    format_checkpoint_body,
    parse_note,
    sign_note,
    verify_note,
    verify_proof_bytes,
)
from pithnode.protocol.errors import InputError, ProtocolError
from pithnode.protocol.merge import admission_from_import, merge
from tests.fuzz import (
    KnownBug,
    Target,
    cbor_values,
    check,
    corpus_cases,
    fuzz_settings,
    json_bytes,
    json_values,
    mutated_bytes,
    mutated_tree,
    peak_allocation,
    replay,
)

KEYS = synth_keys(7)
SPEC = KEYS.spec()
NODE = KEYS.nodes[0]
HOLDER = KEYS.nodes[1]
WITNESS = KEYS.nodes[2]
ORIGIN = checkpoint_origin(SPEC.name, NODE.public_key)

# -- audit seeds
OBJECTS = {hashlib.sha256(b"object %d" % i).digest(): b"object %d" % i for i in range(5)}
CHALLENGE = Challenge(challenge_id=bytes(range(16)), nonce=hashlib.sha256(b"nonce").digest(),
                      object_ids=tuple(OBJECTS), issued_at=1_767_225_600,
                      challenger=NODE.fingerprint)
ANSWER = answer_challenge(CHALLENGE, OBJECTS.get, HOLDER)
PARTIAL = answer_challenge(CHALLENGE, lambda oid: None if oid[0] % 2 else OBJECTS[oid], HOLDER)
AUDIT_MESSAGES = [encode_audit_message(m) for m in (CHALLENGE, ANSWER, PARTIAL)]
AUDIT_OBJS: list[Any] = [cbor2.loads(m) for m in AUDIT_MESSAGES]

# -- a record tree, its signed checkpoint and a record proof
RECORDS = [synth_record(KEYS, i, SynthConfig(seed=7)) for i in range(4)]
STATES = {r.pith_number: merge(r.pith_number, r.events, SPEC) for r in RECORDS}
TREE = RecordTree((pn, st.state_sha256) for pn, st in STATES.items())
NOTE = sign_note(format_checkpoint_body(TREE.checkpoint(ORIGIN)), ORIGIN, NODE)
COSIGNED = NOTE + sign_note(parse_note(NOTE)[0], "witness", WITNESS).split("\n\n")[1]
EXTENDED = sign_note(format_checkpoint_body(TREE.checkpoint(ORIGIN, ("ext one", "ext 2"))),
                     ORIGIN, NODE)
NOTES = [NOTE.encode(), COSIGNED.encode(), EXTENDED.encode()]


def _proof(rec_index: int) -> bytes:
    rec = RECORDS[rec_index]
    state = STATES[rec.pith_number]
    registry = [e for ev in rec.events if (adm := admission_from_import(ev, SPEC))
                for e in adm.events]
    bundle = build_bundle(rec.pith_number, rec.canonical_record,
                          state.doc["current"]["source_aliases"], registry + list(rec.events))
    return build_proof(bundle=bundle, state=state, note=NOTE,
                       signer_public_key=NODE.public_key, tree=TREE)


PROOFS = [_proof(1), _proof(3)]
PROOF_OBJS: list[Any] = [json.loads(p) for p in PROOFS]


# ---------------------------------------------------------------------------- targets


def _cbor(data: bytes) -> Any:
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return None


def run_decode_audit(data: bytes) -> object:
    msg = decode_audit_message(data)
    assert decode_audit_message(encode_audit_message(msg)) == msg
    return msg


def run_challenge_from_wire(data: bytes) -> object:
    return Challenge.from_wire(_cbor(data))


def run_answer_from_wire(data: bytes) -> object:
    return Answer.from_wire(_cbor(data))


def run_parse_note(data: bytes) -> object:
    body, sigs = parse_note(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return body, sigs
    assert parse_note(text) == (body, sigs)  # text and bytes parse alike
    return body, sigs


def run_verify_note(data: bytes) -> object:
    return verify_note(data, ORIGIN, NODE.public_key, origin=ORIGIN)


def run_verify_proof(data: bytes) -> object:
    report = verify_proof_bytes(data, SPEC)
    json.dumps(report.to_json())
    return report


BIG_VERSION = KnownBug(
    "audit-version-bignum", ValueError, r"Exceeds the limit \(4300 digits\)",
    "audit._check_version formats a bad 'v' with str(), which raises ValueError for a CBOR "
    "bignum of more than 4300 digits")
NOT_CANONICAL_SUBJECT = KnownBug(
    "proof-noncanonical-pith-number", ProtocolError, r"is about .*, not ",
    "parse_state/parse_bundle accept a pith_number not in canonical form; the re-merge in "
    "verify_proof then raises ProtocolError, not InputError")

DECODE_AUDIT = Target("decode_audit_message", run_decode_audit, (AuditError,),
                      known_bugs=())
CHALLENGE_FROM_WIRE = Target("challenge_from_wire", run_challenge_from_wire, (AuditError,),
                             known_bugs=())
ANSWER_FROM_WIRE = Target("answer_from_wire", run_answer_from_wire, (AuditError,),
                          known_bugs=())
PARSE_NOTE = Target("parse_note", run_parse_note, (CheckpointError,))
VERIFY_NOTE = Target("verify_note", run_verify_note, (CheckpointError,))
VERIFY_PROOF = Target("verify_proof_bytes", run_verify_proof, (InputError,),
                      known_bugs=())
TARGETS = (DECODE_AUDIT, CHALLENGE_FROM_WIRE, ANSWER_FROM_WIRE, PARSE_NOTE, VERIFY_NOTE,
           VERIFY_PROOF)


# ---------------------------------------------------------------------------- inputs


def cbor_bytes(value: Any) -> bytes:
    try:
        return cbor2.dumps(value)
    except UnicodeEncodeError:  # lone surrogates: not this target's concern
        return cbor2.dumps(repr(value).encode("utf-8", "surrogatepass"))


audit_bytes = st.one_of(
    st.binary(max_size=256),
    cbor_values().map(cbor_bytes),
    mutated_bytes(AUDIT_MESSAGES),
    mutated_tree(AUDIT_OBJS, cbor_values(6)).map(cbor_bytes),
    st.sampled_from(AUDIT_MESSAGES),
)

NOTE_LINES = ("\u2014 ", "\u2014 witness ", "\u2014 " + ORIGIN + " ", "\n", "\n\n", " ", "+",
              ORIGIN, "0", "18446744073709551615", "9223372036854775807", "-1", "AAAA",
              "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "\x00", "\t", "\r")


@st.composite
def note_texts(draw: st.DrawFn) -> bytes:
    """Notes assembled from plausible lines: origin, sizes, hashes, signature lines."""
    lines = draw(st.lists(st.sampled_from(NOTE_LINES) | st.text(max_size=30), max_size=8))
    sigs = draw(st.lists(st.sampled_from(NOTE_LINES[:3]).map(
        lambda p: p + "AAAA" * 17) | st.text(max_size=40), max_size=5))
    return ("\n".join(lines) + "\n\n" + "\n".join(sigs) + "\n").encode("utf-8",
                                                                      "surrogatepass")


note_bytes = st.one_of(
    st.binary(max_size=256),
    note_texts(),
    mutated_bytes(NOTES),
    st.sampled_from(NOTES),
    st.integers(0, 120).map(lambda n: (NOTE + ("\u2014 w " + "AAAA" * 17 + "\n") * n).encode()),
)
proof_bytes = st.one_of(
    mutated_tree(PROOF_OBJS, json_values(6), max_ops=4).map(json_bytes),
    mutated_tree(PROOF_OBJS, json_values(6), max_ops=1).map(json_bytes),
    mutated_bytes(PROOFS, max_ops=2),
    st.builds(json_bytes, json_values()),
)


# ---------------------------------------------------------------------------- properties


@fuzz_settings(300)
@given(audit_bytes)
def test_decode_audit_message(data: bytes) -> None:
    check(DECODE_AUDIT, data)


@fuzz_settings(200)
@given(audit_bytes)
def test_challenge_from_wire(data: bytes) -> None:
    check(CHALLENGE_FROM_WIRE, data)


@fuzz_settings(200)
@given(audit_bytes)
def test_answer_from_wire(data: bytes) -> None:
    check(ANSWER_FROM_WIRE, data)


@fuzz_settings(300)
@given(note_bytes)
def test_parse_note(data: bytes) -> None:
    check(PARSE_NOTE, data)


@fuzz_settings(300)
@given(note_bytes)
def test_verify_note(data: bytes) -> None:
    check(VERIFY_NOTE, data)


@fuzz_settings(60)
@given(proof_bytes)
def test_verify_proof_bytes(data: bytes) -> None:
    check(VERIFY_PROOF, data)


def test_seeds_are_valid() -> None:
    assert [decode_audit_message(m) for m in AUDIT_MESSAGES] == [CHALLENGE, ANSWER, PARTIAL]
    for note in NOTES:
        assert verify_note(note, ORIGIN, NODE.public_key).size == len(RECORDS)
    for proof in PROOFS:
        report = verify_proof_bytes(proof, SPEC)
        assert report.valid, [c for c in report.checks if not c.ok]


@pytest.mark.parametrize(("target", "path"), corpus_cases(TARGETS))
def test_corpus(target: Target, path: Path) -> None:
    replay(target, path)


# ---------------------------------------------------------------------------- big inputs

MIB = 1 << 20


def _padded_proof() -> bytes:
    doc = json.loads(PROOFS[0])
    doc["bundle"]["canonical_record"]["padding"] = "x" * MIB
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("target", "data"), [
    (VERIFY_PROOF, _padded_proof()),
    (VERIFY_PROOF, b"[" + b"0," * (MIB // 8) + b"0]"),
    (DECODE_AUDIT, b"\x9a\x00\x00\x80\x00" + b"\xa0" * (64 << 10)),  # over the 64 KiB limit
    (DECODE_AUDIT, b"\x9a\x00\x00\x7f\xf0" + b"\xa0" * ((64 << 10) - 16)),
    (PARSE_NOTE, NOTE.encode() * 200),
    (PARSE_NOTE, (NOTE + ("\u2014 w " + "AAAA" * 17 + "\n") * 300).encode()[:32 << 10]),
], ids=["proof-padded", "proof-zeros", "audit-over-limit", "audit-maps", "note-over-limit",
        "note-many-signatures"])
def test_big_inputs_stay_bounded(target: Target, data: bytes) -> None:
    peak = peak_allocation(target, data)
    assert peak <= 128 * len(data), peak
