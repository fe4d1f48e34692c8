"""Query benchmark: record lookups over the query socket and ``state.json`` over HTTP.

A store of N synthetic records (node/synth.py; 100,000 by default) is generated and imported
through the Store API (both timed), then a real ``pithnode run`` serves it and is measured:

- socket, two phases. Both ask ``record.state`` for a random Pith Number or arXiv id over
  ``--clients`` connections (default 32, the socket's limit), spread over ``--client-procs``
  client processes.

  1. Throughput, a closed loop: each connection keeps ``--depth`` requests in flight
     (default 1) and sends the next as soon as a reply comes: the most the node serves.
     Target: >= 5,000 requests/s. Its latencies are queueing behind 32 waiting clients
     (Little's law: mean latency = clients / throughput, 6.4 ms at 5,000/s), reported but
     not judged.
  2. Latency at the target load, an open loop: requests are sent on a fixed schedule of
     ``--rate`` requests/s in all (default 5,000, the throughput target), round-robin over
     the connections, whether or not earlier ones were answered, and each latency counts
     from the request's *scheduled* time, so a node (or client) that falls behind shows
     every late request as late (no coordinated omission). Target: p99 < 5 ms, and the
     offered rate served.

  The clients are plain non-blocking sockets and a selector with requests encoded in
  advance; their CPU per request is reported, so a client-bound run shows as one.
- HTTP: ``wrk -t2 -c64 -d10s`` fetches ``/pith/{suffix}/state.json`` of random records (a Lua
  script picks suffixes from a file); requests/s. Target: >= 1,500 requests/s.

Lookups are uniform over all records, the hardest case for the node's read cache ([cache]
max_bytes, 128 MiB by default: about 46,000 of the 100,000 states, held deflated; [cache]
max_names, 65,536 by default, bounds the arXiv ids remembered). ``--cache-mib`` sets the
node's cache, and ``--prewarm`` asks for every identifier the benchmark uses once before
measuring (a node that has served for a while); the read cache hit rate of each phase is
reported.

    .venv/bin/python bench/query.py                   # full size (about 10 minutes)
    .venv/bin/python bench/query.py --records 2000    # a quick run
    .venv/bin/python bench/query.py --json figures.json --data-dir /tmp/bench  # keep & reuse
    .venv/bin/python bench/query.py --data-dir /tmp/bench --cache-mib 1024 \
        --cache-names 400000 --prewarm                # every record held in memory

The node runs with ``[attest] enabled = false`` unless ``--attest``: a node that has just
imported N records signs attestations for all of them in the background (rate-limited), and
that work is not the query path being measured.

``wrk`` is Debian's package (``apt-get install -y wrk``); without it the HTTP part is skipped
with that hint. ``--data-dir`` keeps the store: a later run with the same or fewer records
reuses it instead of generating and importing again.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import multiprocessing
import os
import random
import re
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's bench/
    sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from pithnode.node.devnet import RunningNode, run_node  # noqa: E402
from pithnode.node.query_socket import call_sync, open_query_client  # noqa: E402
from pithnode.node.synth import SynthConfig, synth_keys, synth_record  # noqa: E402
from pithnode.protocol.events import Event  # noqa: E402
from pithnode.storage.store import MAX_BATCH_EVENTS, Store  # noqa: E402

SEED = 7
NETWORK_NAME = "pith-bench"
LOOKUPS_FILE = "bench-lookups.json"
CHUNK_RECORDS = 500
SOCKET_TARGET_RPS = 5000.0
SOCKET_TARGET_P99_MS = 5.0
HTTP_TARGET_RPS = 1500.0
READ_CHUNK = 1 << 16
NODE_CONFIG = """# pithnode benchmark node: loopback, ports from port 0, quiet logs
[p2p]
listen = ["/ip4/127.0.0.1/tcp/0"]
[http]
host = "127.0.0.1"
port = 0
[log]
level = "warning"
[attest]
enabled = {attest}
"""
WRK_SCRIPT = """-- random /pith/{suffix}/state.json, suffixes from the file given after --
local suffixes = {}
function init(args)
  for line in io.lines(args[1]) do suffixes[#suffixes + 1] = line end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end
function request()
  return wrk.format("GET", "/pith/" .. suffixes[math.random(#suffixes)] .. "/state.json")
end
"""


# -- corpus and import -------------------------------------------------------------------------
def _chunk(bounds: tuple[int, int]) -> tuple[list[Event], list[tuple[str, str]]]:
    """Records [start, stop) of the corpus: their events and (Pith Number, arXiv id)s."""
    keys, cfg = synth_keys(SEED), SynthConfig(seed=SEED)
    events: list[Event] = []
    lookups: list[tuple[str, str]] = []
    for i in range(*bounds):
        rec = synth_record(keys, i, cfg)
        events.extend(rec.events)
        lookups.append((rec.pith_number, str(rec.canonical_record["source"]["id"])))
    return events, lookups


def generate(records: int) -> tuple[list[Event], list[tuple[str, str]]]:
    """The whole corpus, made on every CPU (signing dominates)."""
    bounds = [(i, min(i + CHUNK_RECORDS, records)) for i in range(0, records, CHUNK_RECORDS)]
    events: list[Event] = []
    lookups: list[tuple[str, str]] = []
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for evs, lks in pool.map(_chunk, bounds):
            events.extend(evs)
            lookups.extend(lks)
    return events, lookups


def import_events(data_dir: Path, events: Sequence[Event]) -> dict[str, Any]:
    spec = synth_keys(SEED).spec(NETWORK_NAME)
    started = time.perf_counter()
    with Store(data_dir / "store.sqlite", spec) as store:
        summary = store.ingest_many(events, source="bench", received_at=time.time(),
                                    batch_events=MAX_BATCH_EVENTS)
        stats = store.stats()
    took = time.perf_counter() - started
    return {"events": len(events), "new": summary.new, "seconds": round(took, 2),
            "events_per_s": round(len(events) / took), "records": stats.records,
            "store_bytes": stats.file_bytes}


# -- socket clients ----------------------------------------------------------------------------
class CpuClock:
    """CPU seconds a process (and its main thread, trio's) used, from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.hz = os.sysconf("SC_CLK_TCK")

    def _read(self, path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.hz

    def now(self) -> tuple[float, float]:
        try:
            return (self._read(f"/proc/{self.pid}/stat"),
                    self._read(f"/proc/{self.pid}/task/{self.pid}/stat"))
        except (OSError, IndexError, ValueError):
            return (float("nan"), float("nan"))


def cpu_per_request(before: tuple[float, float], after: tuple[float, float],
                    requests: int) -> dict[str, Any]:
    """Node CPU per request: a figure a busy machine distorts less than requests/s."""
    total, main = ((a - b) / max(requests, 1) * 1e6 for a, b in zip(after, before,
                                                                    strict=True))
    if math.isnan(total):  # no /proc
        return {}
    return {"node_cpu_us_per_request": round(total), "trio_thread_cpu_us_per_request":
            round(main), "trio_thread_bound_requests_per_s": round(1e6 / main) if main else None}


@dataclass(slots=True)
class SocketFigures:
    clients: int
    seconds: float
    requests: int
    errors: int
    latencies_ns: list[int]
    warmup_requests: int = 0
    processes: int = 1
    depth: int = 1
    client_cpu_s: float = 0.0
    warmup_s: float = 0.0
    rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ns)
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
        total = self.requests + self.warmup_requests
        loop = ({"offered_requests_per_s": round(self.rate)} if self.rate else
                {"in_flight_per_client": self.depth})
        return {"clients": self.clients, "client_processes": self.processes,
                **loop, "seconds": round(self.seconds, 2),
                "requests": self.requests, "errors": self.errors,
                "requests_per_s": round(self.requests / self.seconds),
                "p50_ms": round(q[49] / 1e6, 3), "p99_ms": round(q[98] / 1e6, 3),
                "max_ms": round(lat[-1] / 1e6, 3) if lat else None,
                "client_cpu_us_per_request": round(self.client_cpu_s / max(total, 1) * 1e6, 1),
                "client_cpu_cores": round(self.client_cpu_s / (self.seconds + self.warmup_s),
                                          2)}


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """What one client process does: ``connections`` connections to ``path``, each with
    ``depth`` requests in flight, for ``warmup`` then ``seconds`` seconds."""

    path: str
    ids: Sequence[str]
    connections: int
    depth: int
    seed: int
    warmup: float
    seconds: float
    #: Requests per second this process sends on a fixed schedule (an open loop), or None
    #: for a closed loop of ``depth`` requests in flight per connection.
    rate: float | None = None


_START: Any = None  # the start barrier, inherited by each client process


def _client_init(barrier: Any) -> None:
    global _START
    _START = barrier


def _request_line(rid: int, ident: bytes) -> bytes:
    return (b'{"jsonrpc":"2.0","id":%d,"method":"record.state","params":{"id":%s}}\n'
            % (rid, ident))


def socket_client_process(plan: ClientPlan) -> dict[str, Any]:
    """(a client process) Plain non-blocking sockets and a selector, requests encoded
    before the clock starts: a few microseconds of CPU per request, so the node, not the
    client, is what is measured. Returns counts, latencies and this process's CPU time."""
    rng = random.Random(plan.seed)
    idents = [json.dumps(i).encode() for i in plan.ids]
    sel = selectors.DefaultSelector()
    conns: list[dict[str, Any]] = []
    for _ in range(plan.connections):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(plan.path)
        sock.setblocking(False)
        conn = {"sock": sock, "buf": bytearray(), "sent": {}, "next": 0}
        sel.register(sock, selectors.EVENT_READ, conn)
        conns.append(conn)
    requests = errors = warm = 0
    latencies = array.array("q")
    _START.wait()
    cpu0 = os.times()
    start = time.monotonic()
    warm_until, until = start + plan.warmup, start + plan.warmup + plan.seconds

    def send(conn: dict[str, Any], at: int | None = None) -> None:
        conn["next"] += 1
        rid = conn["next"]
        line = _request_line(rid, rng.choice(idents))
        conn["sent"][rid] = time.perf_counter_ns() if at is None else at
        sock = conn["sock"]
        if sock.send(line) != len(line):  # a small line into a socket buffer that is never
            raise RuntimeError("short write of a request line")  # near full: never

    def close(conn: dict[str, Any]) -> int:
        conn["closed"] = True
        sel.unregister(conn["sock"])
        conn["sock"].close()
        return 1

    # open loop: request k is due at ``due``; sent when due, timed from then
    interval = round(1e9 / plan.rate) if plan.rate else 0
    due, k = time.perf_counter_ns(), 0
    end_ns = due + round((plan.warmup + plan.seconds) * 1e9)
    if not interval:
        for conn in conns:
            for _ in range(plan.depth):
                send(conn)
    open_conns = len(conns)
    while open_conns:
        timeout = 1.0
        if interval:
            now_ns = time.perf_counter_ns()
            while due <= now_ns and due < end_ns:
                send(conns[k % len(conns)], due)
                due += interval
                k += 1
            if due >= end_ns:  # all sent: close the connections with nothing in flight
                for conn in conns:
                    if not conn["sent"] and not conn.get("closed"):
                        open_conns -= close(conn)
                if not open_conns:
                    break
            else:
                timeout = max(0.0, (due - time.perf_counter_ns()) / 1e9)
        for key, _ in sel.select(timeout):
            conn = key.data
            data = conn["sock"].recv(1 << 18)
            if not data:
                raise RuntimeError("the node closed a benchmark connection")
            buf = conn["buf"]
            buf += data
            while (nl := buf.find(b"\n")) >= 0:
                t1 = time.perf_counter_ns()
                head = bytes(buf[:160])
                del buf[:nl + 1]
                m = _REPLY_ID.match(head)
                t0 = conn["sent"].pop(int(m.group(1))) if m else None
                now = time.monotonic()
                if now < warm_until:
                    warm += 1
                elif t0 is not None:
                    requests += 1
                    latencies.append(t1 - t0)
                    if b'"result":' not in head or b'"state_sha256"' not in head:
                        errors += 1
                else:
                    errors += 1
                if interval:
                    if due >= end_ns and not conn["sent"]:
                        open_conns -= close(conn)
                elif now < until:
                    send(conn)
                elif not conn["sent"]:
                    open_conns -= close(conn)
    cpu1 = os.times()
    return {"requests": requests, "errors": errors, "warmup_requests": warm,
            "latencies": latencies.tobytes(),
            "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}


_REPLY_ID = re.compile(rb'\{"jsonrpc":"2\.0","id":(\d+),')


async def socket_bench(node: RunningNode, ids: Sequence[str], *, clients: int,
                       seconds: float, warmup: float, processes: int = 1, depth: int = 1,
                       rate: float | None = None, on_start: Any = None) -> SocketFigures:
    """``clients`` connections spread over ``processes`` client processes: a closed loop of
    ``depth`` requests in flight per connection, or ``rate`` requests/s in all on a fixed
    schedule."""
    processes = max(1, min(processes, clients))
    ctx = multiprocessing.get_context("spawn")  # never fork a process running trio
    barrier = ctx.Barrier(processes + 1)
    plans = [ClientPlan(str(node.socket), list(ids), clients // processes +
                        (1 if i < clients % processes else 0), depth, SEED + i, warmup,
                        seconds, rate / processes if rate else None)
             for i in range(processes)]
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_client_init,
                             initargs=(barrier,)) as pool:
        futures = [pool.submit(socket_client_process, plan) for plan in plans]
        await trio.to_thread.run_sync(barrier.wait)
        if on_start is not None:
            on_start()
        results = [await trio.to_thread.run_sync(f.result) for f in futures]
    figures = SocketFigures(clients, seconds, 0, 0, [], processes=processes, depth=depth,
                            warmup_s=warmup, rate=rate)
    for r in results:
        figures.requests += r["requests"]
        figures.errors += r["errors"]
        figures.warmup_requests += r["warmup_requests"]
        figures.client_cpu_s += r["cpu_s"]
        lat = array.array("q")
        lat.frombytes(r["latencies"])
        figures.latencies_ns.extend(lat)
    return figures


# -- HTTP with wrk -----------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", output)
    if rps is None or total is None:
        raise ValueError("wrk printed no figures:\n" + output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    out: dict[str, Any] = {"requests": int(total.group(1)),
                           "requests_per_s": round(float(rps.group(1))),
                           "non_2xx": int(bad.group(1)) if bad else 0,
                           "socket_errors": sum(map(int, errors.groups())) if errors else 0}
    for pct, value in re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M):
        out[f"p{pct}_ms"] = round(_ms(value), 3)
    return out


async def http_bench(node: RunningNode, suffixes: Sequence[str], workdir: Path, *,
                     threads: int, connections: int, seconds: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk is not installed: apt-get install -y wrk"}
    (workdir / "suffixes.txt").write_text("\n".join(suffixes) + "\n")
    (workdir / "state.lua").write_text(WRK_SCRIPT)
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-s", str(workdir / "state.lua"), node.http, "--", str(workdir / "suffixes.txt")]
    done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)
    out = done.stdout.decode()
    figures = parse_wrk(out)
    figures["command"] = " ".join(["wrk", *cmd[1:]])
    return figures


# -- the program -------------------------------------------------------------------------------
def node_status(node: RunningNode) -> dict[str, Any]:
    status: dict[str, Any] = call_sync(node.socket, "node.status")
    return status


def cache_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The read cache over one measurement: hit rate, and what it held at the end."""
    b, a = before.get("read_cache") or {}, after.get("read_cache") or {}
    if not a:
        return {}
    hits, misses = a["hits"] - b.get("hits", 0), a["misses"] - b.get("misses", 0)
    return {"cache_hit_rate": round(hits / max(hits + misses, 1), 3),
            "cache_documents": a["documents"], "cache_mib": round(a["bytes"] / 2**20, 1),
            "cache_max_mib": round(a["max_bytes"] / 2**20, 1)}


async def prewarm(node: RunningNode, ids: Sequence[str]) -> float:
    """Ask for every identifier once (a node that has served for a while)."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for part in range(8):
            nursery.start_soon(_ask_all, node, ids[part::8])
    return time.perf_counter() - started


async def _ask_all(node: RunningNode, ids: Sequence[str]) -> None:
    async with open_query_client(node.socket) as client:
        for ident in ids:
            await client.call("record.state", {"id": ident})


async def measure(data_dir: Path, lookups: Sequence[tuple[str, str]],
                  args: argparse.Namespace) -> dict[str, Any]:
    config = data_dir / "bench-node.toml"
    text = NODE_CONFIG.format(attest="true" if args.attest else "false")
    if args.cache_mib is not None:
        text += f"[cache]\nmax_bytes = {args.cache_mib << 20}\nmax_names = {args.cache_names}\n"
    config.write_text(text)
    network = data_dir / "network.toml"
    network.write_text(synth_keys(SEED).spec_toml(NETWORK_NAME))
    async with trio.open_nursery() as nursery:
        node: RunningNode = await nursery.start(partial(
            run_node, "bench", config, data_dir, network, startup_timeout=300))
        print(f"node ready: socket {node.socket}, HTTP {node.http}", flush=True)
        ids = [pn for pn, _ in lookups] + [arxiv for _, arxiv in lookups]
        suffixes = [pn.rsplit(":", 1)[1] for pn, _ in lookups]
        warmed = None
        if args.prewarm:  # what the socket and HTTP phases ask: Pith Numbers, arXiv ids,
            # bare suffixes
            warmed = round(await prewarm(node, ids + suffixes), 1)
            print(f"prewarmed: asked for each of {len(ids) + len(suffixes)} identifiers once "
                  f"in {warmed} s", flush=True)
        clock = CpuClock(node.pid)
        status = await trio.to_thread.run_sync(node_status, node)

        async def socket_phase(name: str, **loop: Any) -> dict[str, Any]:
            """One socket measurement: its figures, node CPU and read cache over it."""
            nonlocal status
            started: list[tuple[float, float]] = []
            sock = await socket_bench(node, ids, clients=args.clients, seconds=args.seconds,
                                      warmup=args.warmup, processes=args.client_procs,
                                      on_start=lambda: started.append(clock.now()), **loop)
            figures = {**sock.to_json(), **cpu_per_request(
                started[0], clock.now(), sock.requests + sock.warmup_requests)}
            before, status = status, await trio.to_thread.run_sync(node_status, node)
            figures.update(cache_delta(before, status))
            print(f"socket, {name}: {figures}", flush=True)
            return figures

        socket_figures = await socket_phase("closed loop", depth=args.depth)
        paced = await socket_phase("open loop", rate=args.rate)
        before = clock.now()
        http = await http_bench(node, suffixes, data_dir, threads=2, connections=64,
                                seconds=int(args.seconds))
        if "requests" in http:
            http.update(cpu_per_request(before, clock.now(), http["requests"]))
            http.update(cache_delta(status, await trio.to_thread.run_sync(node_status, node)))
        print(f"http: {http}", flush=True)
        nursery.cancel_scope.cancel()
    return {"socket": socket_figures, "socket_at_rate": paced, "http": http,
            "prewarm_seconds": warmed}


def prepare(data_dir: Path, records: int) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The lookups of a store of ``records`` records in ``data_dir``, made unless held."""
    saved = data_dir / LOOKUPS_FILE
    if saved.is_file() and (data_dir / "store.sqlite").is_file():
        doc = json.loads(saved.read_text())
        if doc.get("seed") == SEED and len(doc["lookups"]) >= records:
            print(f"reusing the store in {data_dir} ({len(doc['lookups'])} records)")
            held = [(str(pn), str(arxiv)) for pn, arxiv in doc["lookups"][:records]]
            return held, dict(doc["import"])
    print(f"generating {records} synthetic records on {os.cpu_count()} CPUs…", flush=True)
    started = time.perf_counter()
    events, lookups = generate(records)
    gen_s = time.perf_counter() - started
    print(f"generated {len(events)} events in {gen_s:.1f} s; importing via the Store API…",
          flush=True)
    (data_dir / "store.sqlite").unlink(missing_ok=True)
    figures = import_events(data_dir, events)
    figures["generate_seconds"] = round(gen_s, 2)
    print(f"imported: {figures}", flush=True)
    saved.write_text(json.dumps({"seed": SEED, "lookups": lookups, "import": figures}))
    return lookups, figures


def verdicts(fig: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    sock, paced, http = fig["socket"], fig["socket_at_rate"], fig["http"]
    offered = paced["offered_requests_per_s"]
    rows: list[tuple[str, str, str, bool | None]] = [
        (f"socket record.state requests/s ({sock['clients']} clients, closed loop)",
         str(sock["requests_per_s"]), f">= {SOCKET_TARGET_RPS:.0f}",
         sock["requests_per_s"] >= SOCKET_TARGET_RPS),
        ("socket p50 / p99 latency (closed loop)", f"{sock['p50_ms']} / {sock['p99_ms']} ms",
         "", None),
        (f"socket requests/s served at {offered}/s offered", str(paced["requests_per_s"]),
         f">= {0.99 * offered:.0f}", paced["requests_per_s"] >= 0.99 * offered),
        (f"socket p50 latency at {offered}/s", f"{paced['p50_ms']} ms", "", None),
        (f"socket p99 latency at {offered}/s", f"{paced['p99_ms']} ms",
         f"< {SOCKET_TARGET_P99_MS:.0f} ms", paced["p99_ms"] < SOCKET_TARGET_P99_MS),
        ("socket errors", str(sock["errors"] + paced["errors"]), "0",
         sock["errors"] + paced["errors"] == 0),
    ]
    rows += _cpu_rows("socket", sock)
    rows.append(("socket client CPU per request", f"{sock['client_cpu_us_per_request']} us",
                 "", None))
    if "cache_hit_rate" in sock:
        rows.append(("socket read cache hit rate", f"{sock['cache_hit_rate']:.0%}", "", None))
    if "skipped" in http:
        rows.append(("HTTP state.json requests/s", "skipped", http["skipped"], None))
    else:
        rows += [
            ("HTTP state.json requests/s", str(http["requests_per_s"]),
             f">= {HTTP_TARGET_RPS:.0f}", http["requests_per_s"] >= HTTP_TARGET_RPS),
            ("HTTP p50 / p99 latency", f"{http.get('p50_ms')} / {http.get('p99_ms')} ms", "",
             None),
            ("HTTP errors (non-2xx, socket)", f"{http['non_2xx']}, {http['socket_errors']}",
             "0, 0", http["non_2xx"] == 0 and http["socket_errors"] == 0),
        ]
        rows += _cpu_rows("HTTP", http)
        if "cache_hit_rate" in http:
            rows.append(("HTTP read cache hit rate", f"{http['cache_hit_rate']:.0%}", "",
                         None))
    return rows


def _cpu_rows(what: str, fig: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    if "node_cpu_us_per_request" not in fig:
        return []
    return [(f"{what} node CPU per request", f"{fig['node_cpu_us_per_request']} us", "", None),
            (f"{what} of it on the trio thread", f"{fig['trio_thread_cpu_us_per_request']} us",
             "", None),
            (f"{what} trio thread bound", f"{fig['trio_thread_bound_requests_per_s']} req/s",
             "", None)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--records", type=int, default=100_000, help="records in the store")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--data-dir", metavar="DIR",
                   help="keep the store here (reused by later runs); default: a temporary one")
    p.add_argument("--clients", type=int, default=32,
                   help="concurrent socket clients (the socket serves at most 32)")
    p.add_argument("--client-procs", type=int, default=1,
                   help="processes the socket clients are spread over")
    p.add_argument("--depth", type=int, default=1,
                   help="requests each socket client keeps in flight (the node answers up "
                        "to 8 per connection concurrently)")
    p.add_argument("--cache-mib", type=int, default=None,
                   help="the node's [cache] max_bytes in MiB (default: the node's default)")
    p.add_argument("--cache-names", type=int, default=65_536,
                   help="the node's [cache] max_names, with --cache-mib")
    p.add_argument("--prewarm", action="store_true",
                   help="ask for every identifier once before measuring")
    p.add_argument("--rate", type=float, default=SOCKET_TARGET_RPS,
                   help="requests/s of the open-loop socket phase (default: the target)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="socket warm-up, not counted")
    p.add_argument("--attest", action="store_true",
                   help="let the node attest while measured (off by default: on a fresh store "
                        "of N records it signs about 9 events per record at 20/s for hours, "
                        "which is not the query path)")
    args = p.parse_args(argv)
    tmp = None if args.data_dir else tempfile.mkdtemp(prefix="pithnode-bench-")
    data_dir = Path(args.data_dir or tmp or ".")
    data_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    info["loadavg_start"] = info.pop("loadavg")[0]
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
          f"load average {info['loadavg_start']:.1f}")
    if info["loadavg_start"] > 0.5 * (info["nproc"] or 1):
        print("warning: the machine is busy; figures measured now understate the node")
    try:
        lookups, imported = prepare(data_dir, args.records)
        figures = trio.run(measure, data_dir, lookups, args)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()[0]
    options = {"clients": args.clients, "client_procs": args.client_procs,
               "depth": args.depth, "rate": args.rate, "cache_mib": args.cache_mib,
               "cache_names": args.cache_names if args.cache_mib is not None else None,
               "prewarm": args.prewarm}
    result = {"machine": info, "records": args.records, "attest": args.attest,
              "options": options, "import": imported, **figures,
              "targets": {"socket_requests_per_s": SOCKET_TARGET_RPS,
                          "socket_p99_ms": SOCKET_TARGET_P99_MS,
                          "http_requests_per_s": HTTP_TARGET_RPS}}
    print(f"\nquery benchmark, {args.records} records, on {info['nproc']} CPUs "
          f"({info['cpu']}); load average {info['loadavg_start']:.1f} at the start, "
          f"{info['loadavg_end']:.1f} at the end")
    print("  options: " + ", ".join(f"{k} {v}" for k, v in options.items()))
    print(f"  import: {imported['events']} events in {imported['seconds']} s "
          f"({imported['events_per_s']} events/s; generating them took "
          f"{imported.get('generate_seconds', '?')} s)")
    rows = []
    for name, value, target, ok in verdicts(result):
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        print(f"  {name:34} {value:>16}  {target:>10}{mark}")
        row: dict[str, Any] = {"name": name, "value": value}
        if target:
            row["target"] = target
        if ok is not None:
            row["met"] = ok
        rows.append(row)
    result["figures"] = rows  # the rows bench/run_all.py puts in BENCHMARKS.md
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0  # a missed target is a figure, not a failure of the benchmark (as elsewhere)


if __name__ == "__main__":
    sys.exit(main())
