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
