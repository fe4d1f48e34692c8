"""Trust, acceptance, supersession and spec rules of the protocol core."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pithnode.protocol.errors import DecodeError, InputError, SpecError
from pithnode.protocol.events import event_from_json, make_native_event
from pithnode.protocol.ingest import accept
from pithnode.protocol.merge import merge
from pithnode.protocol.spec import spec_from_toml
from tests.protocol_pool import OUTSIDER, build_pool, native

POOL = build_pool()
ROOT = Path(__file__).resolve().parents[1]


def by_type(etype: str) -> list:
    return [e for e in POOL.events if e.event_type == etype]


def test_forged_registry_events_are_never_applied() -> None:
    doc = merge(POOL.subject, POOL.events, POOL.spec).doc
    invalid = {e["event_id"]: e["reason"] for e in doc["invalid_events"]}
    forged_native = next(e for e in POOL.events if e.signer.key_id == OUTSIDER.key_id
                         and e.event_type == "correction")
    assert invalid[forged_native.event_id] == "unknown_registry_key"
    for eid in POOL.forged:
        assert eid not in doc["applied_event_ids"]


def test_untrusted_importer_is_rejected_at_acceptance() -> None:
    untrusted = [e for e in by_type("registry_import") if e.signer.key_id == OUTSIDER.key_id]
    assert untrusted and accept(untrusted[0], POOL.spec) == "importer_not_trusted"
    trusted = [e for e in by_type("registry_import") if e.signer.key_id != OUTSIDER.key_id]
    assert all(accept(e, POOL.spec) is None for e in trusted)


def test_bare_registry_events_are_not_admitted() -> None:
    imp = by_type("registry_import")[0]
    bare = [event_from_json(x) for x in imp.payload["events"]]
    doc = merge(POOL.subject, bare, POOL.spec).doc
    assert doc["event_count"] == 0 and doc["applied_event_ids"] == []
    assert accept(bare[0], POOL.spec) == "unsigned_registry_event"


def test_acceptance_checks_id_key_and_signature() -> None:
    ev = by_type("mirror_hint")[0]
    assert accept(ev, POOL.spec) is None
    tampered_payload = dataclasses.replace(ev, payload={**ev.payload, "prefixes": ["ZZ"]})
    assert accept(tampered_payload, POOL.spec) == "event_id_mismatch"
    bad_sig = dataclasses.replace(ev, signature=bytes(64))
    assert accept(bad_sig, POOL.spec) == "bad_signature"
    other_signer = dataclasses.replace(
        ev.signer, public_key_fingerprint=OUTSIDER.fingerprint)
    wrong_fp = dataclasses.replace(ev, signer=other_signer)
    assert accept(wrong_fp, POOL.spec) in {"event_id_mismatch", "fingerprint_mismatch"}


def test_newer_event_of_a_slot_supersedes() -> None:
    doc = merge(POOL.subject, POOL.events, POOL.spec).doc
    states = [e for e in doc["current"]["replication_records"] if e["target"] == "state"]
    assert [s["payload"]["state_sha256"] for s in states] == ["ef" * 32]


def test_equivocation_entry_names_both_events() -> None:
    doc = merge(POOL.subject, POOL.events, POOL.spec).doc
    eq = [e for e in doc["equivocations"] if e["event_type"] == "author_attestation"]
    assert len(eq) == 1 and len(eq[0]["event_ids"]) == 2
    assert eq[0]["slot"] == "0000-0001-2345-6789"
    assert eq[0]["event_ids"] == sorted(eq[0]["event_ids"])


def test_native_timestamps_are_whole_utc_seconds() -> None:
    with pytest.raises(ValueError):
        native(OUTSIDER, POOL.subject, "mirror_hint", "node",
               {"base_urls": [], "multiaddrs": [], "prefixes": []}, "2026-01-01T00:00:00.5Z")
    with pytest.raises(ValueError):
        make_native_event(OUTSIDER, event_type="record_created", subject=POOL.subject,
                          payload={}, created_at="2026-01-01T00:00:00Z", signer_id="x",
                          signer_type="node")


@pytest.mark.parametrize(("mutation", "reason"), [
    (lambda d: d.pop("signer"), "bad_envelope"),
    (lambda d: d.update(event_version=2), "bad_version"),
    (lambda d: d.update(signature_b64="!!"), "bad_signature_encoding"),
    (lambda d: d.update(event_id="sha1:00"), "bad_envelope"),
    (lambda d: d.update(extra_field=1), "bad_envelope"),
    (lambda d: d.update(subject_pith_number="pith:32UK2ZWI"), "bad_envelope"),
    (lambda d: d["signer"].pop("key_id"), "bad_signer"),
    (lambda d: d.update(payload="x" * (1 << 20)), "event_too_large"),
])
def test_malformed_envelopes_name_their_reason(mutation, reason: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(by_type("mirror_hint")[0].canonical_bytes())
    mutation(doc)
    with pytest.raises(InputError) as exc:
        event_from_json(doc)
    assert exc.value.reason == reason


def test_unsigned_non_registry_event_is_refused() -> None:
    doc = json.loads(by_type("mirror_hint")[0].canonical_bytes())
    del doc["signature_b64"]
    with pytest.raises(DecodeError) as exc:
        event_from_json(doc)
    assert exc.value.reason == "unsigned_event"


def test_shipped_network_spec_holds_the_registry_key() -> None:
    spec = spec_from_toml((ROOT / "configs" / "network.toml").read_text())
    key = spec.registry_key("pith-v1-2026-05")
    assert key is not None and key.fingerprint == "8d4b5ee74e4693bcd1df2446408b0d54"
    assert spec.gossip_topic == "/pith/pith-mainnet/events/1"


@pytest.mark.parametrize(("text", "needle"), [
    ("[network]\nname='x'\nbogus=1\n", "[network]: unknown key 'bogus'"),
    ("[network]\nname='x'\n[surprise]\n", "unknown key 'surprise'"),
    ("[network]\nname='x'\nmerge_version='v9'\n", "unsupported merge_version"),
    ("[network]\nname='x'\n[[registry_keys]]\nkey_id='k'\nsigner_id='s'\n"
     "public_key_hex='zz'\n", "[[registry_keys]] #1 public_key_hex: not hex"),
    ("[network]\nname='x'\n[authorisation]\nmirror_hint=['god']\n",
     "[authorisation] mirror_hint"),
    ("not toml =", "not valid TOML"),
    ("", "missing [network] section"),
])
def test_spec_errors_name_section_and_key(text: str, needle: str) -> None:
    with pytest.raises(SpecError) as exc:
        spec_from_toml(text, source="net.toml")
    assert needle in str(exc.value) and "net.toml" in str(exc.value)


def test_acceptance_refuses_what_would_break_later() -> None:
    mirror = {"base_urls": [], "multiaddrs": [], "prefixes": []}
    bad_date = native(OUTSIDER, POOL.subject, "mirror_hint", "node", mirror,
                      "2026-02-30T00:00:00Z")
    assert accept(bad_date, POOL.spec) == "bad_created_at"
    lower = native(OUTSIDER, POOL.subject.lower().replace("pith:", "pith:"), "mirror_hint",
                   "node", mirror, "2026-02-01T00:00:00Z")
    assert accept(lower, POOL.spec) == "bad_subject"
    ok = native(OUTSIDER, POOL.subject, "mirror_hint", "node", mirror, "2026-02-01T00:00:00Z")
    surrogate = dataclasses.replace(ok, payload={**mirror, "prefixes": ["\ud800"]})
    assert accept(surrogate, POOL.spec) == "not_canonical"


def test_large_imports_are_split_below_the_event_limit() -> None:
    from pithnode.protocol.events import MAX_EVENT_BYTES
    from pithnode.protocol.ingest import make_registry_imports

    imp = by_type("registry_import")[0]
    snapshot = next(event_from_json(x) for x in imp.payload["events"]
                    if x["event_type"] == "graph_snapshot")
    big = [event_from_json({**json.loads(snapshot.canonical_bytes()),
                            "event_id": f"sha256:{i:064x}",
                            "payload": {"graph_snapshot": {"blob": "x" * 200_000}}})
           for i in range(12)]
    imports = make_registry_imports(POOL.keys.importer, subject=POOL.subject, source="s",
                                    document=b"d", events=big, source_aliases=[],
                                    created_at="2026-02-01T00:00:00Z", signer_id="i")
    assert len(imports) > 1
    assert all(len(i.canonical_bytes()) <= MAX_EVENT_BYTES for i in imports)
    assert sum(len(i.payload["events"]) for i in imports) == len(big)
    assert all(accept(i, POOL.spec) is None for i in imports)


def test_parsed_canonical_bytes_never_outlive_a_modification() -> None:
    ev = event_from_json(json.loads(by_type("mirror_hint")[0].canonical_bytes()))
    assert ev.canonical is not None
    changed = dataclasses.replace(ev, payload={**ev.payload, "prefixes": ["ZZ"]})
    assert changed.canonical is None
    assert b'"ZZ"' in changed.canonical_bytes()


def test_verify_accepts_a_state_with_invalid_superseded_and_equivocating_events() -> None:
    from pithnode.protocol.verify import verify_bytes

    state = merge(POOL.subject, POOL.events, POOL.spec)
    assert state.doc["invalid_event_count"] and state.doc["equivocation_count"]
    report = verify_bytes(state.served_bytes(), POOL.spec)
    assert report.valid, report.to_json()
    assert report.state_sha256 is not None
