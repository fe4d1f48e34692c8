"""``make devnet``: three real ``pithnode run`` daemons on 127.0.0.1 that peer with each other.

DEVNET ONLY, LOOPBACK ONLY. The node keys are derived from public seeds,
``sha256(b"pithnode-devnet:node1")`` and so on, so their peer ids are stable and can be
written into the bootstrap lists of ``configs/devnet/node*.toml``; the same publicity means
anyone can compute the secret keys. They are for a local test network only.

What ``python -m pithnode.node.devnet`` does:

1. writes each node's ``node.key`` (from its seed) into ``.pithnode-devnet/nodeN``;
2. imports the real golden record and a small synthetic corpus into node1 only, with
   ``pithnode import`` (idempotent: a second run imports nothing new);
3. starts the three daemons one by one (``configs/devnet/nodeN.toml``: p2p on
   127.0.0.1:4101-4103, HTTP on 8101-8103) and waits for each one's ready line;
4. waits until every node holds every imported record with the same ``state_sha256`` and,
   when the nodes attest (``[attest] enabled``), each record carries every node's state
   attestation, so no node's own events are still on their way (asked over the query
   sockets, woken by their state notifications); prints a table and keeps running until
   Ctrl-C; with ``--check`` it stops the nodes and exits 0 instead.

``--ephemeral`` runs the same devnet on ports the kernel picks (port 0): configs derived from
``configs/devnet/*.toml`` are written into the data directories, and each node bootstraps to
the actual addresses of the nodes started before it. Tests use it, so they never collide with
a developer's devnet.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import trio
from rich.console import Console
from rich.table import Table

from pithnode.protocol.errors import DecodeError
from pithnode.protocol.keys import SigningKey

from . import cli
from .config import NodeConfig, load_config
from .errors import ConfigError, NodeError
from .query_socket import NOT_FOUND, QueryClient, QuerySocketError, RpcError, open_query_client
from .synth import SynthConfig, generate, synth_keys
from .transport import peer_id_from_ed25519_public_key

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = [
    "NODE_NAMES",
    "SEED_PREFIX",
    "SYNTH_SEED",
    "Convergence",
    "DevnetError",
    "Ready",
    "RunningNode",
    "attested_by",
    "config_to_toml",
    "derived_config",
    "devnet_key",
    "devnet_peer_id",
    "devnet_seed",
    "import_into",
    "install_node_key",
    "main",
    "open_devnet",
    "run_node",
    "wait_converged",
    "write_corpus",
]

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "devnet"
GOLDEN = ROOT / "tests" / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
DEFAULT_DATA_DIR = Path(".pithnode-devnet")
NODE_NAMES: tuple[str, ...] = ("node1", "node2", "node3")
#: Public seed prefix of the devnet keys: the key of "node1" is sha256(SEED_PREFIX + b"node1").
SEED_PREFIX = b"pithnode-devnet:"
#: Seed of the synthetic corpus (node/synth.py) whose test keys configs/devnet/network.toml
#: trusts.
SYNTH_SEED = 1
NETWORK_FILE = "network.toml"
CORPUS_FILE = "corpus.jsonl"
LOG_FILE = "node.log"
READY_PREFIX = b"pithnode ready: "
MAX_READY_BYTES = 64 << 10
STARTUP_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
DEFAULT_RECORDS = 20


class DevnetError(NodeError):
    """The devnet cannot be set up, a node failed, or the nodes did not converge."""


# -- keys --------------------------------------------------------------------------------------
def devnet_seed(name: str) -> bytes:
    """The PUBLIC seed of a devnet node's key (devnet only: anyone can compute it)."""
    return hashlib.sha256(SEED_PREFIX + name.encode("utf-8")).digest()


def devnet_key(name: str) -> SigningKey:
    return SigningKey(devnet_seed(name))


def devnet_peer_id(name: str) -> str:
    return str(peer_id_from_ed25519_public_key(devnet_key(name).public_key))


def install_node_key(data_dir: Path, key: SigningKey) -> bool:
    """Make ``data_dir/node.key`` hold ``key`` (mode 0600). True when it was (re)written."""
    path = data_dir / "node.key"
    try:
        if SigningKey.from_file_bytes(path.read_bytes()) == key:
            return False
    except (OSError, DecodeError):
        pass  # missing or unreadable: write it
    tmp = data_dir / f".node.key.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.to_file_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise DevnetError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return True


# -- configs -----------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def config_to_toml(cfg: NodeConfig) -> str:
    """TOML that :func:`pithnode.node.config.config_from_toml` parses back into ``cfg``."""
    lines = [f"# derived from {cfg.source} by pithnode.node.devnet"]
    for section in fields(cfg):
        if section.name == "source":
            continue
        table = getattr(cfg, section.name)
        lines.append(f"\n[{section.name}]")
        for item in fields(table):
            value = getattr(table, item.name)
            if value is not None:
                lines.append(f"{item.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def derived_config(cfg: NodeConfig, *, bootstrap: Sequence[str]) -> NodeConfig:
    """``cfg`` on ports the kernel picks (p2p and HTTP on port 0), bootstrapping to
    ``bootstrap``; everything else as configured."""
    listen = tuple(re.sub(r"/tcp/\d+", "/tcp/0", a) for a in cfg.p2p.listen)
    return replace(cfg, p2p=replace(cfg.p2p, listen=listen, bootstrap=tuple(bootstrap)),
                   http=replace(cfg.http, port=0))


# -- the corpus and imports --------------------------------------------------------------------
def write_corpus(path: Path, records: int, *, seed: int = SYNTH_SEED,
                 synth: SynthConfig | None = None) -> list[str]:
    """JSON Lines of a synthetic corpus (test keys of ``seed``); returns its Pith Numbers."""
    keys = synth_keys(seed)
    numbers: list[str] = []
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for rec in generate(keys, records, synth or SynthConfig(seed=seed)):
                numbers.append(rec.pith_number)
                for ev in rec.events:
                    f.write(ev.canonical_bytes() + b"\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DevnetError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return numbers


def import_into(data_dir: Path, network: Path, paths: Sequence[Path]) -> dict[str, int]:
    """``pithnode --network NETWORK import --data-dir DIR PATHS``; returns its summary."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--network", str(network), "import", "--data-dir", str(data_dir),
                     "--progress", "jsonl", *map(str, paths)], stdout=out, stderr=err)
    summary: dict[str, int] = {}
    for line in out.getvalue().splitlines():
        doc = json.loads(line)
        if "summary" in doc:
            summary = doc["summary"]
    if code != 0:
        raise DevnetError(f"import into {data_dir} failed (exit {code}): "
                          + (err.getvalue().strip() or "no message"))
    return summary


# -- running nodes -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunningNode:
    """A started daemon, as its ready line describes it."""

    name: str
    data_dir: Path
    peer_id: str
    listen: tuple[str, ...]
    socket: Path
    http: str
    log: Path
    pid: int


def pithnode_command() -> list[str]:
    """The ``pithnode`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("pithnode")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from pithnode.node.cli import entry; entry()"]


async def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = await trio.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


async def _read_ready(stream: trio.abc.ReceiveStream, name: str, log: Path) -> dict[str, Any]:
    buf = bytearray()
    while True:
        nl = buf.find(b"\n")
        if nl >= 0:
            line = bytes(buf[:nl])
            del buf[:nl + 1]
            if line.startswith(READY_PREFIX):
                ready: dict[str, Any] = json.loads(line[len(READY_PREFIX):])
                return ready
            continue
        if len(buf) > MAX_READY_BYTES:
            raise DevnetError(f"{name} wrote no ready line; see {log}")
        data = await stream.receive_some(4096)
        if not data:
            raise DevnetError(f"{name} stopped before it was ready; the end of {log}:\n"
                              + await _log_tail(log))
        buf += data


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    """Read (and drop) the rest of a daemon's stdout, so it never blocks on a full pipe."""
    while await stream.receive_some(4096):
        pass


async def run_node(name: str, config: Path, data_dir: Path, network: Path, *,
                   startup_timeout: float,
                   task_status: TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one ``pithnode run`` until cancelled (then SIGTERM, and it stops cleanly).

    ``task_status.started`` gives its ready line; its log (stderr) goes to
    ``data_dir/node.log``. Raises :class:`DevnetError` if it exits on its own."""
    log = data_dir / LOG_FILE
    cmd = [*pithnode_command(), "--network", str(network), "run", "--config", str(config),
           "--data-dir", str(data_dir)]
    log_file = await trio.open_file(log, "ab")
    try:
        async with trio.open_nursery() as nursery:
            # A session of its own: Ctrl-C in a terminal reaches only us, and we stop each
            # daemon with one SIGTERM (a second signal would cut its clean shutdown short).
            proc: trio.Process = await nursery.start(partial(
                trio.run_process, cmd, stdout=subprocess.PIPE, stderr=log_file.wrapped,
                check=False, start_new_session=True))
            assert proc.stdout is not None
            try:
                with trio.fail_after(startup_timeout):
                    ready = await _read_ready(proc.stdout, name, log)
            except trio.TooSlowError as exc:
                raise DevnetError(f"{name} was not ready within {startup_timeout:.0f} s; "
                                  f"see {log}") from exc
            task_status.started(RunningNode(
                name, data_dir, str(ready["peer_id"]), tuple(ready["listen"]),
                Path(ready["socket"]), str(ready["http"]), log, proc.pid))
            nursery.start_soon(_drain, proc.stdout)
    finally:
        with trio.CancelScope(shield=True):
            await log_file.aclose()
    # run_process returned, so the daemon exited without being asked to
    raise DevnetError(f"{name} exited with code {proc.returncode}; the end of {log}:\n"
                      + await _log_tail(log))


@asynccontextmanager
async def open_devnet(data_dir: Path, *, config_dir: Path = CONFIG_DIR,
                      names: Sequence[str] = NODE_NAMES, ephemeral: bool = False,
                      startup_timeout: float = STARTUP_TIMEOUT_S,
                      on_started: Callable[[RunningNode], None] | None = None
                      ) -> AsyncIterator[list[RunningNode]]:
    """Start the daemons one by one (each after the previous one is ready; ``on_started``
    hears of each); stop them all when the block ends. Keys must be installed first
    (:func:`install_node_key`)."""
    network = config_dir / NETWORK_FILE
    async with trio.open_nursery() as nursery:
        nodes: list[RunningNode] = []
        for name in names:
            node_dir = data_dir / name
            config = config_dir / f"{name}.toml"
            if ephemeral:
                try:
                    cfg = load_config(config)
                except ConfigError as exc:
                    raise DevnetError(str(exc)) from exc
                earlier = [a for n in nodes for a in n.listen]
                config = node_dir / "node.toml"
                text = config_to_toml(derived_config(cfg, bootstrap=earlier))
                await trio.Path(config).write_text(text, encoding="utf-8")
            node: RunningNode = await nursery.start(partial(
                run_node, name, config, node_dir, network, startup_timeout=startup_timeout))
            nodes.append(node)
            if on_started is not None:
                on_started(node)
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()


# -- convergence -------------------------------------------------------------------------------
#: A predicate on a served state document: is this node's copy settled?
Ready = Callable[[dict[str, Any]], bool]


def attested_by(fingerprints: Iterable[str]) -> Ready:
    """Settled once every one of these node keys (fingerprints) has a ``state_attestation``
    in the state. A node signs its attestations of a record together (node/attest.py), so
    when every copy is equal and holds every node's state attestation, no node's
    attestations of it are still on their way."""
    wanted = frozenset(fingerprints)

    def ready(doc: dict[str, Any]) -> bool:
        entries = (doc.get("current") or {}).get("replication_records") or []
        return wanted <= {e.get("signer", {}).get("public_key_fingerprint")
                          for e in entries if e.get("target") == "state"}
    return ready


@dataclass(slots=True)
class Convergence:
    """The ``state_sha256`` each node holds for each record (None: not held), and whether
    that copy is settled (see :func:`attested_by`)."""

    nodes: tuple[str, ...]
    records: tuple[str, ...]
    states: dict[str, dict[str, str | None]] = field(default_factory=dict)
    settled: dict[str, dict[str, bool]] = field(default_factory=dict)

    def agreed(self, record: str) -> bool:
        values = {self.states.get(n, {}).get(record) for n in self.nodes}
        return (len(values) == 1 and None not in values
                and all(self.settled.get(n, {}).get(record, False) for n in self.nodes))

    @property
    def converged(self) -> bool:
        return all(self.agreed(r) for r in self.records)

    def pending(self) -> list[str]:
        return [r for r in self.records if not self.agreed(r)]

    def set(self, node: str, record: str, found: tuple[str, bool] | None) -> None:
        self.states.setdefault(node, {})[record] = found[0] if found else None
        self.settled.setdefault(node, {})[record] = found[1] if found else False

    def table(self, title: str = "devnet convergence") -> Table:
        t = Table(title=title)
        t.add_column("record")
        for n in self.nodes:
            t.add_column(f"{n} state_sha256")
        t.add_column("")
        for r in self.records:
            cells = []
            for n in self.nodes:
                sha = self.states.get(n, {}).get(r)
                cells.append("[red]missing[/red]" if not sha else sha[:16] + "…" + (
                    "" if self.settled.get(n, {}).get(r) else " [yellow]settling[/yellow]"))
            ok = self.agreed(r)
            t.add_row(r, *cells, "[green]✓[/green]" if ok else "[red]✗[/red]")
        return t


async def _state_of(client: QueryClient, record: str, ready: Ready | None
                    ) -> tuple[str, bool] | None:
    """(state_sha256, settled) of a node's copy of a record; None when it has none."""
    try:
        result = await client.call("record.state", {"id": record})
    except RpcError as exc:
        if exc.code == NOT_FOUND:
            return None
        raise
    return str(result["state_sha256"]), ready is None or ready(result["state"])


async def _forward(index: int, client: QueryClient,
                   send: trio.MemorySendChannel[tuple[int, dict[str, Any]]]) -> None:
    async with send:
        seen_drops = 0
        async for note in client.notifications:
            if client.dropped_notifications != seen_drops:  # our own queue overflowed
                seen_drops = client.dropped_notifications
                note = {**note, "dropped": max(1, int(note.get("dropped", 0)))}
            await send.send((index, note))


async def wait_converged(nodes: Sequence[RunningNode], records: Sequence[str], *,
                         ready: Ready | None = None,
                         timeout: float = CONVERGE_TIMEOUT_S) -> Convergence:
    """Wait until every node holds every record with one ``state_sha256`` and, when
    ``ready`` is given, every copy satisfies it (e.g. :func:`attested_by`).

    Each node's query socket is subscribed first, then read once; after that a record is
    read again on a node only when that node notifies a new state of it (every record
    when notifications were dropped). Raises :class:`DevnetError` on timeout.
    """
    conv = Convergence(tuple(n.name for n in nodes), tuple(records))
    wanted = set(records)
    try:
        with trio.fail_after(timeout):
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(open_query_client(
                    n.socket, max_queued_notifications=1 << 16)) for n in nodes]
                send, recv = trio.open_memory_channel[tuple[int, dict[str, Any]]](1024)
                async with trio.open_nursery() as nursery, send, recv:
                    for i, client in enumerate(clients):
                        await client.call("subscribe")
                        nursery.start_soon(_forward, i, client, send.clone())
                    for node, client in zip(nodes, clients, strict=True):
                        for r in records:
                            conv.set(node.name, r, await _state_of(client, r, ready))
                    while not conv.converged:
                        i, note = await recv.receive()
                        inner = note.get("notification")
                        if note.get("dropped"):
                            stale = list(records)
                        elif (isinstance(inner, dict) and inner.get("kind") == "state"
                              and inner.get("pith_number") in wanted):
                            stale = [str(inner["pith_number"])]
                        else:
                            stale = []
                        for r in stale:
                            conv.set(nodes[i].name, r, await _state_of(clients[i], r, ready))
                    nursery.cancel_scope.cancel()
    except trio.TooSlowError as exc:
        raise DevnetError(f"the nodes did not converge within {timeout:.0f} s: "
                          f"{len(conv.pending())} of {len(records)} records differ or are "
                          "not attested by every node yet") from exc
    except QuerySocketError as exc:
        raise DevnetError(f"a node's query socket failed: {exc}") from exc
    return conv


async def node_statuses(nodes: Sequence[RunningNode]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in nodes:
        async with open_query_client(node.socket) as client:
            out.append(await client.call("node.status"))
    return out


def nodes_table(nodes: Sequence[RunningNode], statuses: Sequence[dict[str, Any]]) -> Table:
    t = Table(title="devnet nodes")
    for col in ("node", "peer id", "p2p", "http", "records", "events", "peers"):
        t.add_column(col, justify="right" if col in ("records", "events", "peers") else "left")
    for node, st in zip(nodes, statuses, strict=True):
        parts = node.listen[0].split("/") if node.listen else []
        p2p = f"{parts[2]}:{parts[4]}" if len(parts) > 4 else "—"
        t.add_row(node.name, node.peer_id, p2p, node.http, str(st.get("records")),
                  str(st.get("events")), str(st.get("peers")))
    return t


# -- the program -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Options:
    data_dir: Path
    config_dir: Path
    golden: Path
    records: int
    check: bool
    ephemeral: bool
    fresh: bool
    timeout: float


def _parse(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m pithnode.node.devnet",
                                description="Run three pithnode daemons on 127.0.0.1 that "
                                "peer with each other (DEVNET ONLY: public test keys).")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), metavar="DIR",
                   help="where node1..node3 keep their data (default: .pithnode-devnet)")
    p.add_argument("--config-dir", default=str(CONFIG_DIR), metavar="DIR",
                   help="node1.toml..node3.toml and network.toml (default: configs/devnet)")
    p.add_argument("--golden", default=str(GOLDEN), metavar="FILE",
                   help="the real golden record imported into node1")
    p.add_argument("--records", type=int, default=DEFAULT_RECORDS, metavar="N",
                   help=f"synthetic records imported into node1 (default {DEFAULT_RECORDS})")
    p.add_argument("--check", action="store_true",
                   help="exit 0 once the nodes have converged (stop them) instead of running")
    p.add_argument("--ephemeral", action="store_true",
                   help="ports from port 0; each node bootstraps to the ones started before")
    p.add_argument("--fresh", action="store_true", help="delete the nodes' data first")
    p.add_argument("--timeout", type=float, default=CONVERGE_TIMEOUT_S, metavar="S",
                   help=f"seconds to wait for convergence (default {CONVERGE_TIMEOUT_S:.0f})")
    a = p.parse_args(argv)
    if a.records < 0:
        p.error("--records must be >= 0")
    return Options(Path(a.data_dir), Path(a.config_dir), Path(a.golden), a.records, a.check,
                   a.ephemeral, a.fresh, a.timeout)


def prepare(opts: Options, console: Console) -> list[str]:
    """Keys in place, golden record and corpus imported into node1; the expected records."""
    for f in [*(f"{n}.toml" for n in NODE_NAMES), NETWORK_FILE]:
        if not (opts.config_dir / f).is_file():
            raise DevnetError(f"{opts.config_dir / f} is missing (pass --config-dir)")
    if not opts.golden.is_file():
        raise DevnetError(f"the golden record {opts.golden} is missing (pass --golden)")
    if opts.fresh:
        for name in NODE_NAMES:
            shutil.rmtree(opts.data_dir / name, ignore_errors=True)
        (opts.data_dir / CORPUS_FILE).unlink(missing_ok=True)
    for name in NODE_NAMES:
        node_dir = opts.data_dir / name
        try:
            node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DevnetError(f"cannot create {node_dir}: {exc.strerror or exc}") from exc
        install_node_key(node_dir, devnet_key(name))
        console.print(f"{name}  peer id {devnet_peer_id(name)}  "
                      f"[dim](key from the public seed sha256(b\"pithnode-devnet:{name}\"))[/dim]")
    corpus = opts.data_dir / CORPUS_FILE
    numbers = write_corpus(corpus, opts.records)
    golden_pn = str(json.loads(opts.golden.read_bytes())["pith_number"])
    summary = import_into(opts.data_dir / NODE_NAMES[0], opts.config_dir / NETWORK_FILE,
                          [opts.golden, corpus])
    console.print(f"node1: imported the golden record and {opts.records} synthetic records: "
                  f"{summary.get('events new', 0)} new events, "
                  f"{summary.get('events duplicate', 0)} already held")
    return [golden_pn, *numbers]


async def _run_devnet(opts: Options, records: Sequence[str], console: Console,
                      on_converged: Callable[[], None]) -> None:
    def announce(node: RunningNode) -> None:
        console.print(f"started {node.name}: {node.http}  p2p {node.listen[0]}  "
                      f"log {node.log}")

    console.print(f"starting {', '.join(NODE_NAMES)} one by one (a few seconds each)…")
    async with open_devnet(opts.data_dir, config_dir=opts.config_dir,
                           ephemeral=opts.ephemeral, on_started=announce) as nodes:
        statuses = await node_statuses(nodes)
        attesting = [st["key_fingerprint"] for st in statuses if st.get("attest") is not None]
        console.print(f"waiting for {len(records)} records to converge on all three nodes"
                      + (f", each attested by the {len(attesting)} attesting nodes"
                         if attesting else "") + "…")
        started = trio.current_time()
        conv = await wait_converged(nodes, records, timeout=opts.timeout,
                                    ready=attested_by(attesting) if attesting else None)
        took = trio.current_time() - started
        console.print(conv.table())
        console.print(nodes_table(nodes, await node_statuses(nodes)))
        console.print(f"[green]converged[/green]: {len(records)} records, the same "
                      f"state_sha256 on {len(nodes)} nodes ({took:.1f} s)")
        on_converged()
        if opts.check:
            return
        golden = records[0].rsplit(":", 1)[1]
        console.print("the devnet is running: "
                      + ", ".join(f"{n.http}/" for n in nodes)
                      + f"\ngolden record: {nodes[-1].http}/pith/{golden}\nCtrl-C stops it.")
        await trio.sleep_forever()


async def _serve(opts: Options, records: Sequence[str], console: Console) -> int:
    """Run the devnet; SIGINT or SIGTERM at any point stops every node cleanly (130)."""
    code = 130
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    console.print("stopping the devnet…")
                    nursery.cancel_scope.cancel()
                    return

            def converged() -> None:
                nonlocal code
                code = 0

            async def run() -> None:
                await _run_devnet(opts, records, console, converged)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(run)
    return code


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None) -> int:
    """Exit codes: 0 converged (and, without --check, stopped by Ctrl-C), 1 a node failed
    or the nodes did not converge, 130 interrupted before convergence."""
    opts = _parse(argv)
    out = stdout or sys.stdout
    console = Console(file=out, highlight=False, soft_wrap=True,
                      width=None if out.isatty() else 150)
    try:
        records = prepare(opts, console)
        return trio.run(_serve, opts, records, console)
    except KeyboardInterrupt:  # before the nodes started: nothing to stop
        console.print("interrupted")
        return 130
    except (DevnetError, ExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(leaf, DevnetError) for leaf in leaves):
            raise
        for leaf in leaves:
            console.print(f"[red]error:[/red] {leaf}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
