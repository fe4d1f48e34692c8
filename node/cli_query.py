"""CLI commands that ask a running node over its query socket.

``status``, ``peers``, ``get ID``, ``bundle ID``, ``events ID``, ``explain ID``,
``submit FILE|-``, ``sync [--peer ID]`` and ``watch``. Every command takes ``--socket PATH``
(default ``<data dir>/node.sock``, see :mod:`pithnode.node.paths`), ``--data-dir DIR``,
``--timeout SECONDS`` and ``--json`` (one JSON document on stdout; ``watch --json`` prints one
JSON object per line).

Exit codes: 0 success, 1 ``submit`` had rejected events, 2 the node refused the request (not
found, invalid input) or the answer was unusable, 3 no node is running at the socket.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pithnode.protocol.documents import MAX_DOCUMENT_BYTES
from pithnode.protocol.state import CURRENT_LISTS, served_json

from .cli_context import Context
from .cli_protocol import read_input
from .errors import CliError
from .paths import default_data_dir, socket_path
from .query_socket import (
    BUSY,
    MAX_REQUEST_BYTES,
    MAX_SUBMIT_EVENTS,
    NOT_FOUND,
    STORE_ERROR,
    ConnectionLost,
    NoNodeRunning,
    QuerySocketError,
    QueryTimeout,
    RpcError,
    SyncQueryClient,
    call_sync,
    encode_message,
)

DEFAULT_TIMEOUT_S = 60.0
#: Room left in a request line for the JSON-RPC envelope around a batch of events.
REQUEST_OVERHEAD_BYTES = 1024
START_HINT = "start one with 'pithnode run'"


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH",
                        help="the node's query socket (default: <data dir>/node.sock)")
    common.add_argument("--data-dir", metavar="DIR",
                        help="the node's data directory (default: $PITHNODE_DATA_DIR, else "
                             "$XDG_DATA_HOME/pithnode, else ~/.local/share/pithnode)")
    common.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S,
                        metavar="SECONDS",
                        help=f"give up when the node is silent this long (default "
                             f"{DEFAULT_TIMEOUT_S:.0f})")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    def add(name: str, handler: Callable[[argparse.Namespace, Context], int],
            help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help_text)
        p.set_defaults(handler=handler)
        return p

    add("status", cmd_status, "show the running node's status")
    add("peers", cmd_peers, "list the peers the node knows")
    p = add("get", cmd_get, "show a record (Pith Number, short form, arXiv id or DOI)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--state", action="store_true",
                   help="print the served state document, byte for byte")
    p = add("bundle", cmd_bundle, "print a record's served bundle document")
    p.add_argument("id", metavar="ID")
    p = add("events", cmd_events, "list a record's stored events")
    p.add_argument("id", metavar="ID")
    p = add("explain", cmd_explain, "why a record or event is (not) here")
    p.add_argument("id", metavar="ID", help="a record identifier or an event id")
    p = add("submit", cmd_submit, "submit signed events to the node")
    p.add_argument("file", metavar="FILE",
                   help="JSON Lines, a JSON array, a bundle or one event; - for stdin")
    p = add("sync", cmd_sync, "reconcile with peers now")
    p.add_argument("--peer", metavar="ID", help="only this peer (default: every connected)")
    p = add("watch", cmd_watch, "print the node's notifications until Ctrl-C")
    p.add_argument("--count", type=_positive_int, metavar="N",
                   help="stop after N notifications")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


# --------------------------------------------------------------------------- plumbing

def socket_of(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket).expanduser()
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    return socket_path(data_dir)


def _fail(exc: QuerySocketError, path: Path) -> NoReturn:
    """Map a query socket failure to the one line the user sees."""
    if isinstance(exc, NoNodeRunning):
        raise CliError(f"no pithnode is running at {path}", hint=START_HINT, code=3) from exc
    if isinstance(exc, RpcError):
        if exc.code == NOT_FOUND:
            raise CliError(exc.message if exc.message.startswith("not found")
                           else f"not found: {exc.message}") from exc
        if exc.code == BUSY:
            raise CliError(f"the node is busy: {exc.message}", hint="retry later") from exc
        if exc.code == STORE_ERROR:  # the message names the cause and the fix
            raise CliError(f"the node could not use its store: {exc.message}") from exc
        raise CliError(f"the node refused the request: {exc.message}") from exc
    if isinstance(exc, QueryTimeout):
        raise CliError(f"{exc} (socket {path})", hint="raise --timeout or check the node's "
                       "log") from exc
    if isinstance(exc, ConnectionLost):
        raise CliError(f"{exc} (socket {path})", hint="check the node's log") from exc
    raise CliError(f"{exc} (socket {path})") from exc


def rpc(args: argparse.Namespace, method: str, params: Mapping[str, Any] | None = None
        ) -> Any:
    path = socket_of(args)
    try:
        return call_sync(path, method, params, timeout=args.timeout)
    except QuerySocketError as exc:
        _fail(exc, path)
    except PermissionError as exc:
        raise CliError(f"cannot connect to {path}: permission denied",
                       hint="run as the user that runs the node") from exc
    except OSError as exc:
        raise CliError(f"cannot connect to {path}: {exc.strerror or exc}") from exc


def rpc_fields(args: argparse.Namespace, method: str, params: Mapping[str, Any] | None,
               **fields: type) -> dict[str, Any]:
    """An object result whose named members have the given types, or a one-line error."""
    result = rpc(args, method, params)
    for name, kind in fields.items():
        if not isinstance(result, dict) or not isinstance(result.get(name), kind):
            raise CliError(f"the node's answer to {method} lacks a usable {name!r}",
                           hint="is the node the same version as this command?")
    return dict(result)


def _print_json(ctx: Context, value: Any) -> None:
    ctx.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "-"
    return str(value)


def _cell(value: Any) -> Text:
    """A table cell shown literally (titles and ids may contain rich markup brackets)."""
    return Text(_text(value))


def _key_values(console: Console, rows: Mapping[str, Any], title: str | None = None) -> None:
    table = Table(show_header=False, box=None, title=title, title_justify="left",
                  pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(Text(key.replace("_", " ")), _cell(value))
    console.print(table)


# --------------------------------------------------------------------------- commands

def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    status = rpc(args, "node.status")
    if args.json:
        _print_json(ctx, status)
    else:
        _key_values(ctx.console, status if isinstance(status, dict) else {"status": status},
                    title="pithnode")
    return 0


def cmd_peers(args: argparse.Namespace, ctx: Context) -> int:
    peers = rpc_fields(args, "node.peers", None, peers=list)["peers"]
    if args.json:
        _print_json(ctx, peers)
        return 0
    if not peers:
        ctx.stdout.write("no known peers\n")
        return 0
    table = Table(show_header=True, header_style="bold")
    for col in ("peer", "connected", "last sync", "received", "rejected", "addresses"):
        table.add_column(col, overflow="fold")
    for p in (p for p in peers if isinstance(p, dict)):
        table.add_row(_cell(p.get("peer_id")), _cell(p.get("connected")),
                      _cell(p.get("last_sync")), _cell(p.get("received")),
                      _cell(p.get("rejected")), _cell(p.get("addrs")))
    ctx.console.print(table)
    return 0


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def record_summary(pith_number: str, state: Mapping[str, Any], state_sha256: str
                   ) -> dict[str, Any]:
    """What ``get`` shows about a state document: the title is the newest applied graph
    snapshot's ``paper.title``."""
    current = _obj(state.get("current"))
    title = None
    for entry in reversed(_list(current.get("graph_snapshots"))):
        paper = _obj(_obj(_obj(_obj(entry).get("payload")).get("graph_snapshot")).get("paper"))
        if isinstance(paper.get("title"), str):
            title = paper["title"]
            break
    counts = {k: state.get(k) for k in ("event_count", "valid_event_count",
                                        "invalid_event_count", "equivocation_count")}
    lists = {name: len(_list(current.get(name))) for name in CURRENT_LISTS}
    return {"pith_number": pith_number, "title": title, "state_sha256": state_sha256,
            "counts": counts, "lists": {k: n for k, n in lists.items() if n},
            "aliases": [a for a in _list(current.get("source_aliases")) if isinstance(a, dict)]}


def cmd_get(args: argparse.Namespace, ctx: Context) -> int:
    result = rpc_fields(args, "record.state", {"id": args.id}, pith_number=str,
                        state_sha256=str, state=dict)
    state = result["state"]
    if args.state:
        ctx.stdout.write(served_json(state).decode("utf-8"))
        ctx.stdout.flush()
        return 0
    summary = record_summary(result["pith_number"], state, result["state_sha256"])
    if args.json:
        _print_json(ctx, summary)
        return 0
    console = ctx.console
    rows = {"pith number": summary["pith_number"], "title": summary["title"],
            "state sha256": summary["state_sha256"]}
    rows.update({k: v for k, v in summary["counts"].items()})
    rows.update({k: v for k, v in summary["lists"].items()})
    grid = Table(show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows.items():
        grid.add_row(Text(key.replace("_", " ")), _cell(value))
    console.print(Panel(grid, title=Text(summary["title"] or summary["pith_number"]),
                        title_align="left", expand=False))
    if summary["aliases"]:
        table = Table(show_header=True, header_style="bold", title="aliases",
                      title_justify="left")
        for col in ("kind", "value", "since"):
            table.add_column(col)
        for a in summary["aliases"]:
            table.add_row(_cell(a.get("alias_kind")), _cell(a.get("alias_value")),
                          _cell(a.get("created_at")))
        console.print(table)
    return 0


def cmd_bundle(args: argparse.Namespace, ctx: Context) -> int:
    result = rpc_fields(args, "record.bundle", {"id": args.id}, bundle=dict)
    ctx.stdout.write(served_json(result["bundle"]).decode("utf-8"))
    ctx.stdout.flush()
    return 0


def cmd_events(args: argparse.Namespace, ctx: Context) -> int:
    result = rpc_fields(args, "record.events", {"id": args.id}, events=list)
    if args.json:
        _print_json(ctx, result)
        return 0
    events = [e for e in result["events"] if isinstance(e, dict)]
    table = Table(show_header=True, header_style="bold",
                  title=Text(f"{result.get('pith_number')}: {len(events)} events"),
                  title_justify="left")
    for col in ("created at", "type", "signer", "event id"):
        table.add_column(col, overflow="fold")
    for e in events:
        signer = e.get("signer") or {}
        signer = signer if isinstance(signer, dict) else {}
        table.add_row(_cell(e.get("created_at")), _cell(e.get("event_type")),
                      Text(f"{_text(signer.get('signer_id'))} "
                           f"({_text(signer.get('signer_type'))})"),
                      _cell(e.get("event_id")))
    ctx.console.print(table)
    return 0


def _nested(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return isinstance(value, dict | list) and any(isinstance(x, dict | list) for x in items)


def _render_tree(console: Console, value: Any, indent: int = 0) -> None:
    """Nested objects as indented ``key: value`` lines (flat lists stay on one line)."""
    pad = "  " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if _nested(v):
                console.print(f"{pad}[bold]{escape(str(k))}[/bold]:")
                _render_tree(console, v, indent + 1)
            else:
                console.print(f"{pad}[bold]{escape(str(k))}[/bold]: {escape(_text(v))}")
    elif isinstance(value, list):
        for item in value:
            if _nested(item) or isinstance(item, dict):
                console.print(f"{pad}-")
                _render_tree(console, item, indent + 1)
            else:
                console.print(f"{pad}- {escape(_text(item))}")
    else:
        console.print(f"{pad}{escape(_text(value))}")


def cmd_explain(args: argparse.Namespace, ctx: Context) -> int:
    result = rpc(args, "explain", {"id": args.id})
    if args.json:
        _print_json(ctx, result)
    else:
        _render_tree(ctx.console, result)
    return 0


# --------------------------------------------------------------------------- submit

def load_submission(path: str, ctx: Context) -> list[Any]:
    """Events from JSON Lines, a JSON array, a bundle (or any object with ``events``) or one
    event object."""
    data = read_input(path, ctx, MAX_DOCUMENT_BYTES)
    text = _utf8(data, path)
    if not text.strip():
        raise CliError(f"{path} holds no events", hint="give JSON Lines, a JSON array or a "
                       "bundle")
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        whole = None
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(lines) < 2:
            raise CliError(f"{path} is not JSON", hint="give JSON Lines, a JSON array or a "
                           "bundle") from None
        events = []
        for n, line in lines:
            try:
                events.append(json.loads(line))
            except (ValueError, RecursionError):
                raise CliError(f"{path} line {n} is not JSON",
                               hint="one event per line") from None
        return events
    if isinstance(whole, list):
        events = whole
    elif isinstance(whole, dict) and isinstance(whole.get("events"), list):
        events = whole["events"]
    elif isinstance(whole, dict) and "state_type" in whole:
        raise CliError(f"{path} is a state document, whose entries carry no signatures",
                       hint="submit the record's bundle or its events instead")
    elif isinstance(whole, dict) and "event_type" in whole:
        events = [whole]
    else:
        raise CliError(f"{path} holds no events",
                       hint="give JSON Lines, a JSON array, a bundle or one event")
    if not events:
        raise CliError(f"{path} holds no events")
    return events


def _utf8(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text (byte {exc.start})") from exc


def batches(events: list[Any], *, limit: int = MAX_REQUEST_BYTES - REQUEST_OVERHEAD_BYTES,
            max_events: int = MAX_SUBMIT_EVENTS) -> list[list[Any]]:
    """Split events into requests that each fit in one request line."""
    out: list[list[Any]] = [[]]
    size = 0
    for n, ev in enumerate(events, 1):
        try:
            ev_size = len(encode_message(ev))
        except (TypeError, ValueError) as exc:
            raise CliError(f"event {n} cannot be sent as JSON: {exc}") from exc
        if ev_size > limit:
            raise CliError(f"event {n} is {ev_size} bytes, more than a request may carry "
                           f"({limit})", hint="events are at most 1 MiB")
        if out[-1] and (size + ev_size > limit or len(out[-1]) >= max_events):
            out.append([])
            size = 0
        out[-1].append(ev)
        size += ev_size
    return out


def cmd_submit(args: argparse.Namespace, ctx: Context) -> int:
    events = load_submission(args.file, ctx)
    outcomes: list[dict[str, Any]] = []
    for batch in batches(events):
        answer = rpc_fields(args, "events.submit", {"events": batch}, outcomes=list)
        outcomes.extend(o for o in answer["outcomes"] if isinstance(o, dict))
    counts = {k: sum(o.get("outcome") == k for o in outcomes)
              for k in ("new", "duplicate", "rejected")}
    if args.json:
        _print_json(ctx, {"outcomes": outcomes, **counts})
    else:
        for o in outcomes:
            line = f"{_text(o.get('outcome')):<10} {_text(o.get('event_id'))}"
            if o.get("reason"):
                line += f"  {o['reason']}"
            ctx.stdout.write(line + "\n")
        ctx.stdout.write(f"{counts['new']} new, {counts['duplicate']} duplicate, "
                         f"{counts['rejected']} rejected\n")
    return 1 if counts["rejected"] else 0


# --------------------------------------------------------------------------- sync, watch

def cmd_sync(args: argparse.Namespace, ctx: Context) -> int:
    result = rpc(args, "sync.trigger", {"peer": args.peer})
    if args.json:
        _print_json(ctx, result)
    else:
        _key_values(ctx.console, result if isinstance(result, dict) else {"result": result},
                    title="sync" + (f" with {args.peer}" if args.peer else ""))
    return 0


def describe_notification(note: Any) -> str:
    """One line for a person: kind, then the notification's other fields."""
    if not isinstance(note, dict):
        return _text(note)
    rest = " ".join(f"{k}={_text(v)}" for k, v in note.items() if k != "kind")
    return f"{_text(note.get('kind', 'notification'))} {rest}".rstrip()


def cmd_watch(args: argparse.Namespace, ctx: Context) -> int:
    path = socket_of(args)
    seen = 0
    try:
        with SyncQueryClient(path, timeout=args.timeout) as client:
            client.call("subscribe")
            if not args.json:
                ctx.stderr.write(f"watching {path} (Ctrl-C to stop)\n")
                ctx.stderr.flush()
            for params in client.notifications():
                dropped = params.get("dropped") or 0
                if args.json:
                    ctx.stdout.write(json.dumps(params, ensure_ascii=False) + "\n")
                else:
                    if dropped:
                        ctx.stdout.write(f"({dropped} notifications dropped: this watcher "
                                         "was too slow)\n")
                    ctx.stdout.write(describe_notification(params.get("notification")) + "\n")
                ctx.stdout.flush()
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
    except QuerySocketError as exc:
        _fail(exc, path)
    except OSError as exc:
        raise CliError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how watch normally ends
    return 0
