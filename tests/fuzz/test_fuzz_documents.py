"""Fuzzing the document decoders: JSON, documents, events, states, bundles, ``verify``.

Seeds: Pith's golden state (tests/fixtures), synthetic records of ``pithnode.node.synth``
(their events, merged states and bundles). Inputs are random bytes, random JSON values and
the seeds mutated at the byte level and at the structure level (fields deleted, renamed,
swapped for other types, huge numbers, long strings, deep nesting).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pithnode.node.synth import SynthConfig, synth_keys, synth_record
from pithnode.protocol.bundle import build_bundle, parse_bundle
from pithnode.protocol.documents import MAX_DEPTH, decode_document, decode_json
from pithnode.protocol.errors import InputError, ProtocolError
from pithnode.protocol.events import MAX_EVENT_BYTES, event_from_json
from pithnode.protocol.merge import admission_from_import, merge
from pithnode.protocol.spec import NetworkSpec, spec_from_toml
from pithnode.protocol.state import parse_state
from pithnode.protocol.verify import verify_bytes
from tests.fuzz import (
    EXTRA_CHECKS_BYTES,
    KnownBug,
    Target,
    check,
    corpus_cases,
    deep_dict,
    deep_list,
    fuzz_settings,
    json_bytes,
    json_values,
    mutated_bytes,
    mutated_tree,
    peak_allocation,
    replay,
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = (ROOT / "tests" / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json").read_bytes()
MAINNET = spec_from_toml((ROOT / "configs" / "network.toml").read_text("utf-8"))
KEYS = synth_keys(1)
SYNTH = KEYS.spec()
#: Pith's registry key and the synthetic one: both kinds of seed verify under it.
SPEC = NetworkSpec(name="pith-fuzz", registry_keys=MAINNET.registry_keys + SYNTH.registry_keys,
                   trusted_importers=SYNTH.trusted_importers)
RECORDS = [synth_record(KEYS, i, SynthConfig(seed=1, equivocation_rate=0.5, invalid_rate=0.2))
           for i in range(3)]


def _bundle(i: int) -> bytes:
    rec = RECORDS[i]
    state = merge(rec.pith_number, rec.events, SYNTH)
    registry = [e for ev in rec.events if (adm := admission_from_import(ev, SYNTH))
                for e in adm.events]
    return build_bundle(rec.pith_number, rec.canonical_record,
                        state.doc["current"]["source_aliases"], registry + list(rec.events))


BUNDLES = [_bundle(i) for i in range(len(RECORDS))]
STATES = [merge(r.pith_number, r.events, SYNTH).served_bytes() for r in RECORDS]
EVENT_OBJS: list[Any] = [e.to_json() for r in RECORDS for e in r.events]
EVENT_OBJS += [e for b in BUNDLES for e in json.loads(b)["events"][:3]]
STATE_OBJS = [json.loads(GOLDEN), *(json.loads(s) for s in STATES)]
BUNDLE_OBJS = [json.loads(b) for b in BUNDLES]
SEED_BYTES = [GOLDEN, *STATES, *BUNDLES, *(json_bytes(e) for e in EVENT_OBJS[:8])]
SPECIAL = [b"[" * 100_000, b"{\"a\":" * 50_000, b"9" * 5000, b"-" + b"9" * 4300, b"1e999",
           b"NaN", b"[Infinity]", b'"\\ud800"', b'"\xed\xa0\x80"', b"\xef\xbb\xbf{}", b"{}",
           b"[]", b'{"state_type":1}', b'{"bundle_type":null}', b'{"event_type":[]}',
           json_bytes(deep_list(MAX_DEPTH)), json_bytes(deep_list(MAX_DEPTH + 1)),
           json_bytes(deep_dict(MAX_DEPTH + 1))]


# ---------------------------------------------------------------------------- targets


def _depth(obj: Any) -> int:
    best, stack = 0, [(obj, 0)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return best


def run_decode_json(data: bytes) -> object:
    obj = decode_json(data)
    if len(data) <= EXTRA_CHECKS_BYTES:
        assert _depth(obj) <= MAX_DEPTH + 1
    return obj


def run_decode_document(data: bytes) -> object:
    doc = decode_document(data)
    key = {"state": "state_type", "bundle": "bundle_type", "event": "event_type"}[doc.kind]
    assert isinstance(doc.doc, dict) and key in doc.doc
    return doc


def _loads(data: bytes) -> Any:
    """The corpus form of an object target: JSON text (NaN allowed), decoded leniently."""
    return json.loads(data.decode("utf-8", "surrogatepass"))


def run_event_from_json(data: bytes) -> object:
    ev = event_from_json(_loads(data))
    assert len(ev.canonical_bytes()) <= MAX_EVENT_BYTES + 1024
    assert event_from_json(ev.to_json()) == ev  # what we accept, we re-encode faithfully
    return ev


def run_parse_state(data: bytes) -> object:
    parsed = parse_state(_loads(data))
    assert all(e.subject == parsed.pith_number for e in parsed.events)
    return parsed


def run_parse_bundle(data: bytes) -> object:
    obj = _loads(data)
    parsed = parse_bundle(obj)
    assert len(parsed.events) == len(obj["events"])
    return parsed


def run_verify_bytes(data: bytes) -> object:
    report = verify_bytes(data, SPEC)
    json.dumps(report.to_json())  # the CLI prints it
    return report


NOT_CANONICAL_SUBJECT = KnownBug(
    "verify-noncanonical-pith-number", ProtocolError, r"is about .*, not ",
    "parse_state/parse_bundle accept a pith_number that is not in canonical form "
    "(lower case, PITH:, spaces); merge() then raises ProtocolError, not InputError")

DECODE_JSON = Target("decode_json", run_decode_json, (InputError,))
DECODE_DOCUMENT = Target("decode_document", run_decode_document, (InputError,))
EVENT_FROM_JSON = Target("event_from_json", run_event_from_json, (InputError,))
PARSE_STATE = Target("parse_state", run_parse_state, (InputError,))
PARSE_BUNDLE = Target("parse_bundle", run_parse_bundle, (InputError,))
VERIFY_BYTES = Target("verify_bytes", run_verify_bytes, (InputError,),
                      known_bugs=())
TARGETS = (DECODE_JSON, DECODE_DOCUMENT, EVENT_FROM_JSON, PARSE_STATE, PARSE_BUNDLE,
           VERIFY_BYTES)


# ---------------------------------------------------------------------------- inputs

any_json = st.builds(json_bytes, json_values(), ascii_only=st.booleans())
document_bytes = st.one_of(
    st.binary(max_size=512),
    any_json,
    mutated_bytes(SEED_BYTES),
    mutated_tree(STATE_OBJS + BUNDLE_OBJS + EVENT_OBJS, json_values(8)).map(json_bytes),
    st.sampled_from(SPECIAL),
)


def objects(seeds: list[Any]) -> st.SearchStrategy[bytes]:
    """Corpus form (JSON) of mutated seeds, other JSON values and mutated JSON text."""
    return st.one_of(
        mutated_tree(seeds, json_values(8), max_ops=4).map(json_bytes),
        mutated_tree(seeds, json_values(8), max_ops=1).map(json_bytes),
        st.builds(json_bytes, json_values()),
        mutated_bytes([json_bytes(s) for s in seeds]).filter(_is_json),
    )


def _is_json(data: bytes) -> bool:
    try:
        _loads(data)
    except (ValueError, RecursionError):
        return False
    return True


# ---------------------------------------------------------------------------- properties


@fuzz_settings(300)
@given(document_bytes)
def test_decode_json(data: bytes) -> None:
    check(DECODE_JSON, data)


@fuzz_settings(200)
@given(document_bytes)
def test_decode_document(data: bytes) -> None:
    check(DECODE_DOCUMENT, data)


@fuzz_settings(250)
@given(objects(EVENT_OBJS))
def test_event_from_json(data: bytes) -> None:
    check(EVENT_FROM_JSON, data)


@fuzz_settings(150)
@given(objects(STATE_OBJS))
def test_parse_state(data: bytes) -> None:
    check(PARSE_STATE, data)


@fuzz_settings(150)
@given(objects(BUNDLE_OBJS))
def test_parse_bundle(data: bytes) -> None:
    check(PARSE_BUNDLE, data)


@fuzz_settings(120)
@given(st.one_of(document_bytes, objects(STATE_OBJS), objects(BUNDLE_OBJS)))
def test_verify_bytes(data: bytes) -> None:
    check(VERIFY_BYTES, data)


def test_seeds_are_valid() -> None:
    """The seeds decode cleanly, so mutations start from the accepted shape."""
    assert verify_bytes(GOLDEN, SPEC).valid
    for data in BUNDLES:
        assert verify_bytes(data, SPEC).valid
    for data in STATES:  # superseded and equivocating events are not in a state: no re-merge
        assert verify_bytes(data, SPEC).kind == "state"
    for obj in EVENT_OBJS:
        event_from_json(obj)


@pytest.mark.parametrize(("target", "path"), corpus_cases(TARGETS))
def test_corpus(target: Target, path: Path) -> None:
    replay(target, path)


# ---------------------------------------------------------------------------- big inputs

MIB = 1 << 20


def _fill(head: bytes, unit: bytes, tail: bytes, size: int = MIB) -> bytes:
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


BIG = {
    "zeros": _fill(b"[", b"0,", b"0]"),
    "objects": _fill(b"[", b"{},", b"{}]"),
    "string": _fill(b'"', b"a", b'"'),
    "escapes": _fill(b'"', b"\\u00e9", b'"'),
    "deep_list": b"[" * MIB,
    "deep_dict": _fill(b"", b'{"a":', b"0"),
    "random": bytes(range(256)) * (MIB // 256),
    "numbers": _fill(b"[", b"123456789012345678901234567890,", b"1]"),
}
#: Peak bytes allocated per input byte. Measured: 47 for a list of 350k empty objects (what
#: json.loads builds: a dict per 3 bytes), 5.5 for ``[0,0,...]``, ~2 for the other shapes.
#: At MAX_DOCUMENT_BYTES (64 MiB) the worst case is so ~3 GB.
MEMORY_FACTOR = 64
#: verify_bytes starts with decode_json (whose costly shapes are checked above): cheap
#: shapes, to check that nothing after decoding multiplies them.
HEAVY = ("numbers", "deep_list", "random", "string")


@pytest.mark.parametrize(("target", "shape"), [
    *((DECODE_JSON, shape) for shape in sorted(BIG)),
    *((VERIFY_BYTES, shape) for shape in HEAVY),
], ids=lambda v: v.name if isinstance(v, Target) else v)
def test_one_mib_inputs_stay_bounded(target: Target, shape: str) -> None:
    data = BIG[shape]
    peak = peak_allocation(target, data)
    assert peak <= MEMORY_FACTOR * len(data), (shape, peak)


def test_big_state_document_is_bounded() -> None:
    """A ~1 MiB state of many entries: verify re-merges it within a bounded multiple."""
    doc = json.loads(STATES[0])
    entry = doc["current"]["mirror_hints"][0] if doc["current"]["mirror_hints"] else None
    if entry is None:
        entry = {"event_id": "sha256:" + "0" * 64, "target": "mirror",
                 "created_at": "2026-01-01T00:00:00Z",
                 "signer": RECORDS[0].events[-1].signer.to_json(), "payload": {}}
    doc["current"]["mirror_hints"] = [dict(entry, event_id=f"sha256:{i:064x}")
                                      for i in range(MIB // 600)]
    data = json.dumps(doc).encode()
    peak = peak_allocation(VERIFY_BYTES, data)
    assert peak <= MEMORY_FACTOR * len(data), peak

