"""The fuzz harness itself: what ``check`` counts against an input's CPU bound."""

from __future__ import annotations

import gc
import time

import pytest

from tests.fuzz import COUNTS, FAILURES, Target, check


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_an_input_over_its_cpu_bound_fails() -> None:
    slow = Target("harness_slow", lambda data: _spin(0.3), (ValueError,), time_bound_s=0.1)
    try:
        with pytest.raises(AssertionError, match="harness_slow: an input of 1 bytes took"):
            check(slow, b"x")
        assert FAILURES["harness_slow"] == b"x"
    finally:  # not a decoder's failing input: kept out of the corpus and the counts
        FAILURES.pop("harness_slow", None)
        COUNTS.pop("harness_slow", None)


def test_time_in_the_garbage_collector_is_not_counted() -> None:
    heap = [[i] for i in range(1_000_000)]  # a big heap makes a full collection slow
    started = time.thread_time()
    gc.collect()
    full = time.thread_time() - started
    assert full > 0.05, "the heap is too small to make the point"
    target = Target("harness_gc", lambda data: gc.collect(), (ValueError,),
                    time_bound_s=full / 4)
    try:
        check(target, b"x")
    finally:
        COUNTS.pop("harness_gc", None)
        del heap
