"""The one canonical byte form we hash and sign, exactly as Pith computes it.

``canonical_json`` is the only function in the project that produces bytes to hash.
Pith's rule (verified on its real data):
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "canonical_sha256", "sha256_hex", "sha256_raw"]


def canonical_json(obj: Any) -> bytes:
    """Canonical bytes of a JSON value (NaN and infinities are refused)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_raw(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(obj: Any) -> str:
    """Hex SHA-256 of ``canonical_json(obj)``."""
    return sha256_hex(canonical_json(obj))
