"""``pithnode pull`` against real HTTP servers on 127.0.0.1 (port 0 only).

Two kinds of source: a plain static file server (raw HTTP/1.1 on trio, ETag/If-None-Match and
Last-Modified/If-Modified-Since like any static server, with injectable faults) serving a tree
written by ``pithnode export``, and another pithnode's HTTP mirror (a real daemon ``Node`` on
the in-memory p2p network, its hypercorn mirror on 127.0.0.1). The CLI runs in a worker thread
(it calls ``trio.run`` itself) while the servers run in the test's trio loop. Backoff and
rate-limit waits go through an injected fake clock; only the read-timeout test waits (0.3 s).
"""

from __future__ import annotations

import io
import json
import mimetypes
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from email.utils import formatdate, parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pithnode.node import cli, cli_pull
from pithnode.node.config import HttpConfig, NodeConfig, SyncConfig
from pithnode.node.daemon import Node
from pithnode.node.memory_transport import MemoryNetwork
from pithnode.node.pull import (
    CACHE_FILE,
    FetchConfig,
    Fetcher,
    Manifest,
    MirrorEntry,
    PullCache,
    Puller,
    PullSummary,
    RecordRef,
    SourceError,
    StoreSink,
    choose_mirror,
    manifest_bytes,
    open_fetcher,
    parse_manifest,
    parse_record_ref,
    resolve_source,
    run_scheduled_pull,
    write_manifest,
)
from pithnode.node.pull import _retry_after as retry_after
from pithnode.node.synth import SynthConfig, SynthRecord, generate, synth_keys
from pithnode.node.transport import PeerAddress, TransportConfig
from pithnode.protocol.bundle import build_bundle
from pithnode.protocol.errors import InputError
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.spec import NetworkSpec, spec_from_toml
from pithnode.protocol.state import parse_state, served_json
from pithnode.protocol.wire import decode_events, decode_gossip
from pithnode.storage.store import Store

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
GOLDEN_PN = "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL"
PITH_MANIFEST = FIXTURES / "pith-mirrors.json"
NETWORK_TOML = Path(__file__).resolve().parents[1] / "configs" / "network.toml"
TIMEOUT = 30

KEYS = synth_keys(23)
TOPIC = KEYS.spec().gossip_topic
RECORDS: list[SynthRecord] = list(generate(KEYS, 9, SynthConfig(seed=23)))
KEY_A = SigningKey(bytes(range(32)))
KEY_B = SigningKey(bytes(range(1, 33)))


def spec() -> NetworkSpec:
    """A fresh spec object per store: the merge memoises admissions on the spec object, and
    a memo filled from in-memory synth events would leak their key order into bundles."""
    return KEYS.spec()


def suffix(rec: SynthRecord | str) -> str:
    pith = rec if isinstance(rec, str) else rec.pith_number
    return pith.rsplit(":", 1)[1]


def alias(rec: SynthRecord, kind: str) -> str:
    created = next(e for e in rec.events if e.event_type == "registry_import")
    return next(str(a["alias_value"]) for a in created.payload["source_aliases"]
                if a["alias_kind"] == kind)


# ---------------------------------------------------------------- time, servers
class FakeTime:
    """An injected clock for the rate limiter and backoff: sleeping advances it at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await trio.lowlevel.checkpoint()


@dataclass
class Req:
    path: str
    headers: dict[str, str]
    at: float


Fault = Callable[[trio.SocketStream, Req], Awaitable[bool]]
REASONS = {200: "OK", 302: "Found", 304: "Not Modified", 404: "Not Found",
           503: "Service Unavailable"}


async def respond(stream: trio.SocketStream, status: int, headers: list[tuple[str, str]],
                  body: bytes = b"", *, length: int | None = None) -> None:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", *(
        f"{k}: {v}" for k, v in headers)]
    if status != 304:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    lines.append("Connection: close")
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


@dataclass
class StaticServer:
    """A static file server over ``root`` (one request per connection), with faults by path.

    ``bodies`` counts 200 answers that carried a document body, ``not_modified`` the 304s.
    """

    root: Path
    clock: Callable[[], float] = lambda: 0.0
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[Req] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)
    not_modified: Counter[str] = field(default_factory=Counter)
    url: str = ""

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0,
                                                host="127.0.0.1"))
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        return self.url

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def document_bodies(self) -> int:
        return sum(n for p, n in self.bodies.items() if p.startswith("/pith/"))

    async def _read(self, stream: trio.SocketStream) -> Req | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk or len(data) > 16384:
                return None
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        assert method == "GET", method
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Req(target.split("?", 1)[0], headers, self.clock())

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                req = await self._read(stream)
                if req is None:
                    return
                self.requests.append(req)
                fault = self.faults.get(req.path)
                if fault is None or not await fault(stream, req):
                    await self._static(stream, req)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away (it cut an endless body, or timed out)

    async def _static(self, stream: trio.SocketStream, req: Req) -> None:
        rel = req.path.lstrip("/")
        path = self.root / rel
        if ".." in rel.split("/") or not path.is_file():
            await respond(stream, 404, [("Content-Type", "application/json")], b'{"error":1}')
            return
        st = path.stat()
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        validators = [("ETag", etag), ("Last-Modified", formatdate(st.st_mtime, usegmt=True))]
        inm, ims = req.headers.get("if-none-match"), req.headers.get("if-modified-since")
        fresh = False
        if inm is not None:
            fresh = inm.strip() == "*" or etag in (t.strip().removeprefix("W/")
                                                   for t in inm.split(","))
        elif ims is not None:
            fresh = int(st.st_mtime) <= parsedate_to_datetime(ims).timestamp()
        if fresh:
            self.not_modified[req.path] += 1
            await respond(stream, 304, validators)
            return
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.bodies[req.path] += 1
        await respond(stream, 200, [("Content-Type", ctype), *validators], path.read_bytes())


def serve_bytes(body: bytes, ctype: str = "application/json") -> Fault:
    async def fault(stream: trio.SocketStream, req: Req) -> bool:
        await respond(stream, 200, [("Content-Type", ctype)], body)
        return True
    return fault


def truncated(body: bytes) -> Fault:
    async def fault(stream: trio.SocketStream, req: Req) -> bool:
        await respond(stream, 200, [("Content-Type", "application/json")],
                      body[:len(body) // 2], length=len(body))
        return True  # the connection closes here, half-way
    return fault


def redirect(location: str) -> Fault:
    async def fault(stream: trio.SocketStream, req: Req) -> bool:
        await respond(stream, 302, [("Location", location)])
        return True
    return fault


@dataclass
class Endless:
    sent: int = 0
    done: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, stream: trio.SocketStream, req: Req) -> bool:
        chunk = b" " * 65536
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            await stream.send_all(head)
            while True:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.sent += len(chunk)
        finally:
            self.done.set()


async def stalled(stream: trio.SocketStream, req: Req) -> bool:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n")
    await trio.sleep_forever()
    return True


def unavailable(times: int, retry_after: str | None = None) -> Fault:
    seen = [0]

    async def fault(stream: trio.SocketStream, req: Req) -> bool:
        seen[0] += 1
        if seen[0] > times:
            return False  # then the file itself
        headers = [("Content-Type", "application/json")]
        if retry_after is not None and seen[0] == 1:
            headers.append(("Retry-After", retry_after))
        await respond(stream, 503, headers, b'{"error":"busy"}')
        return True
    return fault


# ---------------------------------------------------------------- data directories, CLI
def data_dir(root: Path, name: str, *, key: SigningKey | None = None,
             network: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "network.toml").write_text(network if network is not None else KEYS.spec_toml())
    if key is not None:
        (d / "node.key").write_bytes(key.to_file_bytes())
    return d


def fill_store(d: Path, records: list[SynthRecord]) -> None:
    with Store(d / "store.sqlite", spec()) as s:
        s.ingest_many([e for r in records for e in r.events], source="synth", received_at=0.0)


@pytest.fixture(scope="module")
def export_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pithnode export`` of a store holding RECORDS (the static server's tree)."""
    root = tmp_path_factory.mktemp("source")
    a = data_dir(root, "a", key=KEY_A)
    fill_store(a, RECORDS)
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["export", "--data-dir", str(a), "--out", str(root / "tree")],
                    stdout=out, stderr=err) == 0, err.getvalue()
    return root / "tree"


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class TtyIO(io.StringIO):
    """Standard error as a terminal: the CLI draws its rich progress bar there."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def pull_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Awaitable[CliRun]]:
    """Runs ``pithnode pull ...`` in a worker thread, with the pull command registered."""
    if cli_pull not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, cli_pull])
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    async def run(*argv: str, tty: bool = False) -> CliRun:
        out, err = io.StringIO(), (TtyIO() if tty else io.StringIO())
        with trio.fail_after(TIMEOUT):
            code = await trio.to_thread.run_sync(
                partial(cli.main, ["pull", *argv], stdout=out, stderr=err),
                abandon_on_cancel=True)
        return CliRun(code, out.getvalue(), err.getvalue())
    return run


def served(d: Path, pith: str) -> tuple[bytes, bytes]:
    with Store(d / "store.sqlite", spec(), readonly=True) as s:
        state, bundle = s.state(pith), s.bundle(pith)
        assert state is not None and bundle is not None, pith
        return bundle, state.data


def config(**kw: Any) -> FetchConfig:
    base: dict[str, Any] = {"concurrency": 4, "rate_per_host": 1000.0, "connect_timeout_s": 5.0,
                            "read_timeout_s": 5.0, "total_timeout_s": 20.0, "retries": 1,
                            "max_document_bytes": 256 * 1024, "trust_env": False}
    return FetchConfig(**(base | kw))


async def pull_api(source: str, refs: list[RecordRef], store: Store, cfg: FetchConfig,
                   fake: FakeTime | None = None) -> PullSummary:
    fake = fake or FakeTime()
    async with open_fetcher(cfg, clock=fake.clock, sleep=fake.sleep,
                            rng=random.Random(5)) as fetcher:
        src = await resolve_source(fetcher, source)
        sink = StoreSink(store, KEY_B, "pithnode:test")
        with trio.fail_after(TIMEOUT):
            return await Puller(fetcher, sink, spec(), PullCache()).pull(src, refs)


def ref(rec: SynthRecord) -> RecordRef:
    return parse_record_ref(rec.pith_number)


# ---------------------------------------------------------------- manifest and identifiers
def test_pith_manifest_round_trips_byte_for_byte(tmp_path: Path) -> None:
    data = PITH_MANIFEST.read_bytes()
    manifest = parse_manifest(data)
    assert [m.name for m in manifest.mirrors] == ["Pith Resolver"]
    pith = manifest.mirrors[0]
    assert pith.bundle_pattern == "https://pith.science/pith/{suffix}/bundle.json"
    assert manifest_bytes(manifest) == data
    write_manifest(tmp_path / "m.json", manifest)
    assert (tmp_path / "m.json").read_bytes() == data
    assert choose_mirror(manifest, "https://elsewhere.example/pith-mirrors.json") is pith


@pytest.mark.parametrize(("change", "reason"), [
    (lambda d: d.update(manifest_version="2.0"), "bad_version"),
    (lambda d: d.update(merge_version="pith-open-graph-merge-v9"), "bad_version"),
    (lambda d: d.update(mirrors={}), "bad_manifest"),
    (lambda d: d["mirrors"][0].update(base_url=7), "bad_manifest"),
    (lambda d: d["mirrors"][0].update(base_url="ftp://pith.science"), "bad_manifest"),
    (lambda d: d["mirrors"][0].update(state_pattern="https://pith.science/state.json"),
     "bad_manifest"),
    (lambda d: d["mirrors"][0]["public_key"].update(fingerprint_sha256_hex="00" * 16),
     "bad_manifest"),
    (lambda d: d["mirrors"][0]["public_key"].update(public_key_b64="AAAA"), "bad_manifest"),
    (lambda d: d.update(manifest_type="something_else"), "wrong_document_type"),
    (lambda d: d.update(notes="x" * (1 << 20)), "too_large"),
])
def test_manifest_is_read_strictly(change: Callable[[dict[str, Any]], None],
                                   reason: str) -> None:
    doc = json.loads(PITH_MANIFEST.read_bytes())
    change(doc)
    with pytest.raises(InputError) as info:
        parse_manifest(json.dumps(doc).encode())
    assert info.value.reason == reason


def test_record_refs_name_what_the_source_must_resolve() -> None:
    r = parse_record_ref(GOLDEN_PN)
    assert (r.kind, r.path) == ("pith", "32UK2ZWI5AOEVO5BZHZCLHZWZL")
    assert parse_record_ref("32uk2zwi5aoevo5bzhzclhzwzl").path == "32UK2ZWI5AOEVO5BZHZCLHZWZL"
    short = parse_record_ref("pith:32uk2zwi")
    assert (short.kind, short.path) == ("pith_short_8", "32UK2ZWI")
    doi = parse_record_ref("https://doi.org/10.48550/ARXIV.1812.04754")
    assert (doi.kind, doi.path) == ("doi", "10.48550/arxiv.1812.04754")
    assert parse_record_ref("arXiv:hep-ex/0002044v2").path == "hep-ex/0002044v2"
    aliases = json.loads(GOLDEN.read_bytes())["current"]["source_aliases"]
    for text in (GOLDEN_PN, "pith:32UK2ZWI", "1812.04754", "1812.04754v1", "doi:10.48550/"
                 "arxiv.1812.04754"):
        assert parse_record_ref(text).matches(GOLDEN_PN, aliases), text
    assert not parse_record_ref("1812.04755").matches(GOLDEN_PN, aliases)
    assert not parse_record_ref("pith:32UK2ZWJ").matches(GOLDEN_PN, aliases)
    with pytest.raises(InputError):
        parse_record_ref("not an identifier")


async def test_backoff_is_exponential_with_jitter_and_honours_retry_after() -> None:
    async with httpx.AsyncClient() as client:
        fetcher = Fetcher(client, config(backoff_base_s=1.0, backoff_max_s=8.0,
                                         retry_after_cap_s=60.0), rng=random.Random(3))
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8)]):
        assert low <= fetcher.backoff(attempt, None) <= high
    assert fetcher.backoff(0, 30.0) == 30.0
    assert fetcher.backoff(0, 3600.0) == 60.0  # capped
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    assert retry_after(httpx.Headers({"Retry-After": "120"})) == 120.0
    assert retry_after(httpx.Headers({"Retry-After": "Wed, 21 Oct 2026 07:30:30 GMT",
                                      "Date": date})) == 150.0
    assert retry_after(httpx.Headers({"Retry-After": "soon", "Date": date})) is None


# ---------------------------------------------------------------- (a) a static file server
async def test_static_export_pulls_byte_identical_and_refreshes_with_304s(
        tmp_path: Path, export_tree: Path, pull_cli: Callable[..., Awaitable[CliRun]],
        nursery: trio.Nursery) -> None:
    server = StaticServer(export_tree)
    url = await server.start(nursery)
    # a manifest whose first usable mirror is elsewhere: the one at the manifest's origin wins
    manifest = Manifest("2026-05-19T20:12:26Z", (
        MirrorEntry("a pithnode source", "https", "http://127.0.0.1:1", status="source"),
        MirrorEntry.for_base_url("elsewhere", "http://127.0.0.1:1/mirror"),
        MirrorEntry.for_base_url("this one", url)))
    write_manifest(export_tree / "pith-mirrors.json", manifest)
    listed = tmp_path / "records.txt"
    listed.write_text("# records to mirror\n" + "".join(
        f"{r.pith_number}  # record {i}\n" for i, r in enumerate(RECORDS[:4])) + "\n")
    b = data_dir(tmp_path, "b")
    args = ["--data-dir", str(b), "--rate", "1000", "--from-file", str(listed),
            f"{url}/pith-mirrors.json",
            *(suffix(r) for r in RECORDS[4:])]

    r = await pull_cli(*args)
    assert r.code == 0, r.err
    assert "pull summary" in r.out
    for rec in RECORDS:
        s = suffix(rec)
        bundle, state = served(b, rec.pith_number)
        assert bundle == (export_tree / "pith" / s / "bundle.json").read_bytes()
        assert state == (export_tree / "pith" / s / "state.json").read_bytes()
    assert server.document_bodies() == 2 * len(RECORDS)
    assert json.loads((b / CACHE_FILE).read_bytes())["cache_version"] == 1

    # the refresh sends If-None-Match / If-Modified-Since and gets only 304s
    r = await pull_cli("--json", *args)
    assert r.code == 0, r.err
    summary = r.json()["summary"]
    assert summary["records_not_modified"] == len(RECORDS)
    assert (summary["documents_fetched"], summary["events_new"]) == (0, 0)
    assert summary["documents_not_modified"] == 2 * len(RECORDS)
    assert server.document_bodies() == 2 * len(RECORDS)  # no new bodies
    assert sum(server.not_modified.values()) == 2 * len(RECORDS)
    last = [q for q in server.requests if q.path.startswith("/pith/")][-1]
    assert "if-none-match" in last.headers and "if-modified-since" in last.headers


async def test_pith_like_source_by_manifest_reproduces_the_golden_state(
        tmp_path: Path, pull_cli: Callable[..., Awaitable[CliRun]],
        nursery: trio.Nursery) -> None:
    """Pith's own layout: a bundle of registry events only, Pith's state, Pith's manifest."""
    data = GOLDEN.read_bytes()
    parsed = parse_state(json.loads(data))
    doc = json.loads(data)
    tree = tmp_path / "pith"
    folder = tree / "pith" / suffix(GOLDEN_PN)
    folder.mkdir(parents=True)
    (folder / "state.json").write_bytes(data)
    (folder / "bundle.json").write_bytes(build_bundle(
        GOLDEN_PN, doc["current"]["canonical_record"], parsed.source_aliases, parsed.events))
    server = StaticServer(tree)
    url = await server.start(nursery)
    (tree / "pith-mirrors.json").write_bytes(
        PITH_MANIFEST.read_bytes().replace(b"https://pith.science", url.encode()))
    mainnet = NETWORK_TOML.read_text("utf-8")
    trusted = mainnet + ('\n[[trusted_importers]]\nname = "b"\n'
                         f'public_key_hex = "{KEY_B.public_key.hex()}"\n')
    b = data_dir(tmp_path, "b", key=KEY_B, network=trusted)

    r = await pull_cli(f"{url}/pith-mirrors.json", GOLDEN_PN, "--data-dir", str(b), "--json")
    assert r.code == 0, r.err
    out = r.json()
    assert out["source"]["mirror"] == "Pith Resolver"
    assert out["summary"]["import_attestations_made"] == 1
    assert out["records"][0]["matches_source"] is True
    with Store(b / "store.sqlite", spec_from_toml(trusted), readonly=True) as s:
        state = s.state(GOLDEN_PN)
        assert state is not None and state.data == data  # byte for byte

    # a node whose key no network trusts verifies the same documents but admits nothing
    c = data_dir(tmp_path, "c", network=mainnet)
    r = await pull_cli(url, "pith:32UK2ZWI5AOEVO5BZHZCLHZWZL", "--data-dir", str(c))
    assert r.code == 0, r.err
    assert "were not admitted" in r.err and "trusted importer" in r.err


# ---------------------------------------------------------------- failures, stored nothing
async def test_bad_documents_are_named_and_store_nothing(
        tmp_path: Path, export_tree: Path, nursery: trio.Nursery) -> None:
    server = StaticServer(export_tree)
    url = await server.start(nursery)
    good, *bad = RECORDS
    paths = {rec.pith_number: (f"/pith/{suffix(rec)}/bundle.json",
                               f"/pith/{suffix(rec)}/state.json") for rec in RECORDS}

    def file(rec: SynthRecord, kind: str) -> bytes:
        return (export_tree / "pith" / suffix(rec) / f"{kind}.json").read_bytes()

    bundle = json.loads(file(bad[0], "bundle"))
    native = next(e for e in bundle["events"]
                  if "signature_b64" in e and e["event_type"] != "registry_import")
    native["created_at"] = "2030-01-01T00:00:00Z"
    state = json.loads(file(bad[1], "state"))
    state["valid_event_count"] += 1
    endless = Endless()
    expected: dict[str, tuple[int, str, Fault]] = {  # record -> (document, check, fault)
        bad[0].pith_number: (0, "event_signature", serve_bytes(served_json(bundle))),
        bad[1].pith_number: (1, "state_sha256", serve_bytes(served_json(state))),
        bad[2].pith_number: (0, "truncated", truncated(file(bad[2], "bundle"))),
        bad[3].pith_number: (1, "content_type",
                             serve_bytes(file(bad[3], "state"), "text/html; charset=utf-8")),
        bad[4].pith_number: (0, "redirect_loop", redirect(f"/loop/{suffix(bad[4])}")),
        bad[5].pith_number: (0, "too_large", endless),
        bad[6].pith_number: (1, "read_timeout", stalled),
        # a Pith Number spelt PITH: makes the protocol code raise ProtocolError, not
        # InputError (a known bug): still only this record fails
        bad[7].pith_number: (1, "unverifiable", serve_bytes(GOLDEN.read_bytes().replace(
            b'"pith_number":"pith:', b'"pith_number":"PITH:'))),
    }
    for pith, (which, _, fault) in expected.items():
        server.faults[paths[pith][which]] = fault
    server.faults[f"/loop/{suffix(bad[4])}"] = redirect(paths[bad[4].pith_number][0])

    b = data_dir(tmp_path, "b")
    cfg = config(read_timeout_s=0.3)
    with Store(b / "store.sqlite", spec()) as store:
        first = await pull_api(url, [ref(good)], store, cfg)
        assert first.by_status["pulled"] == 1 and first.failed == 0
        before = replace(store.stats(), file_bytes=0)  # (moved by background checkpoints)
        summary = await pull_api(url, [ref(r) for r in bad], store, cfg)
        # nothing of any failed document was stored
        assert replace(store.stats(), file_bytes=0) == before
        assert store.records() == [good.pith_number]
    assert summary.failed == len(bad)
    got = {r.pith_number or r.ref.value: r for r in summary.results}
    for pith, (which, check, _) in expected.items():
        r = got[pith]
        assert r.status == "failed", (pith, r)
        assert r.check == check or check == "unverifiable", (pith, r)  # until it is fixed
        assert r.url == url + paths[pith][which]
    assert "event_id_mismatch" in got[bad[0].pith_number].detail  # type: ignore[operator]
    assert "cut at" in got[bad[5].pith_number].detail  # type: ignore[operator]
    assert got[bad[4].pith_number].detail.count("->") == 2  # type: ignore[union-attr]
    # the endless body was cut at the limit: the client hung up, the server stopped sending
    with trio.fail_after(TIMEOUT):
        await endless.done.wait()
    assert cfg.max_document_bytes <= endless.sent < cfg.max_document_bytes + (64 << 20)
    assert summary.failed_by.total() == len(expected)


async def test_cli_names_failures_and_exits_1(
        tmp_path: Path, export_tree: Path, pull_cli: Callable[..., Awaitable[CliRun]],
        nursery: trio.Nursery) -> None:
    server = StaticServer(export_tree)
    url = await server.start(nursery)
    bad = RECORDS[1]
    server.faults[f"/pith/{suffix(bad)}/state.json"] = serve_bytes(b"<html></html>", "text/html")
    b = data_dir(tmp_path, "b")
    r = await pull_cli(url, RECORDS[0].pith_number, bad.pith_number, "--data-dir", str(b))
    assert r.code == 1
    assert f"failed {url}/pith/{suffix(bad)}/state.json: content_type:" in r.err
    assert f"pulled {RECORDS[0].pith_number}: " in r.err
    assert "failed: content_type" in r.out
    with Store(b / "store.sqlite", spec(), readonly=True) as s:
        assert s.records() == [RECORDS[0].pith_number]
    # on a terminal: a progress bar, and the failure still named on its own line
    r = await pull_cli(url, RECORDS[0].pith_number, bad.pith_number, "--data-dir", str(b),
                       tty=True)
    assert r.code == 1
    assert f"failed {url}/pith/{suffix(bad)}/state.json: content_type:" in r.err
    assert f"pulled {RECORDS[0].pith_number}" not in r.err  # the bar replaces those lines


async def test_retries_back_off_then_succeed_or_give_up(
        tmp_path: Path, export_tree: Path, nursery: trio.Nursery) -> None:
    server = StaticServer(export_tree)
    url = await server.start(nursery)
    ok, busy = RECORDS[0], RECORDS[1]
    ok_bundle = f"/pith/{suffix(ok)}/bundle.json"
    busy_state = f"/pith/{suffix(busy)}/state.json"
    server.faults[ok_bundle] = unavailable(2, retry_after="2")
    server.faults[busy_state] = unavailable(100)
    fake = FakeTime()
    cfg = config(retries=2, burst=100.0, concurrency=1, backoff_base_s=0.5)
    with Store(data_dir(tmp_path, "b") / "store.sqlite", spec()) as store:
        summary = await pull_api(url, [ref(ok), ref(busy)], store, cfg, fake)
        assert store.records() == [ok.pith_number]
    assert summary.by_status["pulled"] == 1
    assert server.hits(ok_bundle) == 3 and server.hits(busy_state) == 3
    failed = next(r for r in summary.results if r.status == "failed")
    assert (failed.url, failed.check) == (url + busy_state, "http_503")
    assert "after 3 attempts" in (failed.detail or "")
    first, second, third, fourth = fake.sleeps
    assert first == 2.0  # Retry-After beats the first backoff (at most 0.5 s)
    assert 0.5 <= second <= 1.0  # exponential: the second wait is in [base, 2 base]
    assert 0.25 <= third <= 0.5 and 0.5 <= fourth <= 1.0  # the other record's two waits
    assert summary.fetch.retries == 4


async def test_rate_limit_per_host_holds_under_concurrency(
        tmp_path: Path, export_tree: Path, nursery: trio.Nursery) -> None:
    fake = FakeTime()
    server = StaticServer(export_tree, clock=fake.clock)
    url = await server.start(nursery)
    rate = 2.0
    with Store(data_dir(tmp_path, "b") / "store.sqlite", spec()) as store:
        summary = await pull_api(url, [ref(r) for r in RECORDS[:5]], store,
                                 config(rate_per_host=rate, concurrency=4), fake)
    assert summary.by_status["pulled"] == 5
    times = sorted(q.at for q in server.requests)
    assert len(times) == 10
    # the first token is granted at fake time 0; every request arrives after its grant, so
    # the k-th arrival (in time order) comes no sooner than k / rate (without the limiter
    # all would be at 0)
    for k, t in enumerate(times):
        assert t >= k / rate - 1e-9, (k, times)
    assert fake.now >= 9 / rate - 1e-9


async def test_cli_usage_and_unusable_sources_exit_2(
        tmp_path: Path, export_tree: Path, pull_cli: Callable[..., Awaitable[CliRun]],
        nursery: trio.Nursery) -> None:
    server = StaticServer(export_tree)
    url = await server.start(nursery)
    d = str(tmp_path / "b")
    r = await pull_cli(url, "--data-dir", d)
    assert r.code == 2 and "nothing to pull" in r.err
    r = await pull_cli(url, "not-an-identifier", "--data-dir", d)
    assert r.code == 2 and "no Pith Number, arXiv id or DOI" in r.err
    r = await pull_cli("ftp://127.0.0.1/x", GOLDEN_PN, "--data-dir", d)
    assert r.code == 2 and "not an http(s) URL" in r.err
    r = await pull_cli(url, GOLDEN_PN, "--data-dir", d, "--rate", "0")
    assert r.code == 2 and "--rate" in r.err
    r = await pull_cli(f"{url}/missing/pith-mirrors.json", GOLDEN_PN, "--data-dir", d)
    assert r.code == 2 and "cannot read the manifest" in r.err and "not_found" in r.err
    (export_tree / "bad-mirrors.json").write_bytes(b'{"manifest_type": "pith_mirror_manifest"}')
    r = await pull_cli(f"{url}/bad-mirrors.json", GOLDEN_PN, "--data-dir", d)
    assert r.code == 2 and "not usable" in r.err


def test_store_held_by_a_daemon_is_reported(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if cli_pull not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, cli_pull])
    b = data_dir(tmp_path, "b")
    with Store(b / "store.sqlite", spec()):  # holds the write lock, as a running node does
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["pull", "http://127.0.0.1:9", GOLDEN_PN, "--data-dir", str(b)],
                        stdout=out, stderr=err)
    assert code == 2
    assert "a pithnode daemon is running on it" in err.getvalue()
    assert "[pull] sources" in err.getvalue()


# ---------------------------------------------------------------- (b) a pithnode's mirror
async def start_node(nursery: trio.Nursery, net: MemoryNetwork, d: Path, key: SigningKey, *,
                     http: bool) -> Node:
    cfg = NodeConfig(http=HttpConfig(enabled=http, port=0),
                     sync=SyncConfig(interval_s=3600.0, jitter_s=0.0))
    transport = net.create(seed=key.seed, config=TransportConfig(listen_addrs=("/memory/0",)))
    node = Node(cfg, data_dir=d, spec=spec(), key=key, transport=transport, attest=False)
    with trio.fail_after(TIMEOUT):
        await nursery.start(node.run)
    return node


def http_count(node: Node, route: str, status: int) -> float:
    value = node.metrics.registry.get_sample_value(
        "pithnode_http_requests_total", {"route": route, "status": str(status)})
    return value or 0.0


async def mirror_bytes(url: str, pith: str) -> tuple[bytes, bytes]:
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            b = await client.get(f"{url}/pith/{suffix(pith)}/bundle.json")
            s = await client.get(f"{url}/pith/{suffix(pith)}/state.json")
    assert b.status_code == s.status_code == 200
    return b.content, s.content


@pytest.fixture
async def source_node(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Node]:
    a = data_dir(tmp_path, "a", key=KEY_A)
    fill_store(a, RECORDS)
    yield await start_node(nursery, MemoryNetwork(), a, KEY_A, http=True)


async def test_pithnode_mirror_by_alias_then_all_known_only_304s(
        tmp_path: Path, source_node: Node,
        pull_cli: Callable[..., Awaitable[CliRun]]) -> None:
    url = source_node.http_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    r0, r1, r2, r3 = RECORDS[:4]
    names = [f"pith:{suffix(r0)[:8]}", alias(r1, "arxiv"), alias(r2, "doi").upper(),
             alias(r3, "arxiv_version"), *(rec.pith_number for rec in RECORDS[4:])]
    b = data_dir(tmp_path, "b")
    r = await pull_cli(url, *names, "--data-dir", str(b), "--concurrency", "3", "--rate",
                       "1000")
    assert r.code == 0, r.err
    assert http_count(source_node, "bundle", 302) == 4  # the aliases were resolved there
    for rec in RECORDS:
        assert served(b, rec.pith_number) == await mirror_bytes(url, rec.pith_number)

    bodies = http_count(source_node, "bundle", 200), http_count(source_node, "state", 200)
    r = await pull_cli(url, "--all-known", "--data-dir", str(b), "--json", "--rate", "1000")
    assert r.code == 0, r.err
    summary = r.json()["summary"]
    assert summary["records_not_modified"] == len(RECORDS)
    assert summary["documents_fetched"] == 0
    assert (http_count(source_node, "bundle", 200),
            http_count(source_node, "state", 200)) == bodies
    assert http_count(source_node, "bundle", 304) == len(RECORDS)
    assert http_count(source_node, "state", 304) == len(RECORDS)


async def test_daemon_scheduled_pull_ingests_and_gossips(
        tmp_path: Path, source_node: Node, nursery: trio.Nursery) -> None:
    assert source_node.http_url is not None
    net = MemoryNetwork()
    key_c = SigningKey(bytes(range(2, 34)))
    c = await start_node(nursery, net, data_dir(tmp_path, "c", key=key_c), key_c, http=False)
    # a bare peer that only listens to the gossip topic
    listener = net.create(config=TransportConfig(listen_addrs=("/memory/0",)))
    await nursery.start(listener.run)
    heard = listener.subscribe(TOPIC, lambda sender, data: True)
    with trio.fail_after(TIMEOUT):
        await listener.connect(PeerAddress.parse(c.transport.listen_addresses()[0]))

    rounds: list[PullSummary | None] = []
    round_done = trio.Event()

    def on_round(source: str, summary: PullSummary | None) -> None:
        nonlocal round_done
        rounds.append(summary)
        round_done.set()
        round_done = trio.Event()

    r0, r1 = RECORDS[:2]
    with trio.fail_after(TIMEOUT):
        waiter = round_done
        await nursery.start(partial(
            run_scheduled_pull, c, [source_node.http_url], 0.05,
            [r0.pith_number, f"pith:{suffix(r1)[:12]}"], config=config(), on_round=on_round))
        await waiter.wait()
    first = rounds[0]
    assert first is not None and first.by_status["pulled"] == 2 and first.failed == 0
    assert c.store is not None
    wanted: set[str] = set()
    for rec in (r0, r1):
        st = c.store.state(rec.pith_number)
        assert st is not None
        assert st.data == (await mirror_bytes(source_node.http_url, rec.pith_number))[1]
        wanted |= {e.event_id for e in c.store.events(rec.pith_number)}
    assert first.new == len(wanted)
    got: set[str] = set()
    with trio.fail_after(TIMEOUT):
        async for message in heard:
            got |= {e.event_id for e in decode_events(decode_gossip(message.data))}
            if wanted <= got:
                break
    assert got == wanted

    # the next round refreshes the named and the known records: only 304s
    bodies = http_count(source_node, "bundle", 200)
    with trio.fail_after(TIMEOUT):
        waiter = round_done
        await waiter.wait()
    second = rounds[1]
    assert second is not None and second.failed == 0
    assert second.by_status["not_modified"] == second.requested == 3
    assert http_count(source_node, "bundle", 200) == bodies


async def test_scheduled_pull_survives_an_unusable_source(tmp_path: Path,
                                                          nursery: trio.Nursery) -> None:
    key = SigningKey(bytes(range(3, 35)))
    node = await start_node(nursery, MemoryNetwork(), data_dir(tmp_path, "n", key=key), key,
                            http=False)
    done = trio.Event()
    seen: list[PullSummary | None] = []

    def on_round(source: str, summary: PullSummary | None) -> None:
        seen.append(summary)
        done.set()

    with trio.fail_after(TIMEOUT):
        await nursery.start(partial(run_scheduled_pull, node, ["http://127.0.0.1:9/m.json"],
                                    3600.0, [], config=config(retries=0),
                                    on_round=on_round))
        await done.wait()
    assert seen == [None]
    with pytest.raises(SourceError):
        choose_mirror(Manifest("now", ()), "http://127.0.0.1:9/m.json")

