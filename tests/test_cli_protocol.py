"""CLI behaviour of verify, merge and keygen: bad input is one line and exit 2."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from pithnode.node.cli import main
from pithnode.protocol.documents import MAX_DOCUMENT_BYTES
from pithnode.protocol.keys import SigningKey

GOLDEN = Path(__file__).parent / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"


def run(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.BytesIO(stdin))
    return code, out.getvalue(), err.getvalue()


def golden() -> dict:
    return json.loads(GOLDEN.read_bytes())


def _bad_documents() -> dict[str, bytes]:
    g = golden()
    wrong_type = dict(g, current=[])
    missing = {k: v for k, v in g.items() if k != "applied_event_ids"}
    bad_entry = json.loads(GOLDEN.read_bytes())
    bad_entry["current"]["graph_snapshots"][0]["signer"] = "pith.science"
    return {
        "malformed_json": b'{"state_type": "pith_open_graph_state",',
        "empty": b"",
        "not_utf8": b'{"state_type": "\xff\xfe"}',
        "array": b"[1,2,3]",
        "wrong_document": b'{"manifest_type": "pith_mirror_manifest"}',
        "wrong_types": json.dumps(wrong_type).encode(),
        "missing_key": json.dumps(missing).encode(),
        "bad_entry": json.dumps(bad_entry).encode(),
        "nan": b'{"state_type": NaN}',
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "bad_version": json.dumps(dict(g, state_version="9.9")).encode(),
        "bundle_missing": b'{"bundle_type": "pith_open_graph_bundle", "bundle_version": "1.0"}',
        "lone_surrogate": json.dumps(dict(g, pith_number="\ud800")).encode(),
    }


@pytest.mark.parametrize("name", sorted(_bad_documents()))
@pytest.mark.parametrize("command", ["verify", "merge"])
def test_bad_input_is_one_line_and_exit_2(name: str, command: str, tmp_path: Path) -> None:
    f = tmp_path / f"{name}.json"
    f.write_bytes(_bad_documents()[name])
    code, out, err = run(command, str(f))
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


def test_oversized_document_is_refused_before_decoding(tmp_path: Path) -> None:
    f = tmp_path / "huge.json"
    with open(f, "wb") as fh:
        fh.truncate(MAX_DOCUMENT_BYTES + 1)
    code, _, err = run("verify", str(f))
    assert code == 2 and "larger than the limit" in err


@pytest.mark.parametrize("argv", [["verify", "/nonexistent/x.json"], ["verify"], ["frobnicate"],
                                  ["merge", "--out"], ["verify", "."]])
def test_usage_errors(argv: list[str]) -> None:
    code, _, err = run(*argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_verify_reads_stdin() -> None:
    code, out, _ = run("verify", "--json", "-", stdin=GOLDEN.read_bytes())
    assert code == 0 and json.loads(out)["valid"]


def test_merge_refuses_documents_of_two_records(tmp_path: Path) -> None:
    from pithnode.protocol.bundle import build_bundle
    from tests.protocol_pool import build_pool

    pool = build_pool()
    other = tmp_path / "other.json"
    other.write_bytes(build_bundle(pool.subject, None, [], pool.events[:3]))
    code, _, err = run("merge", str(GOLDEN), str(other))
    assert code == 2 and "describe 2 records" in err


def test_keygen_writes_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    code, out, _ = run("keygen", "--out", str(path), "--json")
    assert code == 0
    info = json.loads(out)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = SigningKey.from_file_bytes(path.read_bytes())
    assert info["key_id"] == key.key_id and info["fingerprint"] == key.fingerprint
    code, _, err = run("keygen", "--out", str(path))
    assert code == 2 and "already exists" in err and "--force" in err
    assert SigningKey.from_file_bytes(path.read_bytes()) == key  # untouched


def test_custom_network_spec_option(tmp_path: Path) -> None:
    spec = tmp_path / "net.toml"
    spec.write_text("[network]\nname = 'empty'\n")
    code, out, _ = run("--network", str(spec), "verify", "--json", str(GOLDEN))
    report = json.loads(out)
    assert code == 1 and "receipt" in report["failed"]  # no trust root: receipt fails
    spec.write_text("[network]\nname = 'x'\ntypo = 1\n")
    code, _, err = run("--network", str(spec), "verify", str(GOLDEN))
    assert code == 2 and "unknown key 'typo'" in err


def test_huge_integer_is_a_clean_decode_error(tmp_path: Path) -> None:
    f = tmp_path / "big.json"
    f.write_bytes(b'{"a":' + b"1" * 5000 + b"}")
    code, _, err = run("verify", str(f))
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
