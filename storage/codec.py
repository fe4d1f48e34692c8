"""How exact bytes are kept in the ``objects`` table (and state documents in ``states``).

An object is addressed by the SHA-256 of its exact bytes; the codec only changes how those
bytes sit on disk. Decoding always gives back the exact bytes, and readers check them
against the SHA-256 (:func:`decode_object`), so a damaged blob is found, never served.

* ``CODEC_RAW`` (0): the bytes themselves.
* ``CODEC_DEFLATE`` (1): raw deflate (zlib, no header), used for large documents.
* ``CODEC_EVENT`` (2): a native signed event as a CBOR array of its fields, with the event
  id, signature and public key as raw bytes. The exact bytes are ``canonical_json`` of the
  rebuilt envelope, i.e. :meth:`Event.canonical_bytes` -- the one function that made them.
  About half the size of the JSON and cheaper than deflate for small events.
"""

from __future__ import annotations

import hashlib
import zlib

import cbor2

from pithnode.protocol.canonical import key_sorted
from pithnode.protocol.documents import loads
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, Signer, event_from_json
from pithnode.protocol.identifiers import fingerprint_hex

__all__ = [
    "CODEC_DEFLATE",
    "CODEC_EVENT",
    "CODEC_RAW",
    "CodecError",
    "decode_bytes",
    "decode_event",
    "encode_bytes",
    "encode_event",
]

CODEC_RAW = 0
CODEC_DEFLATE = 1
CODEC_EVENT = 2
CODECS = (CODEC_RAW, CODEC_DEFLATE, CODEC_EVENT)

_LAYOUT = 1
_KEY_PREFIX = "ed25519:"
_ID_PREFIX = "sha256:"
#: Above this many bytes an event is deflated instead (import attestations carry whole
#: registry documents, which deflate shrinks to ~40%, CBOR only to ~80%).
_DEFLATE_EVENT_OVER = 1536
#: Level 1: as small as level 6 within a few percent on our JSON, and faster.
_DEFLATE_LEVEL = 1


class CodecError(Exception):
    """A stored blob that does not decode (the storage layer reports it as corrupt)."""


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, _DEFLATE_LEVEL, -15)


def _inflate(blob: bytes, size: int) -> bytes:
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(blob, size + 1)
    except zlib.error as exc:
        raise CodecError(f"deflate stream does not decode: {exc}") from exc
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise CodecError("deflate stream is truncated or has trailing bytes")
    return out


def encode_bytes(data: bytes) -> tuple[int, bytes]:
    """Pick deflate when it saves space, else raw."""
    if len(data) >= 128:
        packed = _deflate(data)
        if len(packed) < len(data):
            return CODEC_DEFLATE, packed
    return CODEC_RAW, data


def _raw_hex(text: str, prefix: str, size: int) -> bytes | None:
    """Raw bytes of ``prefix + lowercase hex`` when that spelling round-trips exactly."""
    if not text.startswith(prefix) or len(text) != len(prefix) + 2 * size:
        return None
    try:
        raw = bytes.fromhex(text[len(prefix):])
    except ValueError:
        return None
    return raw if prefix + raw.hex() == text else None


def encode_event(ev: Event, canonical: bytes) -> tuple[int, bytes]:
    """Encode a native event whose exact bytes are ``canonical`` (its canonical_bytes()).

    Payload objects are stored key-sorted: a decoded event is the same whatever key order
    it arrived in (bundles, which keep key order, are then built deterministically).
    """
    if not ev.signature or ev.extra or len(canonical) > _DEFLATE_EVENT_OVER:
        return encode_bytes(canonical)
    signer = ev.signer
    key: str | bytes = signer.key_id
    fp: str | None = signer.public_key_fingerprint
    raw_key = _raw_hex(signer.key_id, _KEY_PREFIX, 32)
    if raw_key is not None:
        key = raw_key
        if fingerprint_hex(raw_key) == signer.public_key_fingerprint:
            fp = None
    eid: str | bytes = _raw_hex(ev.event_id, _ID_PREFIX, 32) or ev.event_id
    try:
        blob = cbor2.dumps([_LAYOUT, ev.event_type, ev.subject, ev.target, ev.created_at, key,
                            fp, signer.signer_id, signer.signer_type,
                            key_sorted(ev.payload, finite=True), eid, ev.signature])
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        return encode_bytes(canonical)
    return CODEC_EVENT, blob


def _event_from_fields(blob: bytes) -> Event:
    try:
        f = cbor2.loads(blob)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"event blob does not decode: {exc}") from exc
    if not isinstance(f, list) or len(f) != 12 or f[0] != _LAYOUT:
        raise CodecError("event blob has the wrong layout")
    (_, etype, subject, target, created_at, key, fp, signer_id, signer_type, payload, eid,
     sig) = f
    if isinstance(key, bytes):
        if len(key) != 32:
            raise CodecError("event blob holds a bad public key")
        if fp is None:
            fp = fingerprint_hex(key)
        key = _KEY_PREFIX + key.hex()
    if isinstance(eid, bytes):
        if len(eid) != 32:
            raise CodecError("event blob holds a bad event id")
        eid = _ID_PREFIX + eid.hex()
    strings = (etype, subject, target, created_at, key, fp, signer_id, signer_type, eid)
    if not all(isinstance(s, str) for s in strings) or not isinstance(sig, bytes) or not sig:
        raise CodecError("event blob holds fields of the wrong type")
    return Event(etype, subject, target, created_at, Signer(key, fp, signer_id, signer_type),
                 payload, eid, sig)


def decode_bytes(codec: int, blob: bytes, size: int) -> bytes:
    """The exact bytes of a stored blob (not yet checked against its SHA-256)."""
    if codec == CODEC_RAW:
        return bytes(blob)
    if codec == CODEC_DEFLATE:
        return _inflate(blob, size)
    if codec == CODEC_EVENT:
        data: bytes = _event_from_fields(blob).canonical_bytes()
        return data
    raise CodecError(f"unknown codec {codec}")


def _parse_event(data: bytes) -> Event:
    try:
        return event_from_json(loads(data))
    except (ValueError, InputError) as exc:
        raise CodecError(f"object is not an event: {exc}") from exc


def decode_event(codec: int, blob: bytes, size: int, sha256: bytes) -> tuple[Event, bytes]:
    """A stored event and its exact bytes, checked against ``sha256``."""
    if codec == CODEC_EVENT:
        ev = _event_from_fields(blob)
        data = ev.canonical_bytes()
    else:
        data = decode_bytes(codec, blob, size)
        ev = _parse_event(data)
    if len(data) != size or hashlib.sha256(data).digest() != sha256:
        raise CodecError("bytes do not match their SHA-256")
    return ev, data


def check_blob(codec: int, blob: bytes, size: int, sha256: bytes) -> bytes:
    """Exact bytes of a blob, raising :class:`CodecError` unless they hash to ``sha256``."""
    data = decode_bytes(codec, blob, size)
    if len(data) != size or hashlib.sha256(data).digest() != sha256:
        raise CodecError("bytes do not match their SHA-256")
    return data


