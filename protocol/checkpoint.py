"""Signed checkpoints over a node's record states, and offline record proofs. Sans-io.

**Merkle tree** (RFC 6962 §2.1, RFC 9162 §2.1): leaf hash ``SHA-256(0x00 || leaf)``, node
hash ``SHA-256(0x01 || left || right)``, the left subtree of ``n`` leaves holds the largest
power of two smaller than ``n``; the empty tree's root is ``SHA-256("")``. Trees are built
level by level over lists of 32-byte digests (an odd last node moves up unchanged, which
gives the RFC's split), never by recursion over leaves.

**Leaves** (this project's rule): one leaf per record the node holds, for the pair
(full Pith Number, ``state_sha256`` of the record's state), sorted by the Pith Number's
ASCII bytes, no Pith Number twice. The leaf bytes are::

    pith_number.encode("ascii") || 0x00 || the 32 raw bytes of state_sha256

A full Pith Number is ``pith:YYYY:`` and 26 base32 capitals (no NUL), and the digest has a
fixed length, so the encoding is unambiguous.

**Checkpoints** are C2SP tlog-checkpoints (https://c2sp.org/tlog-checkpoint) in C2SP signed
notes (https://c2sp.org/signed-note) with Ed25519 signatures (type ``0x01``): the body is
the origin line, the tree size in decimal (no leading zeros), the base64 root and optional
extension lines, each ending in a newline; then a blank line and the signature lines
``— <key name> base64(key ID || signature)`` where the key ID is
``SHA-256(key name || 0x0A || 0x01 || public key)[:4]`` and the signature is Ed25519 over
the body's UTF-8 bytes. Our origin, which is also the key name, is
``pithnode/<network name>/<fingerprint_hex of the node key>`` (:func:`checkpoint_origin`).
The node key also signs 32-byte event digests; a note body is always longer than 32 bytes
and starts with the origin, so the two uses cannot be confused.

Caution: the leaves are a sorted snapshot, not an append-only log. A later checkpoint of the
same origin is in general *not* consistent (RFC 6962 §2.1.2) with an earlier one, so these
checkpoints do not meet tlog-checkpoint's "never sign inconsistent checkpoints" rule and must
not be given to tlog witnesses. The consistency proofs here are the RFC's, for callers that
keep an append-only tree.

**Record proofs** (``proof_type`` ``pithnode_record_proof``, version 1) are JSON documents
carrying a bundle, the state it merges to, a signed checkpoint, the signer's public key and
the state's inclusion path; :func:`verify_proof` checks them offline against a network spec.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter
from typing import Any

import nacl.exceptions
import nacl.signing

from .bundle import parse_bundle
from .canonical import canonical_json, canonical_sha256
from .documents import MAX_DOCUMENT_BYTES, decode_json
from .errors import DecodeError, InputError, ProtocolError, TooLarge
from .events import Event, event_from_json
from .identifiers import fingerprint_hex, parse_pith_number
from .keys import SigningKey
from .merge import admission_from_import, merge
from .spec import NetworkSpec
from .state import StateDocument, parse_state, state_hash
from .verify import Report, admissions_for

__all__ = [
    "EMPTY_ROOT", "MAX_INCLUSION_PATH", "MAX_NOTE_BYTES", "MAX_NOTE_SIGNATURES",
    "MAX_PROOF_BYTES", "MAX_TREE_SIZE", "PROOF_TYPE", "PROOF_VERSION",
    "BadNoteSignature", "BadVerifierKey", "Checkpoint", "CheckpointError", "MalformedCheckpoint",
    "MalformedNote", "MalformedProof", "MerkleProofError", "MerkleTree", "NoteSignature",
    "NoteTooLarge", "RecordTree", "UnsignedNote", "build_proof", "checkpoint_origin",
    "format_checkpoint_body", "leaf_hash", "merkle_root", "node_hash", "note_key_id",
    "open_note", "parse_checkpoint_body", "parse_note", "parse_vkey", "record_leaf",
    "root_from_inclusion", "sign_note", "verify_consistency", "verify_inclusion",
    "verify_note", "verify_proof", "verify_proof_bytes", "vkey",
]

#: Notes larger than this are refused before decoding (100 Ed25519 signature lines fit).
MAX_NOTE_BYTES = 32 << 10
#: Signature lines in one note (C2SP: at least 16 must be accepted; Go's sumdb/note: 100).
MAX_NOTE_SIGNATURES = 100
MAX_TREE_SIZE = (1 << 63) - 1
#: Hashes in an inclusion or consistency proof (a tree of 2**63 leaves needs at most 63+1).
MAX_INCLUSION_PATH = 64
MAX_PROOF_BYTES = MAX_DOCUMENT_BYTES
PROOF_TYPE = "pithnode_record_proof"
PROOF_VERSION = 1
ED25519_SIGNATURE_TYPE = 0x01
EMPTY_ROOT = hashlib.sha256(b"").digest()

_PITH_RE = re.compile(r"pith:[1-9][0-9]{3}:[A-Z2-7]{26}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SIG_PREFIX = "\u2014 "  # em dash, space
_PROOF_KEYS = ("proof_type", "proof_version", "bundle", "state", "checkpoint",
               "signer_public_key_hex", "leaf_index", "tree_size", "inclusion_path")


# -- errors --------------------------------------------------------------------------------
class CheckpointError(InputError):
    """A note, checkpoint, Merkle proof or proof document we were given is unacceptable."""


class MalformedNote(CheckpointError, DecodeError):
    """Not a well-formed C2SP signed note."""


class NoteTooLarge(CheckpointError, TooLarge):
    """A note over :data:`MAX_NOTE_BYTES`, refused before decoding."""


class BadVerifierKey(CheckpointError, DecodeError):
    """Not a well-formed Ed25519 C2SP verifier key string."""


class UnsignedNote(CheckpointError):
    """The note carries no signature by the expected key (others are ignored)."""


class BadNoteSignature(CheckpointError):
    """A signature line names the expected key but does not verify."""


class MalformedCheckpoint(CheckpointError, DecodeError):
    """A verified note whose text is not a well-formed checkpoint (or not the one expected)."""


class MerkleProofError(CheckpointError):
    """An inclusion or consistency proof that does not verify."""


class MalformedProof(CheckpointError, DecodeError):
    """A proof document that cannot be checked; ``field`` is the JSON path at fault."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(reason, f"{field}: {message}")
        self.field = field


# -- RFC 6962 Merkle trees -----------------------------------------------------------------
def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _parent_level(level: Sequence[bytes]) -> list[bytes]:
    sha = hashlib.sha256
    parents = [sha(b"\x01" + a + b).digest() for a, b in zip(level[0::2], level[1::2],
                                                              strict=False)]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root of the tree over ``leaf_hashes`` (already hashed with :func:`leaf_hash`)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        level = _parent_level(level)
    return level[0]


class MerkleTree:
    """All node hashes of one tree, each level kept as one ``bytes`` (32 bytes a node).

    The node at level ``l`` index ``i`` is the root of leaves ``[i*2**l, min((i+1)*2**l, n))``.
    """

    __slots__ = ("_levels", "size")

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        if any(len(h) != 32 for h in leaf_hashes):
            raise ProtocolError("leaf hashes are 32 bytes")
        self.size = len(leaf_hashes)
        self._levels: list[bytes] = []
        level = list(leaf_hashes)
        while level:
            self._levels.append(b"".join(level))
            level = _parent_level(level) if len(level) > 1 else []

    @property
    def root(self) -> bytes:
        return self._levels[-1] if self.size else EMPTY_ROOT

    def _node(self, level: int, index: int) -> bytes:
        return self._levels[level][index * 32:index * 32 + 32]

    def leaf(self, index: int) -> bytes:
        return self._node(0, index)

    def _subtree(self, start: int, end: int) -> bytes:
        """Root of leaves ``[start, end)``: a perfect subtree or a right edge of the tree."""
        level = (end - start - 1).bit_length()
        return self._node(level, start >> level)

    def inclusion_path(self, index: int) -> list[bytes]:
        """RFC 6962 PATH(index, D[n]), lowest sibling first."""
        if not 0 <= index < self.size:
            raise ProtocolError(f"leaf index {index} outside a tree of {self.size}")
        path = []
        for level in range(len(self._levels) - 1):
            sibling = index ^ 1
            if sibling * 32 < len(self._levels[level]):
                path.append(self._node(level, sibling))
            index >>= 1
        return path

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """RFC 6962 PROOF(old_size, D[n]) (SUBPROOF with b = true), in the RFC's order."""
        if not 0 < old_size <= self.size:
            raise ProtocolError(f"no consistency proof from {old_size} to {self.size}")
        top_down: list[bytes] = []
        start, end, m, complete = 0, self.size, old_size, True
        while m != end - start:
            k = 1 << ((end - start - 1).bit_length() - 1)
            if m <= k:
                top_down.append(self._subtree(start + k, end))
                end = start + k
            else:
                top_down.append(self._subtree(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            top_down.append(self._subtree(start, end))
        return top_down[::-1]


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    if len(hashes) > MAX_INCLUSION_PATH:
        raise MerkleProofError("proof_too_long", f"{what} of {len(hashes)} hashes")
    if any(not isinstance(h, bytes) or len(h) != 32 for h in hashes):
        raise MerkleProofError("bad_proof_hash", f"{what} holds a hash that is not 32 bytes")


def root_from_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root that ``path`` gives for leaf hash ``leaf`` at ``index`` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size <= MAX_TREE_SIZE:
        raise MerkleProofError("index_out_of_range", f"leaf index {index}, tree size {size}")
    _check_hashes(path, "inclusion path")
    if len(leaf) != 32:
        raise MerkleProofError("bad_proof_hash", "a leaf hash is 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise MerkleProofError("wrong_path_length", "inclusion path is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise MerkleProofError("wrong_path_length", "inclusion path is too short")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes],
                     root: bytes) -> None:
    """Raise :class:`MerkleProofError` unless ``path`` proves the leaf hash under ``root``."""
    if root_from_inclusion(leaf, index, size, path) != root:
        raise MerkleProofError("root_mismatch", "inclusion path leads to another root")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes,
                       proof: Sequence[bytes]) -> None:
    """Raise :class:`MerkleProofError` unless the tree ``size2``/``root2`` extends
    ``size1``/``root1`` (RFC 9162 §2.1.4.2)."""
    if not 0 <= size1 <= size2 <= MAX_TREE_SIZE:
        raise MerkleProofError("bad_sizes", f"no consistency from size {size1} to {size2}")
    _check_hashes(proof, "consistency proof")
    if size1 == size2 or size1 == 0:
        if proof:
            raise MerkleProofError("wrong_path_length", "this consistency proof must be empty")
        if (size1 == size2 and root1 != root2) or (size1 == 0 and root1 != EMPTY_ROOT):
            raise MerkleProofError("root_mismatch", "roots differ")
        return
    if not proof:
        raise MerkleProofError("wrong_path_length", "consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise MerkleProofError("wrong_path_length", "consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise MerkleProofError("wrong_path_length", "consistency proof is too short")
    if fr != root1 or sr != root2:
        raise MerkleProofError("root_mismatch", "consistency proof leads to other roots")


# -- leaves --------------------------------------------------------------------------------
def record_leaf(pith_number: str, state_sha256: str) -> bytes:
    """Leaf bytes of one record: ASCII Pith Number, 0x00, the raw 32-byte state digest."""
    if not isinstance(pith_number, str) or not _PITH_RE.fullmatch(pith_number):
        raise InputError("bad_leaf", f"not a full Pith Number: {str(pith_number)[:64]!r}")
    if not isinstance(state_sha256, str) or not _HEX64.fullmatch(state_sha256):
        raise InputError("bad_leaf", "state_sha256 is 64 lower-case hex digits")
    return pith_number.encode("ascii") + b"\x00" + bytes.fromhex(state_sha256)


class RecordTree:
    """The Merkle tree of a node's (Pith Number, state_sha256) pairs, sorted by Pith Number."""

    __slots__ = ("pith_numbers", "tree")

    def __init__(self, records: Iterable[tuple[str, str]]) -> None:
        pairs = list(records)
        if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                   for p in pairs):
            raise InputError("bad_leaf", "records are (Pith Number, state_sha256) pairs")
        pairs.sort(key=itemgetter(0))
        sha = hashlib.sha256
        hashes = [sha(b"\x00" + record_leaf(pn, digest)).digest() for pn, digest in pairs]
        for a, b in pairwise(pairs):
            if a[0] == b[0]:
                raise InputError("duplicate_leaf", f"{a[0]} appears twice")
        self.pith_numbers: tuple[str, ...] = tuple(pn for pn, _ in pairs)
        self.tree = MerkleTree(hashes)

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def root(self) -> bytes:
        return self.tree.root

    def index_of(self, pith_number: str) -> int:
        i = bisect_left(self.pith_numbers, pith_number)
        if i == len(self.pith_numbers) or self.pith_numbers[i] != pith_number:
            raise ProtocolError(f"{pith_number} is not a leaf of this tree")
        return i

    def checkpoint(self, origin: str, extensions: Sequence[str] = ()) -> Checkpoint:
        return Checkpoint(origin, self.size, self.root, tuple(extensions))


# -- checkpoints and signed notes ----------------------------------------------------------
def checkpoint_origin(network: str, public_key: bytes) -> str:
    """Origin line and key name of a node's checkpoints."""
    return f"pithnode/{network}/{fingerprint_hex(public_key)}"


def _line_ok(line: str) -> bool:
    return bool(line) and "\n" not in line and not _CONTROL.search(line)


def _key_name_ok(name: str) -> bool:
    return (bool(name) and "+" not in name and not _CONTROL.search(name)
            and not any(c.isspace() for c in name))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not _line_ok(self.origin):
            raise MalformedCheckpoint("bad_checkpoint", "origin must be one non-empty line")
        if (not isinstance(self.size, int) or isinstance(self.size, bool)
                or not 0 <= self.size <= MAX_TREE_SIZE):
            raise MalformedCheckpoint("bad_checkpoint", "tree size out of range")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise MalformedCheckpoint("bad_checkpoint", "root hash is 32 bytes")
        if not all(isinstance(e, str) and _line_ok(e) for e in self.extensions):
            raise MalformedCheckpoint("bad_checkpoint", "extension lines must be non-empty")


def format_checkpoint_body(cp: Checkpoint) -> str:
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode("ascii"),
             *cp.extensions]
    return "".join(line + "\n" for line in lines)


def _strict_b64(text: str) -> bytes | None:
    """Standard base64 with padding, in its one canonical spelling; None otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def parse_checkpoint_body(body: str) -> Checkpoint:
    if not body.endswith("\n"):
        raise MalformedCheckpoint("bad_checkpoint", "checkpoint text must end in a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpoint("bad_checkpoint", "a checkpoint has at least three lines")
    if not _SIZE_RE.fullmatch(lines[1]):
        raise MalformedCheckpoint("bad_checkpoint", "tree size is decimal, no leading zeros")
    root = _strict_b64(lines[2])
    if root is None or len(root) != 32:
        raise MalformedCheckpoint("bad_checkpoint", "root hash is base64 of 32 bytes")
    return Checkpoint(lines[0], int(lines[1]), root, tuple(lines[3:]))


def note_key_id(key_name: str, public_key: bytes) -> bytes:
    """C2SP key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    if len(public_key) != 32:
        raise ProtocolError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(key_name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE])
                          + public_key).digest()[:4]


def vkey(name: str, public_key: bytes) -> str:
    """C2SP verifier key ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
    if not _key_name_ok(name):
        raise ProtocolError(f"not a valid key name: {name!r}")
    material = bytes([ED25519_SIGNATURE_TYPE]) + public_key
    return f"{name}+{note_key_id(name, public_key).hex()}+{base64.b64encode(material).decode()}"


def parse_vkey(text: str) -> tuple[str, bytes]:
    """Key name and Ed25519 public key of a verifier key string (checked)."""
    parts = text.split("+") if isinstance(text, str) and len(text) <= 1024 else []
    if len(parts) != 3 or not _key_name_ok(parts[0]) or not re.fullmatch(r"[0-9a-f]{8}",
                                                                         parts[1]):
        raise BadVerifierKey("bad_vkey", "a verifier key is name+keyid+key")
    material = _strict_b64(parts[2])
    if material is None or len(material) != 33 or material[0] != ED25519_SIGNATURE_TYPE:
        raise BadVerifierKey("bad_vkey", "verifier key material is 0x01 and 32 bytes")
    if note_key_id(parts[0], material[1:]).hex() != parts[1]:
        raise BadVerifierKey("bad_vkey", "key ID does not match the name and key")
    return parts[0], material[1:]


@dataclass(frozen=True, slots=True)
class NoteSignature:
    key_name: str
    key_id: bytes
    signature: bytes


def _check_note_text(text: str) -> None:
    if _CONTROL.search(text):
        raise MalformedNote("malformed_note", "note holds a control character")


def sign_note(body: str, key_name: str, key: SigningKey) -> str:
    """A signed note: ``body`` (ending in a newline), a blank line, one signature line."""
    if not body.endswith("\n"):
        raise MalformedNote("malformed_note", "note text must end in a newline")
    _check_note_text(body)
    if not _key_name_ok(key_name):
        raise MalformedNote("malformed_note", f"not a valid key name: {key_name!r}")
    sig = nacl.signing.SigningKey(key.seed).sign(body.encode("utf-8")).signature
    blob = base64.b64encode(note_key_id(key_name, key.public_key) + sig).decode("ascii")
    note = f"{body}\n{_SIG_PREFIX}{key_name} {blob}\n"
    if len(note.encode("utf-8")) > MAX_NOTE_BYTES:
        raise NoteTooLarge("note_too_large", f"note exceeds {MAX_NOTE_BYTES} bytes")
    return note


def parse_note(text: str | bytes) -> tuple[str, tuple[NoteSignature, ...]]:
    """Split a signed note into its text and signature lines, strictly (C2SP signed-note)."""
    if len(text) > MAX_NOTE_BYTES:
        raise NoteTooLarge("note_too_large", f"note exceeds {MAX_NOTE_BYTES} bytes")
    try:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        text = data.decode("utf-8")
    except UnicodeError as exc:
        raise MalformedNote("malformed_note", "note is not UTF-8") from exc
    if len(data) > MAX_NOTE_BYTES:
        raise NoteTooLarge("note_too_large", f"note exceeds {MAX_NOTE_BYTES} bytes")
    _check_note_text(text)
    split = text.rfind("\n\n")
    if split < 0:
        raise MalformedNote("malformed_note", "note has no blank line before signatures")
    body, sig_text = text[:split + 1], text[split + 2:]
    if not sig_text.endswith("\n"):
        raise MalformedNote("malformed_note", "signature lines must end in a newline")
    lines = sig_text[:-1].split("\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise MalformedNote("malformed_note", f"more than {MAX_NOTE_SIGNATURES} signatures")
    sigs = []
    for n, line in enumerate(lines, 1):
        name, _, b64 = line.removeprefix(_SIG_PREFIX).partition(" ")
        raw = _strict_b64(b64)
        if not line.startswith(_SIG_PREFIX) or not _key_name_ok(name) or raw is None \
                or len(raw) < 5:
            raise MalformedNote("malformed_note", f"signature line {n} is malformed")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return body, tuple(sigs)


def open_note(text: str | bytes, key_name: str, public_key: bytes) -> str:
    """The note's text once every signature line of the expected key verifies.

    Lines of other keys (another name or key ID) are ignored; at least one line of the
    expected key must be present.
    """
    body, sigs = parse_note(text)
    kid = note_key_id(key_name, public_key)
    mine = [s for s in sigs if s.key_name == key_name and s.key_id == kid]
    if not mine:
        raise UnsignedNote("no_known_signature", f"note carries no signature by {key_name}")
    verifier = nacl.signing.VerifyKey(public_key)
    for s in mine:
        try:
            verifier.verify(body.encode("utf-8"), s.signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
                ValueError) as exc:
            raise BadNoteSignature("bad_note_signature",
                                   f"signature by {key_name} does not verify") from exc
    return body


def verify_note(text: str | bytes, key_name: str, public_key: bytes, *,
                origin: str | None = None) -> Checkpoint:
    """The checkpoint of a note signed by ``key_name``; ``origin``, if given, must match."""
    cp = parse_checkpoint_body(open_note(text, key_name, public_key))
    if origin is not None and cp.origin != origin:
        raise MalformedCheckpoint("wrong_origin", f"checkpoint of {cp.origin[:100]!r}, "
                                  f"expected {origin!r}")
    return cp


# -- offline record proofs -----------------------------------------------------------------
def _as_doc(value: bytes | Mapping[str, Any] | StateDocument) -> dict[str, Any]:
    if isinstance(value, StateDocument):
        return dict(value.doc)
    if isinstance(value, bytes):
        value = decode_json(value)
    if not isinstance(value, Mapping):
        raise ProtocolError("expected a JSON object")
    return dict(value)


def build_proof(*, bundle: bytes | Mapping[str, Any], state: bytes | Mapping[str, Any]
                | StateDocument, note: str, signer_public_key: bytes,
                tree: RecordTree) -> bytes:
    """Canonical bytes of a record proof.

    Checks before writing that the state is a leaf of ``tree``, that ``note`` is a checkpoint
    of ``tree`` signed by ``signer_public_key`` under its origin as key name; the bundle is
    taken as given (:func:`verify_proof` re-merges it).
    """
    bundle_doc, state_doc = _as_doc(bundle), _as_doc(state)
    pn, sha = state_doc.get("pith_number"), state_doc.get("state_sha256")
    if not isinstance(pn, str) or not isinstance(sha, str):
        raise ProtocolError("state document lacks pith_number or state_sha256")
    index = tree.index_of(pn)
    if tree.tree.leaf(index) != leaf_hash(record_leaf(pn, sha)):
        raise ProtocolError(f"the tree holds another state of {pn}")
    body, _ = parse_note(note)
    cp = parse_checkpoint_body(body)
    open_note(note, cp.origin, signer_public_key)
    if (cp.size, cp.root) != (tree.size, tree.root):
        raise ProtocolError("the checkpoint is not of this tree")
    return canonical_json({
        "proof_type": PROOF_TYPE, "proof_version": PROOF_VERSION, "bundle": bundle_doc,
        "state": state_doc, "checkpoint": note, "signer_public_key_hex": signer_public_key.hex(),
        "leaf_index": index, "tree_size": tree.size,
        "inclusion_path": [h.hex() for h in tree.tree.inclusion_path(index)],
    })


def _int_field(doc: Mapping[str, Any], key: str) -> int:
    value = doc[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TREE_SIZE:
        raise MalformedProof("bad_proof", f"$.{key}", "must be an integer in range")
    return value


def _proof_fields(doc: Any) -> tuple[bytes, int, int, list[bytes]]:
    if not isinstance(doc, dict) or doc.get("proof_type") != PROOF_TYPE:
        raise MalformedProof("wrong_document_type", "$.proof_type", f"not {PROOF_TYPE!r}")
    version = doc.get("proof_version")
    if type(version) is not int or version != PROOF_VERSION:
        raise MalformedProof("bad_version", "$.proof_version",
                             f"unsupported version {str(doc.get('proof_version'))[:20]!r}")
    unknown = sorted(str(k) for k in set(doc) - set(_PROOF_KEYS))
    if unknown:
        raise MalformedProof("bad_proof", f"$.{unknown[0][:64]}", "unknown field")
    for key in _PROOF_KEYS:
        if key not in doc:
            raise MalformedProof("bad_proof", f"$.{key}", "missing")
    for key, typ in (("bundle", dict), ("state", dict), ("checkpoint", str)):
        if not isinstance(doc[key], typ):
            raise MalformedProof("bad_proof", f"$.{key}", f"must be a {typ.__name__}")
    pub = doc["signer_public_key_hex"]
    if not isinstance(pub, str) or not _HEX64.fullmatch(pub):
        raise MalformedProof("bad_proof", "$.signer_public_key_hex", "64 lower-case hex digits")
    path = doc["inclusion_path"]
    if not isinstance(path, list) or len(path) > MAX_INCLUSION_PATH:
        raise MalformedProof("bad_proof", "$.inclusion_path",
                             f"a list of at most {MAX_INCLUSION_PATH} hashes")
    for i, h in enumerate(path):
        if not isinstance(h, str) or not _HEX64.fullmatch(h):
            raise MalformedProof("bad_proof", f"$.inclusion_path[{i}]", "not a hex hash")
    return (bytes.fromhex(pub), _int_field(doc, "leaf_index"), _int_field(doc, "tree_size"),
            [bytes.fromhex(h) for h in path])


def _parse_parts(doc: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    try:
        state = parse_state(doc["state"])
    except InputError as exc:
        raise MalformedProof(exc.reason, "$.state", str(exc)) from exc
    events = doc["bundle"].get("events")
    if isinstance(events, list):
        for i, e in enumerate(events):
            try:
                event_from_json(e)
            except InputError as exc:
                raise MalformedProof(exc.reason, f"$.bundle.events[{i}]", str(exc)) from exc
    try:
        bundle = parse_bundle(doc["bundle"])
    except InputError as exc:
        raise MalformedProof(exc.reason, "$.bundle", str(exc)) from exc
    return state, bundle, events if isinstance(events, list) else []


def verify_proof(doc: Any, spec: NetworkSpec) -> Report:
    """Check a decoded record proof, offline, against ``spec``.

    Raises :class:`MalformedProof` (naming the field) when the document cannot be checked;
    otherwise returns a :class:`Report` whose failed checks say what does not hold.
    Registry events count only when a trusted importer of ``spec`` admitted them by an
    import attestation carried in the bundle.
    """
    pub, index, size, path = _proof_fields(doc)
    state, bundle, raw_events = _parse_parts(doc)
    report = Report("proof", state.pith_number)
    origin = checkpoint_origin(spec.name, pub)
    cp: Checkpoint | None = None
    try:
        cp = verify_note(doc["checkpoint"], origin, pub, origin=origin)
        report.add("checkpoint_signature", True, f"signed by {origin}")
    except CheckpointError as exc:
        report.add("checkpoint_signature", False, f"$.checkpoint: {exc.reason}: {exc}")
    allowed = spec.allowed_signers.get("node")
    fp = fingerprint_hex(pub)
    report.add("signer_allowed", allowed is None or fp in allowed,
               f"node key {fp}" + (f" (network {spec.name} does not restrict node keys)"
                                   if allowed is None else " is allowed" if fp in allowed
                                   else " at $.signer_public_key_hex is not an allowed node"))
    computed = state_hash(state.doc)
    report.state_sha256 = computed
    report.add("state_sha256", computed == state.claimed_sha256,
               computed if computed == state.claimed_sha256
               else f"$.state hashes to {computed}, claims {state.claimed_sha256}")
    _bundle_checks(report, bundle, state, raw_events, spec)
    if cp is not None:
        report.add("tree_size", cp.size == size,
                   f"{size}" if cp.size == size else f"$.tree_size {size}, checkpoint {cp.size}")
    try:
        leaf = leaf_hash(record_leaf(state.pith_number, state.claimed_sha256))
        # the root commits to the checkpoint's size, not to the document's copy of it
        n = cp.size if cp is not None else size
        ok = cp is not None and root_from_inclusion(leaf, index, n, path) == cp.root
        report.add("inclusion", ok, f"leaf {index} of {n} gives the checkpoint root" if ok
                   else "$.inclusion_path: " + ("leads to another root" if cp is not None
                                                else "no verified checkpoint to compare"))
    except InputError as exc:
        report.add("inclusion", False, f"$.inclusion_path: {exc.reason}: {exc}")
    return report


def _bundle_checks(report: Report, bundle: Any, state: Any, raw_events: list[Any],
                   spec: NetworkSpec) -> None:
    pn = state.pith_number
    doc = bundle.doc
    ok = bundle.pith_number == pn and doc["short_pith_number"] == parse_pith_number(pn).short
    report.add("bundle_subject", ok, pn if ok else "$.bundle.pith_number or "
               "short_pith_number disagree with $.state.pith_number")
    record = bundle.canonical_record
    if record is None:
        rec_ok = doc["canonical_sha256"] is None and doc["source"] is None
    else:
        rec_ok = (canonical_sha256(record) == bundle.canonical_sha256
                  and isinstance(record, dict) and doc["source"] == record.get("source"))
    same = canonical_json(record) == canonical_json(state.doc["current"].get("canonical_record"))
    report.add("canonical_record", rec_ok and same,
               "record, hash and source agree with the state" if rec_ok and same
               else "$.bundle.canonical_record, canonical_sha256 or source disagree")
    ok = sorted(map(canonical_json, bundle.source_aliases)) == sorted(
        map(canonical_json, state.source_aliases))
    report.add("source_aliases", ok, "bundle and state aliases agree" if ok
               else "$.bundle.source_aliases differ from $.state's")
    events: tuple[Event, ...] = bundle.events
    bad = [f"$.bundle.events[{i}]" for i, (e, raw) in enumerate(zip(events, raw_events,
                                                                    strict=True))
           if canonical_json(e.to_json()) != canonical_json(raw)]
    report.add("event_encoding", not bad, "every event in its canonical encoding" if not bad
               else f"{bad[0]} is not in canonical encoding")
    bad = [f"$.bundle.events[{i}] ({r})" for i, e in enumerate(events)
           if e.signature and (r := e.verify_native()) is not None]
    report.add("event_signatures", not bad, f"{sum(1 for e in events if e.signature)} "
               "native event signature(s)" if not bad else f"{bad[0]} does not verify")
    admitted: set[bytes] = set()
    for e in events:
        adm = admission_from_import(e, spec) if e.verify_native() is None else None
        admitted.update(canonical_json(a.to_json()) for a in (adm.events if adm else ()))
    bad = [f"$.bundle.events[{i}]" for i, e in enumerate(events)
           if e.signature is None and canonical_json(e.to_json()) not in admitted]
    report.add("registry_admission", not bad, "every registry event is admitted by a trusted "
               "import attestation" if not bad else f"{bad[0]} is admitted by no trusted import")
    if bundle.pith_number != pn:
        report.add("merge", False, "$.bundle is about another record than $.state")
        return
    native, _operator = admissions_for(events, bundle.source_aliases)
    merged = merge(pn, native, spec)
    claimed = state_hash(state.doc)
    report.add("merge", merged.state_sha256 == claimed,
               "re-merge of the bundle reproduces the state" if merged.state_sha256 == claimed
               else f"$.state differs from the re-merge ({merged.state_sha256})")


def verify_proof_bytes(data: bytes, spec: NetworkSpec) -> Report:
    """Decode (size-checked) and verify a proof file; raises :class:`InputError` if unusable."""
    return verify_proof(decode_json(data, limit=MAX_PROOF_BYTES), spec)
