"""Attestations, storage audits, repair, equivocation evidence, checkpoints and proofs.

Two or three in-process nodes on the in-memory network, each with a real SQLite store in
``tmp_path``, HTTP off, periodic loops parked (intervals of 10^6 s) so each test drives the
attestor's steps itself. Waits are on change notifications (the nodes' feeds and the
attestors' ``wait_for_change``), never on sleeps; ``fail_after`` is only a safety net.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

from pithnode.node import cli, cli_attest
from pithnode.node.attest import (
    ATTESTATION_TYPES,
    CHECKPOINT_PROTOCOL,
    AttestLimits,
    Attestor,
    checkpoint_coverage,
    content_state_payload,
    make_checkpoint,
    public_key_of_peer,
    record_states,
)
from pithnode.node.cli_store import node_key
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
from pithnode.node.transport import PeerAddress, PeerId, TransportConfig, TransportError
from pithnode.protocol.audit import Answer, Challenge
from pithnode.protocol.checkpoint import checkpoint_origin, verify_note, verify_proof_bytes
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, make_native_event
from pithnode.protocol.keys import SigningKey
from pithnode.storage.errors import StoreCorrupt
from pithnode.storage.store import Store

from .cheat_node import BytelessHolder, ReplayingHolder, resigned

KEYS = synth_keys(31)
SPEC = KEYS.spec()
RECORDS = list(generate(KEYS, 4, SynthConfig(seed=31, equivocation_rate=0.0,
                                              invalid_rate=0.0)))
ALL: list[Event] = [e for r in RECORDS for e in r.events]
BASE_WALL = 1_767_300_000.0
#: Real seconds a multi-node wait may take before the test fails (a safety net only).
TIMEOUT = 60


# -- the harness -----------------------------------------------------------------------------
class Changes:
    """Set whenever any node ingests something or any attestor reports a change."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def bump(self) -> None:
        self.event.set()
        self.event = trio.Event()


@dataclass
class Net:
    nodes: list[Node]
    atts: list[Attestor]
    changes: Changes

    def peer(self, i: int) -> PeerId:
        return self.nodes[i].transport.peer_id


class FrozenWall:
    """A wall clock that moves only when told."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


PARKED = AttestConfig(mirror_hint_interval_s=1e6, checkpoint_interval_s=1e6,
                      audit_interval_s=1e6)


def config(d: Path, attest: AttestConfig = PARKED) -> NodeConfig:
    return NodeConfig(
        http=HttpConfig(enabled=False), socket=SocketConfig(path=d / "q.sock"),
        p2p=P2PConfig(listen=("/memory/0",)),
        sync=SyncConfig(interval_s=1e6, jitter_s=0.0, timeout_s=30.0), attest=attest)


def seed_of(i: int) -> bytes:
    return hashlib.sha256(b"attest-test node %d" % i).digest()


async def _pump_notes(node: Node, changes: Changes) -> None:
    feed = node.subscribe()
    try:
        async for _ in feed:
            changes.bump()
    finally:
        if isinstance(feed, AsyncGenerator):
            with trio.CancelScope(shield=True):
                await feed.aclose()


async def _pump_attestor(att: Attestor, changes: Changes) -> None:
    while True:
        await att.wait_for_change()
        changes.bump()


@asynccontextmanager
async def running(tmp_path: Path, n: int, *, node_classes: Sequence[type[Node]] = (),
                  att_classes: Sequence[type[Attestor]] = (),
                  limits: AttestLimits | None = None,
                  wall: Callable[[], float] | None = None,
                  seed: Sequence[Event] = ALL,
                  attest: AttestConfig = PARKED,
                  deadline: float = 2 * TIMEOUT) -> AsyncIterator[Net]:
    """Nodes (with attestors) connected in a full mesh; the body runs under ``deadline``."""
    network = MemoryNetwork()
    changes = Changes()
    nodes: list[Node] = []
    atts: list[Attestor] = []

    def default_wall() -> float:
        return BASE_WALL + trio.current_time()

    # nodes in the outer nursery, attestors in the inner one, so that the attestors stop
    # before a node closes its store (in the daemon they run inside the node's nursery)
    async with trio.open_nursery() as node_nursery:
        for i in range(n):
            d = tmp_path / f"n{i}"
            d.mkdir(exist_ok=True)
            transport = network.create(seed_of(i), TransportConfig(listen_addrs=("/memory/0",)))
            node_cls = node_classes[i] if i < len(node_classes) else Node
            node = node_cls(config(d, attest), data_dir=d, spec=SPEC, key=SigningKey(seed_of(i)),
                            transport=transport, wall_clock=wall or default_wall,
                            attest=False)
            await node_nursery.start(node.run)
            if seed:
                await node.ingest(list(seed), source="test:seed")
            nodes.append(node)
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(nodes):
                att_cls = att_classes[i] if i < len(att_classes) else Attestor
                att = att_cls(node, node.cfg.attest, limits=limits, rng=random.Random(i))
                node.attestor = att
                await nursery.start(att.run)
                nursery.start_soon(_pump_notes, node, changes)
                nursery.start_soon(_pump_attestor, att, changes)
                atts.append(att)
            for i in range(1, n):
                for j in range(i):
                    await nodes[i].transport.connect(
                        PeerAddress.parse(nodes[j].transport.listen_addresses()[0]))
            try:
                with trio.fail_after(deadline):
                    yield Net(nodes, atts, changes)
            finally:
                nursery.cancel_scope.cancel()
        node_nursery.cancel_scope.cancel()


async def until(net: Net, pred: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait, on change notifications, until ``pred`` holds."""
    try:
        with trio.fail_after(TIMEOUT):
            while True:
                changed = net.changes.event
                if await pred():
                    return
                await changed.wait()
    except trio.TooSlowError:
        pytest.fail(f"timed out waiting for {what}")


async def states(node: Node) -> dict[str, str]:
    assert node.service is not None
    return dict(await trio.to_thread.run_sync(record_states, node.service.store))


async def converged(net: Net) -> bool:
    got = [await states(n) for n in net.nodes]
    return all(s == got[0] for s in got)


async def settle(net: Net) -> None:
    """Let every attestor sign what it wants until a full pass signs nothing and every
    node holds the same states."""
    for _ in range(10):
        signed = 0
        for att in net.atts:
            signed += await att.attest_once(full=True)
        await until(net, lambda: converged(net), "the nodes' states to converge")
        if signed == 0:
            return
    pytest.fail("the attestors kept signing")


async def state_doc(node: Node, pn: str) -> dict[str, Any]:
    assert node.service is not None
    st = await node.service.state(pn)
    assert st is not None
    doc: dict[str, Any] = json.loads(st.data)
    return doc


async def attested_object(seen_by: Node, holder: Node, among: set[str] | None = None
                          ) -> tuple[str, str, str]:
    """(record, object sha256, attestation event id) of an event object ``holder`` attested,
    as ``seen_by``'s state shows it."""
    for rec in RECORDS:
        doc = await state_doc(seen_by, rec.pith_number)
        for e in doc["current"]["storage_attestations"]:
            if e["target"] == "storage" and e["signer"]["public_key_fingerprint"] == \
                    holder.key.fingerprint and (among is None
                                                or e["payload"]["object_sha256"] in among):
                return rec.pith_number, e["payload"]["object_sha256"], e["event_id"]
    raise AssertionError("no attestation by the holder")


def corrupt_object(node: Node, sha: str) -> None:
    """Flip one byte of an object's blob in the node's SQLite file (another connection)."""
    conn = sqlite3.connect(node.data_dir / "store.sqlite")
    try:
        (blob,) = conn.execute("SELECT data FROM objects WHERE sha256 = ?",
                               (bytes.fromhex(sha),)).fetchone()
        data = bytearray(blob)
        at = data.find(b"pith:")
        if at >= 0:  # a letter of the record's suffix: still valid CBOR and UTF-8
            pos = at + 10
            data[pos] = ord("A") if data[pos] != ord("A") else ord("B")
        else:
            data[len(data) // 2] ^= 0x01
        conn.execute("UPDATE objects SET data = ? WHERE sha256 = ?",
                     (bytes(data), bytes.fromhex(sha)))
        conn.commit()
    finally:
        conn.close()


def drop_object(node: Node, sha: str) -> None:
    """Delete an (unimported) event and its object from the node's SQLite file."""
    conn = sqlite3.connect(node.data_dir / "store.sqlite")
    try:
        key = bytes.fromhex(sha)
        conn.execute("DELETE FROM events WHERE id = (SELECT id FROM objects WHERE sha256 = ?)",
                     (key,))
        conn.execute("DELETE FROM objects WHERE sha256 = ?", (key,))
        conn.commit()
    finally:
        conn.close()


async def read_object(node: Node, sha: str) -> bytes | None:
    assert node.service is not None
    return await trio.to_thread.run_sync(node.service.store.object, sha)


def audits_of(doc: dict[str, Any], attestation_id: str) -> list[dict[str, Any]]:
    return [e for e in doc["current"]["storage_attestations"]
            if e["target"] == "audit" and e["payload"]["attestation_event_id"] == attestation_id]


def metric(att: Attestor, name: str, labels: dict[str, str] | None = None) -> float:
    value = att.node.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# -- storage audits and repair ---------------------------------------------------------------
async def test_corrupted_object_fails_its_audit_is_repaired_and_passes_the_next(
        tmp_path: Path) -> None:
    async with running(tmp_path, 3) as net:
        await settle(net)
        challenger, holder = net.atts[0], net.atts[1]
        pn, sha, attestation = await attested_object(net.nodes[0], net.nodes[1])
        corrupt_object(net.nodes[1], sha)
        with pytest.raises(StoreCorrupt):
            await read_object(net.nodes[1], sha)

        failed = await challenger.audit_once(holder=net.peer(1), objects=[sha])
        assert [(o.outcome, o.reason) for o in failed] == [("missing", "holder_lacks_object")]
        assert failed[0].audit_event_id is not None

        # the holder saw the damage when it re-read the object to answer: it repairs the
        # store (the damaged event is dropped) and fetches the event again from a peer
        await until(net, lambda: _done(lambda: [r["outcome"] for r in holder.repairs]),
                    "the holder's repair")
        assert holder.repairs[0]["outcome"] == "repaired"
        assert holder.repairs[0]["dropped_events"] == 1
        assert await read_object(net.nodes[1], sha) is not None

        # the failed audit is in every node's state, and the states are identical
        await until(net, lambda: converged(net), "the states to converge after the repair")
        docs = [await state_doc(n, pn) for n in net.nodes]
        assert len({d["state_sha256"] for d in docs}) == 1
        (audit,) = audits_of(docs[0], attestation)
        assert audit["event_id"] == failed[0].audit_event_id
        assert audit["payload"]["outcome"] == "failed"
        assert audit["payload"]["holder_fingerprint"] == net.nodes[1].key.fingerprint

        passed = await challenger.audit_once(holder=net.peer(1), objects=[sha])
        assert [(o.outcome, o.reason) for o in passed] == [("verified", "digest_matches")]
        await until(net, lambda: converged(net), "the verified audit to spread")
        docs = [await state_doc(n, pn) for n in net.nodes]
        assert len({d["state_sha256"] for d in docs}) == 1
        (audit,) = audits_of(docs[0], attestation)  # the newer audit supersedes the failed
        assert audit["event_id"] == passed[0].audit_event_id
        assert audit["payload"]["outcome"] == "verified"
        assert metric(challenger, "pithnode_audits_total",
                      {"role": "challenger", "outcome": "missing"}) == 1
        assert metric(holder, "pithnode_store_repairs_total", {"outcome": "repaired"}) == 1


async def test_a_damaged_object_neither_fails_a_sync_nor_escapes_it(tmp_path: Path) -> None:
    async with running(tmp_path, 3) as net:
        await settle(net)
        natives = {hashlib.sha256(e.canonical_bytes()).hexdigest() for e in ALL
                   if e.event_type != "registry_import"}
        _, sha, _ = await attested_object(net.nodes[0], net.nodes[0], among=natives)
        drop_object(net.nodes[1], sha)  # node 1 lacks the event: a sync moves it
        corrupt_object(net.nodes[0], sha)  # and node 0's copy is damaged

        # node 0 pushes what node 1 lacks, then serves what node 1 asks for: the damaged
        # event is left out of both, the rest goes through, nothing is raised
        pushed = await net.nodes[0].sync_with(net.peer(1))
        fetched = await net.nodes[1].sync_with(net.peer(0))
        assert (pushed.have, pushed.pushed, fetched.need, fetched.fetched_new) == (1, 0, 1, 0)
        assert await read_object(net.nodes[1], sha) is None

        # the damage was reported: node 0 drops the event and fetches it from node 2
        holder = net.atts[0]
        await until(net, lambda: _done(lambda: [r["outcome"] for r in holder.repairs]),
                    "node 0's repair")
        assert [(r["reason"], r["outcome"], r["dropped_events"])
                for r in holder.repairs][:1] == [("store_damaged", "repaired", 1)]
        assert await read_object(net.nodes[0], sha) is not None
        await net.nodes[1].sync_with(net.peer(0))
        assert await read_object(net.nodes[1], sha) is not None


async def _done(outcomes: Callable[[], list[str]]) -> bool:
    await trio.lowlevel.checkpoint()
    return any(o != "not_needed" for o in outcomes())


async def test_challenger_without_a_copy_settles_by_the_holders_majority(
        tmp_path: Path) -> None:
    async with running(tmp_path, 3) as net:
        await settle(net)
        challenger = net.atts[0]
        natives = {hashlib.sha256(e.canonical_bytes()).hexdigest() for e in ALL
                   if e.event_type != "registry_import"}
        _, sha, _ = await attested_object(net.nodes[0], net.nodes[1], among=natives)
        drop_object(net.nodes[0], sha)  # the challenger has no copy of this object
        assert await read_object(net.nodes[0], sha) is None
        outcomes = await challenger.audit_once(holder=net.peer(1), objects=[sha])
        by_holder = {o.holder: (o.outcome, o.reason) for o in outcomes}
        assert by_holder == {str(net.peer(1)): ("verified", "matches_majority"),
                             str(net.peer(2)): ("verified", "matches_majority")}
        assert all(o.audit_event_id for o in outcomes)
        await net.nodes[0].sync_with(net.peer(1))  # and it gets the object back
        assert await read_object(net.nodes[0], sha) is not None
        await until(net, lambda: converged(net), "the states to converge")


class FirstAnswerHolder(Attestor):
    """Answers every later challenge with the digests it computed for the first (unlike
    ``cheat_node.CachedDigestHolder``, which keeps a digest per object)."""

    first: Answer | None = None

    async def answer(self, challenge: Challenge) -> Answer:
        if self.first is None:
            self.first = await super().answer(challenge)
            return self.first
        return resigned(self.key, challenge, self.first.digests)


@pytest.mark.parametrize(("cheat", "first", "reason"), [
    (FirstAnswerHolder, "verified", "digest_differs"),
    (ReplayingHolder, "verified", "answer_rejected:wrong_challenge"),
    (BytelessHolder, "failed", "digest_differs"),
])
async def test_dishonest_holders_are_caught(tmp_path: Path, cheat: type[Attestor], first: str,
                                            reason: str) -> None:
    async with running(tmp_path, 2, att_classes=(Attestor, cheat)) as net:
        await settle(net)
        challenger = net.atts[0]
        pn, sha, attestation = await attested_object(net.nodes[0], net.nodes[1])
        one = await challenger.audit_once(holder=net.peer(1), objects=[sha])
        assert [o.outcome for o in one] == [first]
        two = await challenger.audit_once(holder=net.peer(1), objects=[sha])
        assert [(o.outcome, o.reason) for o in two] == [("failed", reason)]
        await until(net, lambda: converged(net), "the failed audit to spread")
        for node in net.nodes:
            (audit,) = audits_of(await state_doc(node, pn), attestation)
            assert audit["payload"]["outcome"] == "failed"
            assert audit["event_id"] == two[0].audit_event_id


async def test_holder_answers_at_most_k_challenges_per_peer_per_minute(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    limits = AttestLimits(holder_challenges_per_minute=2)
    async with running(tmp_path, 2, limits=limits) as net:
        challenger = net.atts[0]
        oid = hashlib.sha256(ALL[0].canonical_bytes()).digest()

        async def once() -> str | None:
            result = await challenger.challenge(net.peer(1), challenger.new_challenge([oid]))
            return None if result is None else result.outcomes[0].outcome

        assert [await once() for _ in range(3)] == ["verified", "verified", None]
        mock_clock.jump(61)  # a minute refills the bucket: two more, then refused again
        assert [await once() for _ in range(3)] == ["verified", "verified", None]
        assert metric(net.atts[1], "pithnode_audits_total",
                      {"role": "holder", "outcome": "rate_limited"}) == 2


# -- equivocation evidence -------------------------------------------------------------------
async def test_equivocation_reaches_every_node_and_is_recorded_identically(
        tmp_path: Path) -> None:
    async with running(tmp_path, 3) as net:
        await settle(net)
        pn = RECORDS[1].pith_number

        def claim(name: str) -> Event:
            return make_native_event(
                KEYS.authors[0], event_type="author_attestation", subject=pn,
                payload={"orcid": "0000-0002-1825-0097", "name": name, "claim": "author"},
                created_at="2026-03-01T00:00:00Z", signer_id="author-0", signer_type="author")

        one, two = claim("A. Author"), claim("A. N. Other")
        await net.nodes[0].submit([one.to_json()])  # gossiped to every node

        async def everyone_has(event: Event) -> bool:
            for node in net.nodes:
                assert node.service is not None
                if await node.service.event(event.event_id) is None:
                    return False
            return True

        await until(net, lambda: everyone_has(one), "the first claim to spread")
        # the conflicting second claim reaches node 0 alone, not by gossip
        await net.nodes[0].ingest([two], source="test:direct")
        await until(net, lambda: everyone_has(two), "node 0 to gossip the evidence")

        async def all_equivocate() -> bool:
            return all([(await state_doc(n, pn))["equivocation_count"] == 1
                        for n in net.nodes])

        await until(net, all_equivocate, "every node to record the equivocation")
        docs = [await state_doc(n, pn) for n in net.nodes]
        assert docs[0]["equivocations"] == docs[1]["equivocations"] == docs[2]["equivocations"]
        (entry,) = docs[0]["equivocations"]
        assert entry["event_ids"] == sorted([one.event_id, two.event_id])
        assert entry["signer"]["public_key_fingerprint"] == KEYS.authors[0].fingerprint
        assert metric(net.atts[0], "pithnode_equivocation_evidence_total") == 1
        await settle(net)


# -- attestations ------------------------------------------------------------------------------
class ManualAttestor(Attestor):
    """Signs only when the test calls ``attest_once`` (its background round is parked)."""

    async def _attest_loop(self) -> None:
        await trio.sleep_forever()


async def test_attestations_are_signed_once_and_never_reuse_a_second_in_a_slot(
        tmp_path: Path) -> None:
    wall = FrozenWall(BASE_WALL)
    pn = RECORDS[0].pith_number
    async with running(tmp_path, 1, wall=wall, att_classes=(ManualAttestor,)) as net:
        node, att = net.nodes[0], net.atts[0]
        await att.attest_once(full=True)
        assert await att.attest_once(full=True) == 0  # nothing is missing or stale
        for url in ("http://mirror.example:8080", "http://mirror.example:9090"):
            node.http_url = url  # the hint is stale: one new hint per record
            assert await att.attest_once(full=True) == len(RECORDS)
        doc = await state_doc(node, pn)
        mine = node.key.fingerprint
        attested = [e for e in doc["current"]["replication_records"]
                    if e["target"] == "state" and e["signer"]["public_key_fingerprint"] == mine]
        expected = content_state_payload(pn, RECORDS[0].events, SPEC)
        assert [e["payload"] for e in attested] == [expected]
        storage = [e for e in doc["current"]["storage_attestations"]
                   if e["signer"]["public_key_fingerprint"] == mine]
        content = [e for e in RECORDS[0].events if e.event_type not in ATTESTATION_TYPES]
        assert 0 < len(content) <= AttestLimits().objects_per_record
        assert {e["payload"]["object_sha256"] for e in storage} == {
            hashlib.sha256(e.canonical_bytes()).hexdigest() for e in content}
        # once the clock has passed them, the seconds signed in the frozen second are
        # forgotten: the attestor remembers only what can still raise a slot's floor
        wall.t += 60
        node.http_url = "http://mirror.example:6060"
        assert await att.attest_once(full=True) == len(RECORDS)
        assert len(att._last_signed) == len(RECORDS)
        assert set(att._last_signed.values()) == {int(wall.t)}
        wall.t -= 60  # back to the frozen second: the restart must go on after 20:41:00
    # a restarted node (new attestor, same store and key, same frozen second) goes on after
    # its stored events: created_at still never repeats within the slot
    async with running(tmp_path, 1, wall=wall, seed=(), att_classes=(ManualAttestor,)) as net:
        node, att = net.nodes[0], net.atts[0]
        node.http_url = "http://mirror.example:7070"
        await att.attest_once(full=True)
        assert node.service is not None
        hints = sorted(e.created_at for e in await node.service.events(pn)
                       if e.event_type == "mirror_hint"
                       and e.signer.public_key_fingerprint == node.key.fingerprint)
        assert hints == ["2026-01-01T20:40:00Z", "2026-01-01T20:40:01Z",
                         "2026-01-01T20:40:02Z", "2026-01-01T20:41:00Z",
                         "2026-01-01T20:41:01Z"]
        doc = await state_doc(node, pn)
        assert doc["equivocation_count"] == 0
        (hint,) = [h for h in doc["current"]["mirror_hints"]
                   if h["signer"]["public_key_fingerprint"] == node.key.fingerprint]
        assert hint["payload"]["base_urls"] == ["http://mirror.example:7070"]


def test_content_state_ignores_node_attestations_and_peer_ids_name_keys() -> None:
    rec = RECORDS[2]
    before = content_state_payload(rec.pith_number, rec.events, SPEC)
    extra = make_native_event(SigningKey(seed_of(9)), event_type="state_attestation",
                              subject=rec.pith_number, payload=before,
                              created_at="2026-02-01T00:00:00Z", signer_id="n9",
                              signer_type="node")
    assert content_state_payload(rec.pith_number, [*rec.events, extra], SPEC) == before
    net = MemoryNetwork()
    transport = net.create(seed_of(3))
    assert public_key_of_peer(transport.peer_id) == SigningKey(seed_of(3)).public_key
    for bad in ("", "0OIl", "1" * 60, "Qm" + "1" * 44, transport.peer_id[:-1],
                transport.peer_id + "1"):
        assert public_key_of_peer(bad) is None


# -- checkpoints and split views -------------------------------------------------------------
async def test_converged_nodes_sign_checkpoints_with_the_same_root(tmp_path: Path) -> None:
    async with running(tmp_path, 3) as net:
        await settle(net)
        cps = [await att.checkpoint_now(force=True) for att in net.atts]
        assert len({cp.root for cp in cps}) == 1
        assert {cp.size for cp in cps} == {len(RECORDS)}
        assert len({cp.origin for cp in cps}) == 3
        for cp, node in zip(cps, net.nodes, strict=True):
            origin = checkpoint_origin(SPEC.name, node.key.public_key)
            parsed = verify_note(cp.note, origin, node.key.public_key, origin=origin)
            assert checkpoint_coverage(parsed) == ((), cp.signed_at)
        result = await net.atts[0].exchange_checkpoints(net.peer(1))
        assert result["status"] == "match"
        assert net.atts[0].split_views() == []
        seen = net.atts[1].peer_checkpoints[str(net.peer(0))]
        assert seen.root == cps[0].root and seen.note == cps[0].note


class WithholdingNode(Node):
    """Holds an event (it is in its states and checkpoint) but never lets a peer have it."""

    withheld: frozenset[bytes] = frozenset()

    async def sync_items(self, prefixes: Sequence[str]) -> list[tuple[int, bytes]]:
        return [i for i in await super().sync_items(prefixes) if i[1] not in self.withheld]

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]:
        return await super().raw_events([i for i in ids if i not in self.withheld])


async def test_withheld_event_is_detected_and_reported_as_a_split_view(tmp_path: Path) -> None:
    limits = AttestLimits(checkpoint_min_gap_s=0.0)  # compare current checkpoints at once
    async with running(tmp_path, 2, node_classes=(Node, WithholdingNode), limits=limits) as net:
        await settle(net)
        honest, withholder = net.atts[0], net.nodes[1]
        assert isinstance(withholder, WithholdingNode)
        pn = RECORDS[2].pith_number
        hidden = make_native_event(
            KEYS.authors[1], event_type="citation_signature", subject=pn,
            payload={"cited": RECORDS[0].pith_number, "relation": "supports", "note": ""},
            created_at="2026-03-02T00:00:00Z", signer_id="author-1", signer_type="author")
        withholder.withheld = frozenset({bytes.fromhex(hidden.event_id[7:])})
        await withholder.ingest([hidden], source="test:direct")
        await net.atts[1].attest_once(full=True)  # its content state changed: re-attested

        async def only_hidden_differs() -> bool:
            ours, theirs = await states(net.nodes[0]), await states(withholder)
            return {k for k in ours if ours[k] != theirs[k]} == {pn} and (
                await _visible(net.nodes[0], pn)) == (await _visible(withholder, pn)) - {
                    hidden.event_id}

        await until(net, only_hidden_differs, "the withholder's attestations to arrive")
        result = await honest.exchange_checkpoints(net.peer(1))
        assert result["status"] == "mismatch"
        (view,) = honest.split_views()
        ours, theirs = await states(net.nodes[0]), await states(withholder)
        assert view["status"] == "confirmed" and view["peer"] == str(net.peer(1))
        assert view["syncs"] == 2 and view["tree_size"] == len(RECORDS)
        assert view["my_root"] != view["their_root"]
        assert view["differing_records"] == [{"pith_number": pn, "mine": ours[pn],
                                              "theirs": theirs[pn]}]
        assert not view["differing_truncated"]
        assert pn in view["explanation"] and "withheld" in view["explanation"]
        assert hidden.event_id not in await _visible(net.nodes[0], pn)
        assert metric(honest, "pithnode_checkpoint_split_views_total",
                      {"stage": "suspected"}) == 1
        assert metric(honest, "pithnode_checkpoint_split_views_total",
                      {"stage": "confirmed"}) == 1


async def _visible(node: Node, pn: str) -> set[str]:
    assert node.service is not None
    return {e.event_id for e in await node.service.events(pn)}


async def test_a_lagging_peer_is_suspected_then_resolved_by_the_sync(tmp_path: Path) -> None:
    # nothing is signed here (no budget), so that no attestation of the late event is in
    # flight while the roots are compared
    # nor is the checkpoint recomputation rate-limited: the lag must show at once
    limits = AttestLimits(sign_burst=0, checkpoint_min_gap_s=0.0)
    async with running(tmp_path, 2, limits=limits) as net:
        await settle(net)
        pn = RECORDS[3].pith_number
        late = make_native_event(
            KEYS.authors[2], event_type="citation_signature", subject=pn,
            payload={"cited": RECORDS[1].pith_number, "relation": "cites", "note": ""},
            created_at="2026-03-03T00:00:00Z", signer_id="author-2", signer_type="author")
        await net.nodes[1].ingest([late], source="test:direct")  # not gossiped
        result = await net.atts[0].exchange_checkpoints(net.peer(1))
        assert result["status"] == "match"
        (view,) = net.atts[0].split_views()
        assert view["status"] == "resolved" and view["differing_records"] == []
        assert late.event_id in await _visible(net.nodes[0], pn)


async def test_loops_audit_and_swap_checkpoints_on_their_intervals(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.rate = 1.0  # time flows; jumps stand for the intervals
    attest = AttestConfig(mirror_hint_interval_s=1e6, checkpoint_interval_s=500.0,
                          audit_interval_s=100.0)
    async with running(tmp_path, 2, attest=attest, deadline=662 + 2 * TIMEOUT) as net:
        await settle(net)
        assert all(metric(a, "pithnode_attest_signed_total",
                          {"event_type": "storage_audit"}) == 0 for a in net.atts)

        async def audited() -> bool:
            await trio.lowlevel.checkpoint()
            return all(metric(a, "pithnode_attest_signed_total",
                              {"event_type": "storage_audit"}) > 0 for a in net.atts)

        mock_clock.jump(111)  # past every audit interval (100 s, +-10 %)
        await until(net, audited, "both audit loops to audit the other node")
        await settle(net)

        async def swapped() -> bool:
            await trio.lowlevel.checkpoint()
            return all(str(net.peer(1 - i)) in a.peer_checkpoints
                       for i, a in enumerate(net.atts))

        mock_clock.jump(551)  # past every checkpoint interval (500 s, +-10 %)
        await until(net, swapped, "both checkpoint loops to swap checkpoints")
        assert not [v for a in net.atts for v in a.split_views() if v["status"] != "resolved"]


async def test_checkpoint_sessions_refuse_garbage_and_keys_of_other_peers(
        tmp_path: Path) -> None:
    async with running(tmp_path, 2, seed=ALL[:6]) as net:
        stranger = SigningKey(seed_of(7))
        cp = make_checkpoint([], network=SPEC.name, key=stranger, prefixes=(), signed_at=0)
        for frame in (b"\xff\x00junk", cbor2.dumps({"v": 2, "t": "cp_hello"}), cbor2.dumps(
                {"v": 1, "t": "cp_hello", "note": cp.note, "public_key": stranger.public_key,
                 "fresh": False})):
            stream = await net.nodes[1].transport.open_stream(net.peer(0), CHECKPOINT_PROTOCOL)
            await stream.send_frame(frame)
            with pytest.raises(TransportError):
                with trio.fail_after(TIMEOUT):
                    await stream.receive_frame()
        assert net.atts[0].peer_checkpoints == {}
        result = await net.atts[1].exchange_checkpoints(net.peer(0))  # still serving
        assert result["status"] in ("match", "mismatch")


# -- proofs and the command line ---------------------------------------------------------------
def _store_dir(tmp_path: Path) -> tuple[Path, SigningKey]:
    d = tmp_path / "data"
    d.mkdir()
    (d / "network.toml").write_text(KEYS.spec_toml(), encoding="utf-8")
    key = node_key(d)
    with Store(d / "store.sqlite", SPEC) as store:
        store.ingest(ALL, source="test:seed", received_at=BASE_WALL)
    return d, key


@pytest.fixture(autouse=True)
def _attest_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pithnode checkpoint`` and ``proof`` (the daemon's CLI lists them once merged)."""
    if cli_attest not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, cli_attest])


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_proof_file_verifies_offline_and_flipping_any_byte_fails(tmp_path: Path) -> None:
    d, key = _store_dir(tmp_path)
    proof = tmp_path / "record.proof.json"
    pn = RECORDS[1].pith_number
    code, _, err = _run(["proof", "pith:" + pn.split(":")[2][:8], "--out", str(proof),
                         "--data-dir", str(d)])
    assert code == 0, err
    assert f"proof of {pn}" in err
    code, out, err = _run(["--network", str(d / "network.toml"), "verify", str(proof)])
    assert code == 0, out + err
    data = proof.read_bytes()
    report = verify_proof_bytes(data, SPEC)
    assert report.valid and report.pith_number == pn
    doc = json.loads(data)
    assert doc["signer_public_key_hex"] == key.public_key.hex()
    assert doc["tree_size"] == len(RECORDS)
    rng = random.Random(6962)
    for pos in rng.sample(range(len(data)), 150):
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(7)
        try:
            flipped = verify_proof_bytes(bytes(bad), SPEC)
        except InputError:
            continue
        assert not flipped.valid, f"flipping byte {pos} went unnoticed"
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x04
    proof.write_bytes(bytes(bad))
    code, _, _ = _run(["--network", str(d / "network.toml"), "verify", str(proof)])
    assert code in (1, 2)


def test_checkpoint_command_signs_the_store_when_no_node_runs(tmp_path: Path) -> None:
    d, key = _store_dir(tmp_path)
    code, out, err = _run(["checkpoint", "--data-dir", str(d)])  # no socket: the store
    assert code == 0, err
    origin = checkpoint_origin(SPEC.name, key.public_key)
    cp = verify_note(out, origin, key.public_key, origin=origin)
    assert cp.size == len(RECORDS)
    with Store(d / "store.sqlite", SPEC, readonly=True) as store:
        pairs = record_states(store)
    assert cp.root == make_checkpoint(pairs, network=SPEC.name, key=key, prefixes=(),
                                      signed_at=0).root
    code, out, _ = _run(["checkpoint", "--data-dir", str(d), "--offline", "--json"])
    assert code == 0 and json.loads(out)["source"] == "store"
    assert json.loads(out)["tree_size"] == len(RECORDS)
    code, _, err = _run(["checkpoint", "--data-dir", str(tmp_path / "none"), "--offline"])
    assert code == 2 and "no node key" in err


async def test_subscribers_get_each_new_event_and_each_touched_records_new_state(
        tmp_path: Path) -> None:
    async with running(tmp_path, 1, seed=()) as net:
        node = net.nodes[0]
        notes: list[dict[str, Any]] = []
        subscribed = trio.Event()
        events = ALL[:40]
        subjects = {e.subject for e in events}

        async def listen() -> None:
            feed = node.subscribe()
            assert isinstance(feed, AsyncGenerator)
            try:
                subscribed.set()  # the first __anext__ registers the subscriber
                async for note in feed:
                    notes.append(note)
                    if {n["pith_number"] for n in notes if n["kind"] == "state"} >= subjects:
                        return
            finally:
                with trio.CancelScope(shield=True):
                    await feed.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await subscribed.wait()
            await trio.testing.wait_all_tasks_blocked()
            await node.ingest(events, source="test")
        assert {n["event_id"] for n in notes if n["kind"] == "event"} == \
            {e.event_id for e in events}
        for note in (n for n in notes if n["kind"] == "state"):
            st = await node._svc().state(note["pith_number"])
            assert st is not None
            assert (note["state_sha256"], note["event_count"]) == (st.state_sha256,
                                                                   st.event_count)


async def test_the_periodic_sync_leaves_peers_in_a_session_alone(tmp_path: Path) -> None:
    async with running(tmp_path, 3, seed=()) as net:
        b, c, a = net.nodes  # a dialled both others: its connections are up
        peer_b = str(b.transport.peer_id)
        assert {str(p) for p in a.transport.connected_peers()} == {
            peer_b, str(c.transport.peer_id)}
        before = a._sessions[peer_b]  # (a session each new connection opens may be running)
        with a._in_session(peer_b), a._in_session(peer_b):
            assert peer_b not in {str(p) for p in a.idle_peers()}
            assert a._sessions[peer_b] == before + 2
        assert a._sessions[peer_b] == before
        result = await a.sync_with(b.transport.peer_id)
        assert result.role == "initiator"
        while a._sessions:  # every session ends, and leaves its peer idle
            await trio.sleep(0)
        assert {str(p) for p in a.idle_peers()} == {peer_b, str(c.transport.peer_id)}
