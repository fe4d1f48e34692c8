"""Soak: 5 node processes under steady traffic, with a random node SIGKILLed and restarted.

    python bench/soak.py [--minutes 15] [--warmup 300] [--rate 20] [--kill-every 60] [--json FILE]

Five ``pithnode run`` processes on 127.0.0.1 (``tests/cluster.py``), fully meshed. Valid
synthetic events are submitted at ``--rate`` events per second (batches every 0.5 s) to a
random running node; every ``--kill-every`` seconds a random node of the kill pool (every
node but n0, so that one process lives through the whole run) is SIGKILLed and restarted
``--down`` seconds later on the same port.

Measured, and printed every minute and at the end:

* delivery: acknowledged events present on all 5 nodes / acknowledged events. Live figures
  come from the nodes' notifications (``subscribe``); the final figure is exact: every
  node's ``record.events`` of every record, after a settle phase of at most ``--settle`` s.
* convergence lag: from the submit to the event's arrival on the last of the 5 nodes (the
  ``received_at`` of each node's notification; same machine, same clock), p50 and p99.
  Events a node took in while it was restarting (no subscription) have no lag figure.
* RSS (``/proc/<pid>/status``) and open file descriptors (``/proc/<pid>/fd``) per node,
  sampled every 10 s; for every process that lived past the warm-up, whether its RSS stayed
  within 10% of its value at the end of the warm-up.

The warm-up (``--warmup``, 5 minutes from each process's start) is the time the node's
bounded caches take to fill at 20 events/s: the writer's decoded events of recent records
(4,000), the merge memo (1,024 entries), SQLite's page caches, GossipSub's message cache and
pubsub's validation cache (1,000). Measured on 2 cores (n0, never killed): RSS rises from
about 108 MiB at minute 1 to about 135 MiB at minute 5, then by a few MiB to 143-148 MiB at
minute 15; judged from minute 2, the caches filling looked like a leak (+24%).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's tests/ and bench/
    sys.path.insert(0, str(ROOT))

from bench.adversary import open_fds, rss_kib  # noqa: E402
from pithnode.node.query_socket import QuerySocketError, open_query_client  # noqa: E402
from pithnode.node.synth import SynthConfig, generate, synth_keys  # noqa: E402
from pithnode.protocol.events import Event  # noqa: E402
from tests.cluster import Cluster, NodeProcess, NodeSettings  # noqa: E402

NODES = 5
SAMPLE_S = 10.0
REPORT_S = 60.0
RSS_TOLERANCE = 0.10
#: Seconds of life after warm-up a process needs before its RSS growth is judged.
MIN_JUDGED_S = 120.0


@dataclass
class Sample:
    t: float
    node: str
    pid: int
    rss_kib: int
    fds: int


@dataclass
class Incarnation:
    """One process of one node: its RSS over its life."""

    node: str
    pid: int
    started: float
    samples: list[tuple[float, int]] = field(default_factory=list)

    def stability(self, warmup: float) -> dict[str, Any] | None:
        late = [(t, r) for t, r in self.samples if t - self.started >= warmup]
        if len(late) < 2 or late[-1][0] - late[0][0] < MIN_JUDGED_S:
            return None  # too short a life after warm-up to say anything about growth
        base = late[0][1]
        peak = max(r for _, r in late)
        return {"node": self.node, "pid": self.pid, "lived_s": round(late[-1][0] - self.started),
                "rss_warm_mib": round(base / 1024, 1), "rss_max_mib": round(peak / 1024, 1),
                "rss_last_mib": round(late[-1][1] / 1024, 1),
                "growth": round(peak / base - 1, 3), "within_10pct": peak <= base * (1 +
                                                                                 RSS_TOLERANCE)}


class Soak:
    def __init__(self, cluster: Cluster, nodes: Sequence[NodeProcess], args: argparse.Namespace
                 ) -> None:
        self.cluster = cluster
        self.nodes = list(nodes)
        self.args = args
        self.rng = random.Random(args.seed)
        self.began = time.time()
        self.events = self._events()
        self.submitted: dict[str, float] = {}  # acknowledged event id -> submit time
        self.subjects: set[str] = set()
        self.submit_failures = 0
        self.seen: dict[str, dict[str, float]] = {n.name: {} for n in nodes}
        self.dropped_notes = 0
        self.kills: list[dict[str, Any]] = []
        self.samples: list[Sample] = []
        self.incarnations: dict[int, Incarnation] = {}
        self.reports: list[dict[str, Any]] = []
        self.up = {n.name: trio.Event() for n in nodes}
        for n in nodes:
            self.up[n.name].set()

    def _events(self) -> Iterator[Event]:
        cfg = SynthConfig(seed=self.args.seed)
        for rec in generate(self.cluster.keys, 10**9, cfg):
            yield from rec.events

    # -- traffic
    async def traffic(self) -> None:
        per_batch = max(1, round(self.args.rate / 2))
        while True:
            batch = [next(self.events) for _ in range(per_batch)]
            running = [n for n in self.nodes if n.running]
            if running:
                await self._submit(self.rng.choice(running), batch)
            await trio.sleep(0.5)

    async def _submit(self, node: NodeProcess, batch: list[Event]) -> None:
        t = time.time()
        try:
            with trio.fail_after(30):
                result = await node.call("events.submit",
                                         {"events": [e.to_json() for e in batch]})
        except (QuerySocketError, OSError, trio.TooSlowError, ExceptionGroup):
            self.submit_failures += 1  # killed under our feet: these are not acknowledged
            return
        for o in result["outcomes"]:
            if o["outcome"] in ("new", "duplicate"):
                self.submitted[o["event_id"]] = t
        self.subjects.update(e.subject for e in batch)

    # -- notifications
    async def watch(self, node: NodeProcess) -> None:
        """Follow a node's notifications across its restarts."""
        seen = self.seen[node.name]
        while True:
            await self.up[node.name].wait()
            try:
                async with open_query_client(node.socket_path) as client:
                    await client.call("subscribe")
                    async for params in client.notifications:
                        self.dropped_notes += int(params.get("dropped", 0))
                        note = params.get("notification") or {}
                        if note.get("kind") == "event":
                            seen.setdefault(note["event_id"], float(note["received_at"]))
            except (QuerySocketError, OSError, ExceptionGroup):
                pass  # killed: wait for the restart
            if node.running:  # the connection closed on a live node: resubscribe soon
                await trio.sleep(0.5)

    # -- chaos
    async def chaos(self) -> None:
        pool = self.nodes[1:]
        while True:
            await trio.sleep(self.args.kill_every)
            victim = self.rng.choice(pool)
            self.up[victim.name] = trio.Event()
            t0 = time.time()
            await victim.kill()
            await trio.sleep(self.args.down)
            await victim.start()
            self.up[victim.name].set()
            self.kills.append({"node": victim.name, "at_s": round(t0 - self.began, 1),
                               "restart_s": round(time.time() - t0 - self.args.down, 2)})
            self.incarnation(victim)

    def incarnation(self, node: NodeProcess) -> Incarnation:
        assert node.proc is not None
        pid = int(node.proc.pid)
        if pid not in self.incarnations:
            self.incarnations[pid] = Incarnation(node.name, pid, time.time())
        return self.incarnations[pid]

    # -- measurement
    async def sampler(self) -> None:
        next_report = self.began + REPORT_S
        while True:
            now = time.time()
            for node in self.nodes:
                if not node.running:
                    continue
                inc = self.incarnation(node)
                try:
                    rss, fds = rss_kib(inc.pid), open_fds(inc.pid)
                except (OSError, RuntimeError):
                    continue
                inc.samples.append((now, rss))
                self.samples.append(Sample(round(now - self.began, 1), node.name, inc.pid, rss,
                                           fds))
            if now >= next_report:
                await self.report(f"minute {round((now - self.began) / 60)}")
                next_report += REPORT_S
            await trio.sleep(SAMPLE_S)

    def lags(self) -> tuple[list[float], int]:
        """Lags of events seen on every node, and how many acknowledged ones were not."""
        out, partial = [], 0
        for eid, t in self.submitted.items():
            times = [self.seen[n.name].get(eid) for n in self.nodes]
            if all(x is not None for x in times):
                out.append(max(x for x in times if x is not None) - t)
            else:
                partial += 1
        return out, partial

    async def report(self, label: str, *, exact: dict[str, Any] | None = None) -> None:
        lags, partial = self.lags()
        counts: dict[str, int | None] = {}
        for node in self.nodes:
            try:
                with trio.fail_after(10):
                    counts[node.name] = int((await node.status())["events"]) \
                        if node.running else None
            except (QuerySocketError, OSError, trio.TooSlowError, ExceptionGroup):
                counts[node.name] = None
        latest = {}
        for s in self.samples:
            latest[s.node] = s
        n = len(self.submitted)
        row = {
            "label": label, "t_s": round(time.time() - self.began),
            "acknowledged": n, "submit_failures": self.submit_failures,
            "seen_on_all": len(lags), "not_yet_seen_on_all": partial,
            "delivery_live": round(len(lags) / n, 4) if n else None,
            "lag_p50_s": _pct(lags, 50), "lag_p99_s": _pct(lags, 99), "lag_max_s": _pct(lags, 100),
            "kills": len(self.kills), "notifications_dropped": self.dropped_notes,
            "nodes": {name: {"events": counts[name],
                             "pid": latest[name].pid if name in latest else None,
                             "rss_mib": round(latest[name].rss_kib / 1024, 1)
                             if name in latest else None,
                             "fds": latest[name].fds if name in latest else None}
                      for name in counts},
        }
        if exact is not None:
            row.update(exact)
        self.reports.append(row)
        _print_report(row)

    async def exact_delivery(self) -> dict[str, Any]:
        """Every node's stored ids of every record we submitted to: missing per node."""
        missing: dict[str, int] = {}
        for node in self.nodes:
            have: set[str] = set()
            async with open_query_client(node.socket_path) as client:
                for subject in sorted(self.subjects):
                    try:
                        result = await client.call("record.events", {"id": subject})
                    except QuerySocketError:
                        continue
                    have.update(e["event_id"] for e in result["events"])
            missing[node.name] = sum(1 for eid in self.submitted if eid not in have)
            if missing[node.name] and self.args.verbose:
                print(f"  {node.name} misses {missing[node.name]}", flush=True)
        n = len(self.submitted)
        on_all = n - max(missing.values()) if missing else 0
        return {"missing_per_node": missing, "delivery_exact_lower_bound":
                round(on_all / n, 4) if n else None}

    async def settle(self) -> dict[str, Any]:
        """After the traffic: wait (bounded) until every node has every acknowledged event."""
        deadline = trio.current_time() + self.args.settle
        exact = await self.exact_delivery()
        while any(exact["missing_per_node"].values()) and trio.current_time() < deadline:
            await trio.sleep(5)
            exact = await self.exact_delivery()
        exact["settle_s"] = round(self.args.settle - max(0.0, deadline - trio.current_time()),
                                  1)
        return exact

    def rss_summary(self) -> list[dict[str, Any]]:
        out = []
        for inc in self.incarnations.values():
            st = inc.stability(self.args.warmup)
            if st is not None:
                out.append(st)
        return sorted(out, key=lambda s: (s["node"], s["pid"]))


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    if p >= 100:
        return round(max(values), 3)
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[p - 1], 3)


def _print_report(row: dict[str, Any]) -> None:
    live = row["delivery_live"]
    print(f"[{row['label']}] t={row['t_s']}s acknowledged={row['acknowledged']} "
          f"seen_on_all_5={row['seen_on_all']} ({'-' if live is None else f'{live:.1%}'}) "
          f"lag p50={row['lag_p50_s']}s p99={row['lag_p99_s']}s max={row['lag_max_s']}s "
          f"kills={row['kills']} submit_failures={row['submit_failures']} "
          f"notifications_dropped={row['notifications_dropped']}", flush=True)
    if "missing_per_node" in row:
        print(f"  exact: missing per node {row['missing_per_node']}, delivery "
              f"{row['delivery_exact_lower_bound']:.2%} after {row['settle_s']} s of settling",
              flush=True)
    for name, n in row["nodes"].items():
        print(f"  {name}: events={n['events']} pid={n['pid']} rss={n['rss_mib']} MiB "
              f"fds={n['fds']}", flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pithnode-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    keys = synth_keys(args.seed)
    settings = NodeSettings(sync_interval_s=5.0, sync_jitter_s=2.0, sync_timeout_s=10.0,
                            log_level="warning")
    print(f"soak: {NODES} nodes in {root}, {args.rate} events/s, a kill every "
          f"{args.kill_every} s, {args.minutes} min", flush=True)
    async with Cluster(root, keys, settings) as cluster:
        nodes: list[NodeProcess] = []
        for i in range(NODES):
            node = cluster.add(f"n{i}", bootstrap=list(nodes))
            await cluster.start(node)
            nodes.append(node)
        await cluster.wait_connected({n: NODES - 1 for n in nodes}, 120)
        soak = Soak(cluster, nodes, args)
        for n in nodes:
            soak.incarnation(n)
        async with trio.open_nursery() as nursery:
            for n in nodes:
                nursery.start_soon(soak.watch, n)
            nursery.start_soon(soak.sampler)
            nursery.start_soon(soak.traffic)
            nursery.start_soon(soak.chaos)
            await trio.sleep(args.minutes * 60)
            nursery.cancel_scope.cancel()
        for n in nodes:  # a restart may have been cut short by the end of the run
            if not n.running:
                await n.start()
        async with trio.open_nursery() as nursery:
            for n in nodes:
                soak.up[n.name].set()
                nursery.start_soon(soak.watch, n)
            exact = await soak.settle()
            nursery.cancel_scope.cancel()
        await soak.report("end", exact=exact)
        rss = soak.rss_summary()
        print("RSS after warm-up (per process that outlived it):", flush=True)
        for st in rss:
            print(f"  {st['node']} pid {st['pid']}: lived {st['lived_s']} s, "
                  f"{st['rss_warm_mib']} -> max {st['rss_max_mib']} MiB "
                  f"({st['growth']:+.1%}) {'within' if st['within_10pct'] else 'OUTSIDE'} 10%",
                  flush=True)
        return {"args": vars(args), "root": str(root), "reports": soak.reports,
                "kills": soak.kills, "rss_stability": rss,
                "samples": [asdict(s) for s in soak.samples]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0]
                                if __doc__ else None)
    p.add_argument("--minutes", type=float, default=15.0,
                   help="minutes of traffic (default 15: the warm-up, then 10 judged)")
    p.add_argument("--rate", type=float, default=20.0, help="events per second")
    p.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    p.add_argument("--down", type=float, default=5.0, help="seconds a killed node stays down")
    p.add_argument("--warmup", type=float, default=300.0,
                   help="seconds after a start before RSS must hold steady (the bounded "
                        "caches fill meanwhile; a process must then live another "
                        f"{MIN_JUDGED_S:.0f} s to be judged)")
    p.add_argument("--settle", type=float, default=120.0,
                   help="seconds allowed after the traffic for every node to catch up")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", help="where the data directories go (default: a new temp dir)")
    p.add_argument("--json", metavar="FILE", help="write every figure and sample here")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    result = trio.run(run, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), "utf-8")
    end = result["reports"][-1]
    ok = end.get("delivery_exact_lower_bound") == 1.0 and all(
        s["within_10pct"] for s in result["rss_stability"])
    print("soak:", "PASS" if ok else "FAIL (see above)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
