"""A harness for real multi-process clusters of ``pithnode run`` on 127.0.0.1.

Each node is its own ``python -m``-style subprocess with its own data directory (store, key,
``network.toml``) and config file. Nodes bind ``/ip4/127.0.0.1/tcp/0`` and report their
actual multiaddr on the ready line; a node started later gets the multiaddrs of nodes
started earlier as its bootstrap list, so there is no "find a free port, then bind" race.
A restarted node reuses the port it had (the peer id is stable: ``node.key`` persists in
its data directory); a bind that fails because the port is still held is retried.

Used by ``tests/test_multinode.py`` and the benchmarks in ``bench/``. Every process is
killed when the :class:`Cluster` context exits, whatever happened in between.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from pithnode.node.query_socket import QueryClient, QuerySocketError, open_query_client
from pithnode.node.synth import SynthConfig, SynthKeys, generate
from pithnode.protocol.events import Event
from pithnode.protocol.merge import merge
from pithnode.protocol.spec import NetworkSpec

__all__ = [
    "Cluster",
    "NodeProcess",
    "NodeSettings",
    "NodeStartError",
    "WaitTimeout",
    "expected_states",
    "synth_events",
    "wait_until",
]

#: The ``pithnode`` command line, run with this interpreter.
CLI = (sys.executable, "-m", "pithnode.node.cli")
#: Environment variable: a command (split on spaces) to start nodes with instead of
#: :data:`CLI`, e.g. under a profiler or with a patched transport. A node added with its own
#: ``command`` (:meth:`Cluster.add`) uses that one instead.
NODE_CMD_ENV = "PITHNODE_CLUSTER_NODE_CMD"
READY_PREFIX = b"pithnode ready: "
#: Seconds a node may take from exec to its ready line (5 starting at once on 2 cores).
START_TIMEOUT_S = 60.0
#: Seconds a SIGTERM'd node may take to exit before it is killed.
STOP_GRACE_S = 20.0
#: Attempts to rebind a restarted node's old port.
REBIND_ATTEMPTS = 20
LOG_FILE = "node.log"
MAX_READY_LINE = 64 * 1024


class NodeStartError(Exception):
    """A node exited or stayed silent before printing its ready line."""


class WaitTimeout(AssertionError):
    """A :func:`wait_until` condition did not hold in time."""


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The config knobs the tests and benchmarks vary (TOML is written from these)."""

    sync_interval_s: float = 1.0
    sync_jitter_s: float = 0.5
    sync_timeout_s: float = 20.0
    fetch_batch: int = 500
    gossip_flush_s: float = 0.02
    gossip_max_batch_events: int = 200
    rate_per_signer: float = 200.0
    redial_min_s: float = 0.2
    redial_max_s: float = 1.0
    http: bool = False
    #: the node's own signed events (mirror hints, attestations, audits): off, so the
    #: events a cluster holds are exactly the events a test or benchmark put in
    attest: bool = False
    #: [attest] intervals and objects per challenge (the production defaults)
    mirror_hint_interval_s: float = 3600.0
    checkpoint_interval_s: float = 300.0
    audit_interval_s: float = 120.0
    audit_objects: int = 8
    log_level: str = "info"


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def config_toml(port: int, bootstrap: Sequence[str], s: NodeSettings) -> str:
    return "\n".join([
        "[p2p]",
        f'listen = ["/ip4/127.0.0.1/tcp/{port}"]',
        f"bootstrap = {_toml_list(bootstrap)}",
        f"redial_min_s = {s.redial_min_s!r}",
        f"redial_max_s = {s.redial_max_s!r}",
        "",
        "[sync]",
        f"interval_s = {s.sync_interval_s!r}",
        f"jitter_s = {s.sync_jitter_s!r}",
        f"timeout_s = {s.sync_timeout_s!r}",
        f"fetch_batch = {s.fetch_batch}",
        "",
        "[gossip]",
        f"flush_interval_s = {s.gossip_flush_s!r}",
        f"max_batch_events = {s.gossip_max_batch_events}",
        f"rate_per_signer = {s.rate_per_signer!r}",
        "",
        "[http]",
        f"enabled = {'true' if s.http else 'false'}",
        "port = 0",
        "",
        "[attest]",
        f"enabled = {'true' if s.attest else 'false'}",
        f"mirror_hint_interval_s = {s.mirror_hint_interval_s!r}",
        f"checkpoint_interval_s = {s.checkpoint_interval_s!r}",
        f"audit_interval_s = {s.audit_interval_s!r}",
        f"audit_objects = {s.audit_objects}",
        "",
        "[log]",
        f'level = "{s.log_level}"',
        "",
    ])


# ---------------------------------------------------------------------------- waiting


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, *,
                     what: str = "condition", interval: float = 0.05,
                     describe: Callable[[], str] | None = None) -> float:
    """Poll ``predicate`` until it holds; the seconds it took. Bounded by ``timeout``.

    The nodes are separate processes, so there is no event to wait on: polling their
    sockets with a short sleep is the only way, and it is confined to this helper.
    """
    start = trio.current_time()
    try:
        with trio.fail_after(timeout):
            while not await predicate():
                await trio.sleep(interval)
    except trio.TooSlowError:
        detail = f"; last seen: {describe()}" if describe is not None else ""
        raise WaitTimeout(f"{what}: not reached within {timeout:.0f} s{detail}") from None
    return trio.current_time() - start


# ---------------------------------------------------------------------------- corpus


def synth_events(keys: SynthKeys, count: int, *, seed: int = 1, first_record: int = 0
                 ) -> list[Event]:
    """Exactly ``count`` synthetic events, whole records in order (the last one may be cut).

    ``first_record`` skips records, so two calls can give disjoint sets of records.
    """
    out: list[Event] = []
    for i, rec in enumerate(generate(keys, first_record + count, SynthConfig(seed=seed))):
        if i < first_record:
            continue
        out.extend(rec.events[:count - len(out)])
        if len(out) >= count:
            break
    return out


def expected_states(events: Iterable[Event], spec: NetworkSpec) -> dict[str, str]:
    """state_sha256 of every record, merged locally from ``events`` (the reference)."""
    by_subject: dict[str, list[Event]] = {}
    for ev in events:
        by_subject.setdefault(ev.subject, []).append(ev)
    return {s: merge(s, evs, spec).state_sha256 for s, evs in sorted(by_subject.items())}


# ---------------------------------------------------------------------------- one node


class NodeProcess:
    """One ``pithnode run`` subprocess and its data directory (which outlives restarts).

    ``settings`` may be replaced between a stop and the next start (the config file is
    written at every start). ``command`` replaces the ``pithnode`` command line (and
    :data:`NODE_CMD_ENV`) for this node only, e.g. a test entry module that starts a node
    with a patched class; ``run --config ... --data-dir ...`` is appended to it.
    """

    def __init__(self, name: str, data_dir: Path, settings: NodeSettings,
                 bootstrap: Sequence[NodeProcess], command: Sequence[str] = ()) -> None:
        self.name = name
        self.data_dir = data_dir
        self.settings = settings
        self.bootstrap_nodes = tuple(bootstrap)
        self.command = tuple(command)
        self.port = 0
        self.proc: trio.Process | None = None
        self.ready: dict[str, Any] | None = None
        #: wall-clock time (time.time()) the last ready line was read
        self.ready_wall = 0.0
        self.starts = 0

    def __repr__(self) -> str:
        return f"<node {self.name} port={self.port} running={self.running}>"

    # -- what others need
    @property
    def peer_id(self) -> str:
        if self.ready is None:
            raise RuntimeError(f"node {self.name} has not been started")
        return str(self.ready["peer_id"])

    @property
    def multiaddr(self) -> str:
        if self.ready is None:
            raise RuntimeError(f"node {self.name} has not been started")
        return str(self.ready["listen"][0])

    @property
    def socket_path(self) -> Path:
        if self.ready is None:
            raise RuntimeError(f"node {self.name} has not been started")
        return Path(self.ready["socket"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def config_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.toml"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle
    async def start(self) -> None:
        """Start (or restart on the same port) and wait for the ready line."""
        if self.running:
            raise RuntimeError(f"node {self.name} is already running")
        for attempt in range(1, REBIND_ATTEMPTS + 1):
            try:
                await self._start_once()
                return
            except NodeStartError:
                # A restart rebinding its old port can briefly find it taken; anything
                # else, or a fresh port, is a real failure.
                if not (self.port and _bind_failure(self.log_tail(5))) \
                        or attempt == REBIND_ATTEMPTS:
                    raise
                await trio.sleep(0.1 * attempt)

    async def _start_once(self) -> None:
        boot = [n.multiaddr for n in self.bootstrap_nodes]
        self.config_path.write_text(config_toml(self.port, boot, self.settings), "utf-8")
        base = list(self.command) or os.environ.get(NODE_CMD_ENV, "").split() or list(CLI)
        cmd = [*base, "run", "--config", str(self.config_path), "--data-dir",
               str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts + 1} port={self.port} ----\n".encode())
            log.flush()
            proc = await trio.lowlevel.open_process(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.proc = proc
        self.starts += 1
        try:
            with trio.fail_after(START_TIMEOUT_S):
                line = await _read_line(proc)
        except trio.TooSlowError:
            await self.kill()
            raise NodeStartError(f"node {self.name} printed no ready line within "
                                 f"{START_TIMEOUT_S:.0f} s:\n{self.log_tail()}") from None
        if not line.startswith(READY_PREFIX):
            await self.kill()
            raise NodeStartError(f"node {self.name} exited before it was ready "
                                 f"(rc={proc.returncode}):\n{self.log_tail()}")
        self.ready_wall = time.time()
        self.ready = json.loads(line[len(READY_PREFIX):])
        addr = self.multiaddr  # /ip4/127.0.0.1/tcp/PORT/p2p/ID
        self.port = int(addr.split("/tcp/")[1].split("/")[0])
        # One round trip through the socket: the daemon prints its ready line just before
        # it installs its SIGTERM handler, so a signal sent at once would kill it
        # uncleanly; once it answers a call, the handler is in place.
        await self.status()

    async def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is reaped."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            await _close_stdout(proc)

    async def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM and wait; killed if it takes longer than ``grace``. The exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await proc.wait()
            if proc.returncode is None:
                await self.kill()
                return None
        with trio.CancelScope(shield=True):
            await _close_stdout(proc)
        return proc.returncode

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the running process has used (Linux /proc), else None."""
        if not self.running:
            return None
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    # -- the query socket
    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        async with open_query_client(self.socket_path) as client:
            return await client.call(method, params)

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("node.status")
        return result

    async def events_count(self) -> int:
        return int((await self.status())["events"])

    async def submit(self, events: Sequence[Event], *, batch: int = 100) -> dict[str, int]:
        """Submit in batches through ``events.submit``; totals of the outcomes."""
        totals = {"new": 0, "duplicate": 0, "rejected": 0}
        async with open_query_client(self.socket_path) as client:
            for i in range(0, len(events), batch):
                part = [e.to_json() for e in events[i:i + batch]]
                result = await client.call("events.submit", {"events": part})
                for k in totals:
                    totals[k] += int(result[k])
        return totals

    async def states(self, piths: Iterable[str]) -> dict[str, str | None]:
        """state_sha256 of each record as this node serves it (None: not found)."""
        out: dict[str, str | None] = {}
        async with open_query_client(self.socket_path) as client:
            for pith in piths:
                out[pith] = await _state_sha(client, pith)
        return out


async def _state_sha(client: QueryClient, pith: str) -> str | None:
    try:
        result = await client.call("record.state", {"id": pith})
    except QuerySocketError as exc:
        if "no record" in str(exc) or "no state" in str(exc):
            return None
        raise
    return str(result["state_sha256"])


def _bind_failure(log_tail: str) -> bool:
    return "Address already in use" in log_tail or "could not listen" in log_tail \
        or "network layer failed" in log_tail


async def _read_line(proc: trio.Process) -> bytes:
    """The first line of the process's stdout (b"" if it exits first)."""
    assert proc.stdout is not None
    buf = b""
    while b"\n" not in buf:
        data = await proc.stdout.receive_some(4096)
        if not data:
            await proc.wait()
            return b""
        buf += data
        if len(buf) > MAX_READY_LINE:
            raise NodeStartError("the ready line is implausibly long")
    # The rest of stdout ("open ... in a browser") is left in the pipe: the daemon writes
    # nothing else, and closing our end would make its next write fail.
    return buf.split(b"\n", 1)[0]


async def _close_stdout(proc: trio.Process) -> None:
    if proc.stdout is not None:
        await proc.stdout.aclose()


# ---------------------------------------------------------------------------- cluster


class Cluster:
    """Nodes under one root directory; ``async with Cluster(...)`` kills them all on exit."""

    def __init__(self, root: Path, keys: SynthKeys, settings: NodeSettings | None = None,
                 *, spec_name: str = "pith-synth") -> None:
        self.root = root
        self.keys = keys
        self.settings = settings or NodeSettings()
        self.spec_toml = keys.spec_toml(spec_name)
        self.spec = keys.spec(spec_name)
        self.nodes: list[NodeProcess] = []

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.kill_all()
        if exc is not None:  # shown by pytest with the failure
            for node in self.nodes:
                print(f"==== log tail of {node.name} ====\n{node.log_tail(40)}")

    def add(self, name: str, *, bootstrap: Sequence[NodeProcess] = (),
            command: Sequence[str] = (), **overrides: Any) -> NodeProcess:
        """Lay out a node's data directory (network.toml of the synth keys). ``overrides``
        replace fields of the cluster's :class:`NodeSettings` for this node; ``command`` see
        :class:`NodeProcess`."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "network.toml").write_text(self.spec_toml, "utf-8")
        settings = replace(self.settings, **overrides) if overrides else self.settings
        node = NodeProcess(name, data_dir, settings, bootstrap, command)
        self.nodes.append(node)
        return node

    async def start(self, *nodes: NodeProcess) -> None:
        """Start nodes concurrently (their bootstrap nodes must already be running)."""
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.start)

    async def stop(self, *nodes: NodeProcess) -> dict[str, int | None]:
        """SIGTERM nodes concurrently; their exit codes."""
        codes: dict[str, int | None] = {}

        async def one(node: NodeProcess) -> None:
            codes[node.name] = await node.stop()

        async with trio.open_nursery() as nursery:
            for node in nodes or tuple(self.nodes):
                nursery.start_soon(one, node)
        return codes

    async def kill_all(self) -> None:
        """SIGKILL every process still running and reap it (shielded: runs on failure)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.returncode is None:
                node.proc.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            for node in self.nodes:
                await node.kill()

    # -- convergence
    async def wait_events(self, nodes: Sequence[NodeProcess], count: int, timeout: float,
                          what: str = "event counts") -> float:
        """Wait until every node in ``nodes`` stores exactly ``count`` events."""
        last: dict[str, int] = {}

        async def all_there() -> bool:
            for node in nodes:
                last[node.name] = await node.events_count()
            return all(v == count for v in last.values())

        return await wait_until(all_there, timeout, what=f"{what} == {count}",
                                describe=lambda: str(last))

    async def wait_connected(self, want: Mapping[NodeProcess, int], timeout: float) -> float:
        """Wait until each node has at least the given number of connected peers."""
        last: dict[str, int] = {}

        async def connected() -> bool:
            for node in want:
                last[node.name] = int((await node.status())["peers"])
            return all(last[node.name] >= n for node, n in want.items())

        return await wait_until(connected, timeout, what="peer connections",
                                describe=lambda: str(last))

    async def state_mismatches(self, nodes: Sequence[NodeProcess],
                               expected: Mapping[str, str]) -> list[str]:
        """Every (node, record) whose served state differs from ``expected``."""
        problems: list[str] = []
        for node in nodes:
            got = await node.states(expected)
            for pith, sha in expected.items():
                if got[pith] != sha:
                    problems.append(f"{node.name} {pith}: {got[pith]} != {sha}")
        return problems
