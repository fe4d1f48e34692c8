"""Registry receipts: Ed25519 signatures by a registry key over raw ``canonical_sha256``."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .canonical import canonical_sha256
from .errors import InputError
from .identifiers import pith_number_for_record
from .keys import verify_digest
from .spec import NetworkSpec

__all__ = ["check_receipt", "check_record_created"]


def check_receipt(receipt: Any, canonical_sha256_hex: str, spec: NetworkSpec) -> str | None:
    """None if ``receipt`` is a valid registry signature over ``canonical_sha256_hex``.

    Otherwise a reason code: ``bad_receipt`` (malformed or signature fails),
    ``receipt_mismatch`` (receipt names another digest), ``unknown_registry_key``.
    """
    if not isinstance(receipt, dict):
        return "bad_receipt"
    if receipt.get("canonical_sha256") != canonical_sha256_hex:
        return "receipt_mismatch"
    if receipt.get("algorithm") != "ed25519" or receipt.get("signed_message") != (
        "canonical_sha256_bytes"
    ):
        return "bad_receipt"
    key_id = receipt.get("key_id")
    key = spec.registry_key(key_id) if isinstance(key_id, str) else None
    if key is None or receipt.get("public_key_fingerprint") != key.fingerprint:
        return "unknown_registry_key"
    sig_text = receipt.get("signature_b64")
    try:
        sig = base64.b64decode(sig_text, validate=True) if isinstance(sig_text, str) else b""
        digest = bytes.fromhex(canonical_sha256_hex)
    except (binascii.Error, ValueError):
        return "bad_receipt"
    if not verify_digest(key.public_key, digest, sig):
        return "bad_receipt"
    return None


def check_record_created(payload: Any, subject: str, signer_key_id: str,
                         spec: NetworkSpec) -> str | None:
    """Validate a ``record_created`` payload: hash, Pith Number and receipt."""
    if not isinstance(payload, dict) or not isinstance(payload.get("receipt"), dict):
        return "bad_payload"
    record = payload.get("canonical_record")
    claimed = payload.get("canonical_sha256")
    if not isinstance(record, dict) or not isinstance(claimed, str):
        return "bad_payload"
    try:
        if canonical_sha256(record) != claimed:
            return "canonical_hash_mismatch"
        if str(pith_number_for_record(record)) != subject:
            return "pith_number_mismatch"
    except (InputError, TypeError, ValueError):
        return "bad_payload"
    if payload["receipt"].get("key_id") != signer_key_id:
        return "receipt_mismatch"
    return check_receipt(payload["receipt"], claimed, spec)
