"""The golden file: Pith's real state document must verify, re-merge byte for byte, and
fail verification when any signed or hashed field is changed."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pithnode.node.cli import main

GOLDEN = Path(__file__).parent / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
GOLDEN_SHA = "a5230a63ad987fd126b508b92df25677176d2924b60993225c7ea63fe3180687"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.BytesIO())
    return code, out.getvalue(), err.getvalue()


def test_verify_golden_with_the_installed_command() -> None:
    # the real console script, as a user types it
    exe = Path(sys.executable).with_name("pithnode")
    proc = subprocess.run([str(exe), "verify", str(GOLDEN)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"state_sha256 {GOLDEN_SHA}" in proc.stdout
    assert "receipt" in proc.stdout and "signed by pith-v1-2026-05" in proc.stdout
    assert "VALID" in proc.stdout


def test_verify_golden_json_report() -> None:
    code, out, _ = run("verify", "--json", str(GOLDEN))
    assert code == 0
    report = json.loads(out)
    assert report["valid"] is True
    assert report["state_sha256"] == GOLDEN_SHA
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["receipt"]["ok"] and checks["state_sha256"]["ok"]
    assert checks["merge"]["detail"] == "re-merge reproduces the document byte for byte"


def test_merge_writes_the_golden_bytes(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    code, _, err = run("merge", str(GOLDEN), "--out", str(out))
    assert code == 0, err
    assert out.read_bytes() == GOLDEN.read_bytes()
    code, stdout, _ = run("merge", str(GOLDEN))
    assert code == 0 and stdout.encode() == GOLDEN.read_bytes()


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("A" if value[-1:] != "A" else "B") if value else "x"
    if value is None:
        return "x"
    if isinstance(value, list):
        return ["x"]
    return {"x": 1}


def _tampered(path: tuple[Any, ...]) -> bytes:
    doc = json.loads(GOLDEN.read_bytes())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _changed(node[path[-1]])
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _golden_doc() -> dict[str, Any]:
    return json.loads(GOLDEN.read_bytes())  # type: ignore[no-any-return]


RECORD_PATHS = [("current", "canonical_record", *p)
                for p in _leaves(_golden_doc()["current"]["canonical_record"])]
CREATED_RECORD_PATHS = [("current", "record_created", "payload", "canonical_record", *p)
                        for p in _leaves(_golden_doc()["current"]["record_created"]["payload"]
                                         ["canonical_record"])]
RECEIPT = ("current", "record_created", "payload", "receipt")
OTHER_PATHS = [
    (*RECEIPT, "signature_b64"),
    (*RECEIPT, "canonical_sha256"),
    ("current", "record_created", "payload", "canonical_sha256"),
    ("state_sha256",),
    ("pith_number",),
    ("event_count",),
    ("applied_event_ids", 1),
    ("current", "record_created", "event_id"),
    ("current", "record_created", "created_at"),
    ("current", "source_aliases", 0, "alias_value"),
] + [("current", "graph_snapshots", 0, *p)
     for p in _leaves(_golden_doc()["current"]["graph_snapshots"][0])]


@pytest.mark.parametrize("path", RECORD_PATHS + CREATED_RECORD_PATHS + OTHER_PATHS,
                         ids=lambda p: ".".join(map(str, p)))
def test_any_tampered_field_fails_verification(path: tuple[Any, ...], tmp_path: Path) -> None:
    f = tmp_path / "tampered.json"
    f.write_bytes(_tampered(path))
    code, out, err = run("verify", "--json", str(f))
    if code == 2:  # the change made the document unusable: named, one line
        assert err.startswith("error: ") and err.count("\n") == 1
        return
    assert code == 1, f"tampering {path} went unnoticed"
    report = json.loads(out)
    assert report["valid"] is False and report["failed"]
    # what failed is named
    if path[:2] == ("current", "canonical_record"):
        assert "state_sha256" in report["failed"]
    if path[:4] == ("current", "record_created", "payload", "canonical_record"):
        assert "canonical_sha256" in report["failed"] or "record_created" in report["failed"]
    if path == (*RECEIPT, "signature_b64"):
        assert "receipt" in report["failed"]
    if path == ("state_sha256",):
        assert report["failed"] == ["state_sha256"]


def test_tampered_report_is_readable(tmp_path: Path) -> None:
    f = tmp_path / "tampered.json"
    f.write_bytes(_tampered((*RECEIPT, "signature_b64")))
    code, out, err = run("verify", str(f))
    assert code == 1
    assert "INVALID" in out and "bad_receipt" in out
    assert err.startswith("invalid: ") and "receipt" in err


def test_golden_copy_is_untouched() -> None:
    doc = copy.deepcopy(_golden_doc())
    assert doc["state_sha256"] == GOLDEN_SHA
