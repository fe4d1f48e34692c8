"""``pithnode pull``: fetch records from an HTTP mirror, verify them, store them.

``pithnode pull SOURCE [RECORD...] [--from-file LIST] [--all-known]``. SOURCE is a mirror's
base URL (``https://pith.science``, a pithnode's HTTP mirror) or its manifest
(``…/pith-mirrors.json``). Records are Pith Numbers, short forms, arXiv ids or DOIs. Nothing is
stored before both the bundle and the state of a record pass every check (see
:mod:`pithnode.node.pull`). Validators of what was stored are kept in ``pull-cache.json`` in
the data directory, so a refresh transfers no bodies for unchanged records.

Exit codes: 0 every record pulled or unchanged, 1 some failed, 2 usage or an unusable source
(also when a running daemon holds the store).
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pithnode.protocol.errors import InputError
from pithnode.protocol.spec import NetworkSpec
from pithnode.storage.errors import StoreCorrupt, StoreError, StoreLocked
from pithnode.storage.store import Store

from .cli_context import Context
from .cli_store import STORE_FILE, data_dir, node_key, store_spec
from .errors import CliError, leaf_exception
from .pull import (
    CACHE_FILE,
    FetchConfig,
    PullCache,
    Puller,
    PullSummary,
    RecordRef,
    RecordResult,
    SourceError,
    StoreSink,
    check_source,
    dedupe,
    default_node_id,
    open_fetcher,
    parse_record_ref,
    resolve_source,
)

__all__ = ["register"]

MAX_LIST_BYTES = 64 << 20
MAX_CONCURRENCY = 64
MAX_RATE = 1000.0
MAX_RETRIES = 10
MAX_TIMEOUT_S = 3600.0


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="fetch records from an HTTP mirror, verify and store them")
    p.add_argument("source", metavar="SOURCE",
                   help="a mirror's base URL (https://pith.science, a pithnode's HTTP mirror) "
                        "or its manifest URL (…/pith-mirrors.json)")
    p.add_argument("records", nargs="*", metavar="RECORD",
                   help="Pith Number (full or short), arXiv id or DOI")
    p.add_argument("--from-file", metavar="LIST",
                   help="read records from LIST, one per line (# starts a comment; - for "
                        "standard input)")
    p.add_argument("--all-known", action="store_true",
                   help="also refresh every record already in the store")
    p.add_argument("--data-dir", metavar="DIR",
                   help="data directory (default: $PITHNODE_DATA_DIR, else "
                        "$XDG_DATA_HOME/pithnode, else ~/.local/share/pithnode)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help=f"records fetched at once (default 4, at most {MAX_CONCURRENCY})")
    p.add_argument("--rate", type=float, default=4.0, metavar="R",
                   help="requests per second to one host (default 4)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="to connect, and between two reads of an answer (default 30); a "
                        "whole document may take ten times this")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries after connection errors, 5xx and 429, with exponential "
                        "backoff (default 3)")
    p.add_argument("--force", action="store_true",
                   help=f"ignore {CACHE_FILE}: fetch every document in full")
    p.add_argument("--node-name", metavar="NAME",
                   help="signer_id of the import attestations (default: from the node key)")
    p.add_argument("--json", action="store_true",
                   help="print the results as one JSON document on standard output")
    p.set_defaults(handler=cmd_pull)


def _config(args: argparse.Namespace) -> FetchConfig:
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise CliError(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if not 0 < args.rate <= MAX_RATE:
        raise CliError(f"--rate must be above 0 and at most {MAX_RATE:g} requests/s")
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        raise CliError(f"--timeout must be above 0 and at most {MAX_TIMEOUT_S:g} seconds")
    if not 0 <= args.retries <= MAX_RETRIES:
        raise CliError(f"--retries must be 0..{MAX_RETRIES}")
    return FetchConfig.from_timeout(args.timeout, concurrency=args.concurrency,
                                    rate_per_host=args.rate, retries=args.retries)


def _refs(args: argparse.Namespace, ctx: Context) -> list[RecordRef]:
    named: list[tuple[str, str]] = [("argument", r) for r in args.records]
    if args.from_file:
        named += _list_file(args.from_file, ctx)
    refs = []
    for where, text in named:
        try:
            refs.append(parse_record_ref(text))
        except InputError as exc:
            raise CliError(f"{where}: {text[:120]!r} is no Pith Number, arXiv id or DOI "
                           f"({exc})") from exc
    return refs


def _list_file(path: str, ctx: Context) -> list[tuple[str, str]]:
    if path == "-":
        if ctx.stdin is None:
            raise CliError("no standard input to read")
        data = ctx.stdin.read(MAX_LIST_BYTES + 1)
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_LIST_BYTES + 1)
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_LIST_BYTES:
        raise CliError(f"{path} is larger than {MAX_LIST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text") from exc
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if item:
            out.append((f"{path} line {n}", item))
    return out


def _open_store(directory: Path, spec: NetworkSpec, ctx: Context) -> Store:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {directory}: {exc.strerror or exc}") from exc
    try:
        store = Store(directory / STORE_FILE, spec)
    except StoreLocked as exc:
        raise CliError(
            f"the store in {directory} is locked: a pithnode daemon is running on it ({exc})",
            hint="a running node pulls on its own: add the source to [pull] sources (and the "
                 "records to [pull] records) in its config file and restart it, or stop it "
                 "and pull again") from exc
    except StoreError as exc:
        raise CliError(str(exc), hint=exc.hint,
                       code=1 if isinstance(exc, StoreCorrupt) else 2) from exc
    if store.spec_changed:
        ctx.stderr.write(f"warning: the states in {directory / STORE_FILE} were merged under "
                         "another network spec; 'pithnode fsck --repair' re-merges them\n")
    return store


class _Reporter:
    """A rich bar on a terminal; else one line per record. Failures are always named."""

    def __init__(self, ctx: Context, total: int, *, json_mode: bool) -> None:
        self.ctx = ctx
        self.lines = not json_mode
        self.progress: Progress | None = None
        self.new = 0
        self.failed = 0
        if ctx.stderr.isatty():
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[new]} new events"),
                TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                console=Console(file=ctx.stderr), transient=True)
            self.task = self.progress.add_task("pull", total=total, new=0, failed=0)
            self.progress.start()

    def record(self, r: RecordResult) -> None:
        self.new += r.new
        self.failed += r.status == "failed"
        if r.status == "failed":
            self._line(f"failed {r.url}: {r.check}: {r.detail}")
        elif self.progress is None and self.lines:
            name = r.pith_number or r.ref.text
            if r.status == "pulled":
                self._line(f"pulled {name}: {r.new} new, {r.duplicate} duplicate, "
                           f"{sum(r.rejected.values())} rejected")
            elif r.status == "not_modified":
                self._line(f"not modified {name}")
            else:
                self._line(f"not at the source: {name}")
        if self.progress is not None:
            self.progress.update(self.task, advance=1, new=self.new, failed=self.failed)

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.ctx.stderr.write(text + "\n")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


async def _pull_main(source_text: str, refs: list[RecordRef], all_known: bool,
                     config: FetchConfig, sink: StoreSink, spec: NetworkSpec,
                     cache: PullCache, force: bool, ctx: Context,
                     json_mode: bool) -> tuple[str, PullSummary]:
    async with open_fetcher(config) as fetcher:
        source = await resolve_source(fetcher, source_text)
        if all_known:
            refs = refs + [RecordRef(p, "pith", p, optional=True)
                           for p in await sink.known_records()]
        refs = dedupe(refs)
        reporter = _Reporter(ctx, len(refs), json_mode=json_mode)
        try:
            puller = Puller(fetcher, sink, spec, cache, force=force,
                            on_result=reporter.record)
            return source.name, await puller.pull(source, refs)
        finally:
            reporter.close()



def cmd_pull(args: argparse.Namespace, ctx: Context) -> int:
    config = _config(args)
    try:
        check_source(args.source)
    except SourceError as exc:
        raise CliError(str(exc), hint="give a base URL such as https://pith.science or a "
                       "manifest URL ending in pith-mirrors.json") from exc
    refs = _refs(args, ctx)
    if not refs and not args.all_known:
        raise CliError("nothing to pull", hint="name records, or use --from-file LIST or "
                       "--all-known")
    directory = data_dir(args)
    spec = store_spec(ctx, directory)
    store = _open_store(directory, spec, ctx)
    try:
        key = node_key(directory)
        cache, warning = PullCache.load(directory / CACHE_FILE)
        if warning:
            ctx.stderr.write(f"warning: {warning}\n")
        sink = StoreSink(store, key, args.node_name or default_node_id(key))
        try:
            name, summary = trio.run(partial(
                _pull_main, args.source, refs, args.all_known, config, sink, spec,
                cache, args.force, ctx, args.json))
        except Exception as exc:  # the edge: known failures become one line
            leaf = leaf_exception(exc)
            if isinstance(leaf, SourceError):
                raise CliError(str(leaf), hint="check SOURCE: a mirror's base URL or its "
                               "pith-mirrors.json") from exc
            if isinstance(leaf, StoreError):
                raise CliError(f"the store failed: {leaf}", hint=leaf.hint,
                               code=1 if isinstance(leaf, StoreCorrupt) else 2) from exc
            raise
        finally:
            _save(cache, ctx)
    finally:
        store.close()
    if summary.not_admitted:
        ctx.stderr.write(
            f"warning: {summary.not_admitted} registry events (record_created, graph "
            f"snapshots) were not admitted: this node's key (fingerprint {key.fingerprint}) is "
            f"not a trusted importer of network {spec.name!r}, and the source's attestations "
            "are not trusted either; add a key to [[trusted_importers]] in the network spec\n")
    if args.json:
        ctx.stdout.write(json.dumps({
            "source": {"given": args.source, "mirror": name},
            "summary": summary.to_json(),
            "records": [r.to_json() for r in summary.results]}, ensure_ascii=False) + "\n")
    else:
        _print_summary(ctx, summary)
    return 1 if summary.failed else 0


def _save(cache: PullCache, ctx: Context) -> None:
    try:
        cache.save()
    except OSError as exc:
        ctx.stderr.write(f"warning: cannot write {cache.path}: {exc.strerror or exc} (the next "
                         "pull fetches in full)\n")


def _print_summary(ctx: Context, s: PullSummary) -> None:
    f = s.fetch
    rows: list[tuple[str, int]] = [
        ("records requested", s.requested), ("records pulled", s.by_status["pulled"]),
        ("records not modified", s.by_status["not_modified"]),
        ("records failed", s.failed)]
    if s.by_status["absent"]:
        rows.append(("records not at the source (404)", s.by_status["absent"]))
    rows += [("documents fetched", f.bodies), ("documents not modified (304)", f.not_modified),
             ("bytes fetched", f.bytes), ("requests", f.requests), ("retries", f.retries),
             ("events new", s.new), ("events duplicate", s.duplicate),
             ("events rejected", sum(s.rejected.values()))]
    rows += [(f"  rejected: {reason}", n) for reason, n in sorted(s.rejected.items())]
    rows += [("import attestations made", s.attestations),
             ("registry events not admitted", s.not_admitted)]
    if s.differing:
        rows.append(("states differing from the source", s.differing))
    rows += [(f"  failed: {check}", n) for check, n in sorted(s.failed_by.items())]
    table = Table(title="pull summary", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, n in rows:
        table.add_row(what, str(n))
    ctx.console.print(table)

