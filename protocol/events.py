"""Events: Pith's envelope, the project's native signed events, ids and signatures.

Two families share one envelope (``event_type``, ``subject_pith_number``, ``target``,
``created_at``, ``signer``, ``payload``, ``event_id``):

* **Registry events** are Pith's own (signer type ``pith_registry``). Their ids are opaque
  (Pith's id rule is unknown) and they carry no per-event signature; they enter a state only
  through an admission (docs/PROTOCOL.md, "Trust").
* **Native events** are signed by a node or author key. ``event_id`` is
  ``"sha256:" + hex(sha256(canonical_json(core)))`` where ``core`` is every field but
  ``event_id`` and ``signature_b64``; the signature is Ed25519 over the 32 raw digest bytes.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .canonical import canonical_json, sha256_raw
from .documents import decode_json_finite
from .errors import DecodeError, InputError, TooLarge
from .identifiers import fingerprint_hex, parse_pith_number
from .keys import SigningKey, public_key_from_key_id, verify_digest

__all__ = [
    "EVENT_VERSION",
    "MAX_EVENT_BYTES",
    "NATIVE_TIMESTAMP",
    "NATIVE_TYPES",
    "REGISTRY_TYPES",
    "STATE_LISTS",
    "TARGETS",
    "Event",
    "Signer",
    "event_from_bytes",
    "event_from_json",
    "event_from_state_entry",
    "make_native_event",
    "parse_timestamp",
    "utc_timestamp",
]

EVENT_VERSION = 1
#: Canonical size limit of one event (an import attestation may carry a large snapshot).
MAX_EVENT_BYTES = 1 << 20

REGISTRY_TYPES = frozenset({"record_created", "graph_snapshot", "correction"})
#: Event type -> the list of ``current`` it feeds (``record_created`` is a single object).
STATE_LISTS: Mapping[str, str] = {
    "record_created": "record_created",
    "graph_snapshot": "graph_snapshots",
    "author_attestation": "author_attestations",
    "timestamp_anchor": "timestamp_anchors",
    "storage_attestation": "storage_attestations",
    "storage_audit": "storage_attestations",
    "citation_signature": "citation_signatures",
    "replication_record": "replication_records",
    "state_attestation": "replication_records",
    "correction": "corrections",
    "mirror_hint": "mirror_hints",
}
#: The target each event type must carry; (list, target) names the type uniquely.
TARGETS: Mapping[str, str] = {
    "record_created": "record",
    "graph_snapshot": "graph",
    "author_attestation": "author",
    "timestamp_anchor": "record",
    "storage_attestation": "storage",
    "storage_audit": "audit",
    "citation_signature": "citation",
    "replication_record": "replication",
    "state_attestation": "state",
    "correction": "record",
    "mirror_hint": "mirror",
    "registry_import": "admission",
}
NATIVE_TYPES = frozenset(TARGETS) - {"record_created", "graph_snapshot"}
_TYPE_BY_LIST_TARGET = {(STATE_LISTS[t], TARGETS[t]): t for t in STATE_LISTS}

_TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
NATIVE_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_EVENT_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
_SIGNER_KEYS = ("key_id", "public_key_fingerprint", "signer_id", "signer_type")
_ENVELOPE_KEYS = ("event_type", "subject_pith_number", "target", "created_at", "signer",
                  "payload", "event_id")


def parse_timestamp(text: str) -> int:
    """RFC 3339 UTC timestamp (``Z``, optional fraction) to integer microseconds."""
    if not isinstance(text, str):
        raise InputError("bad_created_at", f"not a UTC timestamp: {str(text)[:40]!r}")
    return _parse_timestamp(text)


@functools.lru_cache(maxsize=1 << 16)
def _parse_timestamp(text: str) -> int:
    if not _TS_RE.fullmatch(text):
        raise InputError("bad_created_at", f"not a UTC timestamp: {text[:40]!r}")
    try:
        dt = datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                      int(text[14:16]), int(text[17:19]), tzinfo=UTC)
    except ValueError as exc:
        raise InputError("bad_created_at", f"not a valid date: {text!r}") from exc
    micros = int(text[20:-1].ljust(6, "0")) if len(text) > 20 else 0
    return (calendar.timegm(dt.utctimetuple())) * 1_000_000 + micros


def utc_timestamp(seconds: float) -> str:
    """Seconds since the epoch as a native event timestamp (whole seconds, ``Z``)."""
    return datetime.fromtimestamp(int(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Signer:
    key_id: str
    public_key_fingerprint: str
    signer_id: str
    signer_type: str

    def to_json(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "public_key_fingerprint": self.public_key_fingerprint,
            "signer_id": self.signer_id,
            "signer_type": self.signer_type,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Signer:
        if not isinstance(obj, dict) or set(obj) != set(_SIGNER_KEYS):
            raise DecodeError("bad_signer", f"signer must have exactly the keys {_SIGNER_KEYS}")
        if not all(isinstance(obj[k], str) and 0 < len(obj[k]) <= 256 for k in _SIGNER_KEYS):
            raise DecodeError("bad_signer", "signer fields must be non-empty short strings")
        return cls(**{k: obj[k] for k in _SIGNER_KEYS})

    @classmethod
    def for_key(cls, key: SigningKey, signer_id: str, signer_type: str) -> Signer:
        return cls(key.key_id, key.fingerprint, signer_id, signer_type)


#: What an Ed25519 check needs: ``(public key, digest, signature)`` (:func:`verify_digest`).
SignatureJob = tuple[bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``signature`` is None for registry events (they carry none)."""

    event_type: str
    subject: str
    target: str
    created_at: str
    signer: Signer
    payload: Any
    event_id: str
    signature: bytes | None = None
    #: fields of a registry envelope beyond the known ones, kept verbatim.
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: canonical bytes of the envelope, set only by the parser (``dataclasses.replace``
    #: does not carry it over, so a modified copy recomputes its bytes)
    canonical: bytes | None = field(default=None, init=False, compare=False, repr=False)
    #: set by a successful :meth:`verify_native` (never carried over by ``replace``), so
    #: an event checked by the gossip validator is not checked again by the store
    verified: bool = field(default=False, init=False, compare=False, repr=False)

    @property
    def is_native(self) -> bool:
        return self.signature is not None

    @property
    def time_key(self) -> int:
        return parse_timestamp(self.created_at)

    @property
    def known_finite(self) -> bool:
        """Whether this event's values are known to hold no NaN or infinite float (the
        parser made its envelope's canonical bytes, which refuses them): what is built of
        them may pass ``finite=True`` to :func:`canonical_json`."""
        return self.canonical is not None

    def core(self) -> dict[str, Any]:
        """What a native event's id and signature cover."""
        return {
            "event_version": EVENT_VERSION,
            "event_type": self.event_type,
            "subject_pith_number": self.subject,
            "target": self.target,
            "created_at": self.created_at,
            "signer": self.signer.to_json(),
            "payload": self.payload,
        }

    def to_json(self) -> dict[str, Any]:
        """The full envelope, as carried in bundles and on the wire."""
        out: dict[str, Any] = {
            "event_type": self.event_type,
            "subject_pith_number": self.subject,
            "target": self.target,
            "payload": self.payload,
            "created_at": self.created_at,
            "signer": self.signer.to_json(),
            "event_id": self.event_id,
        }
        if self.signature is not None:
            out["event_version"] = EVENT_VERSION
            out["signature_b64"] = base64.b64encode(self.signature).decode("ascii")
        else:
            out.update(self.extra)
        return out

    def canonical_bytes(self) -> bytes:
        if self.canonical is not None:
            return self.canonical
        return canonical_json(self.to_json())

    def state_entry(self) -> dict[str, Any]:
        """The event as a state document lists it."""
        return {
            "event_id": self.event_id,
            "target": self.target,
            "created_at": self.created_at,
            "signer": self.signer.to_json(),
            "payload": self.payload,
        }

    def computed_id(self) -> str:
        """The native id rule applied to this event's core."""
        return "sha256:" + sha256_raw(canonical_json(self.core())).hex()

    def verify_native(self) -> str | None:
        """Check a native event's id, key and signature; None when valid, else a reason."""
        reason, job = self.signature_job()
        return reason if job is None else self.settle_signature(verify_digest(*job))

    def signature_job(self) -> tuple[str | None, SignatureJob | None]:
        """:meth:`verify_native` up to the Ed25519 check itself: ``(reason, None)`` when the
        id or key is wrong (or ``(None, None)`` when the event was verified before), else
        ``(None, job)``: pass what :func:`verify_digest` says of ``job`` to
        :meth:`settle_signature`."""
        if self.signature is None:
            return "not_native", None
        if self.verified:
            return None, None
        digest = sha256_raw(canonical_json(self.core(), finite=self.known_finite))
        if self.event_id != "sha256:" + digest.hex():
            return "event_id_mismatch", None
        try:
            pub = public_key_from_key_id(self.signer.key_id)
        except InputError:
            return "bad_key_id", None
        if fingerprint_hex(pub) != self.signer.public_key_fingerprint:
            return "fingerprint_mismatch", None
        return None, (pub, digest, self.signature)

    def settle_signature(self, accepted: bool) -> str | None:
        """The outcome of this event's :meth:`signature_job`: None (and the event marked
        verified) when :func:`verify_digest` accepted it, else ``bad_signature``."""
        if not accepted:
            return "bad_signature"
        object.__setattr__(self, "verified", True)
        return None


def make_native_event(
    key: SigningKey,
    *,
    event_type: str,
    subject: str,
    payload: Any,
    created_at: str,
    signer_id: str,
    signer_type: str,
) -> Event:
    """Create and sign a native event."""
    if event_type not in NATIVE_TYPES:
        raise ValueError(f"not a native event type: {event_type!r}")
    if not NATIVE_TIMESTAMP.fullmatch(created_at):
        raise ValueError(f"native timestamps are whole UTC seconds: {created_at!r}")
    unsigned = Event(event_type, subject, TARGETS[event_type], created_at,
                     Signer.for_key(key, signer_id, signer_type), payload, "", b"")
    digest = sha256_raw(canonical_json(unsigned.core()))
    return Event(unsigned.event_type, subject, unsigned.target, created_at, unsigned.signer,
                 payload, "sha256:" + digest.hex(), key.sign_digest(digest))


def _require_str(obj: Mapping[str, Any], key: str, limit: int = 256) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise DecodeError("bad_envelope", f"event field {key!r} must be a non-empty string")
    return v


def event_from_bytes(data: bytes, *, limit: int) -> Event:
    """Parse one event's JSON bytes (at most ``limit`` of them)."""
    obj, finite = decode_json_finite(data, limit=limit)
    return event_from_json(obj, finite=finite)


def event_from_json(obj: Any, *, finite: bool = False) -> Event:
    """Parse an envelope (registry or native). Checks shape, not signatures or validity.

    ``finite``: ``obj`` is known to hold no NaN or infinite float
    (:func:`~pithnode.protocol.documents.decode_json_finite` says so of what it decoded).
    """
    if not isinstance(obj, dict):
        raise DecodeError("bad_envelope", "an event is a JSON object")
    canonical = canonical_json(obj, finite=finite)
    size = len(canonical)
    if size > MAX_EVENT_BYTES:
        raise TooLarge("event_too_large", f"event of {size} bytes exceeds {MAX_EVENT_BYTES}")
    missing = [k for k in _ENVELOPE_KEYS if k not in obj]
    if missing:
        raise DecodeError("bad_envelope", f"event lacks {missing[0]!r}")
    etype = _require_str(obj, "event_type", 64)
    subject = _require_str(obj, "subject_pith_number", 64)
    if not parse_pith_number(subject).is_full:
        raise DecodeError("bad_envelope", "subject_pith_number must be a full Pith Number")
    target = _require_str(obj, "target", 64)
    created_at = _require_str(obj, "created_at", 64)
    event_id = _require_str(obj, "event_id", 128)
    if not _EVENT_ID_RE.fullmatch(event_id):
        raise DecodeError("bad_envelope", "event_id must be 'sha256:' and 64 hex digits")
    signer = Signer.from_json(obj["signer"])
    payload = obj["payload"]
    if "signature_b64" in obj and signer.signer_type != "pith_registry":
        unknown = set(obj) - set(_ENVELOPE_KEYS) - {"signature_b64", "event_version"}
        if unknown:
            raise DecodeError("bad_envelope", f"unknown field {sorted(unknown)[0]!r}")
        if obj.get("event_version") != EVENT_VERSION:
            raise DecodeError("bad_version",
                              f"unsupported event_version {obj.get('event_version')!r}")
        sig_text = obj["signature_b64"]
        try:
            sig = base64.b64decode(sig_text, validate=True) if isinstance(sig_text, str) else b""
        except (binascii.Error, ValueError) as exc:
            raise DecodeError("bad_signature_encoding", "signature_b64 is not base64") from exc
        if len(sig) != 64:
            raise DecodeError("bad_signature_encoding", "an Ed25519 signature is 64 bytes")
        # the parsed bytes are the envelope's canonical form unless base64 was not canonical
        ev = Event(etype, subject, target, created_at, signer, payload, event_id, sig)
        if base64.b64encode(sig).decode("ascii") == sig_text:
            object.__setattr__(ev, "canonical", canonical)
        return ev
    if signer.signer_type != "pith_registry":
        raise DecodeError("unsigned_event", "only registry events may come without a signature")
    extra = {k: v for k, v in obj.items() if k not in _ENVELOPE_KEYS}
    ev = Event(etype, subject, target, created_at, signer, payload, event_id, None, extra)
    object.__setattr__(ev, "canonical", canonical)
    return ev


def event_from_state_entry(list_name: str, entry: Any, subject: str) -> Event:
    """Rebuild an event from a state document's entry (``{event_id, target, ...}``).

    State documents carry no signatures: registry entries come back as registry events;
    native entries come back with an empty signature, checkable only for their content id.
    """
    if not isinstance(entry, dict) or set(entry) != {"event_id", "target", "created_at",
                                                     "signer", "payload"}:
        raise DecodeError("bad_state_entry", f"malformed entry in {list_name}")
    target = entry["target"]
    etype = _TYPE_BY_LIST_TARGET.get((list_name, target)) if isinstance(target, str) else None
    if etype is None:
        raise DecodeError("bad_state_entry", f"no event type for {list_name} target {target!r}")
    signer = Signer.from_json(entry["signer"])
    env = {"event_type": etype, "subject_pith_number": subject, **entry}
    if signer.signer_type == "pith_registry":
        return event_from_json(env)
    ev = event_from_json({**env, "signer": {**entry["signer"], "signer_type": "pith_registry"}})
    return Event(ev.event_type, ev.subject, ev.target, ev.created_at, signer, ev.payload,
                 ev.event_id, b"")
