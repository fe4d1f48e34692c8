"""CLI commands of the store: ``import``, ``export`` and ``fsck``.

Every command takes ``--data-dir DIR`` (default: ``$PITHNODE_DATA_DIR``, else
``$XDG_DATA_HOME/pithnode``, else ``~/.local/share/pithnode``). The data directory holds
``store.sqlite`` and ``node.key`` (this node's Ed25519 key, made with mode 0600 on first
use). The network spec is ``--network FILE``, else ``DIR/network.toml`` when present, else
the shipped mainnet spec.

Exit codes: ``import`` 0 when every file was imported, 1 when some were skipped, 2 for
usage; ``fsck`` 0 when clean (or repaired), 1 when problems remain; ``export`` 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pithnode.protocol.errors import DecodeError
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.spec import NetworkSpec
from pithnode.storage.errors import StoreCorrupt, StoreError
from pithnode.storage.fsck import FsckReport
from pithnode.storage.results import DocumentResult, IngestResult, IngestSummary
from pithnode.storage.store import DEFAULT_BATCH_EVENTS, MAX_BATCH_EVENTS, Store

from .cli_context import Context, load_spec
from .errors import CliError
from .paths import default_data_dir

__all__ = ["KEY_FILE", "NETWORK_FILE", "STORE_FILE", "register"]

STORE_FILE = "store.sqlite"
KEY_FILE = "node.key"
NETWORK_FILE = "network.toml"
MAX_KEY_BYTES = 4096


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="import Pith documents and JSON Lines of events")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="bundle.json, state.json, JSON Lines of events, a directory "
                        "(walked in sorted order), or - for standard input")
    _data_dir_option(p)
    p.add_argument("--strict", action="store_true",
                   help="stop at the first file that cannot be imported")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_EVENTS, metavar="N",
                   help=f"events per committed batch (default {DEFAULT_BATCH_EVENTS}, "
                        f"at most {MAX_BATCH_EVENTS})")
    p.add_argument("--progress", choices=("auto", "bar", "plain", "jsonl", "none"),
                   default="auto",
                   help="auto: a bar on a terminal, else one line per file; jsonl: one JSON "
                        "line per committed batch on standard output")
    p.add_argument("--node-name", metavar="NAME",
                   help="signer_id of the import attestations (default: from the node key)")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("export", help="write every record as Pith's served files")
    _data_dir_option(p)
    p.add_argument("--out", metavar="DIR",
                   help="write pith/{suffix}/bundle.json, pith/{suffix}/state.json and "
                        ".well-known/pith/{suffix}/bundle.json under DIR")
    p.add_argument("--jsonl", metavar="FILE",
                   help="write every stored event, one per line (- for standard output)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("fsck", help="check the store; --repair rebuilds it from its objects")
    _data_dir_option(p)
    p.add_argument("--repair", action="store_true",
                   help="rebuild indexes and states from the objects, dropping damaged ones")
    p.add_argument("--verify-signatures", action="store_true",
                   help="also check every event's signature again (slow)")
    p.set_defaults(handler=cmd_fsck)


def _data_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR",
                   help="data directory (default: $PITHNODE_DATA_DIR, else "
                        "$XDG_DATA_HOME/pithnode, else ~/.local/share/pithnode)")


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()


def store_spec(ctx: Context, directory: Path) -> NetworkSpec:
    """``--network``, else the data directory's network.toml, else the shipped spec."""
    if ctx.network is None and (directory / NETWORK_FILE).is_file():
        return load_spec(str(directory / NETWORK_FILE))
    return ctx.spec()


def node_key(directory: Path) -> SigningKey:
    """The node's key, made on first use: written (mode 0600) and synced aside, then linked
    into place, so a crash never leaves a half-written key and two racing imports agree."""
    path = directory / KEY_FILE
    if not path.exists():
        key = SigningKey.generate()
        tmp = directory / f".{KEY_FILE}.tmp{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(key.to_file_bytes())
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # made meanwhile: use that one
                os.link(tmp, path)
        except OSError as exc:
            raise CliError(f"cannot create {path}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return SigningKey.from_file_bytes(data)
    except DecodeError as exc:
        raise CliError(f"{path}: {exc}", hint="restore the node key file, or move it away "
                       "to make a new one") from exc


def open_store(args: argparse.Namespace, ctx: Context, *, write: bool) -> Store:
    directory = data_dir(args)
    if write:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create {directory}: {exc.strerror or exc}") from exc
    spec = store_spec(ctx, directory)
    try:
        store = Store(directory / STORE_FILE, spec, readonly=not write)
    except StoreError as exc:
        raise _cli_error(exc) from exc
    if store.spec_changed:
        ctx.stderr.write(f"warning: the states in {directory / STORE_FILE} were merged under "
                         "another network spec; 'pithnode fsck --repair' re-merges them\n")
    return store


def _cli_error(exc: StoreError) -> CliError:
    return CliError(str(exc), hint=exc.hint, code=1 if isinstance(exc, StoreCorrupt) else 2)


# -- import ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Input:
    path: str  # as given / as walked; "-" for standard input
    size: int | None


def _inputs(paths: list[str]) -> list[_Input]:
    out: list[_Input] = []
    for given in paths:
        if given == "-":
            out.append(_Input("-", None))
            continue
        p = Path(given)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    f = Path(root) / name
                    if f.is_file():
                        out.append(_Input(str(f), f.stat().st_size))
        elif p.is_file():
            out.append(_Input(given, p.stat().st_size))
        elif p.exists():
            raise CliError(f"{given} is neither a file nor a directory")
        else:
            raise CliError(f"no such file or directory: {given}")
    return out


class _Counting:
    """A binary reader that counts what was read (for the progress bar)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._f.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int = -1, /) -> bytes:
        data = self._f.readline(size)
        self.count += len(data)
        return data


@dataclass(slots=True)
class _Totals:
    summary: IngestSummary = field(default_factory=IngestSummary)
    imported: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    registry_admitted: int = 0
    registry_not_admitted: int = 0
    attestations: int = 0
    unsigned: int = 0


class _Reporter:
    """Progress: a rich bar with rate on a terminal, plain lines or JSON lines otherwise."""

    def __init__(self, ctx: Context, mode: str, total: int | None) -> None:
        if mode == "auto":
            mode = "bar" if ctx.stderr.isatty() else "plain"
        self.ctx = ctx
        self.mode = mode
        self.events = 0
        self.started = time.monotonic()
        self.progress: Progress | None = None
        if mode == "bar":
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TextColumn("{task.fields[events]} events"),
                TextColumn("{task.fields[rate]} events/s"), TimeElapsedColumn(),
                console=Console(file=ctx.stderr), transient=True)
            self.task = self.progress.add_task("import", total=total, events=0, rate=0)
            self.progress.start()
        self.done_bytes = 0

    def batch(self, path: str, result: IngestResult, in_file: int, reader: _Counting) -> None:
        self.events += len(result.outcomes)
        if self.mode == "jsonl":
            self.ctx.stdout.write(json.dumps({
                "file": path, "committed": in_file, "new": result.new,
                "duplicate": result.duplicate, "rejected": result.rejected}) + "\n")
            self.ctx.stdout.flush()
        elif self.progress is not None:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            self.progress.update(self.task, completed=self.done_bytes + reader.count,
                                 events=self.events, rate=int(self.events / elapsed),
                                 description=_short(path))

    def file_done(self, path: str, res: DocumentResult, size: int) -> None:
        self.done_bytes += size
        s = res.summary
        if res.error is not None:
            msg = f"skipped {path}: {res.error}"
            if s.new or s.duplicate:
                msg += f" (the {s.new + s.duplicate} events before it are stored)"
            self._err(msg)
        elif self.mode == "plain":
            self.ctx.stderr.write(f"imported {path}: {s.new} new, {s.duplicate} duplicate, "
                                  f"{sum(s.rejected.values())} rejected\n")
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done_bytes)

    def _err(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            self.ctx.stderr.write(line + "\n")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _short(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    if not 0 < args.batch_size <= MAX_BATCH_EVENTS:
        raise CliError(f"--batch-size must be 1..{MAX_BATCH_EVENTS}")
    inputs = _inputs(args.paths)
    if sum(1 for i in inputs if i.path == "-") > 1:
        raise CliError("standard input (-) can be read only once")
    directory = data_dir(args)
    store = open_store(args, ctx, write=True)
    key = node_key(directory)
    node_id = args.node_name or f"pithnode:{key.fingerprint[:16]}"
    totals = _Totals()
    known = [i.size for i in inputs]
    reporter = _Reporter(ctx, args.progress,
                         None if None in known else sum(i or 0 for i in known))
    try:
        for item in inputs:
            res = _import_one(store, item, key, node_id, args.batch_size, reporter, ctx)
            _add(totals, res)
            reporter.file_done(item.path, res, item.size or 0)
            if res.error is not None and args.strict:
                break
    except StoreError as exc:
        raise _cli_error(exc) from exc
    finally:
        reporter.close()
        store.close()
    if totals.registry_not_admitted:
        ctx.stderr.write(
            f"warning: {totals.registry_not_admitted} registry events (record_created, graph "
            f"snapshots) were not admitted: this node's key (fingerprint {key.fingerprint}) "
            f"is not a trusted importer of network {store.spec.name!r}; add it to "
            "[[trusted_importers]] in the network spec (--network, or network.toml in the "
            "data directory)\n")
    _print_summary(ctx, args.progress, totals)
    if totals.skipped and args.strict:
        ctx.stderr.write(f"stopped at {totals.skipped[0][0]} (--strict)\n")
    return 1 if totals.skipped else 0


def _import_one(store: Store, item: _Input, key: SigningKey, node_id: str, batch: int,
                reporter: _Reporter, ctx: Context) -> DocumentResult:
    source = "stdin" if item.path == "-" else os.path.basename(item.path) or item.path
    if item.path == "-":
        if ctx.stdin is None:
            raise CliError("no standard input to read")
        stream: IO[bytes] = ctx.stdin
    else:
        try:
            stream = open(item.path, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            return DocumentResult(source, error=f"cannot read: {exc.strerror or exc}",
                                  error_reason="unreadable")
    reader = _Counting(stream)
    in_file = 0

    def on_batch(result: IngestResult) -> None:
        nonlocal in_file
        in_file += len(result.outcomes)
        reporter.batch(item.path, result, in_file, reader)

    try:
        return store.ingest_file(reader, source=source, node_key=key, node_id=node_id,
                                 received_at=time.time(), batch_events=batch,
                                 on_batch=on_batch)
    except OSError as exc:
        return DocumentResult(source, error=f"cannot read: {exc.strerror or exc}",
                              error_reason="unreadable")
    finally:
        if item.path != "-":
            stream.close()


def _add(totals: _Totals, res: DocumentResult) -> None:
    totals.summary.merge_from(res.summary)
    if res.error is not None:
        totals.skipped.append((res.source, res.error_reason or "error"))
    else:
        totals.imported += 1
    totals.registry_admitted += res.registry_admitted
    totals.registry_not_admitted += res.registry_not_admitted
    totals.attestations += res.attestations
    totals.unsigned += res.unsigned


def _print_summary(ctx: Context, mode: str, t: _Totals) -> None:
    s = t.summary
    rows: list[tuple[str, int]] = [
        ("files imported", t.imported), ("files skipped", len(t.skipped)),
        ("events new", s.new), ("events duplicate", s.duplicate),
        ("events rejected", sum(s.rejected.values())),
    ]
    rows += [(f"  rejected: {reason}", n) for reason, n in sorted(s.rejected.items())]
    rows += [("records touched", len(s.records_touched)),
             ("registry events admitted", t.registry_admitted),
             ("registry events not admitted", t.registry_not_admitted),
             ("import attestations made", t.attestations)]
    if t.unsigned:
        rows.append(("unsigned state entries skipped", t.unsigned))
    skipped_by = Counter(reason for _, reason in t.skipped)
    rows += [(f"  skipped: {reason}", n) for reason, n in sorted(skipped_by.items())]
    if mode == "jsonl":
        ctx.stdout.write(json.dumps({"summary": dict(rows)}) + "\n")
        return
    table = Table(title="import summary", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, n in rows:
        table.add_row(name, str(n))
    ctx.console.print(table)


# -- export ---------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _event_lines(store: Store) -> Iterator[bytes]:
    for data in store.iter_event_bytes():
        yield data + b"\n"


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    if not args.out and not args.jsonl:
        raise CliError("export needs --out DIR, --jsonl FILE, or both",
                       hint="see 'pithnode export --help'")
    store = open_store(args, ctx, write=False)
    try:
        records = 0
        if args.out:
            out = Path(args.out)
            for pith in store.records():
                suffix = pith.rsplit(":", 1)[1]
                state = store.state(pith)
                bundle = store.bundle(pith)
                if state is None or bundle is None:
                    raise StoreCorrupt(f"record {pith} vanished during the export")
                _write_atomic(out / "pith" / suffix / "bundle.json", bundle)
                _write_atomic(out / "pith" / suffix / "state.json", state.data)
                _write_atomic(out / ".well-known" / "pith" / suffix / "bundle.json", bundle)
                records += 1
            ctx.stderr.write(f"exported {records} records to {out}\n")
        if args.jsonl:
            n = _export_jsonl(store, args.jsonl, ctx)
            ctx.stderr.write(f"exported {n} events to {args.jsonl}\n")
    except StoreError as exc:
        raise _cli_error(exc) from exc
    finally:
        store.close()
    return 0


def _export_jsonl(store: Store, target: str, ctx: Context) -> int:
    n = 0
    if target == "-":
        for line in _event_lines(store):
            ctx.stdout.write(line.decode("utf-8"))
            n += 1
        ctx.stdout.flush()
        return n
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for line in _event_lines(store):
                f.write(line)
                n += 1
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return n


# -- fsck -----------------------------------------------------------------------------------
def cmd_fsck(args: argparse.Namespace, ctx: Context) -> int:
    store = open_store(args, ctx, write=args.repair)
    try:
        report = store.fsck(repair=args.repair, verify_signatures=args.verify_signatures)
    except StoreError as exc:
        raise _cli_error(exc) from exc
    finally:
        store.close()
    _print_fsck(ctx, report, args.repair)
    if args.repair:
        return 0 if report.repaired else 1
    return 0 if report.clean else 1


def _print_fsck(ctx: Context, report: FsckReport, repair: bool) -> None:
    out = ctx.stdout
    out.write(f"checked {report.objects} objects, {report.events} events, "
              f"{report.records} records\n")
    for p in report.problems:
        out.write(f"problem: {p.line()}\n")
    if not repair:
        out.write("clean\n" if report.clean else
                  f"{len(report.problems)} problem(s); 'pithnode fsck --repair' rebuilds "
                  "indexes and states from the objects\n")
        return
    for eid in report.dropped_events:
        out.write(f"dropped event {eid} (its object was damaged or unusable)\n")
    if report.repaired:
        out.write("repaired: the store is consistent\n" if report.problems else "clean\n")
    else:
        for p in report.remaining:
            out.write(f"still wrong: {p.line()}\n")
