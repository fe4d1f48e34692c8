"""Sync benchmark: two real node processes on 127.0.0.1, and rsync as the yardstick.

Phase 1 (bulk): node A holds N synthetic events (default 100,000, imported with
``pithnode import`` from JSON Lines); node B starts empty with A as its bootstrap peer. The
figure is N divided by the seconds from B's ready line until B stores all N events
(target >= 8,000 events/s).

Phase 2 (1% divergence), twice: a fresh node B2 starts holding the same corpus minus 1% of
the events and reconciles with A -- once lacking a seeded random 1% (the hard case for range
reconciliation: the differences are spread over every range), once lacking the newest 1% by
created_at (a node that was offline while the last 1% of the traffic happened). Figures:
the time from B2's ready line until it holds every event, the Negentropy rounds and the
bytes of the ``neg`` frames (replayed in-process with ``protocol/negentropy.py`` over the
two stores' sync items: the daemon reports only totals over all frame types, printed
beside), and the same change brought by rsync to a tree of per-record bundle files over a
loopback rsync daemon (the destination holds the bundles of B2's store, so exactly the
records whose events are missing differ; unchanged files carry the source's mtime, so
rsync's quick check skips them). Each is run ``--repeats`` times (default 3) from copies of
the same starting point, and the medians are compared. Target: pithnode's time <= 0.5x
rsync's.

Usage: python bench/sync.py [--events N] [--missing FRACTION] [--missing-mode MODE]
                            [--repeats N] [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the cluster harness lives in tests/
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from bench.common import figure, machine, show, synth_events  # noqa: E402
from pithnode.node.synth import synth_keys  # noqa: E402
from pithnode.protocol.negentropy import Negentropy, VectorStorage  # noqa: E402
from pithnode.protocol.wire import encode_frame  # noqa: E402
from pithnode.storage.store import Store  # noqa: E402
from tests.cluster import CLI, Cluster, NodeProcess, NodeSettings, wait_until  # noqa: E402

SEED = 5
FRAME_SIZE_LIMIT = 60_000  # the daemon's default [sync] frame_size_limit


# ---------------------------------------------------------------------------- corpus


def write_jsonl(path: Path, lines: list[bytes]) -> None:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line + b"\n")


async def import_jsonl(data_dir: Path, jsonl: Path) -> float:
    """``pithnode import`` in a child process; its wall time."""
    t0 = time.perf_counter()
    await trio.run_process([*CLI, "import", str(jsonl), "--data-dir", str(data_dir),
                            "--progress", "none"], stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- negentropy


def sync_items(store_path: Path, spec: Any) -> list[tuple[int, bytes]]:
    with Store(store_path, spec, readonly=True) as store:
        return list(store.iter_sync_items())


def replay_negentropy(initiator: list[tuple[int, bytes]], responder: list[tuple[int, bytes]]
                      ) -> dict[str, int]:
    """The reconciliation of one session, exactly as node/sync.py drives it."""
    client = Negentropy(VectorStorage.from_items(initiator), FRAME_SIZE_LIMIT)
    server = Negentropy(VectorStorage.from_items(responder), FRAME_SIZE_LIMIT)
    rounds = out_bytes = in_bytes = 0
    have: list[bytes] = []
    need: list[bytes] = []
    msg: bytes | None = client.initiate()
    while msg is not None:
        rounds += 1
        out_bytes += len(encode_frame("neg", m=msg))
        reply = server.reconcile(msg)
        in_bytes += len(encode_frame("neg", m=reply))
        msg, h, n = client.reconcile_initiator(reply)
        have.extend(h)
        need.extend(n)
    return {"rounds": rounds, "neg_bytes_out": out_bytes, "neg_bytes_in": in_bytes,
            "need": len(set(need)), "have": len(set(have))}


# ---------------------------------------------------------------------------- rsync


def bundle_tree(store_path: Path, spec: Any, out: Path) -> dict[str, bytes]:
    """pith/{suffix}/bundle.json for every record of a store; their bytes by relative path."""
    files: dict[str, bytes] = {}
    with Store(store_path, spec, readonly=True) as store:
        for pith in store.records():
            data = store.bundle(pith)
            if data is None:
                continue
            rel = f"pith/{pith.rsplit(':', 1)[1]}/bundle.json"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
            files[rel] = data
    return files


def set_mtimes(src: Path, dst: Path, src_files: dict[str, bytes], dst_files: dict[str, bytes]
               ) -> int:
    """Unchanged files share the source's mtime (as after an earlier rsync); changed ones
    are older. The number of files that differ or are missing at the destination."""
    stamp = int(time.time()) - 86_400
    for rel in src_files:
        os.utime(src / rel, (stamp, stamp))
    differ = 0
    for rel, data in dst_files.items():
        same = src_files.get(rel) == data
        differ += not same
        os.utime(dst / rel, (stamp, stamp) if same else (stamp - 3600, stamp - 3600))
    return differ + sum(1 for rel in src_files if rel not in dst_files)


def start_rsync_daemon(module_path: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``rsync --daemon`` on 127.0.0.1; the port is picked at random and retried if taken
    (rsync cannot bind port 0 and report it)."""
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"use chroot = false\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
        f"log file = {work / 'rsyncd.log'}\n"
        f"[pith]\n  path = {module_path}\n  read only = true\n")
    rng = random.Random()
    for _ in range(20):
        port = rng.randint(20_000, 60_000)
        proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                 f"--port={port}", "--address=127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return proc, port
            except OSError:
                time.sleep(0.02)
        proc.kill()
        proc.wait()
    raise SystemExit("could not start an rsync daemon on 127.0.0.1")


def run_rsync(port: int, dst: Path) -> tuple[float, dict[str, str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(["rsync", "-a", "--delete", "--stats",
                           f"rsync://127.0.0.1:{port}/pith/", f"{dst}/"],
                          check=True, capture_output=True, text=True)
    took = time.perf_counter() - t0
    stats = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            stats[key.strip()] = value.strip()
    return took, stats


def trees_equal(a: Path, b: Path) -> bool:
    def walk(root: Path) -> Iterator[tuple[str, bytes]]:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                yield str(p.relative_to(root)), p.read_bytes()
    return list(walk(a)) == list(walk(b))


# ---------------------------------------------------------------------------- phases


async def wait_for_count(node: NodeProcess, count: int, timeout: float) -> float:
    """Seconds from the node's ready line until it committed its last new event.

    ``node.status`` is polled once a second (it counts rows of the store's indexes: a few
    ms of the node's time); the end time is not the poll's but the ``received_at`` of the
    newest event the node stored (``events.recent``).
    """
    async def done() -> bool:
        return await node.events_count() >= count

    await wait_until(done, timeout, what=f"{node.name} holding {count} events",
                     interval=1.0)
    newest = (await node.call("events.recent", {"limit": 1}))["events"]
    return float(newest[0]["received_at"]) - node.ready_wall


def held_back(lines: list[bytes], share: float, mode: str) -> set[int]:
    """Indexes of the events B2 lacks: a seeded random sample, or the newest by created_at
    (a node that was offline while the last ``share`` of the traffic happened)."""
    k = max(1, round(len(lines) * share))
    if mode == "random":
        return set(random.Random(SEED).sample(range(len(lines)), k))
    order = sorted(range(len(lines)), key=lambda i: (json.loads(lines[i])["created_at"], i))
    return set(order[-k:])


async def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    figures: list[dict[str, Any]] = []
    n = args.events
    keys = synth_keys(SEED)
    spec = keys.spec()
    t0 = time.perf_counter()
    lines = synth_events(SEED, n)
    write_jsonl(work / "all.jsonl", lines)
    modes = ("random", "newest") if args.missing_mode == "both" else (args.missing_mode,)
    missing = {mode: held_back(lines, args.missing, mode) for mode in modes}
    for mode in modes:
        write_jsonl(work / f"partial-{mode}.jsonl",
                    [x for i, x in enumerate(lines) if i not in missing[mode]])
    print(f"corpus: {n:,} events, {sum(map(len, lines)) / 1e6:.1f} MB canonical, "
          f"{len(missing[modes[0]]):,} held back for phase 2 ({time.perf_counter() - t0:.1f} s)",
          flush=True)
    timeout = max(120.0, n / 500)
    settings = NodeSettings(sync_interval_s=30.0, sync_jitter_s=10.0, gossip_flush_s=0.05,
                            redial_min_s=0.5, redial_max_s=5.0, sync_timeout_s=60.0)
    async with Cluster(work / "nodes", keys, settings) as cluster:
        a = cluster.add("a")
        took = await import_jsonl(a.data_dir, work / "all.jsonl")
        print(f"import into A: {took:.1f} s ({n / took:,.0f} events/s)", flush=True)
        figures.append(figure("import into A (pithnode import)", round(n / took), "events/s"))
        await cluster.start(a)

        # -- phase 1: B empty
        b = cluster.add("b", bootstrap=[a])
        started, took, (cpu_a, cpu_b) = await catch_up(cluster, a, b, n, timeout)
        rate = n / took
        sb, sa = await b.status(), await a.status()
        print(f"phase 1: B started in {started:.1f} s, then held {n:,} events after "
              f"{took:.1f} s: {rate:,.0f} events/s; B sync {sb['sync']}, A sync pushed "
              f"{sa['sync']['pushed']}", flush=True)
        figures.append(figure("bulk sync into an empty node", round(rate), "events/s",
                              target=">= 8000"))
        figures.append(figure("bulk sync time", round(took, 2), "s",
                              peer=f"{n} events, from B's ready line"))
        figures.append(figure("bulk sync CPU, receiving node B",
                              round(1000 * cpu_b / n, 3), "ms per event",
                              peer=f"sending node A {1000 * cpu_a / n:.3f}; B "
                                   f"used {cpu_b / took:.2f} cores on average"))
        await cluster.stop(b)

        src = work / "tree-src"
        src_files = bundle_tree(a.data_dir / "store.sqlite", spec, src)
        for mode in modes:
            figures += await phase2(cluster, a, mode, len(missing[mode]), work, spec, src,
                                    src_files, n, timeout, args.repeats)
        await cluster.stop()
    return figures


async def catch_up(cluster: Cluster, a: NodeProcess, node: NodeProcess, n: int,
                   timeout: float) -> tuple[float, float, tuple[float, float]]:
    """Start ``node`` and wait until it holds ``n`` events: seconds to its ready line,
    seconds from there, and the CPU seconds A and ``node`` used meanwhile."""
    t_launch = trio.current_time()
    await cluster.start(node)
    started = trio.current_time() - t_launch
    cpu0 = (a.cpu_seconds() or 0.0, node.cpu_seconds() or 0.0)
    took = await wait_for_count(node, n, timeout)
    return started, took, ((a.cpu_seconds() or 0.0) - cpu0[0],
                           (node.cpu_seconds() or 0.0) - cpu0[1])


async def phase2(cluster: Cluster, a: NodeProcess, mode: str, n_missing: int, work: Path,
                 spec: Any, src: Path, src_files: dict[str, bytes], n: int,
                 timeout: float, repeats: int) -> list[dict[str, Any]]:
    """Phase 2 for one way of choosing the missing events: B2 reconciles with A, and rsync
    brings the same change to a tree of bundle files; ``repeats`` runs of each, from copies
    of the same starting point, and their medians (single runs vary by a fifth here)."""
    label = f"1% reconciliation ({mode})"
    b2 = cluster.add(f"b2-{mode}", bootstrap=[a])
    took_import = await import_jsonl(b2.data_dir, work / f"partial-{mode}.jsonl")
    print(f"import into B2 ({mode}): {took_import:.1f} s", flush=True)
    dst = work / f"tree-dst-{mode}"
    dst_files = bundle_tree(b2.data_dir / "store.sqlite", spec, dst)
    differ = set_mtimes(src, dst, src_files, dst_files)
    neg = replay_negentropy(sync_items(b2.data_dir / "store.sqlite", spec),
                            sync_items(a.data_dir / "store.sqlite", spec))
    print(f"phase 2 ({mode}): {n_missing:,} events missing at B2, {differ:,} of "
          f"{len(src_files):,} bundle files differ; negentropy replay {neg}", flush=True)

    tooks: list[float] = []
    rsyncs: list[float] = []
    for run in range(1, repeats + 1):
        # each run starts from a copy of the same store and of the same destination tree
        node = cluster.add(f"b2-{mode}-{run}", bootstrap=[a])
        for f in ("store.sqlite", "node.key"):
            if (b2.data_dir / f).exists():
                shutil.copy2(b2.data_dir / f, node.data_dir / f)
        started, took, (cpu_a, cpu_b) = await catch_up(cluster, a, node, n, timeout)
        sb2, sa = await node.status(), await a.status()
        print(f"phase 2 ({mode}) run {run}: B2 started in {started:.1f} s, complete "
              f"{took:.2f} s after ready; B2 last sync {sb2['sync']['last']}; A last sync "
              f"{sa['sync']['last']}", flush=True)
        await cluster.stop(node)
        tooks.append(took)

        dst_run = work / f"tree-dst-{mode}-{run}"
        shutil.copytree(dst, dst_run)  # copy2: the mtimes set above come along
        daemon, port = start_rsync_daemon(src, work)
        try:
            rsync_s, stats = run_rsync(port, dst_run)
        finally:
            daemon.terminate()
            daemon.wait()
        same = trees_equal(src, dst_run)
        print(f"rsync ({mode}) run {run}: {rsync_s:.2f} s; files transferred "
              f"{stats.get('Number of regular files transferred')}, sent "
              f"{stats.get('Total bytes sent')} B, received "
              f"{stats.get('Total bytes received')} B; trees identical afterwards: {same}",
              flush=True)
        if not same:
            raise SystemExit("rsync did not reproduce the source tree")
        rsyncs.append(rsync_s)
    took, rsync_s = statistics.median(tooks), statistics.median(rsyncs)
    runs = ", ".join(f"{t:.3f}" for t in tooks)
    rsync_runs = ", ".join(f"{t:.3f}" for t in rsyncs)

    last = sb2["sync"]["last"] or {}
    return [
        figure(f"{label}: events fetched", n_missing, "events"),
        figure(f"{label}: negentropy rounds", neg["rounds"], "round trips",
               peer=f"daemon: {last.get('rounds')} in the last session to finish, "
                    f"role {last.get('role')}", target="<= 4"),
        figure(f"{label}: neg frame bytes", neg["neg_bytes_out"] + neg["neg_bytes_in"],
               "B", peer=f"out {neg['neg_bytes_out']} / in {neg['neg_bytes_in']}",
               target="<= 65536"),
        figure(f"{label}: all sync frame bytes (last session to finish at B2)",
               int(last.get("bytes_in", 0)) + int(last.get("bytes_out", 0)), "B"),
        figure(f"{label}: total time, median of {repeats} runs", round(took, 3), "s",
               peer=f"rsync {rsync_s:.3f} s (runs: pithnode {runs}; rsync {rsync_runs})",
               ratio=took / rsync_s, target="<= 0.5"),
        figure(f"{label}: CPU of B2 from its ready line (last run)", round(cpu_b, 3),
               "s", peer=f"A {cpu_a:.3f} s"),
        figure(f"{label}: rsync of the changed bundle files, median of {repeats} runs",
               round(rsync_s, 3), "s", peer=f"{differ} of {len(src_files)} files changed"),
        figure(f"{label}: rsync bytes sent + received",
               sum(int(stats.get(k, "0").replace(",", "")) for k in
                   ("Total bytes sent", "Total bytes received")), "B"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="corpus size (default 100000)")
    ap.add_argument("--missing", type=float, default=0.01,
                    help="share of events missing at B2 in phase 2 (default 0.01)")
    ap.add_argument("--missing-mode", choices=("random", "newest", "both"), default="both",
                    help="which events B2 lacks: a random sample, the newest (a node that "
                         "was offline), or one run of each (default)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each 1%% reconciliation and of its rsync, from the same "
                         "starting point; the medians are reported (default 3)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--work", metavar="DIR", help="keep the nodes, trees and logs here")
    args = ap.parse_args()
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is not installed (apt-get install -y rsync)")
    info = machine()
    print(f"machine: nproc={info['nproc']}, cpu={info['cpu']!r}, python {info['python']}, "
          f"load average {info['loadavg']}", flush=True)
    if args.work:
        work = Path(args.work)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        figures = trio.run(run, args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="pithnode-bench-sync-") as tmp:
            figures = trio.run(run, args, Path(tmp))
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\n==== sync benchmark: summary ====")
    print(f"machine: nproc {info['nproc']}, {info['cpu']}, load average {info['loadavg']} "
          f"at start, {info['loadavg_end']} at end")
    for f in figures:
        print(show(f))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"benchmark": "sync", "machine": info, "events": args.events,
             "missing": args.missing, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
