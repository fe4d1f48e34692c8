"""The devnet end to end: three real ``pithnode run`` processes talking libp2p on 127.0.0.1.

The fast tests pin the checked-in devnet files to their public seeds (peer ids in the
bootstrap lists, keys in the network spec), so they never drift. The slow ones start the
devnet the way ``make devnet --ephemeral`` does: fresh temporary data directories, configs
derived from ``configs/devnet/*.toml`` with every port replaced by 0, nodes started one by one
so each bootstraps to the actual addresses of the ones before it. They never collide with a
developer's devnet on the fixed ports.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pithnode.node import cli
from pithnode.node.attest import ATTESTATION_TYPES
from pithnode.node.cli_context import load_spec
from pithnode.node.config import config_from_toml, load_config
from pithnode.node.devnet import (
    CONFIG_DIR,
    GOLDEN,
    NODE_NAMES,
    SYNTH_SEED,
    attested_by,
    config_to_toml,
    derived_config,
    devnet_key,
    devnet_peer_id,
    import_into,
    install_node_key,
    main,
    open_devnet,
    wait_converged,
)
from pithnode.node.query_socket import open_query_client
from pithnode.node.synth import SynthConfig, SynthRecord, generate, synth_keys
from pithnode.node.transport import PeerAddress
from pithnode.protocol.events import Event, event_from_json
from pithnode.protocol.ingest import make_registry_imports
from pithnode.protocol.keys import SigningKey
from tests.test_browser_pages import ARTIFACTS, chromium, render

NETWORK = CONFIG_DIR / "network.toml"
GOLDEN_PN = "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL"
GOLDEN_TITLE = "Gradient Descent Happens in a Tiny Subspace"
#: Known answers: the devnet's peer ids from sha256(b"pithnode-devnet:nodeN").
PEER_IDS = {
    "node1": "12D3KooWSaUpp1cB5VKrG2hXPdKakAbT9iuihnnfSs5JiDhQiHkv",
    "node2": "12D3KooWNSPJNrfBXUUT9uj8okAPB5XHXq8EXZZ2TaZB2d9Uta36",
    "node3": "12D3KooWKyRa6bpq23T7a1JbXHoSKetcQPWvc4PegDCd7C1NXnCp",
}
TIMEOUT = 180.0
CONVERGE_TIMEOUT = 90.0


# ---------------------------------------------------------------- the checked-in files

def test_devnet_peer_ids_are_the_seeds_known_answers() -> None:
    for name in NODE_NAMES:
        seed = hashlib.sha256(b"pithnode-devnet:" + name.encode()).digest()
        assert devnet_key(name) == SigningKey(seed)
        assert devnet_peer_id(name) == PEER_IDS[name]


@pytest.mark.parametrize("index", [1, 2, 3])
def test_devnet_configs_name_the_peer_ids_of_the_seeds(index: int) -> None:
    name = f"node{index}"
    path = CONFIG_DIR / f"{name}.toml"
    cfg = load_config(path)
    assert cfg.node.network == NETWORK
    assert cfg.p2p.listen == (f"/ip4/127.0.0.1/tcp/{4100 + index}",)
    assert cfg.http.host == "127.0.0.1" and cfg.http.port == 8100 + index
    assert not cfg.p2p.mdns
    others = [j for j in (1, 2, 3) if j != index]
    assert cfg.p2p.bootstrap == tuple(
        f"/ip4/127.0.0.1/tcp/{4100 + j}/p2p/{devnet_peer_id(f'node{j}')}" for j in others)
    for addr in cfg.p2p.bootstrap:
        assert str(PeerAddress.parse(addr).peer_id) in PEER_IDS.values()
    # the comment listing the peer ids does not drift either
    text = path.read_text()
    for other in NODE_NAMES:
        assert devnet_peer_id(other) in text


def test_devnet_network_trusts_the_devnet_nodes_and_the_synth_test_keys() -> None:
    spec = load_spec(str(NETWORK))
    mainnet = load_spec(None)
    keys = synth_keys(SYNTH_SEED)
    assert spec.name == "pith-devnet" != mainnet.name
    assert {k.public_key for k in spec.registry_keys} == {
        mainnet.registry_keys[0].public_key, keys.registry.public_key}
    assert spec.registry_key("pith-v1-2026-05") == mainnet.registry_key("pith-v1-2026-05")
    assert {k.public_key for k in spec.trusted_importers} == {
        keys.importer.public_key, *(devnet_key(n).public_key for n in NODE_NAMES)}


@pytest.mark.parametrize("name", NODE_NAMES)
def test_derived_config_moves_only_ports_and_bootstrap(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.toml")
    boot = (f"/ip4/127.0.0.1/tcp/40001/p2p/{PEER_IDS['node1']}",)
    derived = derived_config(cfg, bootstrap=boot)
    assert derived.p2p.listen == ("/ip4/127.0.0.1/tcp/0",) and derived.http.port == 0
    assert derived.p2p.bootstrap == boot
    back = config_from_toml(config_to_toml(derived), source=cfg.source)
    assert back == derived
    for section in ("node", "sync", "gossip", "socket", "log", "pull", "attest"):
        assert getattr(back, section) == getattr(cfg, section), section


# ---------------------------------------------------------------- the real daemons

@pytest.mark.slow
def test_make_devnet_check_converges_and_a_second_run_imports_nothing(tmp_path: Path
                                                                      ) -> None:
    argv = ["--check", "--ephemeral", "--data-dir", str(tmp_path / "devnet"),
            "--records", "8", "--timeout", str(CONVERGE_TIMEOUT)]
    first = io.StringIO()
    assert main(argv, stdout=first) == 0, first.getvalue()
    text = first.getvalue()
    assert "converged: 9 records, the same state_sha256 on 3 nodes" in text
    assert "0 already held" in text and " 0 new events" not in text
    for name in NODE_NAMES:
        assert PEER_IDS[name] in text
    second = io.StringIO()
    assert main(argv, stdout=second) == 0, second.getvalue()
    assert " 0 new events" in second.getvalue()
    assert "converged: 9 records" in second.getvalue()


def _synthetic_events() -> tuple[list[Event], list[Event], list[SynthRecord]]:
    """(to submit, expected rejections, records) of a small corpus with every native type,
    invalid events and equivocations, plus events the nodes must reject."""
    keys = synth_keys(SYNTH_SEED)
    cfg = SynthConfig(seed=SYNTH_SEED, invalid_rate=0.2, equivocation_rate=0.4,
                      natives_per_record=8)
    records = list(generate(keys, 12, cfg))
    events = [ev for rec in records for ev in rec.events]
    types = {ev.event_type for ev in events}
    assert {"registry_import", "mirror_hint", "storage_attestation", "timestamp_anchor",
            "author_attestation", "citation_signature", "replication_record",
            "correction"} <= types
    # an import attestation by a key the devnet does not trust (importer_not_trusted) ...
    first = records[0].events[0]
    assert first.event_type == "registry_import"
    untrusted = SigningKey(hashlib.sha256(b"not a devnet importer").digest())
    forged = make_registry_imports(
        untrusted, subject=first.subject, source="forged", document=b"forged",
        events=[event_from_json(e) for e in first.payload["events"]], source_aliases=[],
        created_at=first.created_at, signer_id="mallory")
    # ... and a native event whose payload was changed after signing (event_id_mismatch)
    tampered = {**events[1].to_json(), "payload": {**events[1].payload, "size": 1}}
    rejected = [*forged, event_from_json(tampered)]
    return events, rejected, records


async def _merge(source: Path, out: Path) -> bytes:
    """``pithnode --network configs/devnet/network.toml merge SOURCE --out OUT``."""
    err = io.StringIO()
    code = await trio.to_thread.run_sync(lambda: cli.main(
        ["--network", str(NETWORK), "merge", str(source), "--out", str(out)],
        stdout=io.StringIO(), stderr=err))
    assert code == 0, err.getvalue()
    return out.read_bytes()


async def _merge_events(events: list[Event], workdir: Path, name: str) -> bytes:
    """The offline merge of exactly these events (one record), given as JSON Lines."""
    jsonl = workdir / f"{name}.jsonl"
    jsonl.write_bytes(b"".join(ev.canonical_bytes() + b"\n" for ev in events))
    return await _merge(jsonl, workdir / f"{name}.state.json")


@pytest.mark.slow
@pytest.mark.browser
async def test_events_submitted_to_node1_reach_node3_byte_identical_to_merge(
        tmp_path: Path) -> None:
    chromium()  # without a browser, fail first, with the fix
    base = tmp_path / "devnet"
    for name in NODE_NAMES:
        (base / name).mkdir(parents=True)
        install_node_key(base / name, devnet_key(name))
    # node1 holds the real golden record before it starts: an operator's import
    summary = import_into(base / "node1", NETWORK, [GOLDEN])
    assert summary["registry events admitted"] > 0
    events, rejected, synthetic = _synthetic_events()

    with trio.fail_after(TIMEOUT):
        async with open_devnet(base, ephemeral=True) as nodes:
            node1, node3 = nodes[0], nodes[2]
            assert [n.peer_id for n in nodes] == [PEER_IDS[n] for n in NODE_NAMES]
            async with open_query_client(node1.socket) as client:
                result = await client.call(
                    "events.submit", {"events": [ev.to_json() for ev in events + rejected]})
            outcomes = result["outcomes"]
            assert [o["outcome"] for o in outcomes[:len(events)]] == ["new"] * len(events)
            assert [o["reason"] for o in outcomes[len(events):]] == (
                ["importer_not_trusted"] * (len(rejected) - 1) + ["event_id_mismatch"])

            records = [GOLDEN_PN, *(rec.pith_number for rec in synthetic)]
            fingerprints = {devnet_key(n).fingerprint for n in NODE_NAMES}
            conv = await wait_converged(nodes, records, ready=attested_by(fingerprints),
                                        timeout=CONVERGE_TIMEOUT)
            assert conv.converged

            # What node3 serves is byte for byte the offline merge of exactly the events the
            # network holds for the record: the ones node1 accepted (never the rejected
            # ones: no node stored them) plus what the nodes signed themselves (the import
            # attestation of the golden record, and every node's attestations). All are
            # native signed events; the registry events enter the merge only through the
            # trusted import attestations, under the same spec, as on the nodes.
            submitted: dict[str, list[Event]] = defaultdict(list)
            for ev in events:
                submitted[ev.subject].append(ev)
            node_keys = {devnet_key(n).key_id for n in NODE_NAMES}
            invalid = equivocations = 0
            docs: dict[str, dict[str, Any]] = {}
            async with httpx.AsyncClient(base_url=node3.http, timeout=30) as http, \
                    open_query_client(node3.socket) as client:
                for pn in records:
                    suffix = pn.rsplit(":", 1)[1]
                    held = (await client.call("record.events", {"id": pn}))["events"]
                    r = await http.get(f"/pith/{suffix}/state.json")
                    assert r.status_code == 200
                    again = (await client.call("record.events", {"id": pn}))["events"]
                    assert again == held, f"{pn}: node3 still receiving events"
                    served = r.content
                    doc = docs[pn] = json.loads(served)
                    assert doc["state_sha256"] == conv.states["node3"][pn]
                    held_events = [event_from_json(e) for e in held]
                    assert served == await _merge_events(held_events, tmp_path, suffix), pn

                    # nothing but the accepted events and the nodes' own
                    ours = {e.event_id for e in submitted[pn]}
                    assert ours <= {e.event_id for e in held_events}
                    for e in held_events:
                        if e.event_id not in ours:
                            assert e.signer.key_id in node_keys, e.event_type
                            assert e.event_type in ATTESTATION_TYPES or (
                                pn == GOLDEN_PN and e.event_type == "registry_import")

                    # every node attests the record's content state: for the golden
                    # record Pith's own state, for the others the offline merge of the
                    # submitted events (without attestation types, as node/attest.py says)
                    if pn == GOLDEN_PN:
                        golden_bytes = await _merge(GOLDEN, tmp_path / "golden.state.json")
                        assert golden_bytes == GOLDEN.read_bytes()
                        content_sha = json.loads(golden_bytes)["state_sha256"]
                    else:
                        content = [e for e in submitted[pn]
                                   if e.event_type not in ATTESTATION_TYPES]
                        content_sha = json.loads(await _merge_events(
                            content, tmp_path, suffix + ".content"))["state_sha256"]
                        invalid += doc["invalid_event_count"]
                        equivocations += doc["equivocation_count"]
                    attested = {e["signer"]["public_key_fingerprint"]: e["payload"]
                                for e in doc["current"]["replication_records"]
                                if e["target"] == "state"}
                    assert set(attested) == fingerprints
                    assert {a["state_sha256"] for a in attested.values()} == {content_sha}
            assert invalid > 0 and equivocations > 0  # the corpus exercised both

            # the real daemon's pages in a real browser
            async with open_query_client(node3.socket) as client:
                status = await client.call("node.status")
            assert status["records"] == len(records) and status["peers"] == 2
            page = await render(node3.http + "/", ARTIFACTS / "devnet-status.png",
                                tmp_path / "chromium")
            text = page.visible
            assert "Node status" in text and node3.peer_id in text and "pith-devnet" in text
            assert f"{len(records)} Records" in text
            assert f"{status['events']} Events" in text
            assert "2 / 2 Peers connected" in text
            golden = await render(f"{node3.http}/pith/{GOLDEN_PN.rsplit(':', 1)[1]}",
                                  ARTIFACTS / "devnet-golden.png", tmp_path / "chromium")
            assert GOLDEN_TITLE in golden.visible
            assert "✓ registry receipt valid" in golden.visible
            richest = max(synthetic, key=lambda rec: len(rec.events))
            pn = richest.pith_number
            record = await render(f"{node3.http}/pith/{pn.rsplit(':', 1)[1]}",
                                  ARTIFACTS / "devnet-record.png", tmp_path / "chromium")
            assert richest.title in record.visible and pn in record.visible
            assert "✓ registry receipt valid" in record.visible
            assert f"{docs[pn]['event_count']} events" in record.visible
            assert "devnet-node3" in record.visible  # the nodes' attestations are shown
