"""An adversary against three real node processes (issue 7, part 2).

Three ``pithnode run`` processes on 127.0.0.1 (``tests/cluster.py``): n0 and n1 mirror every
record, n2 only records whose Pith suffix starts with one of ``N2_PREFIXES``. The adversary
(``bench/adversary.py``) is a libp2p peer of its own (our transport, a fresh key) connected to
all three. Each test runs misbehaviours while honest traffic goes in through n0 and n1, then
checks that the nodes stayed up and answered quickly, that nothing invalid reached any
state, that everything valid converged (every node serves the locally merged state of every
record in its scope), and that every misbehaviour shows in ``/metrics`` and ``explain``.

Timings and figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from bench.adversary import (
    Adversary,
    Metrics,
    ResponderMode,
    equivocation,
    flood,
    forged_variants,
    metric,
    metrics_of,
    native,
    open_fds,
    rss_kib,
)
from pithnode.node.query_socket import RpcError
from pithnode.node.synth import SynthKeys, synth_keys
from pithnode.node.transport import PeerId
from pithnode.protocol.events import Event
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.wire import prefixes_match

from .cluster import (
    CLI,
    READY_PREFIX,
    START_TIMEOUT_S,
    Cluster,
    NodeProcess,
    NodeSettings,
    NodeStartError,
    config_toml,
    expected_states,
    synth_events,
    wait_until,
)

pytestmark = pytest.mark.slow

SEED = 23
KEYS: SynthKeys = synth_keys(SEED)
SETTINGS = NodeSettings(sync_interval_s=2.0, sync_jitter_s=1.0, sync_timeout_s=4.0, http=True)
#: Records n2 mirrors (by first suffix character); the others are outside its scope.
N2_PREFIXES = ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M")
#: Backstop for a whole test; every wait inside has its own bound.
TEST_TIMEOUT_S = 170.0
CONVERGE_TIMEOUT_S = 60.0
#: node.status must answer within this, whatever the adversary does (2 busy cores).
STATUS_BOUND_S = 5.0
#: RSS growth allowed over a flood of 3,000 valid events (stored: the store's page cache and
#: the states grow; no per-event memory may stay behind).
RSS_GROWTH_BOUND_KIB = 120 * 1024


def in_scope(node: NodeProcess, pith: str) -> bool:
    prefixes = node.mirror_prefixes if isinstance(node, ScopedNode) else ()
    return prefixes_match(pith.rsplit(":", 1)[1], prefixes)


class ScopedNode(NodeProcess):
    """A cluster node with ``[p2p] mirror_prefixes`` (NodeSettings has no such knob): the
    same start as NodeProcess, with that key added to the config it writes."""

    def __init__(self, name: str, data_dir: Path, settings: NodeSettings,
                 bootstrap: Sequence[NodeProcess], mirror_prefixes: Sequence[str]) -> None:
        super().__init__(name, data_dir, settings, bootstrap)
        self.mirror_prefixes = tuple(mirror_prefixes)

    async def _start_once(self) -> None:
        boot = [n.multiaddr for n in self.bootstrap_nodes]
        text = config_toml(self.port, boot, self.settings).replace(
            "[p2p]\n", f"[p2p]\nmirror_prefixes = {json.dumps(list(self.mirror_prefixes))}\n",
            1)
        self.config_path.write_text(text, "utf-8")
        with open(self.log_path, "ab") as log:
            self.proc = await trio.lowlevel.open_process(
                [*CLI, "run", "--config", str(self.config_path), "--data-dir",
                 str(self.data_dir)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.starts += 1
        assert self.proc.stdout is not None
        buf = b""
        with trio.move_on_after(START_TIMEOUT_S):
            while b"\n" not in buf:
                data = await self.proc.stdout.receive_some(4096)
                if not data:
                    break
                buf += data
        line = buf.split(b"\n", 1)[0]
        if not line.startswith(READY_PREFIX):
            await self.kill()
            raise NodeStartError(f"node {self.name} did not start:\n{self.log_tail()}")
        self.ready = json.loads(line[len(READY_PREFIX):])
        self.port = int(self.multiaddr.split("/tcp/")[1].split("/")[0])
        await self.status()


@dataclass
class Harness:
    cluster: Cluster
    nodes: list[NodeProcess]
    adversary: Adversary

    @property
    def n0(self) -> NodeProcess:
        return self.nodes[0]

    @property
    def n1(self) -> NodeProcess:
        return self.nodes[1]

    @property
    def n2(self) -> NodeProcess:
        return self.nodes[2]

    def http(self, node: NodeProcess) -> str:
        assert node.ready is not None and node.ready["http"]
        return str(node.ready["http"])

    async def metrics(self) -> list[Metrics]:
        return [await metrics_of(self.http(n)) for n in self.nodes]

    async def explain(self, node: NodeProcess, ident: str) -> dict[str, Any]:
        result: dict[str, Any] = await node.call("explain", {"id": ident})
        return result

    async def assert_responsive(self, what: str) -> list[float]:
        """Every node is running and answers node.status within STATUS_BOUND_S."""
        took = []
        for node in self.nodes:
            assert node.running, f"{node.name} died ({what}):\n{node.log_tail()}"
            t0 = trio.current_time()
            with trio.fail_after(STATUS_BOUND_S):
                await node.status()
            took.append(trio.current_time() - t0)
        return took

    async def submit(self, node: NodeProcess, events: Sequence[Event]) -> list[dict[str, Any]]:
        result = await node.call("events.submit", {"events": [e.to_json() for e in events]})
        outcomes: list[dict[str, Any]] = result["outcomes"]
        return outcomes

    async def wait_converged(self, events: Sequence[Event], what: str) -> float:
        """Every node serves, for every record in its scope, the merge of ``events``."""
        expected = expected_states(events, self.cluster.spec)
        last: list[str] = []

        async def converged() -> bool:
            last[:] = []
            for node in self.nodes:
                mine = {p: s for p, s in expected.items() if in_scope(node, p)}
                last.extend(await self.cluster.state_mismatches([node], mine))
            return not last

        return await wait_until(converged, CONVERGE_TIMEOUT_S, what=what, interval=0.25,
                                describe=lambda: "; ".join(last[:4]))

    async def held_by(self, event_id: str) -> list[str]:
        """Names of the nodes that store ``event_id``."""
        return [n.name for n in self.nodes if (await self.explain(n, event_id))["known"]]


@asynccontextmanager
async def attacked_cluster(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Cluster(tmp_path, KEYS, SETTINGS) as cluster:
        n0 = cluster.add("n0")
        await cluster.start(n0)
        n1 = cluster.add("n1", bootstrap=[n0])
        await cluster.start(n1)
        data_dir = tmp_path / "n2"
        data_dir.mkdir()
        (data_dir / "network.toml").write_text(cluster.spec_toml, "utf-8")
        n2 = ScopedNode("n2", data_dir, SETTINGS, [n0, n1], N2_PREFIXES)
        cluster.nodes.append(n2)
        await cluster.start(n2)
        nodes = [n0, n1, n2]
        await cluster.wait_connected({n: 2 for n in nodes}, 60)
        adversary = Adversary(cluster.spec, seed=os.urandom(32))
        async with trio.open_nursery() as nursery:
            await nursery.start(adversary.run)
            await adversary.connect([n.multiaddr for n in nodes])
            yield Harness(cluster, nodes, adversary)
            nursery.cancel_scope.cancel()


def figures(test: str, **values: object) -> None:
    print(f"[{test}] " + ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))


def split_scope(events: Sequence[Event]) -> tuple[str, str]:
    """A record inside n2's scope and one outside, among the subjects of ``events``."""
    subjects = sorted({e.subject for e in events})
    inside = next(s for s in subjects if s.rsplit(":", 1)[1][0] in N2_PREFIXES)
    outside = next(s for s in subjects if s.rsplit(":", 1)[1][0] not in N2_PREFIXES)
    return inside, outside


def adversary_subject(first: str, n: int) -> str:
    """A record no honest event is about (the adversary's own playground)."""
    return f"pith:2026:{first}{'Q' * 24}{'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[n]}"


# ---------------------------------------------------------------------------- tests


async def test_forged_replayed_out_of_scope_and_equivocating_events(tmp_path: Path) -> None:
    valid = synth_events(KEYS, 160, seed=SEED)
    first, second = valid[:80], valid[80:]
    inside, outside = split_scope(valid)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with attacked_cluster(tmp_path) as h:
            adv = h.adversary
            await h.submit(h.n0, first)
            await h.wait_converged(first, "first half")
            before = await h.metrics()
            mallory, other = SigningKey(os.urandom(32)), SigningKey(os.urandom(32))

            # forged events, by every path: gossip, sync put, the socket
            base = native(mallory, inside, t=5)  # never sent as it is
            forged = forged_variants(base, other)
            for ev in forged.values():
                await adv.gossip_events([ev])
            ack = await adv.sync_put(PeerId(h.n1.peer_id), list(forged.values()))
            assert ack == {"new": 0, "duplicate": 0, "rejected": len(forged)}, ack
            outcomes = await h.submit(h.n2, list(forged.values()))
            assert [o["outcome"] for o in outcomes] == ["rejected"] * len(forged)
            reasons = {o["reason"] for o in outcomes}

            # honest traffic while it goes on
            await h.submit(h.n1, second)

            # replays of stored events, by gossip and by sync
            await adv.gossip_events(first[:40])
            ack = await adv.sync_put(PeerId(h.n0.peer_id), first[:40])
            assert ack["new"] == 0 and ack["duplicate"] == 40, ack

            # valid events about a record outside n2's mirror_prefixes, sent to n2 directly
            stray = [native(mallory, outside, t=10 + i) for i in range(3)]
            await adv.gossip_events(stray)
            ack_n2 = await adv.sync_put(PeerId(h.n2.peer_id), stray)
            out_outcomes = await h.submit(h.n2, stray[:1])

            # an equivocation: the two halves go in at different nodes
            eq_a, eq_b = equivocation(mallory, inside, t=20)
            await h.submit(h.n0, [eq_a])
            await h.submit(h.n1, [eq_b])

            took = await h.wait_converged([*valid, *stray, eq_a, eq_b],
                                          "valid events during the attack")
            latency = await h.assert_responsive("after the attack")

            # nothing forged is stored anywhere, and explain says so
            for reason, ev in forged.items():
                assert await h.held_by(ev.event_id) == [], reason
                info = await h.explain(h.n1, ev.event_id)
                assert info["known"] is False and "rejected" in info["why"], info
            assert await h.held_by(base.event_id) == []
            assert reasons <= set(forged) | {"bad_signature"}, reasons

            # out of scope: n0 and n1 keep the stray events, n2 never does
            assert ack_n2["new"] == 0 and ack_n2["rejected"] == len(stray), ack_n2
            assert out_outcomes[0] == {"event_id": stray[0].event_id, "outcome": "rejected",
                                       "reason": "out_of_scope"}, out_outcomes
            await wait_until(lambda: _all_hold(h, stray, [h.n0, h.n1]), CONVERGE_TIMEOUT_S,
                             what="stray events on n0 and n1")
            for ev in stray:
                assert await h.held_by(ev.event_id) == ["n0", "n1"]
            assert "no record" in str(await rpc_error(h.n2, "record.state", {"id": outside}))

            # the equivocation is recorded identically everywhere, and explained
            async def same_equivocation() -> bool:
                shas = {(await n.call("record.state", {"id": inside}))["state_sha256"]
                        for n in h.nodes}
                eqs = [(await n.call("record.state", {"id": inside}))["state"]["equivocations"]
                       for n in h.nodes]
                return len(shas) == 1 and all(len(e) == 1 for e in eqs)

            await wait_until(same_equivocation, CONVERGE_TIMEOUT_S, what="equivocation")
            state = (await h.n2.call("record.state", {"id": inside}))["state"]
            assert state["equivocations"][0]["event_ids"] == sorted([eq_a.event_id,
                                                                     eq_b.event_id])
            for node in h.nodes:
                info = await h.explain(node, eq_b.event_id)
                assert info["known"] and "equivocated" in info["why"], info

            # and all of it is in the metrics
            after = await h.metrics()
            for b, a in zip(before, after, strict=True):
                assert _delta(b, a, "pithnode_gossip_rejected_total", reason="invalid") \
                    >= len(forged)
            n1_rejected = sum(_delta(before[1], after[1], "pithnode_events_rejected_total",
                                     reason=r) for r in
                              ("event_id_mismatch", "bad_signature", "fingerprint_mismatch"))
            assert n1_rejected >= len(forged), n1_rejected
            assert _delta(before[0], after[0], "pithnode_events_ingested_total",
                          outcome="duplicate") >= 40
            assert _delta(before[2], after[2], "pithnode_events_rejected_total",
                          reason="out_of_scope") >= 1
            figures("forged", converge_s=took, status_s=max(latency), reasons=sorted(reasons))


async def _all_hold(h: Harness, events: Sequence[Event], nodes: Sequence[NodeProcess]
                    ) -> bool:
    for node in nodes:
        for ev in events:
            if not (await h.explain(node, ev.event_id))["known"]:
                return False
    return True


async def rpc_error(node: NodeProcess, method: str, params: dict[str, Any]) -> RpcError:
    """The RpcError a call must end in (the client's nursery wraps it in a group)."""
    try:
        await node.call(method, params)
    except ExceptionGroup as group:
        match, rest = group.split(RpcError)
        if match is None or rest is not None:
            raise
        leaf: BaseException = match
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, RpcError)
        return leaf
    raise AssertionError(f"{method} {params} succeeded")


def _delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


async def test_malformed_frames_and_lying_sync_partners(tmp_path: Path) -> None:
    valid = synth_events(KEYS, 120, seed=SEED, first_record=30)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with attacked_cluster(tmp_path) as h:
            adv = h.adversary
            before = await h.metrics()
            await h.submit(h.n0, valid[:60])

            # malformed and oversized gossip
            bad = adv.malformed_gossip()
            for data in bad.values():
                await adv.publish(data)

            # lying and malformed sync sessions the adversary opens
            await adv.sync_garbage_neg(PeerId(h.n0.peer_id))
            await adv.sync_oversized(PeerId(h.n0.peer_id))
            opened = [await adv.sync_stall(PeerId(h.n1.peer_id)) for _ in range(6)]
            stalled = [s for s in opened if s is not None]
            # while n1's sync slots are held, an honest sync it starts must still end
            t0 = trio.current_time()
            with trio.fail_after(SETTINGS.sync_timeout_s * 3 + 10):
                honest = (await h.n1.call("sync.trigger", {"peer": h.n0.peer_id}))["peers"][0]
            honest_s = trio.current_time() - t0

            # sync sessions the nodes open to the adversary, which lies in every way
            results: dict[str, dict[str, Any]] = {}
            adv.unasked_event = native(SigningKey(os.urandom(32)), valid[0].subject, t=99)
            for mode in ResponderMode:
                adv.responder_mode = mode
                with trio.fail_after(30):
                    result = await h.n0.call("sync.trigger", {"peer": str(adv.peer_id)})
                results[mode.value] = result["peers"][0]
            await h.submit(h.n1, valid[60:])
            latency = await h.assert_responsive("while streams stall")

            took = await h.wait_converged(valid, "valid events during the attack")
            for stream in stalled:
                await stream.reset()
            latency += await h.assert_responsive("after the attack")
            after = await h.metrics()

            assert all(not r["ok"] for r in results.values()), results
            assert await h.held_by(adv.unasked_event.event_id) == []
            n0_errors = {k[1][0][1]: a - before[0].get(k, 0.0) for k, a in after[0].items()
                         if k[0] == "pithnode_sync_errors_total"}
            for reason in ("MalformedMessage", "ProtocolError", "TooSlowError",
                           "FrameTooLarge"):
                assert n0_errors.get(reason, 0) >= 1, (reason, n0_errors)
            assert _delta(before[1], after[1], "pithnode_sync_errors_total",
                          reason="TooSlowError") >= 1
            for b, a in zip(before, after, strict=True):
                assert _delta(b, a, "pithnode_gossip_rejected_total", reason="invalid") >= 5
            figures("frames", converge_s=took, status_s=max(latency),
                    stalls_accepted=len(stalled), stalls_refused=len(opened) - len(stalled),
                    honest_sync_during_stall=f"ok={honest['ok']} after {honest_s:.1f} s",
                    sync_errors_n0=n0_errors,
                    gossip_rejected=[_delta(b, a, "pithnode_gossip_rejected_total",
                                            reason="invalid")
                                     for b, a in zip(before, after, strict=True)])


async def test_flood_of_valid_events_from_many_keys(tmp_path: Path) -> None:
    valid = synth_events(KEYS, 100, seed=SEED, first_record=60)
    subjects = [adversary_subject(c, i) for i, c in enumerate("AZ")]
    many = flood(subjects, keys=300, per_key=10, seed=1)
    one_key = flood(subjects, keys=1, per_key=1000, seed=2)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with attacked_cluster(tmp_path) as h:
            adv = h.adversary
            await h.submit(h.n0, valid[:50])
            await h.wait_converged(valid[:50], "warm-up")
            before = await h.metrics()
            rss0 = [rss_kib(_pid(n)) for n in h.nodes]
            fds0 = [open_fds(_pid(n)) for n in h.nodes]

            latency: list[float] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(adv.gossip_events, many)
                nursery.start_soon(h.submit, h.n1, valid[50:])
                for _ in range(10):
                    latency += await h.assert_responsive("during the flood")
                    await trio.sleep(0.5)

            took = await h.wait_converged(valid, "valid events during the flood")
            # the many-key flood is valid: it is stored where it is in scope
            want = {n.name: sum(1 for e in many + valid if in_scope(n, e.subject))
                    for n in h.nodes}
            counts: dict[str, int] = {}

            async def flood_stored() -> bool:
                for node in h.nodes:
                    counts[node.name] = await node.events_count()
                return all(counts[n.name] >= want[n.name] for n in h.nodes)

            await wait_until(flood_stored, CONVERGE_TIMEOUT_S, what="flood stored",
                             describe=lambda: f"{counts} of {want}")

            # then one key floods in messages of 500 events: more than a signer's burst (400
            # tokens at the default 200/s), so every node rate-limits them however slowly
            # the machine delivers them (after its first rejections, GossipSub's scoring
            # ignores this peer, which is why the valid flood above went first)
            await adv.gossip_events(one_key, batch=500)
            limited: list[float] = []

            async def rate_limited_everywhere() -> bool:
                now = await h.metrics()
                limited[:] = [_delta(b, a, "pithnode_gossip_rejected_total",
                                     reason="rate_limited")
                              for b, a in zip(before, now, strict=True)]
                return all(n >= 1 for n in limited)

            await wait_until(rate_limited_everywhere, CONVERGE_TIMEOUT_S, interval=0.5,
                             what="the one-key flood rate-limited on every node",
                             describe=lambda: str(limited))
            latency += await h.assert_responsive("after the flood")
            rss1 = [rss_kib(_pid(n)) for n in h.nodes]
            fds1 = [open_fds(_pid(n)) for n in h.nodes]
            growth = [b - a for a, b in zip(rss0, rss1, strict=True)]
            figures("flood", converge_s=took, status_max_s=max(latency), rss0_kib=rss0,
                    rss1_kib=rss1, fds0=fds0, fds1=fds1, rate_limited=limited)
            assert max(growth) <= RSS_GROWTH_BOUND_KIB, growth
            assert [await n.events_count() for n in h.nodes] == [want[n.name] for n in h.nodes], \
                "a rate-limited event was stored"
            assert all(b - a < 50 for a, b in zip(fds0, fds1, strict=True)), (fds0, fds1)


def _pid(node: NodeProcess) -> int:
    assert node.proc is not None
    return int(node.proc.pid)
