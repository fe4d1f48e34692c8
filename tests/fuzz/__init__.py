"""Fuzzing the decoders of outside input (issue 7): the harness every fuzz module shares.

Each decoder is a :class:`Target`: a name, a ``run`` function that takes the *corpus form*
of one input (bytes: the raw input, or JSON, CBOR or UTF-8 text of a structured one) and
the typed errors the decoder may raise. :func:`check` runs one input and enforces the
property of issue 7: the input ends in a result or in one of those typed errors, nothing
else, within :data:`TIME_BOUND_S` CPU seconds (measured, never killed: an example that is
too slow fails the test instead). :func:`peak_allocation` checks memory with ``tracemalloc``.

A bug found and not yet fixed is a :class:`KnownBug` of its target: the property tests
tolerate (and count) it, and the target's corpus holds a file of the same name that the
replay test runs as ``xfail(strict=True)``, so the fix makes that case pass and asks for
the entry to be removed.

Budgets: :func:`fuzz_settings` gives each property test its short budget, or under
``--hypothesis-profile=long`` (``make fuzz``) the long profile's ``max_examples``. Every
input run is counted in :data:`COUNTS`; ``conftest.py`` prints the counts at the end and
writes the smallest failing input of each target to ``corpus/<target>/`` (see README.md).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from _pytest.mark.structures import ParameterSet
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "BIGNUM",
    "CORPUS_DIR",
    "COUNTS",
    "EXTRA_CHECKS_BYTES",
    "FAILURES",
    "LONG_EXAMPLES",
    "LONG_PROFILE",
    "TIME_BOUND_S",
    "TOLERATED",
    "KnownBug",
    "Target",
    "cbor_values",
    "check",
    "corpus_cases",
    "deep_dict",
    "deep_list",
    "fuzz_settings",
    "json_bytes",
    "json_values",
    "mutated_bytes",
    "mutated_tree",
    "peak_allocation",
    "replay",
    "save_corpus",
]

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
#: The profile ``make fuzz`` selects, and its examples per target (x 24 targets > 1e6).
LONG_PROFILE = "long"
LONG_EXAMPLES = 45_000
#: CPU seconds (of this thread) one input of ordinary size (tens of KiB at most) may take.
#: CPU time, not wall-clock time, so that other processes on the machine cannot fail it.
TIME_BOUND_S = 2.0
#: CPU seconds of one ~1 MiB input run under tracemalloc (which slows Python 2-7x).
BIG_TIME_BOUND_S = 20.0
#: Inputs above this size skip the targets' extra checks (round trips, depth walks): the
#: big-input tests measure the decoder's memory, not the checker's.
EXTRA_CHECKS_BYTES = 64 << 10
#: Hypothesis' own deadline, in wall-clock time: generous, the backstop for an input that
#: blocks instead of computing.
DEADLINE = timedelta(seconds=30)
#: Set to 0 to keep failing inputs out of corpus/ (e.g. while experimenting).
SAVE_ENV = "PITHNODE_FUZZ_SAVE"

#: Inputs run per target (property tests, corpus replays and big-input checks alike).
COUNTS: Counter[str] = Counter()
#: Inputs that hit a known (reported, unfixed) bug, per target.
TOLERATED: Counter[str] = Counter()
#: The smallest failing input seen per target this session (written to corpus/ at the end).
FAILURES: dict[str, bytes] = {}


# ---------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class KnownBug:
    """A reported bug: an exception the decoder raises although it should not.

    ``name`` is also the stem of the corpus file that reproduces it.
    """

    name: str
    exc: type[BaseException]
    match: str
    reason: str

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.exc) and re.search(self.match, str(exc)) is not None


@dataclass(frozen=True, slots=True)
class Target:
    """One decoder of outside input, as the fuzz tests drive it."""

    name: str
    #: runs one input in its corpus form; returns the decoder's result (or None when the
    #: corpus form itself is not usable for this target, e.g. a CBOR wrapper that fails)
    run: Callable[[bytes], object]
    #: the typed errors the decoder may raise; anything else is a bug
    errors: tuple[type[BaseException], ...]
    known_bugs: tuple[KnownBug, ...] = ()
    time_bound_s: float = TIME_BOUND_S


def record_failure(name: str, data: bytes) -> None:
    """Remember ``data`` if it is the smallest failing input of ``name`` so far."""
    have = FAILURES.get(name)
    if have is None or (len(data), data) < (len(have), have):
        FAILURES[name] = data


class _CollectorClock:
    """CPU seconds this process's garbage collector has spent (a ``gc.callbacks`` hook).

    A long run grows Hypothesis' own bookkeeping to hundreds of thousands of objects, and a
    full collection that happens to start inside an example can take seconds: time of the
    test harness's heap, not of the decoder, so :func:`check` leaves it out of the bound."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started: float | None = None
        gc.callbacks.append(self._hook)

    def _hook(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        elif self._started is not None:
            self.total += time.thread_time() - self._started
            self._started = None


_COLLECTOR = _CollectorClock()


def check(target: Target, data: bytes, *, tolerate_known: bool = True,
          time_bound_s: float | None = None) -> object:
    """Run one input: its result or its typed error; anything else propagates.

    Known bugs of the target are tolerated (and counted) unless ``tolerate_known`` is false
    (the corpus replay of a known bug must fail until it is fixed).
    """
    COUNTS[target.name] += 1
    bound = target.time_bound_s if time_bound_s is None else time_bound_s
    start, collector_start = time.thread_time(), _COLLECTOR.total
    result: object
    try:
        result = target.run(data)
    except target.errors as exc:
        result = exc
    except Exception as exc:  # the property under test: nothing else may escape
        if tolerate_known and any(bug.matches(exc) for bug in target.known_bugs):
            TOLERATED[target.name] += 1
            result = exc
        else:
            record_failure(target.name, data)
            raise
    collector = _COLLECTOR.total - collector_start
    elapsed = time.thread_time() - start - collector
    if elapsed > bound:
        record_failure(target.name, data)
        raise AssertionError(f"{target.name}: an input of {len(data)} bytes took "
                             f"{elapsed:.2f} CPU s (bound {bound} s; another "
                             f"{collector:.2f} s in the garbage collector not counted)")
    return result


def peak_allocation(target: Target, data: bytes) -> int:
    """Peak bytes allocated (tracemalloc) while ``target`` runs ``data`` through :func:`check`.

    ``data`` itself was allocated before tracing starts, so it is not counted.
    """
    gc.collect()
    tracemalloc.start()
    try:
        check(target, data, time_bound_s=BIG_TIME_BOUND_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def fuzz_settings(short: int) -> settings:
    """``short`` examples by default; the long profile's count under ``make fuzz``."""
    long_run = settings.get_current_profile_name() == LONG_PROFILE
    examples = settings.default.max_examples if long_run and settings.default else short
    return settings(max_examples=examples, deadline=DEADLINE,
                    suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------- corpus


def corpus_files(target: str) -> list[Path]:
    return sorted((CORPUS_DIR / target).glob("*.bin"))


def corpus_cases(targets: Sequence[Target]) -> list[ParameterSet]:
    """One pytest param per corpus file; files of known bugs are ``xfail(strict=True)``."""
    cases = []
    for target in targets:
        files = corpus_files(target.name)
        bugs = {bug.name: bug for bug in target.known_bugs}
        missing = set(bugs) - {p.stem for p in files}
        if missing:
            raise RuntimeError(f"known bugs of {target.name} without a corpus file: "
                               f"{sorted(missing)}")
        for path in files:
            bug = bugs.get(path.stem)
            marks = [pytest.mark.xfail(strict=True, raises=bug.exc, reason=bug.reason)] \
                if bug is not None else []
            cases.append(pytest.param(target, path, marks=marks,
                                      id=f"{target.name}/{path.name}"))
    return cases


def replay(target: Target, path: Path) -> None:
    """Run one corpus file; known bugs are *not* tolerated here."""
    check(target, path.read_bytes(), tolerate_known=False)


def save_corpus(target: str, data: bytes, stem: str | None = None) -> Path | None:
    """Write ``data`` to ``corpus/<target>/<stem or sha256 prefix>.bin`` unless it is there.

    Returns the path written, or None (already present, or saving is disabled).
    """
    if os.environ.get(SAVE_ENV, "1") == "0":
        return None
    name = stem or "fail-" + hashlib.sha256(data).hexdigest()[:16]
    path = CORPUS_DIR / target / f"{name}.bin"
    if path.exists() or any(p.read_bytes() == data for p in corpus_files(target)):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- values


def deep_list(depth: int, leaf: Any = 0) -> Any:
    out: Any = leaf
    for _ in range(depth):
        out = [out]
    return out


def deep_dict(depth: int, leaf: Any = 0) -> Any:
    out: Any = leaf
    for _ in range(depth):
        out = {"a": out}
    return out


INTERESTING_INTS = (0, 1, -1, 2**31 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
                    2**64, -(2**63) - 1, 1 << 40, 10**100, 10**4000, -(10**4000))
INTERESTING_TEXT = (
    "", "\x00", "\ud800", "\udfff", "\u2028", "\ufeff", "\U0001f600", "é" * 300, "x" * 5000,
    "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL", "PITH:2018:32uk2zwi5aoevo5bzhzclhzwzl",
    "pith:0000:AAAAAAAAAAAAAAAAAAAAAAAAAA", "pith:32UK2ZWI",
    " pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL",
    "sha256:" + "0" * 64, "sha256:" + "F" * 64, "ed25519:" + "00" * 32,
    "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0000-00-00T00:00:00Z",
    "2026-02-30T25:61:61Z", "2026-01-01T00:00:00.1234567Z", "AAAA", "====", "\u2014 ",
    "record", "node", "author", "pith_registry", "registry_import", "mirror_hint",
)
#: Values a structural mutation swaps in: other types, huge numbers, long strings, nesting.
SWAPS: tuple[Any, ...] = (
    None, True, False, 0, -1, 1.5, -0.0, 1e308, 2**64, 10**4000, "", "x" * 100_000,
    "\ud800", [], {}, [None] * 1000, {"k": None}, deep_list(300), deep_dict(300),
    deep_list(40), "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL", "sha256:" + "0" * 64,
)


def json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.sampled_from(INTERESTING_INTS),
        st.floats(), st.text(max_size=40), st.sampled_from(INTERESTING_TEXT),
        st.text(st.characters(categories=["Cs", "Cc", "Zl", "Zp", "Mn"]), max_size=8),
    )


def json_values(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    """JSON-shaped Python values (NaN and lone surrogates included: inputs, not outputs)."""
    return st.recursive(
        json_scalars(),
        lambda kids: st.lists(kids, max_size=6) | st.dictionaries(
            st.text(max_size=12) | st.sampled_from(INTERESTING_TEXT[:12]), kids, max_size=6),
        max_leaves=max_leaves)


def json_bytes(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON text of ``value`` (NaN allowed); lone surrogates pass through when not ASCII."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


BIGNUM = cbor2.CBORTag(2, b"\xff" * 2000)  # an integer of 4,817 digits
CBOR_TAGS = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 256,
             258, 260, 261, 1004, 55799, 2**32, 2**64 - 1)


def cbor_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.sampled_from(INTERESTING_INTS),
        st.just(BIGNUM), st.floats(), st.text(max_size=40), st.sampled_from(INTERESTING_TEXT),
        st.binary(max_size=64), st.binary(min_size=32, max_size=32),
        st.just(cbor2.undefined),
        st.builds(cbor2.CBORSimpleValue, st.integers(0, 19) | st.integers(32, 255)),
    )


def cbor_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Python values cbor2 can encode: maps with any scalar keys, tags, simple values."""
    keys = st.text(max_size=10) | st.integers() | st.binary(max_size=8) | st.sampled_from(
        ("v", "t", "m", "ids", "events", "count", "prefixes", "reason", "new", "nonce"))
    return st.recursive(
        cbor_scalars(),
        lambda kids: st.one_of(
            st.lists(kids, max_size=6),
            st.dictionaries(keys, kids, max_size=6),
            st.builds(cbor2.CBORTag, st.sampled_from(CBOR_TAGS) | st.integers(0, 2**64 - 1),
                      kids),
        ),
        max_leaves=max_leaves)


# ---------------------------------------------------------------------------- mutations

BYTE_TOKENS = (b"\x00", b"\xff", b"\x80", b"\x7f", b'"', b"\\", b"{", b"}", b"[", b"]", b",",
               b":", b"\n", b"\n\n", b"\r", b"\xe2\x80\x94 ", b"\xc0\x80", b"\xed\xa0\x80",
               b"\xf4\x90\x80\x80", b"9" * 40, b"[" * 64, b"\x9f" * 64, b"\xbf", b"\x5b" +
               b"\xff" * 8, b"\x9b" + b"\x7f" * 8, b"\xc2\x59\x07\xd0", b"NaN", b"1e999",
               b"\\ud800", b"=", b"+", b"/", b"..", b"%2F", b"%00", b"\t")


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: Sequence[bytes], max_ops: int = 4) -> bytes:
    """A seed with byte flips, overwrites, truncation, insertion, deletion and splicing."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "set", "truncate", "insert", "delete", "dup",
                                   "splice")))
        n = len(data)
        if op == "truncate":
            data = data[:draw(st.integers(0, n))]
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.sampled_from(BYTE_TOKENS) | st.binary(min_size=1, max_size=16))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            a = draw(st.integers(0, len(other)))
            b = draw(st.integers(a, min(len(other), a + 4096)))
            at = draw(st.integers(0, n))
            data[at:at] = other[a:b]
        elif n == 0:
            continue
        elif op == "flip":
            data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[draw(st.integers(0, n - 1))] = draw(
                st.sampled_from((0x00, 0xFF, 0x7F, 0x80, 0x20, 0x22, 0x5C, 0x7B, 0x5B, 0x30))
                | st.integers(0, 255))
        elif op == "delete":
            a = draw(st.integers(0, n - 1))
            del data[a:draw(st.integers(a, min(n, a + 256)))]
        else:  # dup
            a = draw(st.integers(0, n - 1))
            b = draw(st.integers(a, min(n, a + 256)))
            data[b:b] = data[a:b]
    return bytes(data)


Path_ = tuple[Any, ...]


def _paths(obj: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every path (keys and indices) into a tree of dicts and lists, the root first."""
    stack: list[tuple[Any, Path_]] = [(obj, prefix)]
    while stack:
        node, path = stack.pop()
        yield path
        if isinstance(node, dict):
            stack.extend((v, (*path, k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(node))


def _clone(obj: Any) -> Any:
    """A copy of the dicts and lists of a tree (leaves, tags included, are shared)."""
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def _get(obj: Any, path: Path_) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(obj: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    _get(obj, path[:-1])[path[-1]] = value
    return obj


@st.composite
def mutated_tree(draw: st.DrawFn, seeds: Sequence[Any], leaves: st.SearchStrategy[Any],
                 max_ops: int = 3) -> Any:
    """A seed document (dicts and lists) with fields deleted, renamed, duplicated, wrapped,
    or swapped for other types, huge numbers, long strings and deep nesting."""
    obj = _clone(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        paths = list(_paths(obj))
        path = paths[draw(st.integers(0, len(paths) - 1))]
        op = draw(st.sampled_from(("delete", "swap", "swap", "special", "rename", "dup",
                                   "wrap", "add")))
        parent = _get(obj, path[:-1]) if path else None
        value = _get(obj, path)
        if op == "delete" and parent is not None:
            del parent[path[-1]]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12) | st.sampled_from(INTERESTING_TEXT[:16]))] = \
                parent.pop(path[-1])
        elif op == "dup" and isinstance(parent, list):
            parent.insert(path[-1], _clone(value))
        elif op == "wrap":
            obj = _set(obj, path, [value] if draw(st.booleans()) else {"v": value})
        elif op == "add" and isinstance(value, dict):
            value[draw(st.text(max_size=12))] = draw(leaves)
        elif op == "special":
            obj = _set(obj, path, _clone(draw(st.sampled_from(SWAPS))))
        else:
            obj = _set(obj, path, draw(leaves))
    return obj
