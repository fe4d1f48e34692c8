"""Importing documents: Pith state.json and bundle.json, single events, JSON Lines.

Native (signed) events go to the store as they are. Registry events (Pith's own, unsigned)
are never stored bare: this node signs import attestations (``registry_import``) carrying
them, with ``created_at`` the latest registry event's time in whole seconds and ``source``
the document's name, so importing the same document again makes the same attestations
(duplicates). Registry events and aliases that trusted attestations already admit (held in
the store, or carried by the document itself, as in a bundle exported by a node) are not
attested again, so a bundle round-trips unchanged. When the node key is not a trusted
importer of the network, registry events are left out and counted.

Input is size-checked before it is decoded: a document up to ``MAX_DOCUMENT_BYTES``, each
JSON line up to ``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from pithnode.protocol.bundle import parse_bundle
from pithnode.protocol.documents import (
    MAX_DOCUMENT_BYTES,
    MAX_LINE_BYTES,
    decode_document,
)
from pithnode.protocol.errors import DecodeError, InputError, TooLarge
from pithnode.protocol.events import Event, event_from_bytes, event_from_json, utc_timestamp
from pithnode.protocol.ingest import accept, make_registry_imports
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.merge import admission_from_import
from pithnode.protocol.state import parse_state

from .results import DocumentResult, IngestResult

if TYPE_CHECKING:
    from .store import Store

__all__ = ["MAX_JSONL_REGISTRY_EVENTS", "BinaryReader", "import_stream"]

#: Registry events one JSON Lines stream may carry (they are held until its end).
MAX_JSONL_REGISTRY_EVENTS = 100_000

OnBatch = Callable[[IngestResult], None] | None


class BinaryReader(Protocol):
    """What an import reads: a binary stream's ``read`` and ``readline``."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


class _Importer:
    def __init__(self, store: Store, *, source: str, node_key: SigningKey, node_id: str,
                 received_at: float, batch_events: int, on_batch: OnBatch) -> None:
        self.store = store
        self.source = source
        self.key = node_key
        self.node_id = node_id
        self.received_at = received_at
        self.batch_events = batch_events
        self.on_batch = on_batch
        self.result = DocumentResult(source)
        self.trusted = store.spec.is_trusted_importer(node_key.public_key)

    def ingest(self, events: Iterable[Event]) -> None:
        self.result.summary.merge_from(self.store.ingest_many(
            events, source=self.source, received_at=self.received_at,
            batch_events=self.batch_events, on_batch=self.on_batch))

    # -- registry events ---------------------------------------------------------------------
    def attestations(self, subject: str, document: bytes, registry: Sequence[Event],
                     aliases: Sequence[dict[str, str]], carried_imports: Sequence[Event]
                     ) -> list[Event]:
        """Import attestations this document needs for ``subject`` (none when covered)."""
        res = self.result
        res.registry_events += len(registry)
        if not registry:
            return []
        if not self.trusted:
            res.registry_not_admitted += len(registry)
            return []
        held, held_aliases = self.store.admitted(subject)
        covered = {e.canonical_bytes() for e in held}
        alias_times: dict[tuple[str, str], str] = {}
        for a in held_aliases:
            k = (a["alias_kind"], a["alias_value"])
            alias_times[k] = min(alias_times.get(k, a["created_at"]), a["created_at"])
        for imp in carried_imports:
            if accept(imp, self.store.spec) is not None:
                continue
            adm = admission_from_import(imp, self.store.spec)
            if adm is None:
                continue
            covered.update(e.canonical_bytes() for e in adm.events)
            for alias in adm.source_aliases:
                k = (alias["alias_kind"], alias["alias_value"])
                alias_times[k] = min(alias_times.get(k, alias["created_at"]),
                                     alias["created_at"])
        missing = [e for e in registry if e.canonical_bytes() not in covered]
        missing_aliases = [a for a in aliases if not (
            (a["alias_kind"], a["alias_value"]) in alias_times
            and alias_times[(a["alias_kind"], a["alias_value"])] <= a["created_at"])]
        if not missing and not missing_aliases:
            res.registry_admitted += len(registry)
            return []
        times = []
        for e in registry:
            try:
                times.append(e.time_key)
            except InputError as exc:
                raise DecodeError("bad_created_at", f"registry event {e.event_id} has an "
                                  f"unusable created_at {e.created_at[:40]!r}") from exc
        created_at = utc_timestamp(max(times) // 1_000_000)
        atts: list[Event] = make_registry_imports(
            self.key, subject=subject, source=self.source, document=document, events=registry,
            source_aliases=aliases, created_at=created_at, signer_id=self.node_id)
        res.attestations += len(atts)
        return atts

    # -- documents ---------------------------------------------------------------------------
    def document(self, data: bytes) -> None:
        doc = decode_document(data)
        res = self.result
        res.kind = doc.kind
        aliases: Sequence[dict[str, str]] = ()
        if doc.kind == "state":
            st = parse_state(doc.doc)
            events: Sequence[Event] = st.events
            aliases = st.source_aliases
            natives = [e for e in events if e.signature]
            res.unsigned = sum(1 for e in events if e.signature == b"")
        elif doc.kind == "bundle":
            b = parse_bundle(doc.doc)
            events, aliases = b.events, b.source_aliases
            natives = [e for e in events if e.signature]
        else:
            events = (event_from_json(doc.doc),)
            natives = [e for e in events if e.signature]
        registry = [e for e in events if e.signature is None]
        subjects = {e.subject for e in events}
        if doc.kind in ("state", "bundle"):
            subjects.add(str(doc.doc["pith_number"]))
        res.subjects.update(subjects)
        atts: list[Event] = []
        if registry:
            subject = registry[0].subject
            imports = [e for e in natives if e.event_type == "registry_import"]
            atts = self.attestations(subject, data, registry, aliases, imports)
        self._ingest_with_attestations(natives, atts, len(registry) if atts else 0)

    def _ingest_with_attestations(self, natives: Sequence[Event], atts: Sequence[Event],
                                  n_registry: int) -> None:
        outcomes: dict[str, str] = {}
        user = self.on_batch

        def on_batch(result: IngestResult) -> None:
            for o in result.outcomes:
                outcomes[o.event_id] = o.outcome
            if user is not None:
                user(result)

        self.result.summary.merge_from(self.store.ingest_many(
            [*atts, *natives], source=self.source, received_at=self.received_at,
            batch_events=self.batch_events, on_batch=on_batch))
        if atts and all(outcomes.get(a.event_id, "rejected") != "rejected" for a in atts):
            self.result.registry_admitted += n_registry

    # -- JSON Lines --------------------------------------------------------------------------
    def jsonl(self, lines: Iterator[tuple[int, bytes]]) -> None:
        """Stream native events into the store as they are parsed (batches overlap with
        parsing); a bad line ends the stream there, after what came before is stored."""
        self.result.kind = "jsonl"
        registry: dict[str, list[Event]] = {}
        registry_lines: dict[str, list[bytes]] = {}
        failure: list[InputError] = []

        def natives() -> Iterator[Event]:
            n_registry = 0
            try:
                for n, line in lines:
                    self.result.lines = n
                    try:
                        ev = event_from_bytes(line, limit=MAX_LINE_BYTES)
                    except InputError as exc:
                        raise DecodeError(exc.reason, f"line {n}: {exc}") from exc
                    self.result.subjects.add(ev.subject)
                    if ev.signature is not None:
                        yield ev
                        continue
                    n_registry += 1
                    if n_registry > MAX_JSONL_REGISTRY_EVENTS:
                        raise TooLarge("too_many_registry_events", f"line {n}: more than "
                                       f"{MAX_JSONL_REGISTRY_EVENTS} registry events")
                    registry.setdefault(ev.subject, []).append(ev)
                    registry_lines.setdefault(ev.subject, []).append(line.strip())
            except InputError as exc:
                failure.append(exc)

        self.ingest(natives())
        if failure:
            raise failure[0]  # registry events of a broken stream are not attested
        for subject in sorted(registry):
            document = b"\n".join(registry_lines[subject]) + b"\n"
            atts = self.attestations(subject, document, registry[subject], (), ())
            if atts:
                self._ingest_with_attestations((), atts, len(registry[subject]))


def _lines(numbered: Sequence[tuple[int, bytes]], n: int,
           stream: BinaryReader) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines, each checked against MAX_LINE_BYTES before decoding."""
    yield from numbered
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE_BYTES:
            raise TooLarge("line_too_large", f"line {n} is longer than {MAX_LINE_BYTES} "
                           "bytes")
        if line.strip():
            yield n, line


def _is_json_line(line: bytes) -> bool:
    if not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
        return False
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def import_stream(store: Store, stream: BinaryReader, *, source: str, node_key: SigningKey,
                  node_id: str, received_at: float, batch_events: int,
                  on_batch: OnBatch) -> DocumentResult:
    """Import one input: JSON Lines when its first line is a JSON value and another line
    follows, else one document (state, bundle or event)."""
    imp = _Importer(store, source=source, node_key=node_key, node_id=node_id,
                    received_at=received_at, batch_events=batch_events, on_batch=on_batch)
    res = imp.result
    try:
        head = stream.readline(MAX_LINE_BYTES + 1)
        if _is_json_line(head):
            n, blank = 1, b""
            while True:
                line = stream.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                n += 1
                if len(line) > MAX_LINE_BYTES:
                    raise TooLarge("line_too_large", f"line {n} is longer than "
                                   f"{MAX_LINE_BYTES} bytes")
                if line.strip():
                    imp.jsonl(_lines([(1, head), (n, line)], n, stream))
                    return res
                blank += line
            head += blank
        data = head + stream.read(MAX_DOCUMENT_BYTES + 1 - len(head))
        if len(data) > MAX_DOCUMENT_BYTES:
            raise TooLarge("too_large", f"larger than {MAX_DOCUMENT_BYTES} bytes")
        imp.document(data)
    except InputError as exc:
        res.error, res.error_reason = str(exc), exc.reason
    return res
