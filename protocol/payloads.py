"""Payload schemas of native events and the slot each event occupies.

A slot is where supersession and equivocation are decided: one signer, one event type, one
slot key. The newest event of a slot is applied; two different events at that same newest
time are an equivocation (docs/PROTOCOL.md, "Slots and equivocation").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InputError
from .identifiers import parse_pith_number

__all__ = ["check_payload", "slot_key"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_EVENT_ID = re.compile(r"sha256:[0-9a-f]{64}")
_ORCID = re.compile(r"[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{3}[0-9X]")
_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
MAX_TEXT = 4096
MAX_LIST = 64

Check = Callable[[Any], bool]


def _s(limit: int = MAX_TEXT, pattern: re.Pattern[str] | None = None) -> Check:
    def check(v: Any) -> bool:
        return isinstance(v, str) and len(v) <= limit and (pattern is None or bool(
            pattern.fullmatch(v)))
    return check


def _enum(*values: str) -> Check:
    return lambda v: isinstance(v, str) and v in values


def _int(lo: int = 0, hi: int = 1 << 62) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _strlist(limit: int = 512) -> Check:
    return lambda v: (isinstance(v, list) and len(v) <= MAX_LIST
                      and all(isinstance(x, str) and 0 < len(x) <= limit for x in v))


def _pith(v: Any) -> bool:
    try:
        return isinstance(v, str) and parse_pith_number(v).is_full
    except InputError:
        return False


def _json_value(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, bool, list, dict))


_SCHEMAS: Mapping[str, Mapping[str, Check]] = {
    "author_attestation": {"orcid": _s(19, _ORCID), "name": _s(512),
                           "claim": _enum("author", "not_author")},
    "timestamp_anchor": {"kind": _enum("opentimestamps", "rfc3161", "other"),
                         "digest_sha256": _s(64, _HEX64), "proof_b64": _s(65536)},
    "storage_attestation": {"object_sha256": _s(64, _HEX64), "size": _int(),
                            "kind": _enum("bundle", "state", "event", "object"),
                            "held_since": _s(20, _TS)},
    "storage_audit": {"attestation_event_id": _s(71, _EVENT_ID), "object_sha256": _s(64, _HEX64),
                      "holder_fingerprint": _s(32), "outcome": _enum("verified", "failed"),
                      "challenge_sha256": _s(64, _HEX64)},
    "citation_signature": {"cited": _pith,
                           "relation": _enum("supports", "refutes", "extends", "cites",
                                             "uses", "reproduces"),
                           "note": _s()},
    "replication_record": {"kind": _enum("replication", "formal_bridge"),
                           "reference": _s(1024),
                           "outcome": _enum("replicated", "failed", "partial", "bridged"),
                           "note": _s()},
    "state_attestation": {"state_sha256": _s(64, _HEX64),
                          "event_set_fingerprint": _s(64, _HEX64), "event_count": _int()},
    "correction": {"field": _s(256), "value": _json_value, "reason": _s()},
    "mirror_hint": {"base_urls": _strlist(), "multiaddrs": _strlist(), "prefixes": _strlist(26)},
    "registry_import": {"source": _s(1024), "document_sha256": _s(64, _HEX64),
                        "events": lambda v: isinstance(v, list) and 0 < len(v) <= 256,
                        "source_aliases": lambda v: isinstance(v, list) and len(v) <= 64},
}


def check_payload(event_type: str, payload: Any) -> str | None:
    """None when a native payload has exactly its schema's keys with valid values."""
    schema = _SCHEMAS.get(event_type)
    if schema is None:
        return f"no payload schema for {event_type}"
    if not isinstance(payload, dict):
        return "payload is not an object"
    keys = set(payload)
    if keys != set(schema):
        extra, missing = sorted(keys - set(schema)), sorted(set(schema) - keys)
        return f"unknown key {extra[0]!r}" if extra else f"missing key {missing[0]!r}"
    for k, check in schema.items():
        if not check(payload[k]):
            return f"bad value for {k!r}"
    return None


def slot_key(event_type: str, payload: Any, event_id: str) -> str:
    """The slot of an (already schema-checked) event, within its signer and type."""
    p = payload if isinstance(payload, dict) else {}
    if event_type == "record_created":
        return "record"
    if event_type == "author_attestation":
        return str(p["orcid"])
    if event_type == "timestamp_anchor":
        return f"{p['kind']}/{p['digest_sha256']}"
    if event_type == "storage_attestation":
        return str(p["object_sha256"])
    if event_type == "storage_audit":
        return str(p["attestation_event_id"])
    if event_type == "citation_signature":
        return str(p["cited"])
    if event_type == "replication_record":
        return f"{p['kind']}/{p['reference']}"
    if event_type == "state_attestation":
        return "state"
    if event_type == "correction" and "field" in p:
        return str(p["field"])
    if event_type == "mirror_hint":
        return "mirror"
    # graph snapshots and anything else: every event is its own slot
    return event_id
