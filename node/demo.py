"""``make run``: a working node for a newcomer, with the real golden record and a demo corpus.

``python -m pithnode.node.demo --data-dir DIR [--config FILE] [--records N] [--http-port N]``

1. creates the data directory and the node key (``node.key``, as every command does);
2. writes ``DIR/network.toml``: the shipped mainnet spec, renamed ``pith-demo``, plus the
   synthetic corpus' test registry key, its test importer and this node's own key as trusted
   importers (why: see the comment written into the file, and docs/PROTOCOL.md section 7);
3. imports the golden record (``tests/fixtures/32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json``) and a
   synthetic corpus with ``pithnode import`` itself; both are deterministic, so a second run
   imports nothing new;
4. runs the node (``configs/node.toml``: HTTP on 127.0.0.1:8080) in this process until
   Ctrl-C, and prints the pages to open. When the HTTP port is taken it says so and serves on
   a free port instead (``--http-port`` chooses another).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import trio

from pithnode.protocol.errors import SpecError
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.spec import spec_from_toml
from pithnode.storage.errors import StoreError, StoreLocked

from . import cli
from .cli_context import Context, default_network_text
from .cli_run import resolve_spec
from .cli_store import NETWORK_FILE, node_key
from .config import NodeConfig, load_config
from .daemon import Node, Ready, transport_config
from .errors import CliError, ConfigError, leaf_exception
from .libp2p_transport import Libp2pTransport
from .logs import configure_logging
from .synth import SynthConfig, SynthKeys, generate, synth_keys
from .transport import TransportError

__all__ = ["DEMO_NETWORK_NAME", "DEMO_SEED", "demo_spec_toml", "main"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "node.toml"
GOLDEN = ROOT / "tests" / "fixtures" / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
DEFAULT_RECORDS = 200
#: Seed of the demo corpus (node/synth.py): its test keys are public, like the corpus.
DEMO_SEED = 2026
DEMO_NETWORK_NAME = "pith-demo"
CORPUS_FILE = "demo-corpus.jsonl"
MARKER = "# Written by `make run` (python -m pithnode.node.demo)"
_NAME_LINE = re.compile(r'(?m)^name = "pith-mainnet"$')


def demo_spec_toml(node: SigningKey, keys: SynthKeys, *, seed: int = DEMO_SEED) -> str:
    """The shipped mainnet spec, renamed, plus the demo's three trust additions."""
    shipped, found = _NAME_LINE.subn(f'name = "{DEMO_NETWORK_NAME}"', default_network_text(),
                                     count=1)
    if found != 1:
        raise CliError('the shipped network spec has no line name = "pith-mainnet"',
                       hint="update pithnode.node.demo to the new spec")
    registry = keys.spec().registry_keys[0]
    return f"""{MARKER} on every start; edit configs, not this file
# (delete the first line to keep your own edits).
#
# The shipped mainnet spec (configs/network.toml) below, with two changes:
#
# 1. The name is "{DEMO_NETWORK_NAME}": this spec trusts test keys whose secrets anyone can
#    compute, so the demo node must never share mainnet's gossip topic.
#
# 2. Three trust additions at the end. docs/PROTOCOL.md section 7 (Trust): Pith's state
#    documents carry no per-event signatures, so a registry event (record_created, a graph
#    snapshot) is never applied on its own; it enters a state only inside an import
#    attestation signed by a key in [[trusted_importers]]. The mainnet list starts empty, so
#    on the plain mainnet spec, importing the golden record would admit none of its registry
#    events and its page would show no paper. Hence:
#    - this node's own key (node.key) as a trusted importer: `pithnode import` of the real
#      golden record signs an attestation that this spec admits. Pith's real registry key
#      still verifies the record's receipt; that part of trust is unchanged;
#    - the synthetic corpus' TEST registry key (node/synth.py, seed {seed}), which signs its
#      receipts, beside Pith's real key;
#    - the corpus' TEST importer, whose attestations carry the corpus' registry events.

{shipped.rstrip()}

# ---- added for the demo (see the top of this file) -----------------------------------------

# The synthetic corpus' TEST registry key (never Pith's).
[[registry_keys]]
key_id = "{registry.key_id}"
signer_id = "{registry.signer_id}"
public_key_hex = "{registry.public_key.hex()}"
fingerprint_hex = "{registry.fingerprint}"

# The synthetic corpus' TEST importer.
[[trusted_importers]]
name = "synth-importer (test key, seed {seed})"
public_key_hex = "{keys.importer.public_key.hex()}"

# This node (its node.key): its imports admit the golden record's registry events.
[[trusted_importers]]
name = "this demo node"
public_key_hex = "{node.public_key.hex()}"
"""


def write_network(data_dir: Path, text: str, out: IO[str]) -> None:
    """Write the demo spec unless the file is the user's own (it lacks the marker)."""
    path = data_dir / NETWORK_FILE
    try:
        spec_from_toml(text, source=str(path))
    except SpecError as exc:
        raise CliError(f"the demo network spec does not parse: {exc}") from exc
    try:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current is not None and not current.startswith(MARKER):
            out.write(f"using your own {path} (it was not written by make run)\n")
            return
        if current != text:
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_corpus(path: Path, records: int, seed: int = DEMO_SEED) -> list[tuple[str, str]]:
    """The synthetic corpus as JSON Lines (deterministic); its (Pith Number, title)s."""
    out: list[tuple[str, str]] = []
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for rec in generate(synth_keys(seed), records, SynthConfig(seed=seed)):
                out.append((rec.pith_number, rec.title))
                f.writelines(ev.canonical_bytes() + b"\n" for ev in rec.events)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return out


# -- serving -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pages:
    golden_suffix: str
    golden_title: str
    demo_suffix: str | None
    demo_title: str | None
    records: int



def _make_node(cfg: NodeConfig, data_dir: Path, ctx: Context, key: SigningKey) -> Node:
    spec = resolve_spec(ctx, cfg, data_dir)
    transport = Libp2pTransport(key.seed, transport_config(cfg))
    return Node(cfg, data_dir=data_dir, spec=spec, key=key, transport=transport)


async def _start(nursery: trio.Nursery, cfg: NodeConfig, data_dir: Path, ctx: Context,
                 key: SigningKey) -> Ready:
    """Start the node; when its HTTP port is taken, say so and use a free one."""
    try:
        ready: Ready = await nursery.start(_make_node(cfg, data_dir, ctx, key).run)
        return ready
    except ExceptionGroup as group:
        leaf = leaf_exception(group)
        if not (isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE
                and cfg.http.port != 0):
            raise
    ctx.stderr.write(
        f"\nport {cfg.http.port} on {cfg.http.host} is already in use (another program, or "
        "another pithnode); serving the web pages on a free port instead.\n"
        f"To choose the port: make run RUN_ARGS='--http-port 8081', or set [http] port in "
        f"a copy of {cfg.source} and pass it with --config.\n\n")
    cfg = replace(cfg, http=replace(cfg.http, port=0))
    ready = await nursery.start(_make_node(cfg, data_dir, ctx, key).run)
    return ready


def _banner(ready: Ready, pages: Pages, data_dir: Path, wanted_port: int) -> str:
    base = ready.http or ""
    lines = [
        "",
        f"pithnode is running: network {ready.network}, data in {data_dir}",
        f"  peer id       {ready.peer_id}",
        f"  status page   {base}/",
        f"  golden record {base}/pith/{pages.golden_suffix}",
        f"                ({pages.golden_title!r}, Pith's real record)",
    ]
    if pages.demo_suffix is not None:
        lines += [f"  demo record   {base}/pith/{pages.demo_suffix}",
                  f"                ({pages.demo_title!r}, one of {pages.records} synthetic "
                  "records)"]
    lines += [
        f"  state.json    {base}/pith/{pages.golden_suffix}/state.json",
        f"  query socket  {ready.socket}",
        f"                try: .venv/bin/pithnode status --data-dir {data_dir}",
        "Ctrl-C stops the node; `make run` again restarts it on the same data.",
        "",
    ]
    if wanted_port and not base.endswith(f":{wanted_port}"):
        lines.insert(2, f"  NOTE: port {wanted_port} was in use, so the pages are on a free "
                        "port (choose one: make run RUN_ARGS='--http-port N')")
    return "\n".join(lines)


async def _serve(cfg: NodeConfig, data_dir: Path, ctx: Context, key: SigningKey,
                 pages: Pages) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            ready = await _start(nursery, cfg, data_dir, ctx, key)
            ctx.stdout.write(_banner(ready, pages, data_dir, cfg.http.port) + "\n")
            ctx.stdout.flush()
            async for _ in signals:
                ctx.stderr.write("stopping…\n")
                nursery.cancel_scope.cancel()
                break


def serve(cfg: NodeConfig, data_dir: Path, ctx: Context, pages: Pages) -> int:
    key = node_key(data_dir)
    configure_logging(cfg.log.level, cfg.log.format, ctx.stderr)
    try:
        trio.run(_serve, cfg, data_dir, ctx, key, pages)
    except Exception as exc:  # the edge: known failures become one line, others propagate
        leaf = leaf_exception(exc)
        if isinstance(leaf, StoreLocked):
            raise CliError(f"another pithnode is running on {data_dir}",
                           hint="stop it first, or use another DATA_DIR") from exc
        if isinstance(leaf, StoreError):
            raise CliError(f"the store cannot be used: {leaf}",
                           hint=f"run '.venv/bin/pithnode fsck --data-dir {data_dir}'") from exc
        if isinstance(leaf, TransportError):
            raise CliError(f"the network layer failed to start: {leaf}",
                           hint="check [p2p] listen in the config") from exc
        if isinstance(leaf, OSError):
            raise CliError(f"cannot serve: {leaf.strerror or leaf}",
                           hint="try another --http-port") from exc
        raise
    return 0


# -- the program -------------------------------------------------------------------------------
def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pithnode.node.demo",
                                description="Prepare a demo data directory (golden record, "
                                "synthetic corpus) and run a node on it until Ctrl-C.")
    p.add_argument("--data-dir", required=True, metavar="DIR")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="FILE",
                   help="node config (default: configs/node.toml)")
    p.add_argument("--records", type=int, default=DEFAULT_RECORDS, metavar="N",
                   help=f"synthetic records to import (default {DEFAULT_RECORDS})")
    p.add_argument("--http-port", type=int, metavar="PORT",
                   help="serve the web pages on this port (default: the config's, 8080)")
    p.add_argument("--golden", default=str(GOLDEN), metavar="FILE",
                   help="the golden record to import")
    p.add_argument("--no-serve", action="store_true",
                   help="prepare and import only, do not run the node")
    args = p.parse_args(argv)
    if args.records < 0:
        p.error("--records must be >= 0")
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        p.error("--http-port must be 0..65535")
    return args


def run(args: argparse.Namespace, ctx: Context) -> int:
    data_dir = Path(args.data_dir).expanduser()
    golden = Path(args.golden)
    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:
        raise CliError(str(exc), hint="fix the config, or pass another with --config") from exc
    if args.http_port is not None:
        cfg = replace(cfg, http=replace(cfg.http, port=args.http_port))
    if not golden.is_file():
        raise CliError(f"the golden record {golden} is missing", hint="pass --golden FILE")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {data_dir}: {exc.strerror or exc}") from exc
    key = node_key(data_dir)
    write_network(data_dir, demo_spec_toml(key, synth_keys(DEMO_SEED)), ctx.stdout)
    corpus = write_corpus(data_dir / CORPUS_FILE, args.records)
    ctx.stdout.write(f"importing the golden record and {args.records} synthetic records into "
                     f"{data_dir} (already held events count as duplicates)\n")
    ctx.stdout.flush()
    code = cli.main(["import", "--data-dir", str(data_dir), str(golden),
                     str(data_dir / CORPUS_FILE)], stdout=ctx.stdout, stderr=ctx.stderr)
    if code != 0:
        return code
    doc = json.loads(golden.read_bytes())
    paper = doc["current"]["graph_snapshots"][-1]["payload"]["graph_snapshot"]["paper"]
    pages = Pages(doc["pith_number"].rsplit(":", 1)[1], str(paper.get("title")),
                  corpus[0][0].rsplit(":", 1)[1] if corpus else None,
                  corpus[0][1] if corpus else None, len(corpus))
    if args.no_serve:
        return 0
    return serve(cfg, data_dir, ctx, pages)


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None) -> int:
    args = _parse(argv)
    ctx = Context(stdout=stdout or sys.stdout, stderr=stderr or sys.stderr, stdin=None,
                  network=None)
    try:
        return run(args, ctx)
    except CliError as exc:
        line = f"error: {exc}" + (f" ({exc.hint})" if exc.hint else "")
        ctx.stderr.write(line + "\n")
        return exc.code
    except KeyboardInterrupt:
        ctx.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
