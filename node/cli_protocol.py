"""CLI commands of the protocol core: ``verify``, ``merge`` and ``keygen``."""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.table import Table

from pithnode.protocol.bundle import parse_bundle
from pithnode.protocol.checkpoint import verify_proof
from pithnode.protocol.documents import MAX_DOCUMENT_BYTES, decode_document, decode_json
from pithnode.protocol.errors import DecodeError, InputError, TooLarge
from pithnode.protocol.events import Event, event_from_json
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.merge import Admission, merge
from pithnode.protocol.state import parse_state
from pithnode.protocol.verify import admissions_for, verify_bytes

from .cli_context import Context
from .errors import CliError


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check a state, bundle or proof document offline")
    p.add_argument("file", help="document path, or - for standard input")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(handler=cmd_verify)

    p = sub.add_parser("merge", help="merge the events of documents into a state document")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="state or bundle documents, or JSON Lines of events, about one record")
    p.add_argument("--out", metavar="FILE", help="write the state here (default: stdout)")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("keygen", help="create a new Ed25519 key file (mode 0600)")
    p.add_argument("--out", metavar="FILE", default="pithnode.key",
                   help="where to write the key (default: ./pithnode.key)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--json", action="store_true", help="print key id and fingerprints as JSON")
    p.set_defaults(handler=cmd_keygen)


def read_input(path: str, ctx: Context, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """Read a whole file (or stdin for ``-``), refusing more than ``limit`` bytes."""
    try:
        if path == "-":
            if ctx.stdin is None:
                raise CliError("no standard input to read")
            data = ctx.stdin.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except IsADirectoryError as exc:
        raise CliError(f"{path} is a directory, not a document") from exc
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise TooLarge("too_large", f"{path} is larger than the limit of {limit} bytes")
    return data


def cmd_verify(args: argparse.Namespace, ctx: Context) -> int:
    spec = ctx.spec()
    data = read_input(args.file, ctx)
    try:
        doc = decode_json(data, limit=MAX_DOCUMENT_BYTES)
        if isinstance(doc, dict) and "proof_type" in doc:
            report = verify_proof(doc, spec)
        else:
            report = verify_bytes(data, spec)
    except InputError as exc:
        raise CliError(f"{args.file}: {exc}", hint="not a usable state or bundle") from exc
    if args.json:
        ctx.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        return 0 if report.valid else 1
    console = ctx.console
    verdict = "[green]VALID[/green]" if report.valid else "[red]INVALID[/red]"
    console.print(f"{report.kind} {report.pith_number}: {verdict}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]FAILED[/red]", c.detail)
    console.print(table)
    if report.state_sha256:
        console.print(f"state_sha256 {report.state_sha256}")
    if not report.valid:
        failed = ", ".join(c.name for c in report.checks if not c.ok)
        ctx.stderr.write(f"invalid: {failed}\n")
    return 0 if report.valid else 1


def load_events_for_merge(path: str, ctx: Context) -> tuple[list[Event], list[Admission]]:
    """Native events and operator admissions from one trusted input file."""
    data = read_input(path, ctx)
    stripped = data.lstrip()
    if stripped.startswith(b"{") and b"\n{" in data.strip():
        events = []
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(event_from_json(json.loads(line)))
            except (ValueError, InputError) as exc:
                raise DecodeError("bad_jsonl", f"{path} line {n}: {exc}") from exc
        native, adm = admissions_for(tuple(events), ())
        return native, [adm]
    doc = decode_document(data)
    if doc.kind == "state":
        st = parse_state(doc.doc)
        native, adm = admissions_for(st.events, st.source_aliases)
    elif doc.kind == "bundle":
        b = parse_bundle(doc.doc)
        native, adm = admissions_for(b.events, b.source_aliases)
    else:
        native, adm = admissions_for((event_from_json(doc.doc),), ())
    return native, [adm]


def cmd_merge(args: argparse.Namespace, ctx: Context) -> int:
    spec = ctx.spec()
    by_subject: dict[str, tuple[list[Event], list[Admission]]] = defaultdict(
        lambda: ([], []))
    for path in args.files:
        try:
            native, adms = load_events_for_merge(path, ctx)
        except InputError as exc:
            raise CliError(f"{path}: {exc}") from exc
        for ev in native:
            by_subject[ev.subject][0].append(ev)
        for adm in adms:
            for s in sorted({e.subject for e in adm.events}):
                by_subject[s][1].append(Admission(
                    tuple(e for e in adm.events if e.subject == s), adm.source_aliases))
    if len(by_subject) != 1:
        raise CliError(f"the inputs describe {len(by_subject)} records; merge takes one",
                       hint="pass the documents of a single record")
    subject, (native, adms) = next(iter(by_subject.items()))
    state = merge(subject, native, spec, admissions=adms)
    data = state.served_bytes()
    if args.out:
        _write_atomic(Path(args.out), data)
        ctx.stderr.write(f"wrote {args.out}: {subject} state_sha256 {state.state_sha256}\n")
    else:
        ctx.stdout.write(data.decode("utf-8"))
        ctx.stdout.flush()
    return 0


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc


def cmd_keygen(args: argparse.Namespace, ctx: Context) -> int:
    path = Path(args.out)
    key = SigningKey.generate()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise CliError(f"{path} already exists", hint="use --force to overwrite it") from exc
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key.to_file_bytes())
    info = {"path": str(path), "key_id": key.key_id, "fingerprint": key.fingerprint,
            "fingerprint_b32": key.fingerprint_b32}
    if args.json:
        ctx.stdout.write(json.dumps(info) + "\n")
    else:
        ctx.stdout.write(f"wrote {path} (mode 0600)\nkey id       {key.key_id}\n"
                         f"fingerprint  {key.fingerprint}\n"
                         f"fingerprint (base32)  {key.fingerprint_b32}\n")
    return 0
