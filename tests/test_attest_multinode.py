"""Attestations, audits, repair, equivocations, checkpoints and proofs between real nodes.

Every node is a ``pithnode run`` subprocess on 127.0.0.1 with attestations on (see
``tests/cluster.py``), queried over its Unix socket. Test keys only: the synthetic corpus's
spec trusts generated registry and importer keys, and every node generates its own node key.
Cheating nodes run the test entry module ``tests/cheat_node.py``, which swaps a subclass in
for the daemon's ``Attestor`` or ``Node``; production code has no switch for it.

Periodic work that a test does not look at is parked (an interval of 10^6 s), so what a test
waits for is caused by what it did. The nodes are separate processes, so waiting means
polling their sockets (``wait_until``, bounded); nothing waits on a fixed sleep.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pithnode.node.attest import public_key_of_peer
from pithnode.node.synth import SynthConfig, generate, synth_keys
from pithnode.protocol.checkpoint import (
    Checkpoint,
    checkpoint_origin,
    verify_note,
    verify_proof_bytes,
)
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, make_native_event
from pithnode.storage.errors import StoreCorrupt
from pithnode.storage.store import Store

from .cluster import CLI, Cluster, NodeProcess, NodeSettings, wait_until

pytestmark = pytest.mark.slow

SEED = 47
KEYS = synth_keys(SEED)
RECORDS = list(generate(KEYS, 3, SynthConfig(seed=SEED, equivocation_rate=0.0,
                                              invalid_rate=0.0)))
CORPUS: list[Event] = [e for r in RECORDS for e in r.events]
PNS = [r.pith_number for r in RECORDS]
#: An interval that never comes round during a test.
PARKED = 1e6
#: Attestations on, audits and checkpoint swaps parked; a challenge covers every object the
#: holder attested (the corpus is small), so which objects are challenged is not left to
#: chance.
SETTINGS = NodeSettings(attest=True, audit_interval_s=PARKED, checkpoint_interval_s=PARKED,
                        audit_objects=256)
#: Backstop for a whole test; every wait inside has its own, tighter bound.
TEST_TIMEOUT_S = 150.0
CONNECT_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0
CHEAT_NODE = Path(__file__).with_name("cheat_node.py")


def cheat_command(mode: str) -> tuple[str, ...]:
    """The start command of a node that cheats in the way ``mode`` names (cheat_node.py)."""
    return (sys.executable, "-P", str(CHEAT_NODE), mode)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(tmp_path, KEYS, SETTINGS) as c:
        yield c


def figures(test: str, **values: object) -> None:
    print(f"[{test}] " + ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))


# -- reading the nodes -----------------------------------------------------------------------
async def state_doc(node: NodeProcess, pn: str) -> dict[str, Any]:
    doc: dict[str, Any] = (await node.call("record.state", {"id": pn}))["state"]
    return doc


async def fingerprint(node: NodeProcess) -> str:
    return str((await node.status())["key_fingerprint"])


def signed_by(entries: Sequence[dict[str, Any]], fp: str, target: str) -> list[dict[str, Any]]:
    return [e for e in entries
            if e["target"] == target and e["signer"]["public_key_fingerprint"] == fp]


async def stored_events(node: NodeProcess, pn: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await node.call("record.events", {"id": pn}))["events"]
    return events


async def run_cli(*args: str) -> tuple[int, str, str]:
    result = await trio.run_process([*CLI, *args], capture_stdout=True, capture_stderr=True,
                                    check=False)
    return (result.returncode, result.stdout.decode("utf-8", "replace"),
            result.stderr.decode("utf-8", "replace"))


class Settle:
    """The condition "attestations have settled" on some nodes, and what was last seen.

    Settled: no attestor has records waiting, every node serves the same state of every
    record, and in it each node's state attestation (all with the same payload: the same
    content), mirror hint and storage attestations. Nothing is left to sign until something
    changes.
    """

    def __init__(self, nodes: Sequence[NodeProcess], pns: Sequence[str] = PNS) -> None:
        self.nodes = list(nodes)
        self.pns = list(pns)
        self.last = "nothing yet"

    async def __call__(self) -> bool:
        fps = {n.name: await fingerprint(n) for n in self.nodes}
        for node in self.nodes:
            waiting = (await node.status())["attest"]["records_waiting"]
            if waiting:
                self.last = f"{node.name} has {waiting} records waiting"
                return False
        for pn in self.pns:
            shas = {n.name: (await n.states([pn]))[pn] for n in self.nodes}
            if len(set(shas.values())) != 1:
                self.last = f"{pn[-8:]} differs: {shas}"
                return False
            current = (await state_doc(self.nodes[0], pn))["current"]
            for name, fp in fps.items():
                if not (signed_by(current["replication_records"], fp, "state")
                        and signed_by(current["mirror_hints"], fp, "mirror")
                        and signed_by(current["storage_attestations"], fp, "storage")):
                    self.last = f"{pn[-8:]} lacks attestations of {name}"
                    return False
            payloads = {json.dumps(e["payload"], sort_keys=True)
                        for fp in fps.values()
                        for e in signed_by(current["replication_records"], fp, "state")}
            if len(payloads) != 1:
                self.last = f"{pn[-8:]}: state attestations of different contents"
                return False
        return True

    async def wait(self, what: str = "attestations to settle") -> float:
        return await wait_until(self, SETTLE_TIMEOUT_S, what=what, interval=0.2,
                                describe=lambda: self.last)


async def start_line(cluster: Cluster, names: Sequence[str]) -> list[NodeProcess]:
    """Start nodes, each bootstrapping from the one before (a line), and wait for links."""
    nodes: list[NodeProcess] = []
    for name in names:
        node = cluster.add(name, bootstrap=nodes[-1:])
        await cluster.start(node)
        nodes.append(node)
    await cluster.wait_connected({n: 1 if i in (0, len(nodes) - 1) else 2
                                  for i, n in enumerate(nodes)}, CONNECT_TIMEOUT_S)
    return nodes


async def start_star(cluster: Cluster, hub: NodeProcess,
                     leaves: Sequence[NodeProcess]) -> None:
    """Start the hub, then the leaves (bootstrapping from the hub) at once."""
    await cluster.start(hub)
    await cluster.start(*leaves)
    await cluster.wait_connected({hub: len(leaves), **{n: 1 for n in leaves}},
                                 CONNECT_TIMEOUT_S)


async def settled_pair(cluster: Cluster, hub: str, leaf: str
                       ) -> tuple[NodeProcess, NodeProcess]:
    """Two nodes, ``leaf`` linked to ``hub`` alone, both holding the corpus (submitted to
    the hub)."""
    a = cluster.add(hub)
    b = cluster.add(leaf, bootstrap=[a])
    await start_star(cluster, a, [b])
    await a.submit(CORPUS)
    await Settle([a, b]).wait()
    return a, b


async def checkpoint_of(node: NodeProcess) -> Checkpoint:
    """The node's checkpoint (``checkpoint.latest``), its note verified under the key its
    peer id names."""
    result = await node.call("checkpoint.latest")
    pub = public_key_of_peer(node.peer_id)
    assert pub is not None
    origin = checkpoint_origin("pith-synth", pub)
    cp = verify_note(result["note"], origin, pub, origin=origin)
    assert (cp.size, cp.root.hex()) == (result["tree_size"], result["root_hex"])
    return cp


# -- a damaged object: a failed audit, a repair, a passed audit ----------------------------
#: Audit interval of the challenger (+-10 %): also how long a failed verdict stays current
#: before the next audit can supersede it, so the test can see it on every node.
AUDIT_S = 4.0
#: Checkpoint swap interval of the honest nodes in the withholding test (+-10 %).
CHECKPOINT_S = 2.0


def corrupt_object(db: Path, sha: str) -> None:
    """Flip one bit of an object's stored bytes in a node's SQLite file, through a
    connection of our own while the node runs (bit rot: the node is not told)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        (blob,) = conn.execute("SELECT data FROM objects WHERE sha256 = ?",
                               (bytes.fromhex(sha),)).fetchone()
        data = bytearray(blob)
        data[len(data) // 2] ^= 0x10
        conn.execute("UPDATE objects SET data = ? WHERE sha256 = ?",
                     (bytes(data), bytes.fromhex(sha)))
        conn.commit()
    finally:
        conn.close()


def read_object(data_dir: Path, sha: str) -> bytes | None:
    """The object as the node's store reads it (raises StoreCorrupt when damaged)."""
    with Store(data_dir / "store.sqlite", KEYS.spec(), readonly=True) as store:
        return store.object(sha)


def audits_of(current: dict[str, Any], challenger: str, attestation: str
              ) -> list[dict[str, Any]]:
    return [e for e in signed_by(current["storage_attestations"], challenger, "audit")
            if e["payload"]["attestation_event_id"] == attestation]


async def test_corrupted_object_fails_its_audit_is_repaired_and_passes_the_next(
        cluster: Cluster) -> None:
    """a - b - c in a line, so that a can challenge only b. One bit of an object b attested
    is flipped in b's store file while b runs; a starts auditing. b's answer fails, every
    node's state lists a's failed audit, b repairs the object from a peer, and a's next
    audit of b passes and supersedes the failed one everywhere."""
    pn = PNS[0]
    with trio.fail_after(TEST_TIMEOUT_S):
        t0 = trio.current_time()
        a, b, c = await start_line(cluster, "abc")
        await a.submit(CORPUS)
        await Settle([a, b, c]).wait()
        fa, fb = await fingerprint(a), await fingerprint(b)
        attestation = signed_by((await state_doc(a, pn))["current"]["storage_attestations"],
                                fb, "storage")[0]
        sha, att_id = attestation["payload"]["object_sha256"], attestation["event_id"]
        assert (await trio.to_thread.run_sync(read_object, b.data_dir, sha)) is not None
        settled = trio.current_time() - t0

        # Everything is signed and nothing touches the record: b reads the object again
        # only when it is challenged for it.
        await trio.to_thread.run_sync(corrupt_object, b.data_dir / "store.sqlite", sha)
        with pytest.raises(StoreCorrupt):
            await trio.to_thread.run_sync(read_object, b.data_dir, sha)
        assert await cluster.stop(a) == {"a": 0}
        a.settings = replace(a.settings, audit_interval_s=AUDIT_S)
        t1 = trio.current_time()
        await cluster.start(a)

        # a's failed verdict, current in every node's state
        failed: dict[str, str] = {}

        async def failed_everywhere() -> bool:
            for node in (a, b, c):
                current = (await state_doc(node, pn))["current"]
                for e in audits_of(current, fa, att_id):
                    if e["payload"]["outcome"] == "failed":
                        failed.setdefault(node.name, e["event_id"])
            return len(failed) == 3

        await wait_until(failed_everywhere, SETTLE_TIMEOUT_S, interval=0.02,
                         what="a's failed audit of b in every node's state",
                         describe=lambda: str(failed))
        to_fail = trio.current_time() - t1
        assert len(set(failed.values())) == 1, failed
        failed_id = failed["a"]
        (verdict,) = [e for e in await stored_events(a, pn) if e["event_id"] == failed_id]
        assert verdict["event_type"] == "storage_audit"
        assert verdict["payload"]["holder_fingerprint"] == fb
        assert verdict["payload"]["object_sha256"] == sha

        # b noticed the damage when it re-read the object to answer: it dropped the event
        # and fetched it again from a peer
        async def repaired() -> bool:
            return any(r["outcome"] == "repaired"
                       for r in (await b.status())["attest"]["repairs"])

        await wait_until(repaired, SETTLE_TIMEOUT_S, what="b's repair")
        repairs = (await b.status())["attest"]["repairs"]
        assert {"reason": "own_read_failed", "object_sha256": sha, "outcome": "repaired",
                "dropped_events": 1} in [{k: r[k] for k in ("reason", "object_sha256",
                                                            "outcome", "dropped_events")}
                                         for r in repairs], repairs
        got = await trio.to_thread.run_sync(read_object, b.data_dir, sha)
        assert got is not None and hashlib.sha256(got).hexdigest() == sha
        for node in (a, c):
            assert (await node.status())["attest"]["repairs"] == [], node.name

        # a's next audit of b passes; it supersedes the failed one in every state
        seen: dict[str, str] = {}

        async def verified_everywhere() -> bool:
            for node in (a, b, c):
                current = (await state_doc(node, pn))["current"]
                seen[node.name] = ",".join(e["payload"]["outcome"]
                                           for e in audits_of(current, fa, att_id))
            shas = {(await n.states([pn]))[pn] for n in (a, b, c)}
            return set(seen.values()) == {"verified"} and len(shas) == 1

        await wait_until(verified_everywhere, SETTLE_TIMEOUT_S, what="a passing audit of b",
                         describe=lambda: str(seen))
        recovered = trio.current_time() - t1
        (passed,) = audits_of((await state_doc(a, pn))["current"], fa, att_id)
        assert passed["created_at"] > verdict["created_at"]
        assert passed["payload"]["holder_fingerprint"] == fb
    figures("repair", settle_s=settled, restart_to_failed_everywhere_s=to_fail,
            restart_to_passed_everywhere_s=recovered)


async def test_node_with_a_damaged_object_keeps_serving_a_late_peer_and_repairs_it(
        cluster: Cluster) -> None:
    """a and c hold the corpus; one bit of an object flips in a's store. A new node b,
    linked to a alone, syncs with a: a neither fails the whole session nor stops (serving,
    and pushing, the events b lacks means reading the damaged object); it serves what reads
    intact, repairs the damaged event from c, and b ends with every event."""
    pn = PNS[0]
    with trio.fail_after(TEST_TIMEOUT_S):
        a, c = await settled_pair(cluster, "a", "c")
        fa = await fingerprint(a)
        attestation = signed_by((await state_doc(a, pn))["current"]["storage_attestations"],
                                fa, "storage")[0]
        sha = attestation["payload"]["object_sha256"]
        await trio.to_thread.run_sync(corrupt_object, a.data_dir / "store.sqlite", sha)

        t0 = trio.current_time()
        b = cluster.add("b", bootstrap=[a])
        await cluster.start(b)
        total = await a.events_count()
        counts: dict[str, int] = {}

        async def b_has_everything() -> bool:
            assert a.running, f"a stopped (rc={a.proc.returncode if a.proc else None})"
            for node in (a, b, c):
                counts[node.name] = await node.events_count()
            return counts["b"] >= total and len(set(counts.values())) == 1

        await wait_until(b_has_everything, SETTLE_TIMEOUT_S, what="b to get every event "
                         "through a", describe=lambda: str(counts))
        caught_up = trio.current_time() - t0
        await Settle([a, b, c]).wait("the three nodes to converge")
        assert a.running and (await b.status())["peers"] == 1
        repairs = (await a.status())["attest"]["repairs"]
        assert [r["outcome"] for r in repairs if r["outcome"] != "not_needed"] == ["repaired"]
        got = await trio.to_thread.run_sync(read_object, a.data_dir, sha)
        assert got is not None and hashlib.sha256(got).hexdigest() == sha
    figures("damaged-serving", late_node_caught_up_s=caught_up)


# -- equivocation, and checkpoints of converged nodes ----------------------------------------
def claim(name: str, pn: str) -> Event:
    """An author's claim; two of them with the same time are an equivocation."""
    return make_native_event(
        KEYS.authors[0], event_type="author_attestation", subject=pn,
        payload={"orcid": "0000-0002-1825-0097", "name": name, "claim": "author"},
        created_at="2026-03-01T00:00:00Z", signer_id="author-0", signer_type="author")


async def test_equivocation_is_recorded_identically_and_checkpoints_agree(
        cluster: Cluster) -> None:
    """Two validly signed, conflicting claims of one author for one slot go to different
    nodes; every node records the same equivocation and serves the same state_sha256 of
    every record, and the three nodes sign checkpoints with the same root."""
    pn = PNS[1]
    one, two = claim("A. Author", pn), claim("A. N. Other", pn)
    with trio.fail_after(TEST_TIMEOUT_S):
        t0 = trio.current_time()
        a = cluster.add("a")
        b, c = cluster.add("b", bootstrap=[a]), cluster.add("c", bootstrap=[a])
        await start_star(cluster, a, [b, c])
        started = trio.current_time() - t0
        await a.submit(CORPUS)
        settled = await Settle([a, b, c]).wait()

        t1 = trio.current_time()
        async with trio.open_nursery() as nursery:  # at once, to the two leaves
            nursery.start_soon(b.submit, [one])
            nursery.start_soon(c.submit, [two])

        async def everyone_equivocates() -> bool:
            return all([(await state_doc(n, pn))["equivocation_count"] == 1
                        for n in (a, b, c)])

        await wait_until(everyone_equivocates, SETTLE_TIMEOUT_S,
                         what="every node to record the equivocation")
        await Settle([a, b, c]).wait("states to converge after the equivocation")
        equivocated = trio.current_time() - t1

        docs = [await state_doc(n, pn) for n in (a, b, c)]
        assert docs[0]["equivocations"] == docs[1]["equivocations"] == docs[2]["equivocations"]
        (entry,) = docs[0]["equivocations"]
        assert entry["event_ids"] == sorted([one.event_id, two.event_id])
        assert entry["signer"]["public_key_fingerprint"] == KEYS.authors[0].fingerprint
        assert entry["event_type"] == "author_attestation"
        for node in (a, b, c):
            assert (await node.states(PNS)) == (await a.states(PNS))
            for ev in (one, two):
                why = await node.call("explain", {"id": ev.event_id})
                assert why["known"] and not why["in_state"], why
                assert "equivocated" in why["why"]

        # a node recomputes its checkpoint when its store changed, at most every 10 s: the
        # first ones may still be of the empty store the node started with
        t2 = trio.current_time()
        last: dict[str, str] = {}

        async def same_roots() -> bool:
            for node in (a, b, c):
                cp = await checkpoint_of(node)
                last[node.name] = f"{cp.size}:{cp.root.hex()[:16]}"
            return len(set(last.values())) == 1 and last["a"].startswith(f"{len(PNS)}:")

        await wait_until(same_roots, SETTLE_TIMEOUT_S, what="the same checkpoint root",
                         interval=0.5, describe=lambda: str(last))
        roots_agreed = trio.current_time() - t2
        cps = [await checkpoint_of(n) for n in (a, b, c)]
        assert {cp.size for cp in cps} == {len(PNS)}
        assert len({cp.origin for cp in cps}) == 3, "each node signs under its own origin"
        code, out, err = await run_cli("checkpoint", "--data-dir", str(b.data_dir))
        assert code == 0, err
        pub = public_key_of_peer(b.peer_id)
        assert pub is not None
        origin = checkpoint_origin("pith-synth", pub)
        assert verify_note(out, origin, pub, origin=origin).root == cps[0].root
        for node in (a, b, c):
            views = (await node.call("checkpoint.split_views"))["split_views"]
            assert [v for v in views if v["status"] != "resolved"] == []
    figures("equivocation", start_s=started, settle_s=settled, equivocate_s=equivocated,
            roots_s=roots_agreed)


# -- a node that withholds an event: a split view ------------------------------------------
async def metric_value(node: NodeProcess, name: str, labels: dict[str, str]) -> float:
    """One sample of the node's Prometheus metrics (its HTTP ``/metrics``); 0 if absent."""
    url = f"{node.ready['http'] if node.ready else ''}/metrics"
    response = await trio.to_thread.run_sync(partial(httpx.get, url, timeout=10))
    response.raise_for_status()
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in response.text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


async def test_withheld_event_is_detected_and_reported_as_a_split_view(
        cluster: Cluster) -> None:
    """Honest a and b and a withholder w, all linked. w is given an event of a record they
    all hold and keeps it to itself (no gossip, left out of sync). The honest nodes sign
    checkpoints with the same root; comparing checkpoints with w, each of them confirms a
    split view naming the record, visible in its status, split views, explain and
    metrics."""
    pn = PNS[2]
    hidden = make_native_event(
        KEYS.authors[1], event_type="citation_signature", subject=pn,
        payload={"cited": PNS[0], "relation": "supports", "note": ""},
        created_at="2026-03-02T00:00:00Z", signer_id="author-1", signer_type="author")
    with trio.fail_after(TEST_TIMEOUT_S):
        t0 = trio.current_time()
        a = cluster.add("a", http=True, checkpoint_interval_s=CHECKPOINT_S)
        await cluster.start(a)
        b = cluster.add("b", bootstrap=[a], checkpoint_interval_s=CHECKPOINT_S)
        await cluster.start(b)
        w = cluster.add("w", bootstrap=[a, b], command=cheat_command("withhold"))
        await cluster.start(w)
        await cluster.wait_connected({a: 2, b: 2, w: 2}, CONNECT_TIMEOUT_S)
        await a.submit(CORPUS)
        await Settle([a, b, w]).wait()
        settled = trio.current_time() - t0

        t1 = trio.current_time()
        assert await w.submit([hidden]) == {"new": 1, "duplicate": 0, "rejected": 0}
        last: dict[str, Any] = {}

        async def both_confirm() -> bool:
            for node in (a, b):
                views = (await node.call("checkpoint.split_views"))["split_views"]
                last[node.name] = [(v["peer"][-6:], v["status"]) for v in views]
                if not any(v["peer"] == w.peer_id and v["status"] == "confirmed"
                           for v in views):
                    return False
            return True

        await wait_until(both_confirm, SETTLE_TIMEOUT_S, what="a and b to confirm w's "
                         "split view", interval=0.2, describe=lambda: str(last))
        detected = trio.current_time() - t1

        ours, theirs = (await a.states([pn]))[pn], (await w.states([pn]))[pn]
        assert ours != theirs and (await b.states([pn]))[pn] == ours
        for node in (a, b):
            views = (await node.call("checkpoint.split_views"))["split_views"]
            (view,) = [v for v in views if v["peer"] == w.peer_id]
            # confirmed after two syncs; every later swap syncs twice more and recounts
            assert view["tree_size"] == len(PNS) and view["syncs"] >= 2
            assert view["my_root"] != view["their_root"]
            assert view["differing_records"] == [{"pith_number": pn, "mine": ours,
                                                  "theirs": theirs}]
            assert pn in view["explanation"] and "withheld" in view["explanation"]
            # between a and b, lag may be suspected for a round, never confirmed
            assert [v for v in views if v["peer"] != w.peer_id
                    and v["status"] == "confirmed"] == [], "no split view between a and b"
            assert (await node.status())["attest"]["split_views"] >= 1
            gone = await node.call("explain", {"id": hidden.event_id})
            assert not gone["known"], gone
            record = await node.call("explain", {"id": pn})
            assert record["state_sha256"] == ours
        held = await w.call("explain", {"id": hidden.event_id})
        assert held["known"] and held["in_state"]
        assert (await w.call("explain", {"id": pn}))["state_sha256"] == theirs
        assert await metric_value(a, "pithnode_checkpoint_split_views_total",
                                  {"stage": "confirmed"}) >= 1

        # the honest nodes agree with each other: the same root, which w's is not
        roots: dict[str, str] = {}

        async def honest_roots_agree() -> bool:
            for node in (a, b, w):
                cp = await checkpoint_of(node)
                roots[node.name] = f"{cp.size}:{cp.root.hex()[:16]}"
            return roots["a"] == roots["b"] != roots["w"] \
                and roots["w"].startswith(f"{len(PNS)}:")

        await wait_until(honest_roots_agree, SETTLE_TIMEOUT_S, interval=0.5,
                         what="a and b to sign the same root", describe=lambda: str(roots))
    figures("withhold", settle_s=settled, detect_s=detected)


# -- dishonest holders ---------------------------------------------------------------------
#: The challenger's audit interval (+-10 %) in the cheating-holder test.
CHEAT_AUDIT_S = 1.5
CHEATS = ("cached-digest", "replay", "byteless")


async def audit_history(challenger: NodeProcess, fa: str, holder: str
                        ) -> dict[str, list[tuple[str, str, str]]]:
    """Every audit ``challenger`` signed of ``holder``'s attestations, stored or superseded:
    attestation id -> [(created_at, outcome, challenge_sha256)], oldest first."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for pn in PNS:
        for e in await stored_events(challenger, pn):
            p = e["payload"]
            if e["event_type"] == "storage_audit" and p["holder_fingerprint"] == holder \
                    and e["signer"]["public_key_fingerprint"] == fa:
                out.setdefault(p["attestation_event_id"], []).append(
                    (e["created_at"], p["outcome"], p["challenge_sha256"]))
    return {k: sorted(v) for k, v in out.items()}


async def test_dishonest_holders_are_caught(cluster: Cluster) -> None:
    """An honest challenger a and three holders that cheat: one answers from digests it
    cached, one replays its first answer, one answers for bytes it does not read. Each is
    caught: after at most one honest answer, every audit of it fails, and every node's
    state lists the failed audits."""
    with trio.fail_after(TEST_TIMEOUT_S):
        t0 = trio.current_time()
        a = cluster.add("a", audit_interval_s=CHEAT_AUDIT_S)
        cheats = {mode: cluster.add(mode, bootstrap=[a], command=cheat_command(mode))
                  for mode in CHEATS}
        await start_star(cluster, a, list(cheats.values()))
        nodes = [a, *cheats.values()]
        await a.submit(CORPUS)
        await Settle(nodes).wait()
        settled = trio.current_time() - t0
        fa = await fingerprint(a)
        fps = {mode: await fingerprint(node) for mode, node in cheats.items()}
        last: dict[str, str] = {}

        async def all_caught() -> bool:
            for mode, fp in fps.items():
                history = await audit_history(a, fa, fp)
                challenges = {c for h in history.values() for _, _, c in h}
                if len(challenges) < 2:
                    last[mode] = f"{len(challenges)} challenge(s)"
                    return False
                for node in nodes:
                    for pn in PNS:
                        current = (await state_doc(node, pn))["current"]
                        for e in signed_by(current["storage_attestations"], fp, "storage"):
                            got = [x["payload"]["outcome"]
                                   for x in audits_of(current, fa, e["event_id"])]
                            if got != ["failed"]:
                                last[mode] = f"{node.name} {pn[-8:]}: {got}"
                                return False
                last[mode] = "caught"
            return True

        await wait_until(all_caught, SETTLE_TIMEOUT_S, interval=0.3, what="every cheat "
                         "caught on every node", describe=lambda: str(last))
        caught = trio.current_time() - t0 - settled

        histories = {mode: await audit_history(a, fa, fp) for mode, fp in fps.items()}
        for mode, history in histories.items():
            for attestation, audits in history.items():
                outcomes = [o for _, o, _ in audits]
                # nothing passes once an audit failed
                assert outcomes[outcomes.index("failed"):] == ["failed"] * (
                    len(outcomes) - outcomes.index("failed")), (mode, attestation, audits)
        # the cached digests answer right only for the nonce they were computed for
        assert all([o for _, o, _ in h][:1] == ["verified"]
                   for h in histories["cached-digest"].values())
        assert any(len(h) > 1 for h in histories["cached-digest"].values())
        # the replayer's first answer was honest; every later challenge got it back
        passed = {c for h in histories["replay"].values() for _, o, c in h if o == "verified"}
        assert len(passed) == 1
        assert any(len(h) > 1 for h in histories["replay"].values())
        log = a.log_path.read_text("utf-8", "replace")
        assert f"audit of {cheats['replay'].peer_id[-6:]}: answer rejected (wrong_challenge)" \
            in log
        # the byteless holder never passed
        assert {o for h in histories["byteless"].values() for _, o, _ in h} == {"failed"}
    figures("cheats", settle_s=settled, caught_s=caught,
            audits={m: sum(len(h) for h in hs.values()) for m, hs in histories.items()})


# -- offline proofs --------------------------------------------------------------------------
def flipped(data: bytes, at: int) -> bytes:
    """``data`` with the character at ``at`` (a hex digit or a base64 character, not the
    last of its string) replaced by ``0`` or ``1``, which are both hex digits and base64
    characters, so the JSON stays well-formed and the value keeps its form."""
    bad = bytearray(data)
    bad[at] = ord("0" if bad[at] != ord("0") else "1")
    return bytes(bad)


async def verify_json(path: Path, network: Path) -> tuple[int, dict[str, Any]]:
    code, out, err = await run_cli("--network", str(network), "verify", "--json", str(path))
    assert code in (0, 1), err
    report: dict[str, Any] = json.loads(out)
    return code, report


async def test_proof_from_a_running_node_verifies_offline_and_flipped_bytes_fail(
        cluster: Cluster, tmp_path: Path) -> None:
    """``pithnode proof`` against b's store while b runs (beside a) writes a proof that
    ``pithnode verify`` accepts with no network and no store; changing a byte of the
    checkpoint's signature, the state, an event's signature or the inclusion path makes it
    fail, naming the check and the place."""
    pn = PNS[1]
    with trio.fail_after(TEST_TIMEOUT_S):
        a, b = await settled_pair(cluster, "a", "b")
        proof = tmp_path / "record.proof.json"
        network = b.data_dir / "network.toml"
        short = "pith:" + pn.split(":")[2][:8]
        code, _, err = await run_cli("proof", short, "--out", str(proof), "--data-dir",
                                     str(b.data_dir))
        assert code == 0, err
        assert f"proof of {pn}" in err
        served = (await b.states([pn]))[pn]
        assert b.running
        proof.rename(tmp_path / "moved.proof.json")  # nothing but the file is needed
        proof = tmp_path / "moved.proof.json"
        code, report = await verify_json(proof, network)
        assert code == 0 and report["valid"], report
        assert report["pith_number"] == pn and report["state_sha256"] == served

        data = proof.read_bytes()
        doc = json.loads(data)
        pub = public_key_of_peer(b.peer_id)
        assert pub is not None and doc["signer_public_key_hex"] == pub.hex()
        assert doc["tree_size"] == len(PNS)
        signers = {e["signer"]["public_key_fingerprint"]
                   for e in doc["state"]["current"]["replication_records"]}
        assert {await fingerprint(a), await fingerprint(b)} <= signers, \
            "the proof carries both nodes' state attestations"

        signature = doc["checkpoint"].rstrip("\n").rsplit(" ", 1)[1]
        event_sig = next(e["signature_b64"] for e in doc["bundle"]["events"]
                         if "signature_b64" in e)
        places = {
            "checkpoint_signature": (data.index(signature.encode()) + 10, "$.checkpoint"),
            "state_sha256": (data.index(f'"state_sha256":"{served}'.encode()) + 20,
                             "$.state"),
            "event_signatures": (data.index(json.dumps(event_sig).encode()) + 12,
                                 "$.bundle.events["),
            "inclusion": (data.index(doc["inclusion_path"][0].encode()) + 5,
                          "$.inclusion_path"),
        }
        for check, (at, where) in places.items():
            bad = tmp_path / f"{check}.proof.json"
            bad.write_bytes(flipped(data, at))
            code, report = await verify_json(bad, network)
            assert code == 1 and not report["valid"], (check, report)
            assert check in report["failed"], (check, report["failed"])
            (detail,) = [c["detail"] for c in report["checks"] if c["check"] == check]
            assert where in detail, (check, detail)
        code, out, err = await run_cli("--network", str(network), "verify",
                                       str(tmp_path / "inclusion.proof.json"))
        assert code == 1 and "INVALID" in out and "invalid: inclusion" in err, out + err

    # any byte, offline and in-process: the proof is malformed (the error says where) or a
    # check fails (the report names it)
    rng = random.Random(6962)
    spec = KEYS.spec()
    for at in rng.sample(range(len(data)), 200):
        damaged = bytearray(data)
        damaged[at] ^= 1 << rng.randrange(7)
        try:
            report_ = verify_proof_bytes(bytes(damaged), spec)
        except InputError as exc:
            assert any(m in str(exc) for m in ("$", "line ", "byte ")), (at, str(exc))
            continue
        assert not report_.valid, f"changing byte {at} went unnoticed"
