"""``pithnode import``, ``export`` and ``fsck`` on real files: the golden file round trip,
idempotence, bad input, and the exit codes."""

from __future__ import annotations

import io
import json
import sqlite3
import stat
from pathlib import Path

import pytest

from pithnode.protocol.keys import SigningKey
from pithnode.storage.store import Store

from .corpus import (
    GOLDEN,
    GOLDEN_PITH,
    Keys,
    Record,
    cli_main,
    corpus,
    jsonl,
    key_from,
    mainnet_spec,
    mainnet_toml,
    net_spec,
    net_toml,
    run_cli,
)

SUFFIX = GOLDEN_PITH.rsplit(":", 1)[1]


def data_dir(tmp: Path, name: str, key: SigningKey, network: str) -> Path:
    """A data directory with a node key and a network spec that trusts what it must."""
    d = tmp / name
    d.mkdir()
    (d / "node.key").write_bytes(key.to_file_bytes())
    (d / "network.toml").write_text(network)
    return d


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def states(d: Path) -> dict[str, bytes]:
    with Store(d / "store.sqlite", net_spec(Keys.make("cli")), readonly=True) as s:
        return {p: s.state(p).data for p in s.records()}  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.make("cli")


@pytest.fixture(scope="module")
def recs(keys: Keys) -> list[Record]:
    return corpus(keys, 6)


@pytest.fixture
def bundles(tmp_path: Path, recs: list[Record]) -> Path:
    folder = tmp_path / "bundles"
    folder.mkdir()
    for rec in recs:
        (folder / f"{rec.arxiv}.bundle.json").write_bytes(rec.bundle_bytes())
    return folder


# -- the golden file --------------------------------------------------------------------------
def test_golden_import_export_round_trip(tmp_path: Path) -> None:
    key_a, key_b = key_from("golden-a"), key_from("golden-b")
    network = mainnet_toml(key_a, key_b)
    a = data_dir(tmp_path, "a", key_a, network)
    r = run_cli("import", "--data-dir", str(a), str(GOLDEN))
    assert r.code == 0, r.err
    assert "registry events admitted" in r.out
    r = run_cli("export", "--data-dir", str(a), "--out", str(tmp_path / "out-a"))
    assert r.code == 0, r.err
    out_a = tree(tmp_path / "out-a")
    assert sorted(out_a) == [f".well-known/pith/{SUFFIX}/bundle.json",
                             f"pith/{SUFFIX}/bundle.json", f"pith/{SUFFIX}/state.json"]
    assert out_a[f"pith/{SUFFIX}/state.json"] == GOLDEN.read_bytes()
    assert out_a[f"pith/{SUFFIX}/bundle.json"] == out_a[f".well-known/pith/{SUFFIX}/bundle.json"]
    assert not out_a[f"pith/{SUFFIX}/bundle.json"].endswith(b"\n")

    # a second import adds nothing
    before = (a / "store.sqlite").stat().st_size, states(a)
    r = run_cli("import", "--data-dir", str(a), "--progress", "jsonl", str(GOLDEN))
    assert r.code == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])["summary"]
    assert (summary["events new"], summary["import attestations made"]) == (0, 0)
    assert states(a) == before[1]

    # import the export into a fresh store (another node key), export again: byte-identical
    b = data_dir(tmp_path, "b", key_b, network)
    r = run_cli("import", "--data-dir", str(b), str(tmp_path / "out-a"))
    assert r.code == 0, r.err
    r = run_cli("export", "--data-dir", str(b), "--out", str(tmp_path / "out-b"))
    assert r.code == 0, r.err
    assert tree(tmp_path / "out-b") == out_a


def test_untrusted_node_key_is_reported(tmp_path: Path) -> None:
    d = tmp_path / "d"
    r = run_cli("import", "--data-dir", str(d), str(GOLDEN))
    assert r.code == 0, r.err
    assert "not a trusted importer of network 'pith-mainnet'" in r.err
    key = SigningKey.from_file_bytes((d / "node.key").read_bytes())
    assert key.fingerprint in r.err
    assert stat.S_IMODE((d / "node.key").stat().st_mode) == 0o600
    with Store(d / "store.sqlite", mainnet_spec(), readonly=True) as s:
        assert s.records() == []  # nothing signed was in the file, nothing admitted


# -- a corpus with native events --------------------------------------------------------------
def test_corpus_round_trip_through_bundles_and_jsonl(tmp_path: Path, keys: Keys,
                                                     recs: list[Record],
                                                     bundles: Path) -> None:
    network = net_toml(keys, keys.node, keys.other_node)
    a = data_dir(tmp_path, "a", keys.node, network)
    r = run_cli("import", "--data-dir", str(a), str(bundles))
    assert r.code == 0, r.err
    r = run_cli("export", "--data-dir", str(a), "--out", str(tmp_path / "out-a"), "--jsonl",
                str(tmp_path / "a.jsonl"))
    assert r.code == 0, r.err
    out_a = tree(tmp_path / "out-a")
    assert len(out_a) == 3 * len(recs)
    spec = net_spec(keys, keys.node)
    for rec in recs:
        suffix = rec.pith.rsplit(":", 1)[1]
        state = json.loads(out_a[f"pith/{suffix}/state.json"])
        assert state["pith_number"] == rec.pith
        assert state["current"]["canonical_record"] == rec.canonical_record
        assert state["invalid_event_count"] == 1 and state["equivocation_count"] == 1
        # the registry's own state, plus the natives, is what the bundle merges to
        bundle = json.loads(out_a[f"pith/{suffix}/bundle.json"])
        assert len(bundle["events"]) == len(rec.registry) + len(rec.natives) + 1
    assert spec.is_trusted_importer(keys.node.public_key)

    b = data_dir(tmp_path, "b", keys.other_node, network)
    assert run_cli("import", "--data-dir", str(b), str(tmp_path / "out-a")).code == 0
    assert run_cli("export", "--data-dir", str(b), "--out", str(tmp_path / "out-b")).code == 0
    assert tree(tmp_path / "out-b") == out_a

    c = data_dir(tmp_path, "c", keys.other_node, network)
    r = run_cli("import", "--data-dir", str(c), str(tmp_path / "a.jsonl"))
    assert r.code == 0, r.err
    assert run_cli("export", "--data-dir", str(c), "--out", str(tmp_path / "out-c")).code == 0
    assert tree(tmp_path / "out-c") == out_a

    # idempotent: importing everything again adds nothing
    r = run_cli("import", "--data-dir", str(a), "--progress", "jsonl", str(bundles),
                str(tmp_path / "out-a"), str(tmp_path / "a.jsonl"))
    assert r.code == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])["summary"]
    assert summary["events new"] == 0 and summary["import attestations made"] == 0


def test_import_from_standard_input(tmp_path: Path, keys: Keys, recs: list[Record]) -> None:
    d = data_dir(tmp_path, "d", keys.node, net_toml(keys, keys.node))
    r = run_cli("import", "--data-dir", str(d), "-", stdin=jsonl(recs[0].natives))
    assert r.code == 0, r.err
    assert f"imported -: {len(recs[0].natives)} new, 0 duplicate, 0 rejected" in r.err
    assert "import summary" in r.out
    r = run_cli("import", "--data-dir", str(d), "-", stdin=recs[1].bundle_bytes())
    assert r.code == 0, r.err
    assert set(states(d)) == {recs[0].pith, recs[1].pith}


# -- bad input --------------------------------------------------------------------------------
def bad_files(folder: Path, recs: list[Record]) -> dict[str, str]:
    """Junk of every kind, and the reason each is skipped."""
    folder.mkdir(parents=True)
    golden = GOLDEN.read_bytes()
    files = {
        "truncated.json": (golden[: len(golden) // 2], "bad_json"),
        "list.json": (b"[1, 2, 3]", "wrong_document_type"),
        "other.json": (b'{"manifest_type": "pith_mirror_manifest"}', "wrong_document_type"),
        "latin1.json": ('{"state_type": "é"}'.encode("latin-1"), "bad_utf8"),
        "empty.json": (b"", "bad_json"),
        "binary.bin": (bytes(range(256)) * 4, "bad_utf8"),
        "huge-line.jsonl": (jsonl(recs[0].natives[:1]) + b'{"x": "' + b"a" * (3 << 20)
                            + b'"}\n', "line_too_large"),
        "bad-line.jsonl": (jsonl(recs[0].natives[:2]) + b"not json\n", "bad_json"),
        "nested/deeper/text.txt": (b"hello\nworld\n", "bad_json"),
    }
    for name, (data, _) in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}


def test_bad_files_are_reported_and_skipped(tmp_path: Path, keys: Keys, recs: list[Record],
                                            bundles: Path) -> None:
    d = data_dir(tmp_path, "d", keys.node, net_toml(keys, keys.node))
    assert run_cli("import", "--data-dir", str(d), str(bundles)).code == 0
    before = states(d)
    junk = tmp_path / "junk"
    reasons = bad_files(junk, recs)
    good = recs[0].bundle_bytes()
    (junk / "zz-good.json").write_bytes(good)
    r = run_cli("import", "--data-dir", str(d), "--progress", "jsonl", str(junk))
    assert r.code == 1
    for name in reasons:
        assert f"skipped {junk / name}:" in r.err, name
    summary = json.loads(r.out.splitlines()[-1])["summary"]
    assert summary["files skipped"] == len(reasons)
    assert summary["files imported"] == 1
    for reason in set(reasons.values()):
        assert summary[f"  skipped: {reason}"] == list(reasons.values()).count(reason)
    assert states(d) == before  # nothing stored was damaged
    assert run_cli("fsck", "--data-dir", str(d)).code == 0


def test_strict_stops_at_the_first_bad_file(tmp_path: Path, keys: Keys, recs: list[Record]
                                            ) -> None:
    d = data_dir(tmp_path, "d", keys.node, net_toml(keys, keys.node))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.json").write_bytes(recs[0].bundle_bytes())
    (folder / "b.json").write_bytes(b'{"truncated": ')
    (folder / "c.json").write_bytes(recs[1].bundle_bytes())
    r = run_cli("import", "--data-dir", str(d), "--strict", str(folder))
    assert r.code == 1
    assert "stopped at b.json (--strict)" in r.err
    assert set(states(d)) == {recs[0].pith}
    r = run_cli("import", "--data-dir", str(d), str(folder))
    assert r.code == 1
    assert set(states(d)) == {recs[0].pith, recs[1].pith}


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    r = run_cli("import", "--data-dir", d, str(tmp_path / "missing.json"))
    assert r.code == 2 and "no such file or directory" in r.err
    r = run_cli("import", "--data-dir", d, "--batch-size", "0", str(GOLDEN))
    assert r.code == 2
    r = run_cli("export", "--data-dir", d, "--out", str(tmp_path / "o"))
    assert r.code == 2 and "no store at" in r.err
    assert run_cli("import", "--data-dir", d, str(GOLDEN)).code == 0
    r = run_cli("export", "--data-dir", d)
    assert r.code == 2 and "needs --out" in r.err
    r = run_cli("import", "--data-dir", d)
    assert r.code == 2


def test_second_writer_is_refused_by_the_cli(tmp_path: Path) -> None:
    d = tmp_path / "d"
    assert run_cli("import", "--data-dir", str(d), str(GOLDEN)).code == 0
    with Store(d / "store.sqlite", mainnet_spec()):
        r = run_cli("import", "--data-dir", str(d), str(GOLDEN))
        assert r.code == 2
        assert "in use by another pithnode process" in r.err
        assert "stop the other pithnode process" in r.err
        r = run_cli("export", "--data-dir", str(d), "--out", str(tmp_path / "o"))
        assert r.code == 0, r.err  # readers need no lock


# -- fsck ---------------------------------------------------------------------------------------
def test_fsck_finds_and_repairs_a_flipped_byte(tmp_path: Path, keys: Keys,
                                               bundles: Path) -> None:
    d = data_dir(tmp_path, "d", keys.node, net_toml(keys, keys.node))
    assert run_cli("import", "--data-dir", str(d), str(bundles)).code == 0
    r = run_cli("fsck", "--data-dir", str(d))
    assert (r.code, r.out.splitlines()[-1]) == (0, "clean")
    conn = sqlite3.connect(d / "store.sqlite")
    sha, data = conn.execute("SELECT sha256, data FROM objects WHERE id = 9").fetchone()
    conn.execute("UPDATE objects SET data = ? WHERE id = 9",
                 (data[:5] + bytes([data[5] ^ 1]) + data[6:],))
    conn.commit()
    conn.close()
    r = run_cli("fsck", "--data-dir", str(d))
    assert r.code == 1
    assert f"problem: object {sha.hex()}: damaged" in r.out
    r = run_cli("fsck", "--data-dir", str(d), "--repair")
    assert r.code == 0, r.out
    assert "dropped event sha256:" in r.out and "repaired" in r.out
    r = run_cli("fsck", "--data-dir", str(d), "--verify-signatures")
    assert (r.code, r.out.splitlines()[-1]) == (0, "clean")


def test_state_documents_carry_no_signatures(tmp_path: Path, keys: Keys, recs: list[Record],
                                             bundles: Path) -> None:
    a = data_dir(tmp_path, "a", keys.node, net_toml(keys, keys.node))
    assert run_cli("import", "--data-dir", str(a), str(bundles)).code == 0
    assert run_cli("export", "--data-dir", str(a), "--out", str(tmp_path / "out")).code == 0
    b = data_dir(tmp_path, "b", keys.node, net_toml(keys, keys.node))
    suffix = recs[0].pith.rsplit(":", 1)[1]
    r = run_cli("import", "--data-dir", str(b), "--progress", "jsonl",
                str(tmp_path / "out" / "pith" / suffix / "state.json"))
    assert r.code == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])["summary"]
    # the registry events are admitted; the native entries (no signatures) are counted
    assert summary["registry events admitted"] == len(recs[0].registry)
    assert summary["unsigned state entries skipped"] > 0
    state = json.loads(states(b)[recs[0].pith])
    assert state["current"]["canonical_record"] == recs[0].canonical_record


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(tmp_path: Path, keys: Keys, bundles: Path) -> None:
    d = data_dir(tmp_path, "d", keys.node, net_toml(keys, keys.node))
    out, err = _Terminal(), _Terminal()
    code = cli_main()(["import", "--data-dir", str(d), str(bundles)], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert "import summary" in out.getvalue()
    assert "imported " not in err.getvalue()  # the bar, not plain lines
