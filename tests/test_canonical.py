"""canonical_json and compact_json against the standard library's encoder they stand for.

The rule is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``; the
fast path (orjson) may only ever return the same bytes, and every value the rule refuses
must still be refused.
"""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pithnode.protocol import canonical
from pithnode.protocol.canonical import canonical_json, compact_json, key_sorted
from pithnode.protocol.errors import InputError

GOLDEN = Path(__file__).parent / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"


def reference(obj: Any, sort_keys: bool = True) -> bytes | None:
    """The rule itself; None where it has no output."""
    try:
        return json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return None


def ours(obj: Any, *, finite: bool = False) -> bytes | None:
    try:
        return canonical_json(obj, finite=finite)
    except InputError as exc:
        assert exc.reason == "not_canonical"
        return None


def ours_compact(obj: Any, *, finite: bool = False) -> bytes | None:
    try:
        return compact_json(obj, finite=finite)
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return None


floats = st.one_of(
    st.floats(),  # every double, NaN and infinities included
    st.floats(min_value=1e-12, max_value=1e-3),  # where the two encoders' formats differ
    st.floats(min_value=-1e-3, max_value=-1e-12),
    st.floats(min_value=1e15, max_value=1e17),
)
ints = st.one_of(st.integers(), st.integers(min_value=2**62, max_value=2**66),
                 st.integers(min_value=-(2**66), max_value=-(2**62)))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text())
keys = st.one_of(st.text(), st.text(alphabet=st.characters(codec="utf-8"), max_size=3))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(keys, inner, max_size=5),
        st.dictionaries(st.one_of(keys, st.integers(), st.booleans(), st.none()), inner,
                        max_size=3),
    ),
    max_leaves=30,
)


@given(values)
@settings(max_examples=3000, deadline=None)
def test_canonical_json_is_the_rule(value: Any) -> None:
    assert ours(value) == reference(value)


@given(values)
@settings(max_examples=1000, deadline=None)
def test_compact_json_is_the_rule_in_key_order(value: Any) -> None:
    assert ours_compact(value) == reference(value, sort_keys=False)


def test_every_float_exponent_and_many_random_doubles() -> None:
    rng = random.Random(5)
    samples = [m * 10.0 ** e for e in range(-325, 309)
               for m in (1.0, 1.5, 9.999999999999998, 2.2250738585072014, 4.9406564584124654)
               if math.isfinite(m * 10.0 ** e)]
    samples += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
                for _ in range(100_000)]
    samples += [rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, 20) for _ in range(100_000)]
    for x in samples:
        assert ours([x, {"x": x}]) == reference([x, {"x": x}]), x


def test_values_orjson_would_encode_differently_are_refused_or_exact() -> None:
    assert ours(float("nan")) is None
    assert ours({"a": [1, float("-inf")]}) is None
    assert canonical_json([1e-05, 1e-07, 2.5e-09]) == b"[1e-05,1e-07,2.5e-09]"
    assert canonical_json([None, 0.00001]) == b"[null,1e-05]"
    assert canonical_json(2**64) == b"18446744073709551616"
    assert canonical_json({1: "a"}) == b'{"1":"a"}'  # as the rule: keys made strings
    assert ours({1: "a", "b": 2}) is None  # the rule cannot sort mixed keys
    assert ours("\ud800") is None

    class Text(str):
        pass

    assert canonical_json({"k": Text("v")}) == b'{"k":"v"}'
    deep: Any = 0
    for _ in range(300):
        deep = [deep]
    assert canonical_json(deep) == reference(deep)


def test_the_fast_path_serves_pith_documents() -> None:
    """The golden state (and an event-like value) go through orjson, not the fallback."""
    doc = json.loads(GOLDEN.read_bytes())
    assert b"null" in canonical_json(doc)
    assert canonical._fast(doc, canonical._SORTED, False) == reference(doc)
    record = doc["current"]["canonical_record"]
    assert canonical._fast(record, canonical._SORTED, False) == reference(record)
    event = {"event_id": "sha256:" + "ab" * 32, "payload": {"score": 0.25, "n": 3},
             "signer": {"signer_id": "node-2afe6846", "key_id": "ed25519:" + "3e-55" * 4}}
    assert canonical._fast(event, canonical._SORTED, False) == reference(event)


@pytest.mark.parametrize(("value", "text"), [
    (float("nan"), b"null"), ([None, float("inf")], b"[null,null]"), ([1e-05], b"[0.00001]"),
    ([1e-7], b"[1e-7]"), (["x1e-5"], b'["x1e-5"]'), ((None,), b"[null]")])
def test_marks_that_send_a_value_to_the_standard_library(value: Any, text: bytes) -> None:
    assert canonical._may_differ(value, text, False)


@pytest.mark.parametrize("text", [b'["node-2a"]', b"[1e-07]", b"[1.5e-300]", b"[0.001]",
                                  b'{"a":"3e-55"}', b'{"a":null,"b":[null,1.5]}'])
def test_outputs_kept_from_orjson(text: bytes) -> None:
    assert not canonical._may_differ(json.loads(text), text, False)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


@given(values)
@settings(max_examples=1000, deadline=None)
def test_finite_values_vouched_for_give_the_same_bytes(value: Any) -> None:
    """finite=True skips only the check for NaN's null: small floats and everything orjson
    refuses still go to the standard library."""
    if not _finite(value):
        return
    assert ours(value, finite=True) == reference(value)
    assert ours_compact(value, finite=True) == reference(value, sort_keys=False)


def _outcome(fn: Any, value: Any) -> str:
    try:
        return repr(fn(value))
    except TypeError as exc:  # keys that do not sort together
        return f"TypeError {exc}"


@given(values)
@settings(max_examples=1000, deadline=None)
def test_key_sorted_copies_are_the_same_by_either_path(value: Any) -> None:
    if not _finite(value):
        return
    fast = _outcome(lambda v: key_sorted(v, finite=True), value)
    assert fast == _outcome(key_sorted, value)
    if not fast.startswith("TypeError"):
        assert canonical_json(key_sorted(value, finite=True)) == canonical_json(value)
        assert compact_json(key_sorted(value, finite=True)) == canonical_json(value)
