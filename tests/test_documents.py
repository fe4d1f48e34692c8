"""decode_json and loads: orjson's speed, the standard library's values and errors.

Both decoders must agree on every document orjson accepts (values, types, key order); what
orjson refuses goes to the standard library, so its errors and its readings of the edge
cases (NaN refused by us, 1e400 read as infinity, lone surrogates, integers of any size) stay
as they were.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pithnode.protocol import documents
from pithnode.protocol.documents import decode_json, loads
from pithnode.protocol.errors import DecodeError

scalars = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=5)
                      | st.dictionaries(st.text(max_size=8), kids, max_size=5), max_leaves=30)


def _refuse(name: str) -> Any:
    raise ValueError(name)


def standard(data: bytes) -> Any:
    """The standard library's reading, refusing NaN and Infinity as decode_json does."""
    return json.loads(data.decode("utf-8"), parse_constant=_refuse)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types in the same key order (1 is not 1.0, -0.0 not 0.0)."""
    return repr(a) == repr(b)


@settings(max_examples=400, deadline=None)
@given(values, st.booleans(), st.sampled_from([None, 0, 2]), st.booleans())
def test_documents_decode_as_the_standard_library_decodes_them(
        value: Any, ascii_only: bool, indent: int | None, compact: bool) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only, indent=indent,
                      separators=(",", ":") if compact else None).encode("utf-8")
    assert same(decode_json(data), standard(data))
    assert same(loads(data), standard(data))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 45), st.integers(0, 30), st.integers(-400, 400), st.booleans(),
       st.randoms(use_true_random=False))
def test_numbers_decode_exactly(int_digits: int, frac_digits: int, exp: int, negative: bool,
                                rng: random.Random) -> None:
    whole = "".join(rng.choice("0123456789") for _ in range(int_digits)).lstrip("0") or "0"
    token = ("-" if negative else "") + whole
    if frac_digits:
        token += "." + "".join(rng.choice("0123456789") for _ in range(frac_digits))
    if exp and rng.random() < 0.7:
        token += f"e{exp}"
    data = f'[{token}, {{"n": {token}}}]'.encode()
    assert same(decode_json(data), standard(data))


def test_integers_past_64_bits_and_their_neighbours() -> None:
    for n in (2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**18 - 1, 10**18, 10**19, 10**40):
        for v in (n, -n):
            data = json.dumps({"v": v, "w": [v]}).encode()
            got = decode_json(data)
            assert got == {"v": v, "w": [v]} and type(got["v"]) is int


@pytest.mark.parametrize("text, expected", [
    (b'{"a":1,"b":2,"a":3}', {"a": 3, "b": 2}),  # the last value, in the first key's place
    (b'"\\ud83d\\ude00"', "\U0001f600"),
    (b'"\\ud800"', "\ud800"),  # a lone surrogate: orjson refuses, the standard reads it
    (b"1e400", float("inf")),  # overflows a double: the standard reads infinity
    (b"-1e400", float("-inf")),
    (b"1e-400", 0.0),
    (b"\t[1]\r\n", [1]),
])
def test_edge_cases_read_as_the_standard_library_reads_them(text: bytes, expected: Any) -> None:
    assert same(decode_json(text), expected)
    assert same(standard(text), expected)


@pytest.mark.parametrize("text, reason", [
    (b"NaN", "bad_json"), (b"[Infinity]", "bad_json"), (b'"a\tb"', "bad_json"),
    (b"[1,]", "bad_json"), (b"01", "bad_json"), (b'{"a":1}x', "bad_json"),
    (b"\xef\xbb\xbf{}", "bad_json"), (b'"\xff"', "bad_utf8"), (b"[" * 70 + b"]" * 70, "bad_json"),
])
def test_refused_documents_keep_their_reasons(text: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_json(text)
    assert err.value.reason == reason


@settings(max_examples=400, deadline=None)
@given(values, st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=2)),
                        max_size=3))
def test_damaged_documents_are_accepted_only_as_the_standard_library_accepts_them(
        value: Any, damage: list[tuple[int, bytes]]) -> None:
    data = bytearray(json.dumps(value).encode())
    for at, junk in damage:
        data[at % (len(data) + 1):at % (len(data) + 1)] = junk
    data_b = bytes(data)
    try:
        want: Any = standard(data_b)
    except (ValueError, RecursionError):
        want = DecodeError
    try:
        got: Any = decode_json(data_b)
    except DecodeError:
        got = DecodeError
    assert want is got if DecodeError in (want, got) else same(got, want)


def test_the_fast_path_is_taken_for_ordinary_documents() -> None:
    assert documents._fast(b'{"a":[1,2.5,"x",null,true]}') == (
        True, {"a": [1, 2.5, "x", None, True]})
    assert documents._fast(b'{"a":1234567890123456789}') == (False, None)  # 19 digits
    assert documents._fast(b'"\\ud800"') == (False, None)
