"""Fuzzing the TOML parsers: the node config (``config_from_toml``) and the network spec
(``spec_from_toml``). Both promise one typed error (``ConfigError``, ``SpecError``) that the
CLI turns into one line; anything else is a traceback for the operator.

Seeds: ``configs/node.toml`` and ``configs/network.toml`` (and a synthetic spec). Inputs are
random text, the seeds mutated byte by byte and line by line (lines deleted, duplicated,
values replaced), and documents generated from known sections and keys with values of every
TOML type: huge integers, NaN and infinities, dates, deep arrays, inline tables.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pithnode.node.config import NodeConfig, config_from_toml
from pithnode.node.errors import ConfigError
from pithnode.node.synth import synth_keys
from pithnode.protocol.errors import SpecError
from pithnode.protocol.spec import NetworkSpec, spec_from_toml
from tests.fuzz import (
    KnownBug,
    Target,
    check,
    corpus_cases,
    fuzz_settings,
    mutated_bytes,
    peak_allocation,
    replay,
)

ROOT = Path(__file__).resolve().parents[2]
NODE_TOML = (ROOT / "configs" / "node.toml").read_text("utf-8")
NETWORK_TOML = (ROOT / "configs" / "network.toml").read_text("utf-8")
SYNTH_TOML = synth_keys(3).spec_toml()
SEEDS = [NODE_TOML.encode(), NETWORK_TOML.encode(), SYNTH_TOML.encode()]


def _text(data: bytes) -> str | None:
    """load_config reads UTF-8 (a decode error is already a ConfigError there)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def run_config(data: bytes) -> object:
    text = _text(data)
    if text is None:
        return None
    cfg = config_from_toml(text, source="fuzz.toml", base=Path("/nonexistent/base"))
    assert isinstance(cfg, NodeConfig)
    return cfg


def run_spec(data: bytes) -> object:
    text = _text(data)
    if text is None:
        return None
    spec = spec_from_toml(text, source="fuzz.toml")
    assert isinstance(spec, NetworkSpec)
    return spec


HUGE_INT = KnownBug("toml-huge-integer", ValueError, r"Exceeds the limit \(4300 digits\)",
                    "tomllib raises ValueError (not TOMLDecodeError) for an integer of more "
                    "than 4300 digits; neither parser catches it")
DEEP = KnownBug("toml-deep-nesting", RecursionError, r"maximum recursion depth",
                "tomllib recurses per nesting level of arrays and inline tables: "
                "RecursionError escapes both parsers")
FLOAT_OVERFLOW = KnownBug("config-float-overflow", OverflowError, r"too large to convert",
                          "config _convert calls float() on an integer too large for a "
                          "float (a number field given e.g. 10**400)")
SPEC_NOT_TABLE = KnownBug("spec-section-not-a-table", TypeError, r"not iterable",
                          "spec_from_toml iterates registry_keys/trusted_importers without "
                          "checking they are arrays (e.g. registry_keys = 5): TypeError")
SPEC_NOT_DICT = KnownBug("spec-table-not-a-dict", AttributeError, r"has no attribute 'items'",
                         "spec_from_toml calls .items() on authorisation/allowed_signers "
                         "without checking they are tables (e.g. authorisation = 5)")

CONFIG = Target("config_from_toml", run_config, (ConfigError,),
                known_bugs=())
SPEC = Target("spec_from_toml", run_spec, (SpecError,),
              known_bugs=())
TARGETS = (CONFIG, SPEC)


# ---------------------------------------------------------------------------- inputs

SECTIONS = {
    "node": ("data_dir", "network", "name"),
    "p2p": ("listen", "bootstrap", "max_peers", "mdns", "mirror_prefixes", "redial_min_s",
            "redial_max_s"),
    "sync": ("interval_s", "jitter_s", "fetch_batch", "timeout_s", "frame_size_limit"),
    "gossip": ("max_batch_events", "max_batch_bytes", "flush_interval_s", "rate_per_signer",
               "heartbeat_s"),
    "http": ("enabled", "host", "port", "public_url"),
    "socket": ("path",),
    "log": ("level", "format"),
    "pull": ("sources", "interval_s", "records"),
    "attest": ("mirror_hint_interval_s", "checkpoint_interval_s", "audit_interval_s",
               "audit_objects"),
    "network": ("name", "merge_version", "state_version"),
    "authorisation": ("record_created", "correction", "mirror_hint", "registry_import",
                      "unknown_type"),
    "allowed_signers": ("node", "author", "pith_registry"),
}
ARRAY_TABLES = {"registry_keys": ("key_id", "signer_id", "public_key_hex", "fingerprint_hex"),
                "trusted_importers": ("name", "public_key_hex")}
LITERALS = (
    "0", "1", "-1", "4096", "65535", "65536", "1e400", "-1e400", "1.0", "0.0", "-0.0", "nan",
    "+inf", "-inf", "inf", "true", "false", "9" * 30, "9" * 400, "9" * 4400, "0x7fffffffffffffff",
    "0o777", "0b1", "1_000", '""', '"x"', '"~"', '"~root/x"', '"/"', '"\\u0000"', '"AB"',
    '"ab"', '"pith-synth"', '"pith-open-graph-merge-v1"', '"1.0"', '"node"', '"author"',
    '"pith_registry"', '"human"', '"json"', '"debug"', '"/ip4/127.0.0.1/tcp/0"',
    '"b2d552b68890857171a78b36a5dccf368a953413288c353f7c9d9d6f94b709b3"', "'literal'",
    '"""multi\nline"""', "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "[]", "{}",
    '["node", "author"]', '["A", "B7"]', '["ab"]', "[1, 2]", '[["x"]]', "{a = 1}",
    "[" * 200 + "]" * 200, "[" * 2000 + "]" * 2000, "{a=" * 600 + "1" + "}" * 600,
)


def toml_values() -> st.SearchStrategy[str]:
    return st.recursive(
        st.sampled_from(LITERALS) | st.integers().map(str)
        | st.floats(allow_nan=False, allow_infinity=False).map(repr)
        | st.text(max_size=20).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"')
                                   .encode("unicode_escape").decode("ascii") + '"'),
        lambda kids: st.lists(kids, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
        | st.lists(st.tuples(st.sampled_from(("a", "b", "name", "key_id")), kids),
                   max_size=3, unique_by=lambda kv: kv[0]).map(
            lambda kvs: "{" + ", ".join(f"{k} = {v}" for k, v in kvs) + "}"),
        max_leaves=8)


@st.composite
def toml_documents(draw: st.DrawFn) -> bytes:
    """Known sections and keys (and a few unknown ones) with values of any TOML type."""
    lines: list[str] = []
    names = draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True))
    for name in names:
        lines.append(f"[{name}]")
        keys = draw(st.lists(st.sampled_from(SECTIONS[name]) | st.sampled_from(("x", "y")),
                             max_size=4, unique=True))
        lines += [f"{k} = {draw(toml_values())}" for k in keys]
    for name in draw(st.lists(st.sampled_from(sorted(ARRAY_TABLES)), max_size=2)):
        lines.append(f"[[{name}]]")
        keys = draw(st.lists(st.sampled_from(ARRAY_TABLES[name]), max_size=4, unique=True))
        lines += [f"{k} = {draw(toml_values())}" for k in keys]
    for _ in range(draw(st.integers(0, 2))):  # top-level keys, before any table
        key = draw(st.sampled_from(sorted(SECTIONS) + sorted(ARRAY_TABLES) + ["zzz"]))
        lines.insert(0, f"{key} = {draw(toml_values())}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def line_mutations(draw: st.DrawFn) -> bytes:
    """A seed with lines deleted, duplicated, moved, or their values replaced."""
    lines = draw(st.sampled_from(SEEDS)).decode().splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(("delete", "dup", "move", "value", "value")))
        if op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
        elif "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + draw(toml_values())
    return "\n".join(lines).encode()


toml_inputs = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    mutated_bytes(SEEDS),
    line_mutations(),
    toml_documents(),
)


# ---------------------------------------------------------------------------- properties


@fuzz_settings(200)
@given(toml_inputs)
def test_config_from_toml(data: bytes) -> None:
    check(CONFIG, data)


@fuzz_settings(200)
@given(toml_inputs)
def test_spec_from_toml(data: bytes) -> None:
    check(SPEC, data)


def test_seeds_parse() -> None:
    config_from_toml(NODE_TOML)
    spec_from_toml(NETWORK_TOML)
    spec_from_toml(SYNTH_TOML)


@pytest.mark.parametrize(("target", "path"), corpus_cases(TARGETS))
def test_corpus(target: Target, path: Path) -> None:
    replay(target, path)


MIB = 1 << 20


#: tomllib is pure Python (~15 s/MiB of short key lines under tracemalloc): the many-keys
#: case is 256 KiB; the cost per byte is what is checked.
BIG_TOML = {
    "long-array": NODE_TOML.replace("sources = []", "sources = [" + '"http://x",' * (MIB // 11)
                                    + "]").encode(),
    "many-keys": ("\n".join(f"k{i} = {i}" for i in range(MIB // 48))).encode(),
    "long-comment": b"# " + b"x" * MIB + b"\n",
}


@pytest.mark.parametrize(("target", "shape"), [
    (CONFIG, "long-array"), (CONFIG, "many-keys"), (CONFIG, "long-comment"),
    (SPEC, "long-comment"),
], ids=lambda v: v.name if isinstance(v, Target) else v)
def test_big_documents_stay_bounded(target: Target, shape: str) -> None:
    data = BIG_TOML[shape]
    peak = peak_allocation(target, data)
    assert peak <= 64 * len(data), peak
