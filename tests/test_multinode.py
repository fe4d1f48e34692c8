"""Real libp2p nodes in separate processes on 127.0.0.1: gossip, sync, crash, partition.

Every node is a ``pithnode run`` subprocess (see ``tests/cluster.py``) holding the synthetic
corpus's network spec, so synthetic events are admissible. Events go in through the query
socket (``events.submit``); the reference for every record's state is the local merge
(:func:`pithnode.protocol.merge.merge`) of exactly the events submitted, so "converged"
means: every node stores every event and serves, for every record, that state_sha256.

The time each phase took is printed (shown with ``pytest -s``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from pithnode.node.synth import SynthKeys, synth_keys
from pithnode.protocol.events import Event

from .cluster import CLI, Cluster, NodeProcess, expected_states, synth_events, wait_until

pytestmark = pytest.mark.slow

SEED = 11
#: Backstop for a whole test; every wait inside has its own, tighter bound.
TEST_TIMEOUT_S = 150.0
CONNECT_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def keys() -> SynthKeys:
    return synth_keys(SEED)


@pytest.fixture
async def cluster(tmp_path: Path, keys: SynthKeys) -> AsyncIterator[Cluster]:
    async with Cluster(tmp_path, keys) as c:
        yield c


def figures(test: str, **values: object) -> None:
    print(f"[{test}] " + ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))


async def assert_converged(cluster: Cluster, nodes: list[NodeProcess], events: list[Event],
                           what: str) -> float:
    """Every node holds exactly ``events`` and serves the locally merged state of every
    record; the seconds the event counts took to get there."""
    took = await cluster.wait_events(nodes, len(events), CONVERGE_TIMEOUT_S, what=what)
    expected = expected_states(events, cluster.spec)
    assert await cluster.state_mismatches(nodes, expected) == []
    return took


async def fsck(node: NodeProcess) -> tuple[int, str]:
    result = await trio.run_process(
        [*CLI, "fsck", "--data-dir", str(node.data_dir)], capture_stdout=True,
        capture_stderr=True, check=False)
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


async def test_five_nodes_in_a_line_converge_on_1000_events(cluster: Cluster,
                                                            keys: SynthKeys) -> None:
    """n0 - n1 - n2 - n3 - n4; 1,000 events submitted at the end n0 reach n4 four hops
    away, and every record's state is identical on every node."""
    events = synth_events(keys, 1000, seed=SEED)
    with trio.fail_after(TEST_TIMEOUT_S):
        nodes: list[NodeProcess] = []
        t0 = trio.current_time()
        for i in range(5):
            node = cluster.add(f"n{i}", bootstrap=nodes[-1:])
            await cluster.start(node)
            nodes.append(node)
        started = trio.current_time() - t0
        connected = await cluster.wait_connected(
            {n: (1 if i in (0, 4) else 2) for i, n in enumerate(nodes)}, CONNECT_TIMEOUT_S)

        t1 = trio.current_time()
        assert await nodes[0].submit(events, batch=100) == {
            "new": 1000, "duplicate": 0, "rejected": 0}
        submitted = trio.current_time() - t1
        await assert_converged(cluster, nodes, events, "all five nodes")
        converged = trio.current_time() - t1

        statuses = [await n.status() for n in nodes]
        codes = await cluster.stop()
    figures("line5", start_s=started, connect_s=connected, submit_s=submitted,
            converge_s=converged, records=len(expected_states(events, cluster.spec)),
            by_gossip=[s["gossip"]["events_new"] for s in statuses],
            by_sync=[s["sync"]["fetched"] for s in statuses])
    assert codes == {n.name: 0 for n in nodes}, "every node stops cleanly on SIGTERM"


async def test_late_node_catches_up_through_sync_alone(cluster: Cluster,
                                                       keys: SynthKeys) -> None:
    """1,000 events are gossiped a -> b; then late starts (bootstrap b), sees none of that
    gossip and fetches everything by reconciliation.

    py-libp2p replays its recent-message cache (about three heartbeats) to every new peer,
    so a node joining right after the traffic would get part of it by gossip. To let the
    late node see no gossip at all, the publisher a is stopped and b restarted (its cache
    is then empty; its store is not) before the late node starts.
    """
    events = synth_events(keys, 1000, seed=SEED)
    with trio.fail_after(TEST_TIMEOUT_S):
        a = cluster.add("a")
        await cluster.start(a)
        b = cluster.add("b", bootstrap=[a])
        await cluster.start(b)
        await cluster.wait_connected({a: 1, b: 1}, CONNECT_TIMEOUT_S)
        await a.submit(events)
        gossiped = await assert_converged(cluster, [a, b], events, "a and b")
        b_gossip = (await b.status())["gossip"]["events_new"]
        assert await cluster.stop(a, b) == {"a": 0, "b": 0}
        await cluster.start(b)

        late = cluster.add("late", bootstrap=[b])
        t0 = trio.current_time()
        await cluster.start(late)
        caught_up = await assert_converged(cluster, [b, late], events, "late node")
        total = trio.current_time() - t0

        status = await late.status()
        recent = (await late.call("events.recent", {"limit": 1000}))["events"]
    figures("late", gossip_a_to_b_s=gossiped, b_by_gossip=b_gossip,
            catch_up_after_ready_s=caught_up, start_and_catch_up_s=total,
            sync_rounds=status["sync"]["rounds"], gossip_in=status["gossip"]["events_in"])
    assert b_gossip > 0, "b got (some of) the events by gossip"
    assert status["gossip"]["events_in"] == 0, "nothing reached the late node by gossip"
    assert len(recent) == 1000
    assert all(e["source"].startswith("sync:") for e in recent), \
        {e["source"].split(":")[0] for e in recent}


async def test_killed_node_restarts_on_its_port_and_catches_up(cluster: Cluster,
                                                               keys: SynthKeys) -> None:
    """a - b - c; b is SIGKILLed while events stream in at a, restarted with the same data
    directory and port; all three converge and b's store passes fsck."""
    events = synth_events(keys, 600, seed=SEED)
    batch = 50
    with trio.fail_after(TEST_TIMEOUT_S):
        a = cluster.add("a")
        await cluster.start(a)
        b = cluster.add("b", bootstrap=[a])
        await cluster.start(b)
        c = cluster.add("c", bootstrap=[b])
        await cluster.start(c)
        await cluster.wait_connected({a: 1, b: 2, c: 1}, CONNECT_TIMEOUT_S)
        port, peer_id = b.port, b.peer_id

        killed = trio.Event()
        at_kill: list[int] = []

        async def feed() -> None:
            for i in range(0, len(events), batch):
                if i >= len(events) // 2:
                    await killed.wait()  # the second half arrives while b is down
                await a.submit(events[i:i + batch])

        async def kill_mid_traffic() -> None:
            async def b_is_receiving() -> bool:
                return await b.events_count() >= 2 * batch

            await wait_until(b_is_receiving, CONVERGE_TIMEOUT_S, what="b receiving traffic",
                             interval=0.01)
            await b.kill()
            at_kill.append(await a.events_count())
            killed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            nursery.start_soon(kill_mid_traffic)
        assert 0 < at_kill[0] < len(events)

        t0 = trio.current_time()
        await b.start()
        assert (b.port, b.peer_id) == (port, peer_id), "same port, same identity"
        caught_up = await assert_converged(cluster, [a, b, c], events, "after the restart")
        total = trio.current_time() - t0
        codes = await cluster.stop()
        checks = [await fsck(n) for n in (a, b, c)]
    figures("crash", events_at_a_when_killed=at_kill[0], starts_of_b=b.starts,
            converge_after_ready_s=caught_up, restart_and_converge_s=total)
    assert codes == {"a": 0, "b": 0, "c": 0}
    for node, (rc, out) in zip((a, b, c), checks, strict=True):
        assert rc == 0 and "clean" in out, f"fsck of {node.name}: rc={rc}\n{out}"


async def test_partition_through_a_bridge_heals_to_the_union(cluster: Cluster,
                                                             keys: SynthKeys) -> None:
    """{a, b} and {c, d} are joined only through e. With e dead, each side gets different
    events (of the same records); after e restarts, all five hold the union."""
    events = synth_events(keys, 400, seed=SEED)
    side1, side2 = events[0::2], events[1::2]
    with trio.fail_after(TEST_TIMEOUT_S):
        a, c = cluster.add("a"), cluster.add("c")
        await cluster.start(a, c)
        b, d = cluster.add("b", bootstrap=[a]), cluster.add("d", bootstrap=[c])
        e = cluster.add("e", bootstrap=[a, c])
        await cluster.start(b, d, e)
        await cluster.wait_connected({a: 2, b: 1, c: 2, d: 1, e: 2}, CONNECT_TIMEOUT_S)

        await e.kill()
        await cluster.wait_connected({a: 1, c: 1}, CONNECT_TIMEOUT_S)
        await a.submit(side1)
        await c.submit(side2)
        await assert_converged(cluster, [a, b], side1, "side 1 during the cut")
        await assert_converged(cluster, [c, d], side2, "side 2 during the cut")

        t0 = trio.current_time()
        await e.start()
        healed = await assert_converged(cluster, [a, b, c, d, e], events, "after healing")
        total = trio.current_time() - t0
        codes = await cluster.stop()
    figures("partition", side_events=(len(side1), len(side2)),
            records=len(expected_states(events, cluster.spec)),
            converge_after_bridge_ready_s=healed, restart_and_converge_s=total)
    assert codes == {n: 0 for n in "abcde"}
