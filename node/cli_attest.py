"""CLI commands of checkpoints and proofs: ``checkpoint`` and ``proof RECORD --out FILE``.

``checkpoint`` prints the node's signed checkpoint note (C2SP signed note, docs/PROTOCOL.md
"Checkpoints"). It asks the running node over its query socket (method
``checkpoint.latest``); when no node runs, or the node does not offer the method, it opens
the store read-only and signs a checkpoint of what the store holds now with the node key of
the data directory. ``proof`` always works from the store, read-only: it writes a
self-contained record proof (bundle, state, signed checkpoint, inclusion path) that
``pithnode verify FILE`` checks offline.

Exit codes: 0 success, 2 unusable input or no store, 3 never (a missing node is not an
error here: the store answers instead).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pithnode.protocol.checkpoint import build_proof
from pithnode.protocol.errors import InputError, ProtocolError
from pithnode.protocol.keys import SigningKey
from pithnode.storage.errors import StoreError, StoreMissing
from pithnode.storage.store import Store

from .attest import SignedCheckpoint, make_checkpoint, record_states
from .cli_context import Context
from .cli_protocol import _write_atomic
from .cli_store import KEY_FILE, STORE_FILE, data_dir, node_key, store_spec
from .config import load_config
from .errors import CliError, ConfigError
from .paths import socket_path
from .query_socket import METHOD_NOT_FOUND, NoNodeRunning, QuerySocketError, RpcError, call_sync

__all__ = ["CHECKPOINT_METHOD", "register"]

#: The query socket method that returns the running node's latest checkpoint.
CHECKPOINT_METHOD = "checkpoint.latest"
DEFAULT_TIMEOUT_S = 60.0
#: Attempts at a proof whose store changed between its reads (a node writing meanwhile).
PROOF_ATTEMPTS = 3


def register(sub: Any) -> None:
    p = sub.add_parser("checkpoint", help="print this node's signed checkpoint (a C2SP note)")
    _common(p)
    p.add_argument("--socket", metavar="PATH",
                   help="the running node's query socket (default: <data dir>/node.sock)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"give up on a silent node after this long (default "
                        f"{DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("--offline", action="store_true",
                   help="do not ask a running node: sign a checkpoint of the store now")
    p.add_argument("--json", action="store_true", help="note, origin, size, root as JSON")
    p.set_defaults(handler=cmd_checkpoint)

    p = sub.add_parser("proof", help="write a self-contained offline proof of one record")
    p.add_argument("record", metavar="RECORD",
                   help="Pith Number (full or short), arXiv id or DOI")
    p.add_argument("--out", metavar="FILE", required=True, help="where to write the proof")
    _common(p)
    p.set_defaults(handler=cmd_proof)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR",
                   help="data directory (default: $PITHNODE_DATA_DIR, else "
                        "$XDG_DATA_HOME/pithnode, else ~/.local/share/pithnode)")
    p.add_argument("--config", metavar="FILE",
                   help="node config, for the mirror prefixes the checkpoint states "
                        "(default: every record)")


def _existing_key(directory: Path) -> SigningKey:
    if not (directory / KEY_FILE).exists():
        raise CliError(f"no node key in {directory}",
                       hint="run 'pithnode run' or 'pithnode import' with this --data-dir once")
    return node_key(directory)


def _prefixes(args: argparse.Namespace) -> tuple[str, ...]:
    try:
        cfg = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        raise CliError(str(exc), hint="fix the config file") from exc
    return cfg.p2p.mirror_prefixes


def _open_store(directory: Path, ctx: Context) -> Store:
    try:
        return Store(directory / STORE_FILE, store_spec(ctx, directory), readonly=True)
    except StoreMissing as exc:
        raise CliError(f"no store in {directory}", hint=exc.hint) from exc
    except StoreError as exc:
        raise CliError(f"the store cannot be read: {exc}", hint=exc.hint) from exc


def _sign(store: Store, key: SigningKey, prefixes: Sequence[str]) -> SignedCheckpoint:
    """A checkpoint of what the store holds now, signed with the node key (the CLI is an
    edge: its time is the wall clock)."""
    return make_checkpoint(record_states(store), network=store.spec.name, key=key,
                           prefixes=prefixes, signed_at=int(time.time()))


def _from_node(args: argparse.Namespace, ctx: Context) -> dict[str, Any] | None:
    """The running node's checkpoint, or None when no node (with that method) answers."""
    path = Path(args.socket).expanduser() if args.socket else socket_path(data_dir(args))
    try:
        result = call_sync(path, CHECKPOINT_METHOD, None, timeout=args.timeout)
    except NoNodeRunning:
        return None
    except RpcError as exc:
        if exc.code == METHOD_NOT_FOUND:
            ctx.stderr.write("the running node offers no checkpoint method; signing one of "
                             "the store instead\n")
            return None
        raise CliError(f"the node refused the request: {exc.message}") from exc
    except QuerySocketError as exc:
        raise CliError(f"{exc} (socket {path})", hint="check the node's log") from exc
    except OSError as exc:
        raise CliError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    if not isinstance(result, dict) or not isinstance(result.get("note"), str):
        raise CliError("the node's answer lacks a checkpoint note",
                       hint="is the node the same version as this command?")
    return dict(result, source="node")


def cmd_checkpoint(args: argparse.Namespace, ctx: Context) -> int:
    found = None if args.offline else _from_node(args, ctx)
    if found is None:
        directory = data_dir(args)
        key = _existing_key(directory)
        with _open_store(directory, ctx) as store:
            cp = _sign(store, key, _prefixes(args))
        found = dict(cp.to_json(), source="store")
    if args.json:
        ctx.stdout.write(json.dumps(found, indent=2) + "\n")
    else:
        ctx.stdout.write(found["note"])
    return 0


def cmd_proof(args: argparse.Namespace, ctx: Context) -> int:
    directory = data_dir(args)
    key = _existing_key(directory)
    prefixes = _prefixes(args)
    with _open_store(directory, ctx) as store:
        try:
            subject = store.resolve(args.record)
        except InputError as exc:
            raise CliError(f"{args.record!r} is not a record identifier: {exc}") from exc
        if subject is None:
            raise CliError(f"no record {args.record} in {directory}")
        data = None
        for _ in range(PROOF_ATTEMPTS):
            state, bundle = store.state(subject), store.bundle(subject)
            if state is None or bundle is None:
                raise CliError(f"the store holds no state of {subject}",
                               hint="run 'pithnode fsck'")
            cp = _sign(store, key, prefixes)
            try:
                data = build_proof(bundle=bundle, state=state.data, note=cp.note,
                                   signer_public_key=key.public_key, tree=cp.tree)
                break
            except ProtocolError:  # the record changed between the reads: read again
                continue
        if data is None:
            raise CliError(f"the state of {subject} kept changing while the proof was made",
                           hint="try again")
    _write_atomic(Path(args.out), data)
    doc = json.loads(data)
    ctx.stderr.write(f"wrote {args.out}: proof of {subject}, state_sha256 "
                     f"{doc['state']['state_sha256']}, leaf {doc['leaf_index']} of "
                     f"{doc['tree_size']}, signed by {cp.origin}\n")
    return 0
