"""Merkle trees, signed checkpoint notes and offline record proofs (protocol/checkpoint.py).

Published vectors reproduced here:

* RFC 6962 roots and proofs over the eight standard test leaves: transparency-dev/merkle
  ``testonly/constants.go`` (``LeafInputs``, ``RootHashes``) and ``proof/verify_test.go``
  (``inclusionProofs``, ``consistencyProofs``), the same data as certificate-transparency-go.
* C2SP signed notes: golang.org/x/mod ``sumdb/note/note_test.go`` (the PeterNeumann and
  EnochRoot keys, ``TestSign``, ``TestOpen``, ``TestNewVerifier``) and the examples of
  c2sp.org/signed-note and c2sp.org/tlog-checkpoint.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest

from pithnode.node.synth import SynthConfig, synth_keys, synth_record
from pithnode.protocol.bundle import build_bundle
from pithnode.protocol.checkpoint import (
    EMPTY_ROOT,
    MAX_NOTE_BYTES,
    BadNoteSignature,
    BadVerifierKey,
    Checkpoint,
    CheckpointError,
    MalformedCheckpoint,
    MalformedNote,
    MalformedProof,
    MerkleProofError,
    MerkleTree,
    NoteTooLarge,
    RecordTree,
    UnsignedNote,
    build_proof,
    checkpoint_origin,
    format_checkpoint_body,
    leaf_hash,
    merkle_root,
    open_note,
    parse_checkpoint_body,
    parse_note,
    parse_vkey,
    record_leaf,
    root_from_inclusion,
    sign_note,
    verify_consistency,
    verify_inclusion,
    verify_note,
    verify_proof,
    verify_proof_bytes,
    vkey,
)
from pithnode.protocol.errors import DecodeError, InputError, ProtocolError
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.merge import admission_from_import, merge
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.verify import Report

H = bytes.fromhex

# -- RFC 6962 known answers ----------------------------------------------------------------
RFC_LEAVES = [H(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                             "606162636465666768696a6b6c6d6e6f")]
RFC_ROOTS = [H(x) for x in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# (leaf index 0-based, tree size, path)
RFC_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
RFC_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def rfc_hashes() -> list[bytes]:
    return [leaf_hash(x) for x in RFC_LEAVES]


@pytest.mark.parametrize("size", range(9))
def test_rfc6962_roots(size: int) -> None:
    assert merkle_root(rfc_hashes()[:size]) == RFC_ROOTS[size]
    assert MerkleTree(rfc_hashes()[:size]).root == RFC_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), RFC_INCLUSION)
def test_rfc6962_inclusion_vectors(index: int, size: int, path: list[str]) -> None:
    tree = MerkleTree(rfc_hashes()[:size])
    assert tree.inclusion_path(index) == [H(p) for p in path]
    verify_inclusion(rfc_hashes()[index], index, size, [H(p) for p in path], RFC_ROOTS[size])


@pytest.mark.parametrize(("size1", "size2", "proof"), RFC_CONSISTENCY)
def test_rfc6962_consistency_vectors(size1: int, size2: int, proof: list[str]) -> None:
    tree = MerkleTree(rfc_hashes()[:size2])
    assert tree.consistency_proof(size1) == [H(p) for p in proof]
    verify_consistency(size1, size2, RFC_ROOTS[size1], RFC_ROOTS[size2], [H(p) for p in proof])


# -- brute force: RFC 6962 §2.1 written out recursively ------------------------------------
def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.cache
def mth(leaves: tuple[bytes, ...]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _k(len(leaves))
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def rfc_path(m: int, leaves: tuple[bytes, ...]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return [*rfc_path(m, leaves[:k]), mth(leaves[k:])]
    return [*rfc_path(m - k, leaves[k:]), mth(leaves[:k])]


def rfc_subproof(m: int, leaves: tuple[bytes, ...], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*rfc_subproof(m, leaves[:k], complete), mth(leaves[k:])]
    return [*rfc_subproof(m - k, leaves[k:], False), mth(leaves[:k])]


BRUTE = tuple(f"leaf {i}".encode() for i in range(64))


def _flipped(hashes: Sequence[bytes], i: int) -> list[bytes]:
    out = list(hashes)
    out[i] = bytes([out[i][0] ^ 8]) + out[i][1:]
    return out


@pytest.mark.parametrize("size", range(1, 65))
def test_inclusion_proofs_match_brute_force_and_resist_tampering(size: int) -> None:
    leaves = BRUTE[:size]
    tree = MerkleTree([leaf_hash(x) for x in leaves])
    root = mth(leaves)
    assert tree.root == root == merkle_root([leaf_hash(x) for x in leaves])
    for m in range(size):
        path = tree.inclusion_path(m)
        assert path == rfc_path(m, leaves)
        lh = leaf_hash(leaves[m])
        verify_inclusion(lh, m, size, path, root)
        bad: list[tuple[int, int, list[bytes], bytes]] = [
            (m + 1, size, path, lh), (m ^ 2, size, path, lh), (m, size * 2, path, lh),
            (m, size // 2, path, lh),
            (m, size, path, leaf_hash(b"other")), (m, size, [*path, root], lh),
            (m, size, [root, *path], lh)]
        if m:
            bad.append((m - 1, size, path, lh))
        if path:
            bad.append((m, size, path[:-1], lh))
            bad.extend((m, size, _flipped(path, i), lh) for i in range(len(path)))
        for index, n, p, leaf in bad:
            with pytest.raises(MerkleProofError):
                verify_inclusion(leaf, index, n, p, root)


@pytest.mark.parametrize("size2", range(1, 65))
def test_consistency_proofs_match_brute_force_and_resist_tampering(size2: int) -> None:
    leaves = BRUTE[:size2]
    tree = MerkleTree([leaf_hash(x) for x in leaves])
    root2 = mth(leaves)
    for size1 in range(1, size2 + 1):
        root1 = mth(leaves[:size1])
        proof = tree.consistency_proof(size1)
        assert proof == rfc_subproof(size1, leaves, True)
        verify_consistency(size1, size2, root1, root2, proof)
        if size1 == size2:
            continue
        bad: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
            (size1, size2, root2, root1, proof), (size1, size2, root1, root1, proof),
            (size1, size2, root1, root2, []), (size1, size2, root1, root2, proof[:-1]),
            (size1, size2, root1, root2, [*proof, root1]), (size1 + 1, size2, root1, root2,
                                                            proof),
            (size1 - 1, size2, root1, root2, proof), (size1 ^ 2, size2, root1, root2, proof),
            (size1, size2 * 2, root1, root2, proof), (size1, size2 // 2, root1, root2, proof),
            (size2, size1, root2, root1, proof), (size1, size2, root1, root2, [proof[0],
                                                                              *proof])]
        bad.extend((size1, size2, root1, root2, _flipped(proof, i)) for i in range(len(proof)))
        for s1, s2, r1, r2, p in bad:
            with pytest.raises(MerkleProofError):
                verify_consistency(s1, s2, r1, r2, p)


def test_trivial_consistency_and_bad_arguments() -> None:
    verify_consistency(0, 5, EMPTY_ROOT, RFC_ROOTS[5], [])
    verify_consistency(3, 3, RFC_ROOTS[3], RFC_ROOTS[3], [])
    bad: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (3, 3, RFC_ROOTS[3], RFC_ROOTS[4], []), (0, 3, RFC_ROOTS[1], RFC_ROOTS[3], []),
        (3, 3, RFC_ROOTS[3], RFC_ROOTS[3], [RFC_ROOTS[3]]), (4, 3, RFC_ROOTS[4], RFC_ROOTS[3], [])]
    for args in bad:
        with pytest.raises(MerkleProofError):
            verify_consistency(*args)
    with pytest.raises(MerkleProofError) as exc:
        root_from_inclusion(RFC_ROOTS[1], 0, 1, [b"short"])
    assert exc.value.reason == "bad_proof_hash"
    with pytest.raises(MerkleProofError) as exc:
        root_from_inclusion(RFC_ROOTS[1], 0, 2, [RFC_ROOTS[0]] * 65)
    assert exc.value.reason == "proof_too_long"
    with pytest.raises(MerkleProofError) as exc:
        root_from_inclusion(RFC_ROOTS[1], 1, 1, [])
    assert exc.value.reason == "index_out_of_range"


# -- leaves and record trees ---------------------------------------------------------------
TEST_KEY = SigningKey(bytes(range(32)))
KAT_RECORDS = [
    ("pith:2024:ZZZZZZZZZZZZZZZZZZZZZZZZZZ", hashlib.sha256(b"c").hexdigest()),
    ("pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL", hashlib.sha256(b"a").hexdigest()),
    ("pith:2020:AAAAAAAAAAAAAAAAAAAAAAAAAA", hashlib.sha256(b"b").hexdigest()),
]
KAT_NOTE = (
    "pithnode/pith-test/56475aa75463474c0285df5dbf2bcab7\n3\n"
    "sJXJl1HBdb5glnKmm0K04uNTRk0lnMpw9lOLyf8KxrE=\n\n"
    "— pithnode/pith-test/56475aa75463474c0285df5dbf2bcab7 DanYMPGlmEfcdN9Ndxo/F1jWT4bVNI+GNiZ"
    "Pci/ZXWpgh6tZsRqscFGkNTrclZdc/AFEY/tsNZ2q0Jo8jw04GwWOKAE=\n"
)


def test_record_leaf_vector() -> None:
    assert record_leaf(*KAT_RECORDS[1]) == (
        b"pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL\x00" + H(KAT_RECORDS[1][1]))
    assert record_leaf(*KAT_RECORDS[1]).hex() == (
        "706974683a323031383a3332554b325a574935414f45564f35425a485a434c485a575a4c00"
        "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb")


@pytest.mark.parametrize(("pn", "sha"), [
    ("pith:2018:32uk2zwi5aoevo5bzhzclhzwzl", "00" * 32), ("pith:32UK2ZWI", "00" * 32),
    ("pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL", "AB" * 32),
    ("pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL", "00" * 31), (None, "00" * 32)])
def test_record_leaf_refuses_non_canonical_input(pn: Any, sha: str) -> None:
    with pytest.raises(InputError):
        record_leaf(pn, sha)


def test_record_tree_sorts_by_pith_number_and_refuses_duplicates() -> None:
    tree = RecordTree(KAT_RECORDS)
    assert tree.pith_numbers == tuple(sorted(pn for pn, _ in KAT_RECORDS))
    assert tree.root.hex() == "b095c99751c175be609672a69b42b4e2e353464d259cca70f6538bc9ff0ac6b1"
    assert tree.root == merkle_root([leaf_hash(record_leaf(*r)) for r in sorted(KAT_RECORDS)])
    assert tree.index_of("pith:2024:ZZZZZZZZZZZZZZZZZZZZZZZZZZ") == 2
    with pytest.raises(InputError) as exc:
        RecordTree([*KAT_RECORDS, (KAT_RECORDS[0][0], "00" * 32)])
    assert exc.value.reason == "duplicate_leaf"
    assert RecordTree([]).root == EMPTY_ROOT


# -- checkpoints and notes -----------------------------------------------------------------
def test_own_checkpoint_note_vector() -> None:
    origin = checkpoint_origin("pith-test", TEST_KEY.public_key)
    tree = RecordTree(KAT_RECORDS)
    note = sign_note(format_checkpoint_body(tree.checkpoint(origin)), origin, TEST_KEY)
    assert note == KAT_NOTE
    assert vkey(origin, TEST_KEY.public_key) == (
        "pithnode/pith-test/56475aa75463474c0285df5dbf2bcab7+0da9d830+"
        "AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4")
    cp = verify_note(note, origin, TEST_KEY.public_key, origin=origin)
    assert cp == Checkpoint(origin, 3, tree.root)


def test_checkpoint_body_round_trip_and_strictness() -> None:
    cp = Checkpoint("example.org/log", 20852163, bytes(range(32)), ("ext one", "ext-2"))
    body = format_checkpoint_body(cp)
    assert body == ("example.org/log\n20852163\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
                    "ext one\next-2\n")
    assert parse_checkpoint_body(body) == cp
    root = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    for bad in ["o\n1\n" + root, "o\n1\n", f"o\n01\n{root}\n", f"o\n-1\n{root}\n",
                f"o\n1\n{root[:-2]}9=\n", f"o\n1\n{root}\n\n", f"\n1\n{root}\n",
                f"o\n1\n{root[:-1]}\n", f"o\n99999999999999999999\n{root}\n",
                "o\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n"]:
        with pytest.raises(MalformedCheckpoint):
            parse_checkpoint_body(bad)
    with pytest.raises(MalformedCheckpoint):
        Checkpoint("o", 1, b"short")


def test_tlog_checkpoint_spec_example_parses() -> None:
    note = ("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
            "\n\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe"
            "4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n")
    body, sigs = parse_note(note)
    cp = parse_checkpoint_body(body)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert base64.b64encode(cp.root).decode() == "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert [(s.key_name, len(s.signature)) for s in sigs] == [("example.com/behind-the-sofa",
                                                               64)]


def test_signed_note_spec_example_verifies() -> None:
    name, pub = parse_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    note = ("This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6Tf"
            "Xppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")
    assert open_note(note, name, pub) == "This is an example message.\n"
    assert vkey(name, pub) == (
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")


# golang.org/x/mod/sumdb/note/note_test.go
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
PETER_SIG = ("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
             "dngotpRZb6KE6RyyBwJnAM=\n")
ENOCH_SIG = ("— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGw"
             "nWLox33WWd1RvMc+QQ=\n")


def test_sumdb_note_sign_vector() -> None:
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert seed[0] == 1
    key = SigningKey(seed[1:])
    assert vkey("PeterNeumann", key.public_key) == PETER_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_TEXT + "\n" + PETER_SIG


def test_sumdb_note_open_vectors() -> None:
    peter, enoch = parse_vkey(PETER_VKEY), parse_vkey(ENOCH_VKEY)
    both = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(both, *peter) == GO_TEXT  # Enoch's line is an unknown key: ignored
    assert open_note(both, *enoch) == GO_TEXT
    _, sigs = parse_note(both)
    assert [(s.key_name, s.key_id.hex()) for s in sigs] == [("PeterNeumann", "c74f20a3"),
                                                            ("EnochRoot", "af0cfe78")]
    with pytest.raises(UnsignedNote):
        open_note(GO_TEXT + "\n" + ENOCH_SIG, *peter)
    with pytest.raises(MalformedNote):
        parse_note(GO_TEXT + "\n" + PETER_SIG * 101)
    with pytest.raises(BadNoteSignature):
        open_note(GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], *peter)
    bad_messages = [
        GO_TEXT, GO_TEXT + "\n", GO_TEXT + "\n" + PETER_SIG[:-1], "\x01" + GO_TEXT + "\n"
        + PETER_SIG, GO_TEXT + "\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgY"
        "N1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=", GO_TEXT + "\n" + PETER_SIG
        + "Unexpected line.\n"]
    for msg in bad_messages:
        with pytest.raises(MalformedNote):
            parse_note(msg)
    with pytest.raises(MalformedNote):
        parse_note(b"\xff" + (GO_TEXT + "\n" + PETER_SIG).encode())


def test_sumdb_verifier_key_manglings_are_refused() -> None:
    assert parse_vkey(PETER_VKEY)[0] == "PeterNeumann"
    raw = PETER_VKEY.encode()
    mangled = {raw[i:j] for i in range(len(raw) + 1) for j in range(i + 1, len(raw) + 1)}
    mangled.discard(raw)
    mangled.update(raw[:i] + bytes([raw[i] + 1]) + raw[i + 1:] for i in range(len(raw)))
    for m in mangled:
        with pytest.raises(BadVerifierKey):
            parse_vkey(m.decode())
    for k in ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
              "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"):
        with pytest.raises(BadVerifierKey):
            parse_vkey(k)


def test_every_byte_of_a_signed_checkpoint_matters() -> None:
    origin = checkpoint_origin("pith-test", TEST_KEY.public_key)
    data = KAT_NOTE.encode()
    for pos in range(len(data)):
        for mask in (0x01, 0x20, 0x80):
            bad = bytearray(data)
            bad[pos] ^= mask
            with pytest.raises(CheckpointError):
                verify_note(bytes(bad), origin, TEST_KEY.public_key, origin=origin)


def test_note_errors() -> None:
    origin = checkpoint_origin("pith-test", TEST_KEY.public_key)
    other = SigningKey(bytes(range(1, 33)))
    with pytest.raises(UnsignedNote):
        verify_note(KAT_NOTE, origin, other.public_key)
    with pytest.raises(MalformedCheckpoint) as exc:
        verify_note(KAT_NOTE, origin, TEST_KEY.public_key, origin="pithnode/other/x")
    assert exc.value.reason == "wrong_origin"
    with pytest.raises(NoteTooLarge):
        parse_note("x" * (MAX_NOTE_BYTES + 1))
    with pytest.raises(NoteTooLarge):
        parse_note("é" * (MAX_NOTE_BYTES // 2 + 1))
    with pytest.raises(MalformedNote):
        parse_note("\ud800\n\n— a AAAAAAAA\n")
    with pytest.raises(MalformedNote):
        sign_note("no newline", origin, TEST_KEY)
    with pytest.raises(MalformedNote):
        sign_note("text\n", "bad name", TEST_KEY)
    # a second signer's line (a cosigner) does not disturb verification
    cosigned = KAT_NOTE + sign_note(parse_note(KAT_NOTE)[0], "witness", other).split("\n\n")[1]
    assert verify_note(cosigned, origin, TEST_KEY.public_key).size == 3
    assert open_note(cosigned, "witness", other.public_key) == parse_note(KAT_NOTE)[0]


# -- offline record proofs -----------------------------------------------------------------
NODE_RECORDS = 5


@functools.cache
def proof_setup() -> tuple[NetworkSpec, SigningKey, bytes, RecordTree]:
    keys = synth_keys(7)
    spec = keys.spec()
    node = keys.nodes[0]
    states, bundles = {}, {}
    for i in range(NODE_RECORDS):
        rec = synth_record(keys, i, SynthConfig())
        st = merge(rec.pith_number, rec.events, spec)
        states[rec.pith_number] = st
        # as storage/store.py serves it: admitted registry events, then the stored events
        registry = [e for ev in rec.events if (adm := admission_from_import(ev, spec))
                    for e in adm.events]
        assert registry
        bundles[rec.pith_number] = build_bundle(rec.pith_number, rec.canonical_record,
                                                st.doc["current"]["source_aliases"],
                                                registry + list(rec.events))
    tree = RecordTree((pn, st.state_sha256) for pn, st in states.items())
    origin = checkpoint_origin(spec.name, node.public_key)
    note = sign_note(format_checkpoint_body(tree.checkpoint(origin)), origin, node)
    pn = sorted(states)[2]
    data = build_proof(bundle=bundles[pn], state=states[pn], note=note,
                       signer_public_key=node.public_key, tree=tree)
    return spec, node, data, tree


def _check_names(report: Report) -> list[str]:
    return [c.name for c in report.checks if not c.ok]


def test_record_proof_verifies_offline() -> None:
    spec, _, data, tree = proof_setup()
    report = verify_proof_bytes(data, spec)
    assert report.valid, report.to_json()
    assert report.kind == "proof"
    doc = json.loads(data)
    assert report.state_sha256 == doc["state"]["state_sha256"]
    assert doc["leaf_index"] == 2 and doc["tree_size"] == tree.size == NODE_RECORDS
    assert sum(1 for e in doc["bundle"]["events"] if "signature_b64" not in e) == 2
    assert {c.name for c in report.checks} >= {
        "checkpoint_signature", "state_sha256", "merge", "inclusion", "registry_admission"}
    assert report.to_json()["failed"] == []


def test_record_proof_fails_on_another_network_or_without_the_importer() -> None:
    spec, _, data, _ = proof_setup()
    other = NetworkSpec(name="elsewhere", registry_keys=spec.registry_keys,
                        trusted_importers=spec.trusted_importers)
    assert "checkpoint_signature" in _check_names(verify_proof_bytes(data, other))
    no_importer = NetworkSpec(name=spec.name, registry_keys=spec.registry_keys)
    failed = _check_names(verify_proof_bytes(data, no_importer))
    assert {"registry_admission", "merge"} <= set(failed)
    restricted = NetworkSpec(name=spec.name, registry_keys=spec.registry_keys,
                             trusted_importers=spec.trusted_importers,
                             allowed_signers={"node": frozenset({"00" * 16})})
    assert "signer_allowed" in _check_names(verify_proof_bytes(data, restricted))


@pytest.mark.parametrize(("field", "value", "path"), [
    ("tree_size", None, "$.tree_size"), ("leaf_index", -1, "$.leaf_index"),
    ("inclusion_path", ["AB" * 32], "$.inclusion_path[0]"), ("extra", 1, "$.extra"),
    ("proof_version", 2, "$.proof_version"), ("proof_version", 1.0, "$.proof_version"),
    ("proof_version", True, "$.proof_version"), ("proof_type", "x", "$.proof_type"),
    ("signer_public_key_hex", "00", "$.signer_public_key_hex"),
    ("checkpoint", 5, "$.checkpoint"),
])
def test_malformed_proof_names_the_field(field: str, value: Any, path: str) -> None:
    spec, _, data, _ = proof_setup()
    doc = json.loads(data)
    doc[field] = value
    with pytest.raises(MalformedProof) as exc:
        verify_proof(doc, spec)
    assert exc.value.field == path
    del doc[field]
    if field != "extra":
        with pytest.raises(MalformedProof):
            verify_proof(doc, spec)


def test_wrong_leaf_index_or_path_fails_inclusion() -> None:
    spec, _, data, _ = proof_setup()
    doc = json.loads(data)
    doc["leaf_index"] = 1
    assert _check_names(verify_proof(doc, spec)) == ["inclusion"]
    doc = json.loads(data)
    doc["inclusion_path"] = doc["inclusion_path"][:-1]
    assert _check_names(verify_proof(doc, spec)) == ["inclusion"]
    doc = json.loads(data)
    doc["tree_size"] = NODE_RECORDS + 1
    assert _check_names(verify_proof(doc, spec)) == ["tree_size"]


def test_flipping_any_byte_of_a_proof_file_is_detected_and_located() -> None:
    spec, _, data, _ = proof_setup()
    rng = random.Random(20260101)
    for _ in range(300):
        pos = rng.randrange(len(data))
        mask = 1 << rng.randrange(7) if rng.random() < 0.8 else rng.randrange(1, 256)
        bad = bytearray(data)
        bad[pos] ^= mask
        try:
            report = verify_proof_bytes(bytes(bad), spec)
        except MalformedProof as exc:
            assert exc.field.startswith("$") and exc.reason, (pos, mask)
            continue
        except DecodeError as exc:
            assert exc.reason in {"bad_json", "bad_utf8"}, (pos, mask, exc.reason)
            assert "line" in str(exc) or "byte" in str(exc), (pos, mask)
            continue
        failed = [c for c in report.checks if not c.ok]
        assert failed, f"flip of byte {pos} with {mask:#x} went unnoticed"
        assert all("$." in c.detail for c in failed), (pos, mask, failed)


def test_build_proof_refuses_parts_that_disagree() -> None:
    _, node, data, tree = proof_setup()
    doc = json.loads(data)
    state = dict(doc["state"], state_sha256="00" * 32)
    with pytest.raises(ProtocolError):
        build_proof(bundle=doc["bundle"], state=state, note=doc["checkpoint"],
                    signer_public_key=node.public_key, tree=tree)
    with pytest.raises(CheckpointError):
        build_proof(bundle=doc["bundle"], state=doc["state"], note=doc["checkpoint"],
                    signer_public_key=TEST_KEY.public_key, tree=tree)
