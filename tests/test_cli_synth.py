"""pithnode synth: deterministic, importable, and with the promised mix of events."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pithnode.node.cli import main
from pithnode.protocol.events import event_from_json
from pithnode.protocol.ingest import accept
from pithnode.protocol.merge import merge
from pithnode.protocol.spec import spec_from_toml


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_synth_is_deterministic_and_valid(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        code, _, err = run("synth", "--records", "30", "--out", str(d), "--seed", "4",
                           "--invalid-rate", "0.3", "--equivocation-rate", "0.5")
        assert code == 0, err
    assert (a / "events.jsonl").read_bytes() == (b / "events.jsonl").read_bytes()
    spec = spec_from_toml((a / "network.toml").read_text())
    events = [event_from_json(json.loads(line))
              for line in (a / "events.jsonl").read_bytes().splitlines()]
    assert all(accept(e, spec) is None for e in events)
    types = {e.event_type for e in events}
    assert {"registry_import", "mirror_hint", "author_attestation", "citation_signature",
            "storage_attestation", "timestamp_anchor", "replication_record"} <= types
    invalid = equivocations = 0
    for subject in {e.subject for e in events}:
        doc = merge(subject, [e for e in events if e.subject == subject], spec).doc
        assert doc["current"]["record_created"] is not None  # registry events admitted
        invalid += doc["invalid_event_count"]
        equivocations += doc["equivocation_count"]
    assert invalid > 0 and equivocations > 0


def test_synth_usage_errors(tmp_path: Path) -> None:
    code, _, err = run("synth", "--records", "0", "--out", str(tmp_path))
    assert code == 2 and "--records" in err
    code, _, err = run("synth", "--records", "3", "--out", str(tmp_path), "--invalid-rate", "2")
    assert code == 2 and "--invalid-rate" in err
