"""Ed25519 keys: signing, verification and the key-file format.

Pith signs the 32 raw bytes of a SHA-256 digest, never hex text; so do we.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from .errors import DecodeError, InputError
from .identifiers import fingerprint_b32, fingerprint_hex

__all__ = [
    "KEY_FILE_TYPE",
    "SigningKey",
    "key_id_for",
    "public_key_from_key_id",
    "verify_digest",
]

KEY_FILE_TYPE = "pithnode_ed25519_secret_key"
KEY_FILE_VERSION = 1
MAX_KEY_FILE_BYTES = 4096
NATIVE_KEY_PREFIX = "ed25519:"


def key_id_for(public_key: bytes) -> str:
    """Key id of a native (non-registry) signer: ``ed25519:`` + the raw public key in hex."""
    return NATIVE_KEY_PREFIX + public_key.hex()


def public_key_from_key_id(key_id: str) -> bytes:
    """Inverse of :func:`key_id_for`; raises :class:`InputError` for anything else."""
    if not key_id.startswith(NATIVE_KEY_PREFIX):
        raise InputError("bad_key_id", f"not a native key id: {key_id[:40]!r}")
    hexpart = key_id[len(NATIVE_KEY_PREFIX):]
    if len(hexpart) != 64:
        raise InputError("bad_key_id", "a native key id holds a 32-byte public key in hex")
    try:
        return bytes.fromhex(hexpart)
    except ValueError as exc:
        raise InputError("bad_key_id", "key id is not hex") from exc


def verify_digest(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """Ed25519 verification of a signature over 32 raw digest bytes."""
    if len(public_key) != 32 or len(digest) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(digest, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 secret key, made from its 32-byte seed."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise InputError("bad_key", "an Ed25519 seed is 32 bytes")

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def public_key(self) -> bytes:
        return bytes(nacl.signing.SigningKey(self.seed).verify_key)

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint_hex(self.public_key)

    @property
    def fingerprint_b32(self) -> str:
        return fingerprint_b32(self.public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        if len(digest) != 32:
            raise ValueError("sign_digest takes 32 raw digest bytes")
        return nacl.signing.SigningKey(self.seed).sign(digest).signature

    # -- key file ---------------------------------------------------------------------------
    def to_file_bytes(self) -> bytes:
        doc = {
            "key_type": KEY_FILE_TYPE,
            "key_version": KEY_FILE_VERSION,
            "seed_b64": base64.b64encode(self.seed).decode("ascii"),
            "public_key_hex": self.public_key.hex(),
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_file_bytes(cls, data: bytes) -> SigningKey:
        if len(data) > MAX_KEY_FILE_BYTES:
            raise DecodeError("bad_key_file", "key file is too large to be a key file")
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("key_type") != KEY_FILE_TYPE:
                raise DecodeError("bad_key_file", "not a pithnode key file")
            if doc.get("key_version") != KEY_FILE_VERSION:
                raise DecodeError("bad_key_file",
                                  f"unsupported key file version {doc.get('key_version')!r}")
            key = cls(base64.b64decode(doc["seed_b64"], validate=True))
        except DecodeError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, InputError) as exc:
            raise DecodeError("bad_key_file", f"malformed key file: {exc}") from exc
        if doc.get("public_key_hex") != key.public_key.hex():
            raise DecodeError("bad_key_file", "key file public key does not match its seed")
        return key
