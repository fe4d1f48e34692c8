"""Hypothesis profiles of the fuzz package, the example counts and the failing-input corpus.

Profiles (select one with ``--hypothesis-profile=NAME``; nothing here loads a profile, so
the rest of the test suite keeps Hypothesis' defaults):

* no profile, or ``short``: each property test runs its own short budget (see
  ``fuzz_settings`` in ``tests/fuzz/__init__.py``); the package runs in well under 60 s.
* ``long`` (``make fuzz``): every property test runs ``LONG_EXAMPLES`` (45,000) examples,
  more than 1,000,000 inputs over all targets; ``PITHNODE_FUZZ_EXAMPLES=N`` changes the
  number.

At the end of a session that ran fuzz tests, the inputs run per target are printed, and the
smallest failing input of each target is written to ``corpus/<target>/fail-<sha>.bin`` (unless
``PITHNODE_FUZZ_SAVE=0``), where the corpus replay tests run it from then on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter
from hypothesis import HealthCheck, settings

from tests.fuzz import (
    COUNTS,
    DEADLINE,
    FAILURES,
    LONG_EXAMPLES,
    LONG_PROFILE,
    TOLERATED,
    save_corpus,
)

#: ``PITHNODE_FUZZ_EXAMPLES=N make fuzz`` runs N examples per target instead.
EXAMPLES_ENV = "PITHNODE_FUZZ_EXAMPLES"
settings.register_profile(LONG_PROFILE,
                          max_examples=int(os.environ.get(EXAMPLES_ENV, LONG_EXAMPLES)),
                          deadline=DEADLINE, suppress_health_check=list(HealthCheck),
                          print_blob=True)
settings.register_profile("short", deadline=DEADLINE, suppress_health_check=list(HealthCheck))

_saved: list[Path] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hypothesis warns when it prints a large failing input; under filterwarnings=error that
    # warning would replace the report of the failure itself.
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.filterwarnings(
                "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for target, data in sorted(FAILURES.items()):
        path = save_corpus(target, data)
        if path is not None:
            _saved.append(path)


def pytest_terminal_summary(terminalreporter: TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    if not COUNTS:
        return
    tr = terminalreporter
    tr.section(f"fuzz inputs (hypothesis profile {settings.get_current_profile_name()!r})")
    width = max(len(name) for name in COUNTS)
    for name, n in sorted(COUNTS.items()):
        known = f"  ({TOLERATED[name]:,} hit a known bug)" if TOLERATED[name] else ""
        tr.write_line(f"{name:<{width}}  {n:>10,}{known}")
    tr.write_line(f"{'total':<{width}}  {sum(COUNTS.values()):>10,}")
    for path in _saved:
        tr.write_line(f"new failing input saved: {path}")
