"""Merge laws: any order, duplication or batching of the same events gives the same bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pithnode.protocol.merge import merge
from pithnode.protocol.state import StateDocument
from tests.protocol_pool import build_pool

POOL = build_pool()
N = len(POOL.events)


def merged(indices: list[int]) -> StateDocument:
    return merge(POOL.subject, [POOL.events[i] for i in indices], POOL.spec)


def test_pool_exercises_every_rule() -> None:
    doc = merged(list(range(N))).doc
    assert doc["invalid_event_count"] >= 3
    assert doc["equivocation_count"] >= 1
    reasons = {e["reason"] for e in doc["invalid_events"]}
    assert {"bad_payload", "signer_not_authorised", "event_id_conflict"} <= reasons
    types = {t for t, v in doc["current"].items() if v}
    assert {"replication_records", "mirror_hints", "author_attestations",
            "storage_attestations", "record_created"} <= types
    assert doc["valid_event_count"] + doc["invalid_event_count"] == doc["event_count"]
    assert doc["current"]["canonical_record"] is not None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, N - 1), max_size=3 * N), st.randoms(use_true_random=False))
def test_order_and_duplication_do_not_matter(picks: list[int], rnd: object) -> None:
    canonical = merged(sorted(set(picks))).served_bytes()
    shuffled = list(picks)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert merged(shuffled).served_bytes() == canonical
    assert merged(shuffled + shuffled[: len(shuffled) // 2]).served_bytes() == canonical


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, N - 1)), st.sets(st.integers(0, N - 1)))
def test_batches_union_is_order_free(a: set[int], b: set[int]) -> None:
    # batch A then batch B, batch B then A, and the union at once: one state
    ab = merged(sorted(a) + sorted(b)).served_bytes()
    ba = merged(sorted(b) + sorted(a)).served_bytes()
    assert ab == ba == merged(sorted(a | b)).served_bytes()


@settings(max_examples=150, deadline=None)
@given(st.sets(st.integers(0, N - 1)))
def test_invariants_for_any_subset(picks: set[int]) -> None:
    doc = merged(sorted(picks)).doc
    assert doc["valid_event_count"] + doc["invalid_event_count"] == doc["event_count"]
    applied = set(doc["applied_event_ids"])
    assert not applied & POOL.forged
    assert not applied & {e["event_id"] for e in doc["invalid_events"]}
    equivocating = {i for e in doc["equivocations"] for i in e["event_ids"]}
    assert not applied & equivocating
    assert len(doc["applied_event_ids"]) == len(applied)
    # forged events never reach the state lists either
    text = merged(sorted(picks)).served_bytes().decode()
    assert '"forged":true' not in text and '"value":"forged"' not in text


# -- events generated from scratch: every native type, random slots and times ----------------
from pithnode.protocol.events import Event, make_native_event  # noqa: E402

SIGNERS = [(POOL.keys.nodes[0], "node"), (POOL.keys.nodes[1], "node"),
           (POOL.keys.authors[0], "author"), (POOL.keys.authors[0], "node")]
TIMES = [f"2026-04-0{d}T00:00:00Z" for d in range(1, 4)]
HEX = st.sampled_from(["aa" * 32, "bb" * 32])
PAYLOADS = {
    "author_attestation": st.fixed_dictionaries({
        "orcid": st.sampled_from(["0000-0001-0000-0001", "0000-0001-0000-0002"]),
        "name": st.text(max_size=3), "claim": st.sampled_from(["author", "not_author"])}),
    "timestamp_anchor": st.fixed_dictionaries({
        "kind": st.sampled_from(["opentimestamps", "other"]), "digest_sha256": HEX,
        "proof_b64": st.text(max_size=3)}),
    "storage_attestation": st.fixed_dictionaries({
        "object_sha256": HEX, "size": st.integers(-1, 3), "kind": st.just("bundle"),
        "held_since": st.sampled_from(TIMES)}),
    "citation_signature": st.fixed_dictionaries({
        "cited": st.sampled_from([POOL.subject, "bogus"]),
        "relation": st.sampled_from(["supports", "refutes"]), "note": st.text(max_size=2)}),
    "replication_record": st.fixed_dictionaries({
        "kind": st.just("replication"), "reference": st.sampled_from(["r1", "r2"]),
        "outcome": st.sampled_from(["replicated", "nonsense"]), "note": st.just("")}),
    "state_attestation": st.fixed_dictionaries({
        "state_sha256": HEX, "event_set_fingerprint": HEX, "event_count": st.integers(0, 2)}),
    "correction": st.fixed_dictionaries({
        "field": st.sampled_from(["title", "abstract"]), "value": st.integers(0, 2),
        "reason": st.just("r")}),
    "mirror_hint": st.fixed_dictionaries({
        "base_urls": st.lists(st.sampled_from(["http://127.0.0.1:1"]), max_size=1),
        "multiaddrs": st.just([]), "prefixes": st.just([])}),
    "storage_audit": st.fixed_dictionaries({
        "attestation_event_id": st.just("sha256:" + "cc" * 32), "object_sha256": HEX,
        "holder_fingerprint": st.just("00" * 16),
        "outcome": st.sampled_from(["verified", "failed"]), "challenge_sha256": HEX}),
}


@st.composite
def native_events(draw: st.DrawFn) -> Event:
    etype = draw(st.sampled_from(sorted(PAYLOADS)))
    key, stype = draw(st.sampled_from(SIGNERS))
    return make_native_event(key, event_type=etype, subject=POOL.subject,
                             payload=draw(PAYLOADS[etype]), created_at=draw(st.sampled_from(TIMES)),
                             signer_id="gen", signer_type=stype)


@settings(max_examples=200, deadline=None)
@given(st.lists(native_events(), max_size=25), st.sets(st.integers(0, N - 1), max_size=8),
       st.randoms(use_true_random=False))
def test_generated_event_sets_obey_the_laws(gen: list[Event], picks: set[int],
                                            rnd: object) -> None:
    events = gen + [POOL.events[i] for i in sorted(picks)]
    reference = merge(POOL.subject, events, POOL.spec)
    shuffled = events + events[::2]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    again = merge(POOL.subject, shuffled, POOL.spec)
    assert again.served_bytes() == reference.served_bytes()
    half = len(shuffled) // 2
    batched = merge(POOL.subject, shuffled[half:] + shuffled[:half], POOL.spec)
    assert batched.served_bytes() == reference.served_bytes()
    doc = reference.doc
    assert doc["valid_event_count"] + doc["invalid_event_count"] == doc["event_count"]
    natives = {e.event_id for e in events if e.event_type != "registry_import"}
    assert doc["event_count"] >= len(natives)
    # every applied id is listed in exactly one place of current, and nothing else is
    listed = [e["event_id"] for lst in doc["current"].values() if isinstance(lst, list)
              for e in lst if isinstance(e, dict) and "event_id" in e]
    if doc["current"]["record_created"]:
        listed.append(doc["current"]["record_created"]["event_id"])
    assert sorted(listed) == sorted(doc["applied_event_ids"])
    invalid = {e["event_id"] for e in doc["invalid_events"]}
    assert not invalid & set(listed)
