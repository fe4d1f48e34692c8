"""Crash safety: ``pithnode import`` killed with SIGKILL at random moments.

Each run prints a JSON line after every committed batch (``--progress jsonl``), so the test
knows what the store reported committed before the kill. After every kill the store must
open, be clean under fsck, hold every reported event, and hold states equal to a fresh merge.
The data directories are reused for several kills, so later runs also recover stores that
were killed mid-write; the first kill of each directory may even land during its creation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pithnode.protocol.events import Event
from pithnode.protocol.merge import merge
from pithnode.storage.store import Store

from .corpus import CLI_DRIVER, Keys, bulk_events, corpus, jsonl, net_spec, net_toml

KILLS = 20
MAX_RUNS = 60
RUNS_PER_DIR = 2
BATCH = 40
SEED = 20260518


def committed(stdout: bytes, path: str) -> int:
    """Events of ``path`` the run reported committed (complete lines only)."""
    n = 0
    for line in stdout.split(b"\n")[:-1]:  # the last piece may be cut by the kill
        msg = json.loads(line)
        if msg.get("file") == path:
            n = max(n, msg["committed"])
    return n


@pytest.mark.slow
def test_sigkill_during_import_never_loses_or_corrupts(tmp_path: Path) -> None:
    keys = Keys.make("crash")
    recs = corpus(keys, 40)
    natives: list[Event] = [e for r in recs for e in r.natives]
    natives += bulk_events(keys, recs, 45, seed=SEED)
    natives.sort(key=lambda e: e.subject)  # record by record, as bundles come
    registry = [e for r in recs for e in r.registry]
    source = tmp_path / "events.jsonl"
    source.write_bytes(jsonl(registry) + jsonl(natives))
    spec = net_spec(keys, keys.node)
    rng = random.Random(SEED)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def start(d: Path) -> subprocess.Popen[bytes]:
        if not d.exists():
            d.mkdir()
            (d / "node.key").write_bytes(keys.node.to_file_bytes())
            (d / "network.toml").write_text(net_toml(keys, keys.node))
        return subprocess.Popen(
            [sys.executable, "-c", CLI_DRIVER, "import", "--data-dir", str(d),
             "--progress", "jsonl", "--batch-size", str(BATCH), str(source)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    # how long a whole import takes here, to spread the kills over it
    began = time.monotonic()
    proc = start(tmp_path / "calibration")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode(errors="replace")
    whole = time.monotonic() - began

    killed = runs = 0
    while killed < KILLS:
        assert runs < MAX_RUNS, f"only {killed} of {runs} runs were killed"
        d = tmp_path / f"dir{runs // RUNS_PER_DIR}"
        runs += 1
        proc = start(d)
        try:
            proc.wait(timeout=rng.uniform(0.05, 0.85) * whole)  # the randomised kill delay
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        out, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")
        n = committed(out, str(source))

        with Store(d / "store.sqlite", spec) as store:
            report = store.fsck()
            assert report.clean, (runs, [p.line() for p in report.problems])
            reported = natives[:n]
            found = store.events_by_ids([e.event_id for e in reported])
            assert found == reported, (runs, n, len(found))
            if proc.returncode == 0:
                assert store.stats().events == len(natives) + len(recs)
            for pith in store.records():
                state = store.state(pith)
                assert state is not None
                fresh = merge(pith, store.events(pith), spec, verify_signatures=False)
                assert state.data == fresh.served_bytes(), (runs, pith)
