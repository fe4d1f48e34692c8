"""The one canonical byte form we hash and sign, exactly as Pith computes it.

``canonical_json`` is the only function in the project that produces bytes to hash.
Pith's rule (verified on its real data):
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``.

The rule is the standard library's encoder; orjson produces the same bytes about seven
times faster for almost every value, and is used only where its output is provably the
same. Its output differs from the rule in three ways, each of which leaves a mark in the
output that sends the value to the standard library instead:

- non-finite floats become ``null`` (the rule refuses them): where the output has a
  ``null``, it is decoded again and must equal the value (a float is never equal to None);
- floats below 1e-4 in magnitude are written ``0.0000...`` or with a one-digit exponent
  (``1e-7``, where the rule writes ``1e-07``): ``0.0000`` or a digit, ``e-``, one digit;
- what orjson refuses (integers beyond 64 bits, non-string keys, lone surrogates, deep
  nesting, subclasses of JSON types, other types) raises, and the rule decides.

``tests/test_canonical.py`` compares both encoders on generated values of every kind.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from .errors import InputError

__all__ = ["canonical_json", "canonical_sha256", "compact_json", "key_sorted", "sha256_hex",
           "sha256_raw"]

_SORTED = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS
           | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME)
_UNSORTED = _SORTED & ~orjson.OPT_SORT_KEYS


def _may_differ(obj: Any, out: bytes, finite: bool) -> bool:
    """Whether orjson's ``out`` for ``obj`` may differ from the standard library's bytes
    (see above); ``finite``: ``obj`` is known to hold no non-finite float."""
    if b"0.0000" in out:
        return True
    if not finite and b"null" in out:
        try:
            if orjson.loads(out) != obj:
                return True
        except orjson.JSONDecodeError:
            return True
    n = len(out)
    i = out.find(b"e-")
    while i != -1:  # a float's exponent: digit, "e-", digit; one digit where the rule pads
        if (i > 0 and 48 <= out[i - 1] <= 57 and i + 2 < n and 48 <= out[i + 2] <= 57
                and not (i + 3 < n and 48 <= out[i + 3] <= 57)):
            return True
        i = out.find(b"e-", i + 2)
    return False


def _fast(obj: Any, option: int, finite: bool) -> bytes | None:
    try:
        out = orjson.dumps(obj, option=option)
    except TypeError:  # orjson.JSONEncodeError included
        return None
    return None if _may_differ(obj, out, finite) else out


def _standard(obj: Any, sort_keys: bool) -> bytes:
    return json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def canonical_json(obj: Any, *, finite: bool = False) -> bytes:
    """Canonical bytes of a JSON value.

    Raises :class:`InputError` (reason ``not_canonical``) for values with no canonical form:
    NaN and infinities, lone surrogates, non-string keys, non-JSON types.

    ``finite=True`` is the caller's word that no float in ``obj`` is NaN or infinite (a
    state the merge built: every event in it had its canonical bytes computed when it was
    parsed, made or read back, which refuses such floats); it spares the decode of the
    output that tells orjson's ``null`` for NaN from a real null. The bytes are the same.
    """
    out = _fast(obj, _SORTED, finite)
    if out is not None:
        return out
    try:
        return _standard(obj, True)
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise InputError("not_canonical", f"value has no canonical JSON form: {exc}") from exc


def compact_json(obj: Any, *, finite: bool = False) -> bytes:
    """Compact UTF-8 JSON in the value's own key order (a served state document); the
    standard library's errors (ValueError, TypeError) for values with no JSON form.
    ``finite`` as for :func:`canonical_json`."""
    out = _fast(obj, _UNSORTED, finite)
    return out if out is not None else _standard(obj, False)


def _key_sorted(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _key_sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_key_sorted(x) for x in obj]
    return obj


def key_sorted(obj: Any, *, finite: bool = False) -> Any:
    """A copy of ``obj`` with every object's keys in sorted order (as parsing its canonical
    JSON gives them). With ``finite`` (as for :func:`canonical_json`) the copy is made by an
    orjson round trip, which keeps every value a finite JSON value can hold (it refuses
    integers past 64 bits and lone surrogates, which are copied in Python instead)."""
    if finite:
        try:
            return orjson.loads(orjson.dumps(obj, option=_SORTED))
        except (TypeError, orjson.JSONDecodeError):
            pass
    return _key_sorted(obj)


def sha256_raw(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(obj: Any) -> str:
    """Hex SHA-256 of ``canonical_json(obj)``."""
    return sha256_hex(canonical_json(obj))
