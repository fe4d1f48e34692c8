"""Gossip benchmark: a sustained stream of events into one of five node processes.

Five ``pithnode run`` processes on 127.0.0.1 (default: a full mesh, each node dialling every
node started before it). After a warm-up batch has reached every node, events are
submitted to node 0 through its query socket (``events.submit``) in batches, paced to an
offered rate (default 1,000 events/s for 20 s). Every node's socket is subscribed; each
``event`` notification carries the node's own ``received_at`` (wall clock, taken once the
event is committed), so the latency of an event at a node is ``received_at`` minus the wall
time its batch was submitted (one machine, one clock).

Figures: the rate delivered to all nodes (events / seconds from the first submit until the
last node stored the last event; target >= 1,000/s at 100% delivery), the delivery ratio,
p50/p99 latency from submit to arrival over every (event, receiving node) pair (target p99
<= 1 s), and how many arrivals came by gossip rather than by the periodic sync.

Usage: python bench/gossip.py [--rate N] [--seconds S] [--batch N] [--nodes N]
                              [--topology mesh|star|line] [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the cluster harness lives in tests/
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from bench.common import figure, machine, show, synth_events  # noqa: E402
from pithnode.node.query_socket import QueryClient, open_query_client  # noqa: E402
from pithnode.node.synth import synth_keys  # noqa: E402
from tests.cluster import Cluster, NodeProcess, NodeSettings  # noqa: E402

SEED = 9
WARMUP_EVENTS = 50


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---------------------------------------------------------------------------- corpus


def make_corpus(events: int) -> list[dict[str, Any]]:
    """``events`` events in wire form (whole records in order, the last one cut)."""
    return [json.loads(x) for x in synth_events(SEED, events, step=300)]


# ---------------------------------------------------------------------------- observing


@dataclass(slots=True)
class Arrivals:
    """What one node's subscription saw: event id -> (received_at, source)."""

    name: str
    seen: dict[str, tuple[float, str]] = field(default_factory=dict)
    dropped: int = 0


async def watch(client: QueryClient, arrivals: Arrivals) -> None:
    async for params in client.notifications:
        arrivals.dropped += int(params.get("dropped", 0))
        note = params.get("notification", {})
        if note.get("kind") == "event":
            arrivals.seen.setdefault(note["event_id"], (float(note["received_at"]),
                                                        str(note["source"])))


async def subscribe_all(nodes: list[NodeProcess], nursery: trio.Nursery,
                        arrivals: dict[str, Arrivals]) -> None:
    async def one(node: NodeProcess, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_query_client(node.socket_path,
                                     max_queued_notifications=1_000_000) as client:
            await client.call("subscribe")
            task_status.started()
            await watch(client, arrivals[node.name])

    for node in nodes:
        await nursery.start(one, node)


# ---------------------------------------------------------------------------- the run


async def start_nodes(cluster: Cluster, count: int, topology: str) -> list[NodeProcess]:
    nodes: list[NodeProcess] = []
    if topology == "star":
        hub = cluster.add("n0")
        await cluster.start(hub)
        leaves = [cluster.add(f"n{i}", bootstrap=[hub]) for i in range(1, count)]
        await cluster.start(*leaves)
        return [hub, *leaves]
    for i in range(count):
        boot = nodes[-1:] if topology == "line" else list(nodes)
        node = cluster.add(f"n{i}", bootstrap=boot)
        await cluster.start(node)
        nodes.append(node)
    return nodes


def expected_peers(count: int, topology: str) -> list[int]:
    if topology == "mesh":
        return [count - 1] * count
    if topology == "star":
        return [count - 1] + [1] * (count - 1)
    return [1] + [2] * (count - 2) + [1]


async def run(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]],
                                                              dict[str, Any]]:
    total = int(args.rate * args.seconds)
    total -= total % args.batch
    t0 = time.perf_counter()
    corpus = make_corpus(WARMUP_EVENTS + total)
    warmup, events = corpus[:WARMUP_EVENTS], corpus[WARMUP_EVENTS:]
    print(f"corpus: {len(events):,} events + {WARMUP_EVENTS} warm-up "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    settings = NodeSettings(sync_interval_s=args.sync_interval, sync_jitter_s=5.0,
                            gossip_flush_s=args.flush, redial_min_s=0.5, redial_max_s=5.0,
                            rate_per_signer=args.rate_per_signer)
    keys = synth_keys(SEED)
    async with Cluster(work / "nodes", keys, settings) as cluster, \
            trio.open_nursery() as nursery:
        nodes = await start_nodes(cluster, args.nodes, args.topology)
        await cluster.wait_connected(dict(zip(nodes, expected_peers(args.nodes, args.topology),
                                              strict=True)), 60)
        arrivals = {n.name: Arrivals(n.name) for n in nodes}
        await subscribe_all(nodes, nursery, arrivals)

        async with open_query_client(nodes[0].socket_path) as client:
            await client.call("events.submit", {"events": warmup})
            warm = await cluster.wait_events(nodes, WARMUP_EVENTS, 60, what="warm-up")
            print(f"warm-up reached all {args.nodes} nodes in {warm:.2f} s", flush=True)

            submitted_at: dict[str, float] = {}
            cpu0 = sum(n.cpu_seconds() or 0.0 for n in nodes)
            interval = args.batch / args.rate
            start_wall = time.time()
            start = trio.current_time()
            for k in range(0, len(events), args.batch):
                await trio.sleep_until(start + (k // args.batch) * interval)
                part = events[k:k + args.batch]
                at = time.time()
                result = await client.call("events.submit", {"events": part})
                if result["new"] != len(part):
                    raise SystemExit(f"node 0 did not take every event: {result}")
                for e in part:
                    submitted_at[e["event_id"]] = at
            submit_s = trio.current_time() - start
        print(f"submitted {len(events):,} events in {submit_s:.2f} s "
              f"({len(events) / submit_s:,.0f}/s offered {args.rate:,.0f}/s)", flush=True)

        want = WARMUP_EVENTS + len(events)
        try:
            drain = await cluster.wait_events(nodes, want, args.drain, what="delivery")
        except AssertionError as exc:
            print(f"not every event arrived: {exc}", flush=True)
            drain = math.nan
        cpu1 = sum(n.cpu_seconds() or 0.0 for n in nodes)
        counts = {n.name: await n.events_count() for n in nodes}
        statuses = {n.name: await n.status() for n in nodes}
        # the last notifications may still be on their way over the sockets
        with trio.move_on_after(2):
            while any(len([e for e in submitted_at if e in arrivals[n.name].seen])
                      < counts[n.name] - WARMUP_EVENTS for n in nodes[1:]):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
        await cluster.stop()

    receivers = [n.name for n in nodes[1:]]
    latencies: list[float] = []
    by_gossip = by_sync = 0
    last_arrival = 0.0
    for name in receivers:
        seen = arrivals[name].seen
        for eid, at in submitted_at.items():
            if eid in seen:
                received, source = seen[eid]
                latencies.append(received - at)
                last_arrival = max(last_arrival, received)
                by_gossip += source.startswith("gossip:")
                by_sync += source.startswith("sync:")
    delivered_all = sum(1 for eid in submitted_at
                        if all(eid in arrivals[name].seen for name in receivers))
    stored_all = min(counts.values()) - WARMUP_EVENTS
    delivery = stored_all / len(events)
    span = last_arrival - start_wall
    rate_all = stored_all / span if span > 0 else math.nan
    dropped = sum(a.dropped for a in arrivals.values())
    details = {"counts": counts, "dropped_notifications": dropped,
               "samples": len(latencies), "delivered_all_seen": delivered_all,
               "gossip": {k: v["gossip"] for k, v in statuses.items()},
               "sync": {k: {x: v["sync"][x] for x in ("rounds", "fetched", "pushed",
                                                        "errors")}
                        for k, v in statuses.items()}}
    print(f"per node: {json.dumps(details)}", flush=True)
    figures = [
        figure("offered rate", round(args.rate), "events/s",
               peer=f"{len(events)} events in batches of {args.batch}"),
        figure("submit rate achieved at node 0", round(len(events) / submit_s), "events/s"),
        figure("delivered to all nodes", round(rate_all) if not math.isnan(rate_all) else 0,
               "events/s", target=">= 1000",
               peer=f"{stored_all} events in {span:.2f} s from the first submit"),
        figure("delivery to all nodes", round(100 * delivery, 2), "%", target=">= 100"),
        figure("latency submit -> arrival p50", round(percentile(latencies, 0.50), 4), "s"),
        figure("latency submit -> arrival p99", round(percentile(latencies, 0.99), 4), "s",
               target="<= 1"),
        figure("latency submit -> arrival max", round(max(latencies, default=math.nan), 4),
               "s"),
        figure("arrivals by gossip", by_gossip, "events",
               peer=f"by sync {by_sync}; {len(latencies)} (event, node) samples, "
                    f"{dropped} notifications dropped"),
        figure("CPU of all nodes per event", round(1000 * (cpu1 - cpu0) / len(events), 3),
               "ms", peer=f"{cpu1 - cpu0:.1f} s over {args.nodes} nodes, submit to drain"),
        figure("drain after the last submit", round(drain, 2) if not math.isnan(drain)
               else "timed out", "s"),
        figure("CPU ceiling of this machine for the cluster",
               round((os.cpu_count() or 1) * len(events) / (cpu1 - cpu0))
               if cpu1 > cpu0 else 0, "events/s",
               peer=f"{os.cpu_count()} cores / CPU per event; every node stores every event"),
    ]
    return figures, details


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="offered events/s (1000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="injection time (20 s)")
    ap.add_argument("--batch", type=int, default=100, help="events per submit (100)")
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--topology", choices=("mesh", "star", "line"), default="mesh")
    ap.add_argument("--flush", type=float, default=0.05, help="[gossip] flush_interval_s")
    ap.add_argument("--rate-per-signer", type=float, default=200.0,
                    help="[gossip] rate_per_signer (the daemon's default 200)")
    ap.add_argument("--sync-interval", type=float, default=30.0,
                    help="[sync] interval_s (30, the daemon's default)")
    ap.add_argument("--drain", type=float, default=60.0,
                    help="seconds to wait for delivery after the last submit")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--work", metavar="DIR", help="keep the nodes and logs here")
    args = ap.parse_args()
    if args.nodes < 2:
        raise SystemExit("--nodes must be at least 2")
    info = machine()
    print(f"machine: nproc={info['nproc']}, cpu={info['cpu']!r}, python {info['python']}, "
          f"load average {info['loadavg']}", flush=True)
    if args.work:
        work = Path(args.work)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        figures, details = trio.run(run, args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="pithnode-bench-gossip-") as tmp:
            figures, details = trio.run(run, args, Path(tmp))
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\n==== gossip benchmark: summary ====")
    print(f"machine: nproc {info['nproc']}, {info['cpu']}, load average {info['loadavg']} "
          f"at start, {info['loadavg_end']} at end; {args.nodes} nodes, {args.topology}")
    for f in figures:
        print(show(f))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"benchmark": "gossip", "machine": info, "params": vars(args),
             "details": details, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
