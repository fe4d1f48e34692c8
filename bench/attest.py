"""Benchmark of storage audits and checkpoints.

* **Audit throughput**: two in-process nodes on the in-memory network, each with a real
  SQLite store of the same synthetic corpus. The challenger sends challenges of up to 256
  objects over ``/pith/audit/1.0.0``; the holder re-reads every object from its store and
  signs the nonce digests; the challenger reads its own copies and checks the answer.
  Reported: objects challenged and verified per second, end to end.
* **Checkpoint**: the record tree and signed note over 1,000,000 *synthetic* (Pith Number,
  state_sha256) pairs (random digests, Pith Numbers made from them: the tree does not care
  where they come from), plus one range digest over all leaves (what a split-view
  comparison computes first), plus a checkpoint of the benchmark store read through
  ``record_states`` (one state read per record) to show the per-record cost of the store
  path.

Usage: ``python bench/attest.py [--records N] [--challenges N] [--tree-records N]
[--json FILE]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from pithnode.node.attest import AttestLimits, Attestor, make_checkpoint, record_states
from pithnode.node.config import (
    AttestConfig,
    HttpConfig,
    NodeConfig,
    P2PConfig,
    SocketConfig,
    SyncConfig,
)
from pithnode.node.daemon import Node
from pithnode.node.memory_transport import MemoryNetwork
from pithnode.node.synth import SynthConfig, generate, synth_keys
from pithnode.node.transport import PeerAddress, TransportConfig
from pithnode.protocol.audit import MAX_OBJECTS_PER_CHALLENGE
from pithnode.protocol.keys import SigningKey
from pithnode.storage.store import Store


def _config(d: Path) -> NodeConfig:
    return NodeConfig(
        http=HttpConfig(enabled=False), socket=SocketConfig(path=d / "q.sock"),
        p2p=P2PConfig(listen=("/memory/0",)),
        sync=SyncConfig(interval_s=1e6, jitter_s=0.0, timeout_s=600.0),
        attest=AttestConfig(mirror_hint_interval_s=1e6, checkpoint_interval_s=1e6,
                            audit_interval_s=1e6))


def _fill(path: Path, records: int) -> tuple[Any, list[bytes]]:
    keys = synth_keys(5)
    spec = keys.spec()
    events = [e for r in generate(keys, records, SynthConfig(seed=5)) for e in r.events]
    with Store(path, spec) as store:
        store.ingest_many(events, source="bench", received_at=time.time())
    return spec, [hashlib.sha256(e.canonical_bytes()).digest() for e in events]


async def _audit(tmp: Path, records: int, challenges: int, per_challenge: int
                 ) -> dict[str, Any]:
    dirs = [tmp / "challenger", tmp / "holder"]
    spec = None
    objects: list[bytes] = []
    for d in dirs:
        d.mkdir()
        spec, objects = _fill(d / "store.sqlite", records)
    assert spec is not None
    network = MemoryNetwork()
    limits = AttestLimits(holder_challenges_per_minute=1_000_000, sign_burst=0)
    nodes, atts = [], []
    async with trio.open_nursery() as outer:
        for i, d in enumerate(dirs):
            seed = hashlib.sha256(b"bench attest %d" % i).digest()
            node = Node(_config(d), data_dir=d, spec=spec, key=SigningKey(seed),
                        transport=network.create(seed, TransportConfig(
                            listen_addrs=("/memory/0",))), attest=False)
            await outer.start(node.run)
            nodes.append(node)
        async with trio.open_nursery() as inner:
            for node in nodes:
                att = Attestor(node, node.cfg.attest, limits=limits)
                node.attestor = att
                await inner.start(att.run)
                atts.append(att)
            await nodes[0].transport.connect(
                PeerAddress.parse(nodes[1].transport.listen_addresses()[0]))
            rng = random.Random(1)
            verified = total = 0
            started = time.perf_counter()
            for _ in range(challenges):
                batch = rng.sample(objects, min(per_challenge, len(objects)))
                result = await atts[0].challenge(nodes[1].transport.peer_id,
                                                 atts[0].new_challenge(batch))
                assert result is not None, "the holder did not answer"
                total += len(batch)
                verified += sum(o.outcome == "verified" for o in result.outcomes)
            elapsed = time.perf_counter() - started
            inner.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    assert verified == total, f"only {verified} of {total} objects verified"
    return {"records": records, "objects_in_store": len(objects), "challenges": challenges,
            "objects_per_challenge": per_challenge, "objects_verified": verified,
            "seconds": round(elapsed, 3), "objects_per_s": round(verified / elapsed, 1),
            "challenges_per_s": round(challenges / elapsed, 2)}


def _synthetic_pairs(n: int) -> list[tuple[str, str]]:
    rng = random.Random(6962)
    pairs = []
    for i in range(n):
        digest = rng.randbytes(32)
        suffix = base64.b32encode(hashlib.sha256(i.to_bytes(8, "big")).digest()).decode()[:26]
        pairs.append((f"pith:{2015 + i % 11}:{suffix}", digest.hex()))
    return pairs


def _checkpoint(tree_records: int, store_path: Path) -> dict[str, Any]:
    key = SigningKey(hashlib.sha256(b"bench checkpoint").digest())
    pairs = _synthetic_pairs(tree_records)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    cp = make_checkpoint(pairs, network="bench", key=key, prefixes=(), signed_at=0)
    tree_s = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    h = hashlib.sha256()
    for k in range(cp.size):
        h.update(cp.tree.tree.leaf(k))
    digest_s = time.perf_counter() - started
    spec = synth_keys(5).spec()
    with Store(store_path, spec, readonly=True) as store:
        started = time.perf_counter()
        stored = record_states(store)
        read_s = time.perf_counter() - started
    started = time.perf_counter()
    make_checkpoint(stored, network=spec.name, key=key, prefixes=(), signed_at=0)
    store_tree_s = time.perf_counter() - started
    return {"synthetic_records": tree_records, "tree_and_note_s": round(tree_s, 3),
            "max_rss_growth_mib": round((rss_after - rss_before) / 1024, 1),
            "range_digest_all_leaves_s": round(digest_s, 3),
            "store_records": len(stored), "store_read_s": round(read_s, 3),
            "store_read_us_per_record": round(1e6 * read_s / max(1, len(stored)), 1),
            "store_tree_and_note_s": round(store_tree_s, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300,
                        help="synthetic records in each store (default 300)")
    parser.add_argument("--challenges", type=int, default=40)
    parser.add_argument("--objects", type=int, default=MAX_OBJECTS_PER_CHALLENGE,
                        help="objects per challenge (at most 256)")
    parser.add_argument("--tree-records", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pithnode-bench-attest-") as tmp:
        audit = trio.run(_audit, Path(tmp), args.records, args.challenges,
                         min(args.objects, MAX_OBJECTS_PER_CHALLENGE))
        checkpoint = _checkpoint(args.tree_records, Path(tmp) / "holder" / "store.sqlite")
    figures = {"audit": audit, "checkpoint": checkpoint}
    print(f"audit: {audit['objects_verified']} objects in {audit['challenges']} challenges "
          f"of {audit['objects_per_challenge']}, {audit['seconds']} s: "
          f"{audit['objects_per_s']} objects/s challenged and verified "
          f"({audit['challenges_per_s']} challenges/s; store of "
          f"{audit['objects_in_store']} objects)")
    print(f"checkpoint: {checkpoint['synthetic_records']:,} synthetic records: tree and "
          f"signed note {checkpoint['tree_and_note_s']} s (max RSS +"
          f"{checkpoint['max_rss_growth_mib']} MiB); range digest over all leaves "
          f"{checkpoint['range_digest_all_leaves_s']} s")
    print(f"checkpoint from the store: {checkpoint['store_records']} records read in "
          f"{checkpoint['store_read_s']} s ({checkpoint['store_read_us_per_record']} "
          f"us/record), tree and note {checkpoint['store_tree_and_note_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
