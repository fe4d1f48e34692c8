"""The one canonical byte form we hash and sign, exactly as Pith computes it.

``canonical_json`` is the only function in the project that produces bytes to hash.
Pith's rule (verified on its real data):
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import InputError

__all__ = ["canonical_json", "canonical_sha256", "sha256_hex", "sha256_raw"]


def canonical_json(obj: Any) -> bytes:
    """Canonical bytes of a JSON value.

    Raises :class:`InputError` (reason ``not_canonical``) for values with no canonical form:
    NaN and infinities, lone surrogates, non-string keys, non-JSON types.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise InputError("not_canonical", f"value has no canonical JSON form: {exc}") from exc


def sha256_raw(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(obj: Any) -> str:
    """Hex SHA-256 of ``canonical_json(obj)``."""
    return sha256_hex(canonical_json(obj))
