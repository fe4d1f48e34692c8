"""Decoding documents from outside: size limits first, then UTF-8, then JSON, then kind.

The standard library's ``json`` decides what a document means. orjson decodes about three
times faster and gives the same values for all it accepts, with one exception: integers
beyond 64 bits, which it reads as floats. So orjson decodes first unless the bytes hold a
run of 19 digits (where such an integer may be), and whatever it refuses -- invalid UTF-8,
lone surrogates, ``NaN``, numbers that overflow a double, nesting past its limit -- goes to
the standard library, which gives its own value or error. ``tests/test_documents.py``
compares both decoders on generated documents and numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .errors import DecodeError, TooLarge

__all__ = ["MAX_DOCUMENT_BYTES", "MAX_LINE_BYTES", "Document", "decode_document", "decode_json",
           "decode_json_finite", "loads"]

MAX_DOCUMENT_BYTES = 64 << 20
#: One JSON Lines record (one event).
MAX_LINE_BYTES = 2 << 20
MAX_DEPTH = 64

DocKind = Literal["state", "bundle", "event"]


@dataclass(frozen=True, slots=True)
class Document:
    kind: DocKind
    doc: dict[str, Any]


def _depth_ok(obj: Any) -> bool:
    stack = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return True


#: Digits to "d", every other byte to ".": a run of 19 "d" marks where an integer orjson
#: would read as a float (beyond 64 bits: 19 digits or more) may be. (A translate and a
#: find scan a line several times faster than the regular expression ``[0-9]{19}``.)
_DIGITS = bytes(100 if 48 <= i <= 57 else 46 for i in range(256))
_LONG_RUN = b"d" * 19


def _fast(data: bytes) -> tuple[bool, Any]:
    """``(True, value)`` when orjson's value for ``data`` is provably the standard
    library's, else ``(False, None)``."""
    if _LONG_RUN in data.translate(_DIGITS):
        return False, None
    try:
        return True, orjson.loads(data)
    except orjson.JSONDecodeError:
        return False, None


def loads(data: bytes) -> Any:
    """``json.loads(data)`` for trusted UTF-8 JSON (bytes this node made or stored), at
    orjson's speed where that gives the same value."""
    done, obj = _fast(data)
    return obj if done else json.loads(data)


def decode_json(data: bytes, *, limit: int = MAX_DOCUMENT_BYTES) -> Any:
    """Strict UTF-8 JSON with a size limit checked before decoding."""
    return decode_json_finite(data, limit=limit)[0]


def decode_json_finite(data: bytes, *, limit: int = MAX_DOCUMENT_BYTES) -> tuple[Any, bool]:
    """:func:`decode_json`, and whether the value is known to hold no infinite float (orjson
    decoded it: it refuses numbers that overflow a double, which the standard library reads
    as infinities), for ``canonical_json(..., finite=True)``."""
    if len(data) > limit:
        raise TooLarge("too_large", f"{len(data)} bytes exceeds the limit of {limit}")
    done, obj = _fast(data)
    if done:
        return _depth_checked(data, obj), True
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("bad_utf8", f"not UTF-8 (byte {exc.start})") from exc
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DecodeError("bad_json", f"not JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}") from exc
    except RecursionError as exc:
        raise DecodeError("bad_json", "JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. integers beyond the interpreter's digit limit
        raise DecodeError("bad_json", f"not JSON: {exc}") from exc
    return _depth_checked(data, obj), False


def _depth_checked(data: bytes, obj: Any) -> Any:
    # a document with fewer brackets than the limit cannot nest deeper than it
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and not _depth_ok(obj):
        raise DecodeError("bad_json", f"JSON nested deeper than {MAX_DEPTH}")
    return obj


def _no_constant(name: str) -> Any:
    raise DecodeError("bad_json", f"{name} is not valid JSON")


def decode_document(data: bytes) -> Document:
    """A state, a bundle or a single event, told apart by their type fields."""
    obj = decode_json(data)
    if not isinstance(obj, dict):
        raise DecodeError("wrong_document_type", "a document is a JSON object")
    if "state_type" in obj:
        return Document("state", obj)
    if "bundle_type" in obj:
        return Document("bundle", obj)
    if "event_type" in obj:
        return Document("event", obj)
    raise DecodeError("wrong_document_type", "neither a state, a bundle nor an event")


