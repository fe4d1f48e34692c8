"""``pithnode run``: the long-lived node daemon."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from pithnode.protocol.spec import NetworkSpec
from pithnode.storage.errors import StoreError, StoreLocked

from .cli_context import Context, load_spec
from .cli_store import NETWORK_FILE, node_key
from .config import NodeConfig, load_config
from .errors import CliError, ConfigError, leaf_exception
from .logs import configure_logging
from .paths import default_data_dir

if TYPE_CHECKING:
    from .daemon import Node

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the node daemon until SIGINT or SIGTERM")
    p.add_argument("--config", metavar="FILE", help="node config (TOML); default: built-in "
                   "defaults, see configs/node.toml")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (overrides the config)")
    p.add_argument("--log-format", choices=("human", "json"), help="log line format")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=cmd_run)


def resolve_spec(ctx: Context, cfg: NodeConfig, data_dir: Path) -> NetworkSpec:
    """--network, else <data dir>/network.toml, else the config's, else the shipped spec."""
    if ctx.network is not None:
        return ctx.spec()
    if (data_dir / NETWORK_FILE).is_file():
        return load_spec(str(data_dir / NETWORK_FILE))
    if cfg.node.network is not None:
        return load_spec(str(cfg.node.network))
    return ctx.spec()


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    # the daemon's modules (libp2p, hypercorn) load only for this command: other commands
    # start in a fraction of the time
    from .daemon import Node, transport_config
    from .libp2p_transport import Libp2pTransport
    from .query_socket import SocketInUse, SocketPathError
    from .transport import TransportError

    try:
        cfg = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        raise CliError(str(exc), hint="fix the config file") from exc
    data_dir = (Path(args.data_dir).expanduser() if args.data_dir
                else cfg.node.data_dir or default_data_dir())
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the data directory {data_dir}: "
                       f"{exc.strerror or exc}") from exc
    spec = resolve_spec(ctx, cfg, data_dir)
    key = node_key(data_dir)
    configure_logging(args.log_level or cfg.log.level, args.log_format or cfg.log.format,
                      ctx.stderr)
    transport = Libp2pTransport(key.seed, transport_config(cfg))
    node = Node(cfg, data_dir=data_dir, spec=spec, key=key, transport=transport)
    try:
        trio.run(_main, node, ctx)
    except Exception as exc:  # the edge: known failures become one line, others propagate
        leaf = leaf_exception(exc)
        if isinstance(leaf, StoreLocked):
            raise CliError(f"another pithnode is running on {data_dir} ({leaf})",
                           hint="stop it first, or use another --data-dir") from exc
        if isinstance(leaf, (SocketInUse, SocketPathError)):
            raise CliError(str(leaf), hint="is another node running with this socket?") from exc
        if isinstance(leaf, StoreError):
            raise CliError(f"the store cannot be used: {leaf}",
                           hint="run 'pithnode fsck'") from exc
        if isinstance(leaf, TransportError):
            raise CliError(f"the network layer failed to start: {leaf}",
                           hint="check [p2p] listen in the config") from exc
        if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
            raise CliError(f"cannot serve HTTP on {cfg.http.host}:{cfg.http.port}: the port "
                           "is in use", hint="stop the other program, or set [http] port in "
                           "the config (0 picks a free port)") from exc
        raise
    return 0



async def _main(node: Node, ctx: Context) -> None:
    # The handlers go in before the ready line: whoever reads that line may signal at once
    # (a supervisor, a test harness), and must get a clean stop, not the default action.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(node.run)
            # What exists now lives as long as the node (modules, libp2p, the read cache's
            # maps): leave it out of the collector's full passes, which otherwise walk it
            # every few hundred milliseconds under load and stall the trio thread.
            gc.freeze()
            ctx.stdout.write(ready.line() + "\n")
            if ready.http:
                ctx.stdout.write(f"open {ready.http}/ in a browser\n")
            ctx.stdout.flush()
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    log.info("stopped cleanly")
