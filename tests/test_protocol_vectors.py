"""Known-answer vectors for every hash and signature rule.

Values were computed once by this implementation and checked against Pith's real data
where Pith defines the rule (the golden record, the registry key); they must never change.
Signing keys here are fixed test seeds, never the registry's key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest

from pithnode.protocol.canonical import canonical_json, canonical_sha256
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import event_from_json, make_native_event
from pithnode.protocol.identifiers import (
    abstract_canon_sha256,
    fingerprint_b32,
    fingerprint_hex,
    normalise_alias,
    parse_pith_number,
    pith_number_for_record,
    title_canon_sha256,
)
from pithnode.protocol.ingest import event_set_fingerprint, sync_item
from pithnode.protocol.keys import SigningKey, verify_digest
from pithnode.protocol.receipts import check_receipt
from pithnode.protocol.spec import NetworkSpec, RegistryKey

GOLDEN = Path(__file__).parent / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
REGISTRY_PUB = bytes.fromhex("b2d552b68890857171a78b36a5dccf368a953413288c353f7c9d9d6f94b709b3")
TEST_KEY = SigningKey(bytes(range(32)))
SUBJECT = "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL"


def golden() -> dict:
    return json.loads(GOLDEN.read_bytes())


def test_canonical_json_bytes() -> None:
    value = {"b": 1, "a": [1.5, "é\u2028", None, True, 10**30, -0.0, 1e100],
             "é": "😀 \"\\/\n\t\x01"}
    assert canonical_json(value) == (
        b'{"a":[1.5,"\xc3\xa9\xe2\x80\xa8",null,true,1000000000000000000000000000000,-0.0,'
        b'1e+100],"b":1,"\xc3\xa9":"\xf0\x9f\x98\x80 \\"\\\\/\\n\\t\\u0001"}'
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"k": "\ud800"}, {1: 2, "a": 3}, b"x"])
def test_canonical_json_refuses_values_without_canonical_form(bad: object) -> None:
    with pytest.raises(InputError) as exc:
        canonical_json(bad)
    assert exc.value.reason == "not_canonical"


def test_golden_record_hash_and_pith_number() -> None:
    record = golden()["current"]["canonical_record"]
    assert canonical_sha256(record) == (
        "dea8ad66c8e81c4abba1c9f2259f36cae91c404c739f97c31fbc16bffefa2c78")
    pn = pith_number_for_record(record)
    assert str(pn) == SUBJECT
    assert pn.short == "pith:32UK2ZWI"


def test_year_comes_from_submitted_at_not_the_arxiv_id() -> None:
    record = golden()["current"]["canonical_record"]
    record["metadata"]["submitted_at"] = "2017-12-29T23:00:00Z"
    assert str(pith_number_for_record(record)).startswith("pith:2017:")


def test_title_and_abstract_canon_hashes() -> None:
    meta = golden()["current"]["canonical_record"]["metadata"]
    assert title_canon_sha256("Gradient Descent  Happens in a\tTiny Subspace\n") == (
        meta["title_canon_sha256"])
    snapshot = golden()["current"]["graph_snapshots"][0]["payload"]["graph_snapshot"]
    assert abstract_canon_sha256(snapshot["paper"]["abstract_excerpt"]) == (
        meta["abstract_canon_sha256"])


def test_key_fingerprints_of_the_registry_key() -> None:
    assert fingerprint_hex(REGISTRY_PUB) == "8d4b5ee74e4693bcd1df2446408b0d54"
    assert fingerprint_b32(REGISTRY_PUB) == "RVFV5Z2OI2J3ZUO7ERDEBCYNKS"
    manifest = json.loads((GOLDEN.parent / "pith-mirrors.json").read_bytes())
    key = manifest["mirrors"][0]["public_key"]
    assert fingerprint_b32(REGISTRY_PUB) == key["fingerprint_sha256_b32_first128bits"]
    assert base64.b64decode(key["public_key_b64"]) == REGISTRY_PUB


def test_golden_receipt_verifies_over_raw_digest_bytes() -> None:
    receipt = golden()["current"]["record_created"]["payload"]["receipt"]
    sig = base64.b64decode(receipt["signature_b64"])
    digest_hex = receipt["canonical_sha256"]
    assert verify_digest(REGISTRY_PUB, bytes.fromhex(digest_hex), sig)
    assert not verify_digest(REGISTRY_PUB, digest_hex.encode(), sig)  # not the hex text
    spec = NetworkSpec("t", (RegistryKey("pith-v1-2026-05", "pith.science", REGISTRY_PUB),))
    assert check_receipt(receipt, digest_hex, spec) is None


def test_test_key_vectors() -> None:
    assert TEST_KEY.public_key.hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
    assert TEST_KEY.fingerprint == "56475aa75463474c0285df5dbf2bcab7"
    assert TEST_KEY.fingerprint_b32 == "KZDVVJ2UMNDUYAUF35O36K6KW4"
    other = SigningKey(bytes([7]) * 32)
    digest = bytes.fromhex("dea8ad66c8e81c4abba1c9f2259f36cae91c404c739f97c31fbc16bffefa2c78")
    assert base64.b64encode(other.sign_digest(digest)).decode() == (
        "+kmoGk9/Dfqk86V+d3+656az9aiOoKtlHh2AAYqqdcspdVGHCzkEiFYRQ7CZrFnOzEWEHP3FbzFTzgcpJu3zDA==")


def test_native_event_id_and_signature_vector() -> None:
    ev = make_native_event(
        TEST_KEY, event_type="mirror_hint", subject=SUBJECT,
        payload={"base_urls": ["http://127.0.0.1:8080"], "multiaddrs": [], "prefixes": ["32"]},
        created_at="2026-06-01T00:00:00Z", signer_id="node-a", signer_type="node")
    assert canonical_json(ev.core()) == (
        b'{"created_at":"2026-06-01T00:00:00Z","event_type":"mirror_hint","event_version":1,'
        b'"payload":{"base_urls":["http://127.0.0.1:8080"],"multiaddrs":[],"prefixes":["32"]},'
        b'"signer":{"key_id":"ed25519:03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc866412'
        b'5531b8","public_key_fingerprint":"56475aa75463474c0285df5dbf2bcab7","signer_id":'
        b'"node-a","signer_type":"node"},"subject_pith_number":'
        b'"pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL","target":"mirror"}')
    assert ev.event_id == (
        "sha256:e893d747398246d35368199890078af99d789c9d38136e9cd3ac58dc830171c0")
    assert base64.b64encode(ev.signature or b"").decode() == (
        "n19uWkCdosDs6YAic6StnZni2HOuAyS3eyodi3HnJ55aZ+by1+zMPeEqmXGa/k1SDqSN78RSWXhoaRRKs4fsAw==")
    assert ev.verify_native() is None
    # the wire form parses back to the same event
    assert event_from_json(json.loads(ev.canonical_bytes())) == ev
    assert sync_item(ev) == (1780272000, bytes.fromhex(ev.event_id[7:]))


def test_event_set_fingerprint_vector() -> None:
    ids = ["sha256:e893d747398246d35368199890078af99d789c9d38136e9cd3ac58dc830171c0",
           "sha256:" + "00" * 32]
    expected = "10cda1e9956887712ce91aac07c74f9f9efa44dc94c29ebacd3e4a659d96d2e2"
    assert event_set_fingerprint(ids) == expected
    assert event_set_fingerprint(reversed(ids)) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("1812.04754", ("arxiv", "1812.04754")),
    ("arXiv:1812.04754v1", ("arxiv_version", "1812.04754v1")),
    ("hep-ex/0002044", ("arxiv", "hep-ex/0002044")),
    ("10.48550/arXiv.1812.04754", ("doi", "10.48550/arxiv.1812.04754")),
    ("https://doi.org/10.48550/ARXIV.1812.04754", ("doi", "10.48550/arxiv.1812.04754")),
    ("pith:32uk2zwi", ("pith_short_8", "32UK2ZWI")),
    ("32UK2ZWI5AOE", ("pith_short_12", "32UK2ZWI5AOE")),
    ("pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL", ("pith", SUBJECT)),
])
def test_alias_normalisation(text: str, expected: tuple[str, str]) -> None:
    assert normalise_alias(text) == expected


@pytest.mark.parametrize("bad", ["", "pith:2018:SHORT", "pith:abc", "pith:18:32UK2ZWI",
                                 "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZ1", "x" * 100])
def test_bad_pith_numbers_are_refused(bad: str) -> None:
    with pytest.raises(InputError):
        parse_pith_number(bad)


def test_a_verified_event_is_not_checked_again_but_a_changed_copy_is() -> None:
    ev = make_native_event(
        TEST_KEY, event_type="mirror_hint", subject=SUBJECT,
        payload={"base_urls": ["http://127.0.0.1:8080"], "multiaddrs": [], "prefixes": ["32"]},
        created_at="2026-06-01T00:00:00Z", signer_id="node-a", signer_type="node")
    parsed = event_from_json(json.loads(ev.canonical_bytes()))
    assert not parsed.verified
    assert parsed.verify_native() is None and parsed.verified
    assert dataclasses.replace(parsed, signature=bytes(64)).verify_native() == "bad_signature"
    moved = dataclasses.replace(parsed, payload={**parsed.payload, "prefixes": ["33"]})
    assert not moved.verified and moved.verify_native() == "event_id_mismatch"
