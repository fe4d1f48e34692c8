"""Config parsing: the shipped examples load; mistakes name the file, section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pithnode.node.config import NodeConfig, config_from_toml, load_config
from pithnode.node.errors import ConfigError
from pithnode.protocol.spec import spec_from_toml

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_node_config_loads_and_matches_the_defaults() -> None:
    cfg = load_config(ROOT / "configs" / "node.toml")
    defaults = NodeConfig()
    assert cfg.node.network == ROOT / "configs" / "network.toml"
    assert cfg.p2p.listen == ("/ip4/127.0.0.1/tcp/4001",)
    assert cfg.http.host == "127.0.0.1" and not cfg.p2p.mdns
    # everything else documented in the file equals the code's defaults
    for section in ("sync", "gossip", "log", "pull", "attest"):
        assert getattr(cfg, section) == getattr(defaults, section), section


SHIPPED = sorted((ROOT / "configs").rglob("*.toml"))


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem != "network"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_node_config_parses(path: Path) -> None:
    cfg = load_config(path)
    if cfg.node.network is not None:
        assert cfg.node.network.is_file(), f"{path} names a missing network spec"


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem == "network"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_network_spec_parses(path: Path) -> None:
    spec = spec_from_toml(path.read_text(), source=str(path))
    assert spec.registry_key("pith-v1-2026-05") is not None


@pytest.mark.parametrize(("text", "message"), [
    ("[p2p]\nlisten = 'x'\n", "f.toml [p2p] listen: expected a list of strings"),
    ("[p2p]\nmax_peer = 3\n", "f.toml [p2p]: unknown key 'max_peer'"),
    ("[p2pp]\n", "f.toml: unknown section [p2pp]"),
    ("[http]\nport = 70000\n", "f.toml [http] port: must be a port number"),
    ("[http]\nport = '80'\n", "f.toml [http] port: expected an integer"),
    ("[log]\nformat = 'xml'\n", "f.toml [log] format: must be human or json"),
    ("[sync]\nframe_size_limit = 100\n", "[sync] frame_size_limit: must be 0 or"),
    ("[p2p]\nmirror_prefixes = ['ab']\n", "[p2p] mirror_prefixes: 'ab' is not"),
    ("[p2p]\nredial_min_s = 5\nredial_max_s = 1\n", "redial_max_s: must be >="),
    ("[node]\nnetwork = ''\n", "[node] network: expected a path"),
    ("node = 1\n", "[node] must be a table"),
    ("[[p2p]]\n", "[p2p] must be a table"),
    ("= broken", "not valid TOML"),
])
def test_errors_name_file_section_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_toml(text, source="f.toml")
    assert message in str(exc.value)


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "n.toml"
    f.parent.mkdir()
    f.write_text("[node]\nnetwork = '../net.toml'\ndata_dir = 'data'\n")
    cfg = load_config(f)
    assert cfg.node.network == tmp_path / "sub" / ".." / "net.toml"
    assert cfg.node.data_dir == tmp_path / "sub" / "data"


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("[pull]\nsources = ['ftp://x']\n", "[pull] sources: must be a list of http(s) URLs"),
    ("[pull]\nrecords = ['not an id!']\n", "[pull] records: must be a list of Pith Numbers"),
])
def test_pull_settings_are_checked_at_load(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_toml(text, source="f.toml")
    assert message in str(exc.value)
