"""The HTTP mirror against a fake node: real hypercorn on 127.0.0.1 port 0, httpx clients.

The fake (``FakeMirrorNode`` below) holds Pith's golden state byte for byte, a bundle built
from it, and a hostile record whose every text field is markup. Path tricks go over a raw TCP
stream, since httpx normalises ``..`` away. Every network await sits inside ``fail_after``;
nothing sleeps.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pithnode.node import http_server
from pithnode.node.api import NotFound, RecordView, Served, SubmitOutcome
from pithnode.node.http_mirror import MAX_PATH_BYTES, make_app, serve_http
from pithnode.node.http_server import NOT_ASCII_TARGET
from pithnode.node.metrics import NodeMetrics
from pithnode.node.synth import REGISTRY_KEY_ID, REGISTRY_SIGNER_ID, SynthKeys, synth_keys
from pithnode.protocol.bundle import build_bundle, parse_bundle
from pithnode.protocol.canonical import canonical_sha256
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, event_from_json, make_native_event
from pithnode.protocol.identifiers import (
    abstract_canon_sha256,
    normalise_alias,
    parse_pith_number,
    pith_number_for_record,
    title_canon_sha256,
)
from pithnode.protocol.ingest import make_registry_imports
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.merge import merge
from pithnode.protocol.receipts import check_record_created
from pithnode.protocol.spec import NetworkSpec, spec_from_toml
from pithnode.protocol.state import CURRENT_LISTS, parse_state
from tests.h2_client import H2Client, h2_request_headers

TIMEOUT = 10

# ---------------------------------------------------------------- the fake node

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
GOLDEN_PN = "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL"
GOLDEN_SUFFIX = "32UK2ZWI5AOEVO5BZHZCLHZWZL"
GOLDEN_SHA = "a5230a63ad987fd126b508b92df25677176d2924b60993225c7ea63fe3180687"
GOLDEN_TITLE = "Gradient Descent Happens in a Tiny Subspace"
HOSTILE_TITLE = '<script>alert("pwned")</script> Tiny & "Quoted" <b>Subspaces</b>'
HOSTILE_AUTHORS = "Eve <img src=x onerror=alert(1)>, Mallory"
HOSTILE_ARXIV = "hep-ex/0002044"
JS_URL = "javascript:alert(document.cookie)"
PEER_ID = "12D3KooWFakeNodePeerIdForTests0000000000000000000"


def mainnet_spec() -> NetworkSpec:
    text = (files("pithnode.node") / "data" / "network.toml").read_text("utf-8")
    return spec_from_toml(text, source="network.toml")


@dataclass
class FakeRecord:
    full: str
    state: bytes
    state_sha256: str
    bundle: bytes
    view: RecordView
    events: list[dict[str, Any]]


def view_from_state(doc: dict[str, Any], spec: NetworkSpec) -> RecordView:
    """What a daemon would show: paper fields from the graph snapshot, checked receipt."""
    current = doc["current"]
    subject = doc["pith_number"]
    paper: dict[str, Any] = {}
    for snap in current["graph_snapshots"]:
        paper = snap["payload"].get("graph_snapshot", {}).get("paper", paper)
    record = current["canonical_record"] or {}
    created = current["record_created"]
    reason = (check_record_created(created["payload"], subject, created["signer"]["key_id"],
                                   spec) if created else "no record_created event")
    key_id = created["signer"]["key_id"] if created else "?"
    return RecordView(
        pith_number=subject,
        state_sha256=doc["state_sha256"],
        title=paper.get("title"),
        authors=paper.get("authors_text"),
        abstract=paper.get("abstract_excerpt"),
        submitted_at=record.get("metadata", {}).get("submitted_at"),
        source=record.get("source"),
        aliases=list(current["source_aliases"]),
        counts={k: doc[k] for k in ("event_count", "valid_event_count", "invalid_event_count",
                                    "equivocation_count")},
        receipt_valid=reason is None,
        receipt_detail=(f"Ed25519 signature by {key_id} over canonical_sha256 verifies"
                        if reason is None else reason),
        lists={name: list(current[name]) for name in CURRENT_LISTS},
        invalid_events=list(doc["invalid_events"]),
        equivocations=list(doc["equivocations"]),
    )


def golden_record() -> FakeRecord:
    data = GOLDEN.read_bytes()
    doc = json.loads(data)
    parsed = parse_state(doc)
    bundle = build_bundle(parsed.pith_number, doc["current"]["canonical_record"],
                          parsed.source_aliases, parsed.events)
    events = [e.to_json() for e in parsed.events]
    return FakeRecord(parsed.pith_number, data, doc["state_sha256"], bundle,
                      view_from_state(doc, mainnet_spec()), events)


def hostile_record(keys: SynthKeys, golden: str) -> FakeRecord:
    created = "2026-03-01T10:00:00Z"
    record = {
        "metadata": {
            "abstract_canon_sha256": abstract_canon_sha256("x"),
            "cross_cats_sorted": [],
            "license": "http://arxiv.org/licenses/nonexclusive-distrib/1.0/",
            "primary_cat": "hep-ex",
            "submitted_at": "2000-02-20T09:00:00Z",
            "title_canon_sha256": title_canon_sha256(HOSTILE_TITLE),
        },
        "schema_version": "1.0",
        "source": {"id": HOSTILE_ARXIV, "kind": "arxiv", "version": 2},
    }
    subject = str(pith_number_for_record(record))
    suffix = parse_pith_number(subject).suffix
    digest = canonical_sha256(record)
    signer = {"key_id": REGISTRY_KEY_ID, "public_key_fingerprint": keys.registry.fingerprint,
              "signer_id": REGISTRY_SIGNER_ID, "signer_type": "pith_registry"}
    receipt = {
        "algorithm": "ed25519", "canonical_sha256": digest, "key_id": REGISTRY_KEY_ID,
        "public_key_fingerprint": keys.registry.fingerprint,
        "signature_b64": base64.b64encode(
            keys.registry.sign_digest(bytes.fromhex(digest))).decode(),
        "signed_message": "canonical_sha256_bytes",
    }

    def reg_id(kind: str) -> str:
        return "sha256:" + hashlib.sha256(f"hostile:{kind}".encode()).hexdigest()

    registry = [
        event_from_json({
            "event_type": "record_created", "subject_pith_number": subject, "target": "record",
            "created_at": created, "signer": signer, "event_id": reg_id("record_created"),
            "payload": {"canonical_record": record, "canonical_sha256": digest,
                        "receipt": receipt}}),
        event_from_json({
            "event_type": "graph_snapshot", "subject_pith_number": subject, "target": "graph",
            "created_at": created, "signer": signer, "event_id": reg_id("graph_snapshot"),
            "payload": {"graph_snapshot": {
                "builder_version": "<i>builder</i>",
                "paper": {"title": HOSTILE_TITLE, "authors_text": HOSTILE_AUTHORS,
                          "abstract_excerpt": "An abstract that ends </p><script>x()</script>"},
            }}}),
    ]
    aliases = [{"alias_kind": k, "alias_value": v, "created_at": created} for k, v in (
        ("arxiv", HOSTILE_ARXIV), ("arxiv_version", HOSTILE_ARXIV + "v2"),
        ("doi", "10.48550/arxiv." + HOSTILE_ARXIV), ("pith_short_12", suffix[:12]),
        ("pith_short_16", suffix[:16]), ("pith_short_8", suffix[:8]))]
    events: list[Event] = make_registry_imports(
        keys.importer, subject=subject, source="fake", document=digest.encode(),
        events=registry, source_aliases=aliases, created_at=created, signer_id="importer")

    def native(key: SigningKey, etype: str, stype: str, payload: dict[str, Any],
               t: str) -> Event:
        return make_native_event(key, event_type=etype, subject=subject, payload=payload,
                                 created_at=t, signer_id=f"{stype}-<u>{key.fingerprint[:6]}</u>",
                                 signer_type=stype)

    node, auditor, other = keys.nodes[0], keys.nodes[1], keys.nodes[2]
    author = keys.authors[0]
    held = native(node, "storage_attestation", "node", {
        "object_sha256": "ab" * 32, "size": 48_213, "kind": "bundle",
        "held_since": "2026-03-02T00:00:00Z"}, "2026-03-02T00:00:00Z")
    audit = {"attestation_event_id": held.event_id, "object_sha256": "ab" * 32,
             "holder_fingerprint": node.fingerprint, "challenge_sha256": "cd" * 32}
    events += [
        native(author, "author_attestation", "author", {
            "orcid": "0000-0002-1825-0097", "name": "<svg onload=alert(1)>", "claim": "author"},
               "2026-03-01T11:00:00Z"),
        native(node, "timestamp_anchor", "node", {
            "kind": "opentimestamps", "digest_sha256": digest, "proof_b64": "AE9wZW5UaW1l"},
               "2026-03-01T12:00:00Z"),
        held,
        native(auditor, "storage_audit", "node", {**audit, "outcome": "verified"},
               "2026-03-03T00:00:00Z"),
        native(other, "storage_audit", "node", {**audit, "outcome": "failed"},
               "2026-03-03T01:00:00Z"),
        native(author, "citation_signature", "author", {
            "cited": golden, "relation": "supports", "note": "<script>cite()</script>"},
               "2026-03-04T00:00:00Z"),
        native(node, "replication_record", "node", {
            "kind": "replication", "reference": JS_URL, "outcome": "replicated",
            "note": "re-ran the <analysis>"}, "2026-03-05T00:00:00Z"),
        native(node, "state_attestation", "node", {
            "state_sha256": "ef" * 32, "event_set_fingerprint": "01" * 32, "event_count": 9},
               "2026-03-05T01:00:00Z"),
        native(author, "correction", "author", {
            "field": "abstract", "value": "<b>fixed</b>", "reason": "typo"},
               "2026-03-06T00:00:00Z"),
        native(node, "mirror_hint", "node", {
            "base_urls": ["http://127.0.0.1:8042", JS_URL],
            "multiaddrs": ["/ip4/127.0.0.1/tcp/4001"], "prefixes": [suffix[:2]]},
               "2026-03-07T00:00:00Z"),
        # invalid: a node key may not sign an author attestation
        native(node, "author_attestation", "node", {
            "orcid": "0000-0001-5109-3700", "name": "Forged", "claim": "author"},
               "2026-03-08T00:00:00Z"),
    ]
    # an equivocation: two different hints from one node at the same newest time
    for url in ("http://127.0.0.1:1/a", "http://127.0.0.1:1/b"):
        events.append(native(other, "mirror_hint", "node", {
            "base_urls": [url], "multiaddrs": [], "prefixes": []}, "2026-03-09T00:00:00Z"))
    spec = keys.spec()
    state = merge(subject, events, spec)
    bundle = build_bundle(subject, record, aliases, events)
    return FakeRecord(subject, state.served_bytes(), state.state_sha256, bundle,
                      view_from_state(state.doc, spec), [e.to_json() for e in events])


class FakeMirrorNode:
    """Implements ``NodeAPI`` over fixed records; ``fail`` makes document calls raise."""

    def __init__(self) -> None:
        self.metrics = NodeMetrics()
        self.fail: Exception | None = None
        golden = golden_record()
        hostile = hostile_record(synth_keys(11), golden.full)
        self.records = {r.full: r for r in (golden, hostile)}
        self.golden, self.hostile = golden, hostile
        self.aliases: dict[tuple[str, str], str] = {}
        for r in self.records.values():
            for a in r.view.aliases:
                self.aliases[(a["alias_kind"], a["alias_value"])] = r.full
        self.metrics.records.set(len(self.records))
        self.metrics.events.set(sum(len(r.events) for r in self.records.values()))

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def status(self) -> dict[str, Any]:
        return {
            "peer_id": PEER_ID, "network": "pith-mainnet", "uptime_s": 3725.5,
            "records": len(self.records),
            "events": sum(len(r.events) for r in self.records.values()),
            "invalid": sum(len(r.view.invalid_events) for r in self.records.values()),
            "peers": 2, "listen_addrs": ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"],
            "http_url": "http://127.0.0.1:0", "socket_path": "/tmp/pithnode.sock",
            # the shape node/daemon.py Node.status() returns
            "sync": {"rounds": 42, "errors": 1, "fetched": 7, "pushed": 2,
                     "last": {"peer": "12D3KooWPeerAlpha111111111111111111111111111111",
                              "at": 1779221546.0, "fetched_new": 7, "pushed": 2}},
            "gossip": {"messages_in": 31, "messages_out": 20, "events_in": 310,
                       "events_new": 300, "events_out": 205, "rejected": 3},
        }

    async def peers(self) -> list[dict[str, Any]]:
        return [
            {"peer_id": "12D3KooWPeerAlpha111111111111111111111111111111", "connected": True,
             "addrs": ["/ip4/127.0.0.1/tcp/4002"], "last_sync": "2026-05-19T20:10:00Z",
             "received": 120, "rejected": 0},
            {"peer_id": "12D3KooWPeer<b>Beta</b>", "connected": False,
             "addrs": [], "last_sync": None, "received": 3, "rejected": 2},
        ]

    async def resolve(self, identifier: str) -> str | None:
        try:
            kind, value = normalise_alias(identifier)
        except InputError:
            return None
        if kind == "pith":
            pn = parse_pith_number(value)
            for full in self.records:
                have = parse_pith_number(full)
                if have.suffix == pn.suffix and pn.year in (None, have.year):
                    return full
            return None
        return self.aliases.get((kind, value))

    async def served_state(self, identifier: str) -> Served | None:
        self._check()
        full = await self.resolve(identifier)
        r = None if full is None else self.records.get(full)
        return None if r is None else Served(r.full, r.state, r.state_sha256)

    async def served_bundle(self, identifier: str) -> Served | None:
        self._check()
        full = await self.resolve(identifier)
        r = None if full is None else self.records.get(full)
        return None if r is None else Served(r.full, r.bundle,
                                             hashlib.sha256(r.bundle).hexdigest())

    def cached_state(self, identifier: str) -> Served | None:
        return None  # the HTTP mirror asks served_state

    def cached_bundle(self, identifier: str) -> Served | None:
        return None

    async def events(self, pith_number: str) -> list[dict[str, Any]]:
        r = self.records.get(pith_number)
        if r is None:
            raise NotFound(pith_number)
        return list(r.events)

    async def record_view(self, pith_number: str) -> RecordView | None:
        self._check()
        r = self.records.get(pith_number)
        return None if r is None else r.view

    async def recent_events(self, limit: int) -> list[dict[str, Any]]:
        out = []
        for r in self.records.values():
            for e in r.events:
                out.append({"event_id": e["event_id"], "event_type": e["event_type"],
                            "subject": e["subject_pith_number"], "received_at": e["created_at"],
                            "source": "gossip" if e["signer"]["signer_type"] != "pith_registry"
                            else "import <script>"})
        out.sort(key=lambda e: e["received_at"], reverse=True)
        return out[:limit]

    async def submit(self, events: list[Any]) -> list[SubmitOutcome]:
        return [SubmitOutcome(None, "rejected", "read_only_fake") for _ in events]

    async def explain(self, identifier: str) -> dict[str, Any]:
        full = await self.resolve(identifier)
        if full is None:
            raise NotFound(identifier)
        return {"known": True, "pith_number": full}

    async def trigger_sync(self, peer_id: str | None) -> dict[str, Any]:
        return {"rounds": 0}

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        return
        yield {}

    async def manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads((FIXTURES / "pith-mirrors.json").read_bytes())
        return manifest

    def metrics_text(self) -> bytes:
        return self.metrics.render()


# ---------------------------------------------------------------- helpers and fixtures

@pytest.fixture
def api() -> FakeMirrorNode:
    return FakeMirrorNode()


@pytest.fixture
async def url(api: FakeMirrorNode, nursery: trio.Nursery) -> str:
    started: str = await nursery.start(partial(serve_http, api, metrics=api.metrics))
    return started


@pytest.fixture
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
        yield c


def hostile_suffix(api: FakeMirrorNode) -> str:
    return parse_pith_number(api.hostile.full).suffix


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(url: str, head: bytes) -> RawResponse:
    """Send exact bytes (no client-side normalisation) and read until the server closes."""
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return RawResponse(status, headers, body)


def get(target: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def assert_json_error(status: int, content_type: str | None, body: bytes, expected: int) -> None:
    assert status == expected
    assert content_type == "application/json"
    doc = json.loads(body)
    assert set(doc) == {"error"} and doc["error"]["status"] == expected
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]


class Page(HTMLParser):
    """Tags, attributes and visible text of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self._skip = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)
        self._skip += tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag == "style"

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


# ---------------------------------------------------------------- Pith's documents


async def test_state_json_is_served_byte_for_byte(client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.get(f"/pith/{GOLDEN_SUFFIX}/state.json")
    assert r.status_code == 200
    assert r.content == GOLDEN.read_bytes()
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(GOLDEN.read_bytes()))
    assert r.headers["etag"] == f'"{GOLDEN_SHA}"'
    assert r.headers["cache-control"] == "public, max-age=60"
    assert r.headers["access-control-allow-origin"] == "*"


async def test_bundle_and_well_known_bundle(api: FakeMirrorNode,
                                            client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        plain = await client.get(f"/pith/{GOLDEN_SUFFIX}/bundle.json")
        known = await client.get(f"/.well-known/pith/{GOLDEN_SUFFIX}/bundle.json")
        hostile = await client.get(f"/pith/{hostile_suffix(api)}/bundle.json")
    for r in (plain, known):
        assert r.status_code == 200
        assert r.content == api.golden.bundle
        assert r.headers["content-type"] == "application/json"
        assert r.headers["etag"] == f'"{hashlib.sha256(api.golden.bundle).hexdigest()}"'
    parsed = parse_bundle(json.loads(plain.content))
    assert parsed.pith_number == GOLDEN_PN and len(parsed.events) == 2
    assert hostile.content == api.hostile.bundle
    assert parse_bundle(hostile.json()).pith_number == api.hostile.full


async def test_manifest_is_compact_pith_format(client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.get("/pith-mirrors.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == (FIXTURES / "pith-mirrors.json").read_bytes().rstrip(b"\n")
    assert r.json()["manifest_type"] == "pith_mirror_manifest"
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'


async def test_healthz(client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["cache-control"] == "no-store"


# ---------------------------------------------------------------- redirects

G = GOLDEN_SUFFIX
# "{H}" stands for the hostile record's suffix
REDIRECTS = [
    # short Pith Numbers (8/12/16) are aliases: temporary redirects
    (f"/pith/{G[:8]}/state.json", 302, f"/pith/{G}/state.json"),
    (f"/pith/{G[:12]}/bundle.json", 302, f"/pith/{G}/bundle.json"),
    (f"/pith/{G[:16]}", 302, f"/pith/{G}"),
    (f"/pith/pith:{G[:8]}", 302, f"/pith/{G}"),
    (f"/.well-known/pith/{G[:8]}/bundle.json", 302, f"/.well-known/pith/{G}/bundle.json"),
    # other spellings of the same full Pith Number: permanent
    (f"/pith/pith:2018:{G}/state.json", 308, f"/pith/{G}/state.json"),
    (f"/pith/{G.lower()}/state.json", 308, f"/pith/{G}/state.json"),
    (f"/pith/pith:2018:{G}", 308, f"/pith/{G}"),
    (f"/pith/{G}/", 308, f"/pith/{G}"),
    # arXiv ids: plain, versioned, prefixed, old style (with its slash)
    ("/pith/1812.04754/state.json", 302, f"/pith/{G}/state.json"),
    ("/pith/arXiv:1812.04754v1", 302, f"/pith/{G}"),
    ("/arxiv/1812.04754", 302, f"/pith/{G}"),
    ("/arxiv/1812.04754v1", 302, f"/pith/{G}"),
    ("/arxiv/arXiv:1812.04754", 302, f"/pith/{G}"),
    ("/arxiv/hep-ex/0002044", 302, "/pith/{H}"),
    ("/arxiv/HEP-EX/0002044v2", 302, "/pith/{H}"),
    ("/pith/hep-ex/0002044/state.json", 302, "/pith/{H}/state.json"),
    ("/.well-known/pith/hep-ex/0002044v2/bundle.json", 302, "/.well-known/pith/{H}/bundle.json"),
    # DOIs contain slashes (the hostile record's has two)
    ("/doi/10.48550/arxiv.1812.04754", 302, f"/pith/{G}"),
    ("/doi/10.48550/ARXIV.1812.04754", 302, f"/pith/{G}"),
    ("/doi/doi:10.48550/arxiv.hep-ex/0002044", 302, "/pith/{H}"),
    ("/pith/10.48550/arxiv.1812.04754/bundle.json", 302, f"/pith/{G}/bundle.json"),
    ("/pith/10.48550/arxiv.hep-ex/0002044/state.json", 302, "/pith/{H}/state.json"),
]


@pytest.mark.parametrize(("path", "status", "location"), REDIRECTS)
async def test_redirects_to_the_canonical_path(api: FakeMirrorNode, client: httpx.AsyncClient,
                                               path: str, status: int, location: str) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.get(path.replace("{H}", hostile_suffix(api)))
        head = await client.head(path.replace("{H}", hostile_suffix(api)))
    assert r.status_code == status
    assert r.headers["location"] == location.replace("{H}", hostile_suffix(api))
    assert r.content == b""
    assert (head.status_code, head.headers["location"]) == (status, r.headers["location"])


@pytest.mark.parametrize("ident", [
    f"pith:{G[:8]}", f"pith:2018:{G}", G, f"{G[:12]}", "1812.04754v1", "arXiv:1812.04754",
    "https://doi.org/10.48550/arxiv.1812.04754", "doi:10.48550/ARXIV.1812.04754",
    "  1812.04754  ",
])
async def test_resolve_query_redirects_to_the_record_page(client: httpx.AsyncClient,
                                                          ident: str) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.get("/resolve", params={"id": ident})
    assert r.status_code == 302
    assert r.headers["location"] == f"/pith/{G}"


async def test_following_redirects_ends_on_identical_bytes(api: FakeMirrorNode,
                                                           client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        state = await client.get(f"/pith/pith:{G[:8]}/state.json", follow_redirects=True)
        old = await client.get("/arxiv/hep-ex/0002044", follow_redirects=True)
        search = await client.get("/resolve", params={"id": "hep-ex/0002044"},
                                  follow_redirects=True)
    assert state.status_code == 200 and state.content == GOLDEN.read_bytes()
    assert old.status_code == 200 and old.url.path == f"/pith/{hostile_suffix(api)}"
    assert search.url == old.url


SLASH_REDIRECTS = [
    (b"/pith/" + G.encode() + b"/", b"/pith/" + G.encode()),
    (b"/pith/" + G.encode() + b"/?id=%FF", b"/pith/" + G.encode() + b"?id=%FF"),
    (b"/pith/%C3%A9/", b"/pith/%C3%A9"),  # escapes are kept exactly as sent
    (b"/pith/%c3%a9/?q=%e2%80%94&x=%22%3C", b"/pith/%c3%a9?q=%e2%80%94&x=%22%3C"),
    (b"/no/such/page/?a=b", b"/no/such/page?a=b"),
]


@pytest.mark.parametrize(("target", "location"), SLASH_REDIRECTS)
async def test_trailing_slash_redirect_keeps_the_exact_bytes(url: str, target: bytes,
                                                             location: bytes) -> None:
    with trio.fail_after(TIMEOUT):
        r = await raw_request(url, get(target))
    assert r.status == 308 and r.body == b""
    assert r.headers["location"].encode("latin-1") == location


async def test_trailing_slash_on_an_undecodable_path_is_400(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        r = await raw_request(url, get(b"/pith/%FF/?id=%FF"))
    assert_json_error(r.status, r.headers.get("content-type"), r.body, 400)
    assert json.loads(r.body)["error"]["message"] == "the path is not UTF-8"
    assert "location" not in r.headers


async def asgi_get(app: Any, raw_path: bytes, query: bytes = b"") -> list[dict[str, Any]]:
    """One request straight to the ASGI app, as a server that passes raw bytes would send it
    (HTTP/1.1 servers refuse such targets before the app; HTTP/2 ones may not)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "2",
               "method": "GET", "scheme": "http", "path": raw_path.decode("latin-1"),
               "raw_path": raw_path, "query_string": query, "root_path": "", "headers": [],
               "client": ("127.0.0.1", 4000), "server": ("127.0.0.1", 80)}, receive, send)
    return sent


@pytest.mark.parametrize(("raw_path", "query"), [
    (b"/pith/\xc3\xa9/", b""), (b"/pith/" + G.encode() + b"/", b"id=\xff"),
    (b"/pith/\xff", b""), (b"/healthz", b"x=\xc3\xa9"), (b"/pith/a b", b""),
    (b"/pith/" + G.encode() + b"/state.json", b"a=\x00"),
])
async def test_targets_that_are_not_visible_ascii_are_400(api: FakeMirrorNode, raw_path: bytes,
                                                          query: bytes) -> None:
    app = make_app(api, base_url="http://mirror.test", metrics=api.metrics)
    with trio.fail_after(TIMEOUT):
        start, body = await asgi_get(app, raw_path, query)
    headers = dict(start["headers"])
    assert_json_error(start["status"], headers[b"content-type"].decode(), body["body"], 400)
    assert json.loads(body["body"])["error"]["message"] == NOT_ASCII_TARGET
    assert b"location" not in headers


# ---------------------------------------------------------------- conditional requests, HEAD


async def test_etag_gives_304_without_a_body(api: FakeMirrorNode,
                                             client: httpx.AsyncClient) -> None:
    state_tag = f'"{GOLDEN_SHA}"'
    bundle_tag = f'"{hashlib.sha256(api.golden.bundle).hexdigest()}"'
    state, bundle = f"/pith/{G}/state.json", f"/pith/{G}/bundle.json"
    with trio.fail_after(TIMEOUT):
        for path, inm in [(state, state_tag), (state, f"W/{state_tag}"),
                          (state, f'"nope", {state_tag}'), (state, "*"), (bundle, bundle_tag)]:
            r = await client.get(path, headers={"If-None-Match": inm})
            assert r.status_code == 304, (path, inm)
            assert r.content == b""
            assert r.headers["etag"] in (state_tag, bundle_tag)
            assert r.headers["cache-control"] == "public, max-age=60"
        head = await client.head(state, headers={"If-None-Match": state_tag})
        other = await client.get(state, headers={"If-None-Match": bundle_tag})
    assert head.status_code == 304
    assert other.status_code == 200 and other.content == GOLDEN.read_bytes()


async def test_head_has_the_headers_of_get_and_no_body(client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for path in (f"/pith/{G}/state.json", f"/pith/{G}/bundle.json", f"/pith/{G}", "/",
                     "/pith-mirrors.json", "/metrics", "/nope"):
            got = await client.get(path)
            head = await client.head(path)
            assert head.status_code == got.status_code, path
            assert head.content == b""
            if path != "/metrics":  # the metrics change between the two requests
                assert head.headers["content-length"] == str(len(got.content)), path
            for name in ("content-type", "etag", "cache-control"):
                assert head.headers.get(name) == got.headers.get(name), (path, name)


async def test_caching_and_safety_headers(client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        status = await client.get("/")
        record = await client.get(f"/pith/{G}")
        metrics = await client.get("/metrics")
        redirect = await client.get(f"/pith/{G[:8]}")
        permanent = await client.get(f"/pith/{G.lower()}")
    for page in (status, record):
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "etag" not in page.headers
    assert metrics.headers["cache-control"] == "no-store"
    assert redirect.headers["cache-control"] == "no-cache"
    assert permanent.headers["cache-control"] == "public, max-age=60"
    assert "server" not in status.headers


# ---------------------------------------------------------------- errors

ERRORS = [
    ("GET", f"/pith/{'Z' * 8}/state.json", 404),  # a well-formed short form nobody has
    ("GET", f"/pith/{'A' * 26}/bundle.json", 404),
    ("GET", f"/.well-known/pith/{'A' * 26}/bundle.json", 404),
    ("GET", f"/pith/{'A' * 26}", 404),
    ("GET", "/pith/pith:2017:" + G + "/state.json", 404),  # wrong year
    ("GET", f"/pith/{G[:-2]}01/state.json", 400),  # 0 and 1 are not base32
    ("GET", "/pith/not-an-id/state.json", 400),
    ("GET", f"/pith/{G[:7]}", 400),  # 7 characters is no short form
    ("GET", "/arxiv/10.48550/arxiv.1812.04754", 400),  # a DOI on the arXiv path
    ("GET", "/doi/1812.04754", 400),
    ("GET", "/arxiv/9912.99999", 404),
    ("GET", "/nope", 404),
    ("GET", "/pith", 404),
    ("GET", f"/pith/{G}/integrity.json", 404),
    ("GET", "/resolve", 400),
    ("GET", "/resolve?id=", 400),
    ("GET", "/resolve?id=%ff", 400),
    ("GET", "/resolve?id=9999.99999", 404),
    ("GET", "/resolve?" + "&".join(f"a{i}=1" for i in range(20)), 400),
    ("POST", f"/pith/{G}/state.json", 405),
    ("PUT", "/", 405),
    ("DELETE", f"/pith/{G}", 405),
    ("PATCH", "/pith-mirrors.json", 405),
    ("OPTIONS", "/metrics", 405),
    ("GET", "/" + "a" * (10 * 1024), 414),
    ("GET", "/resolve?id=" + "1" * MAX_PATH_BYTES, 414),
]


@pytest.mark.parametrize(("method", "path", "status"), ERRORS)
async def test_errors_are_json_with_the_right_status(client: httpx.AsyncClient, method: str,
                                                     path: str, status: int) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.request(method, path)
    assert_json_error(r.status_code, r.headers.get("content-type"), r.content, status)
    assert r.headers["cache-control"] == "no-store"
    if status == 405:
        assert r.headers["allow"] == "GET, HEAD"


async def test_oversized_headers(client: httpx.AsyncClient, url: str) -> None:
    with trio.fail_after(TIMEOUT):
        ours = await client.get("/", headers={"X-Big": "a" * 9000})
        many = await client.get("/", headers={f"X-H{i}": "1" for i in range(80)})
        # past hypercorn's own limit for a request head: it answers 431 itself
        raw = await raw_request(url, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                                     + b"a" * 40_000)
        after = await client.get("/healthz")
    assert_json_error(ours.status_code, ours.headers["content-type"], ours.content, 431)
    assert_json_error(many.status_code, many.headers["content-type"], many.content, 431)
    assert raw.status == 431
    assert after.status_code == 200


async def test_internal_errors_never_leak(api: FakeMirrorNode, client: httpx.AsyncClient,
                                          caplog: pytest.LogCaptureFixture) -> None:
    api.fail = RuntimeError("secret detail /var/lib/pithnode/key")
    with trio.fail_after(TIMEOUT):
        r = await client.get(f"/pith/{G}/state.json")
        page = await client.get(f"/pith/{G}", headers={"Accept": "text/html"})
        api.fail = None
        ok = await client.get(f"/pith/{G}/state.json")
    for resp in (r, page):
        assert_json_error(resp.status_code, resp.headers["content-type"], resp.content, 500)
        assert resp.json()["error"]["message"] == "internal error"
        assert b"secret" not in resp.content and b"Traceback" not in resp.content
    assert ok.status_code == 200
    failures = [rec for rec in caplog.records if rec.name == "pithnode.node.http_mirror"
                and rec.levelno == logging.ERROR]
    assert len(failures) == 2 and failures[0].exc_info is not None


async def test_api_not_found_and_bad_input_map_to_404_and_400(
        api: FakeMirrorNode, client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        api.fail = NotFound("gone")
        gone = await client.get(f"/pith/{G}/bundle.json")
        api.fail = InputError("bad_pith_number", "nope")
        bad = await client.get(f"/pith/{G}/bundle.json")
    assert_json_error(gone.status_code, gone.headers["content-type"], gone.content, 404)
    assert_json_error(bad.status_code, bad.headers["content-type"], bad.content, 400)


async def test_unknown_identifier_gets_a_friendly_page(client: httpx.AsyncClient) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    with trio.fail_after(TIMEOUT):
        page = await client.get("/resolve", params={"id": "9999.99999"}, headers=browser)
        bad = await client.get("/resolve", params={"id": "<b>what"}, headers=browser)
        unknown = await client.get("/no/such/page", headers=browser)
        document = await client.get(f"/pith/{'A' * 26}/state.json", headers=browser)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    parsed = Page(page.text)
    assert "no record known for '9999.99999'" in parsed.visible
    assert ("action", "/resolve") in parsed.attrs and ("name", "id") in parsed.attrs
    assert ("value", "9999.99999") in parsed.attrs  # the search box keeps what was typed
    assert bad.status_code == 400 and "&lt;b&gt;what" in bad.text and "<b>what" not in bad.text
    assert unknown.status_code == 404 and "Not found" in Page(unknown.text).visible
    # documents stay JSON whatever the client accepts
    assert_json_error(document.status_code, document.headers["content-type"],
                      document.content, 404)


# ---------------------------------------------------------------- path tricks

TRICKS = [
    (b"/pith/../etc/passwd", 400),
    (b"/pith/%2e%2e/%2e%2e/etc/passwd", 400),
    (b"/%2E%2E/pith/" + G.encode() + b"/state.json", 400),
    (b"/pith/" + G.encode() + b"%2Fstate.json", 400),
    (b"/pith/" + G.encode() + b"%2fstate.json", 400),
    (b"/pith/" + G.encode() + b"/..%2F..%2Fetc%2Fpasswd", 400),
    (b"/pith/..%5C..%5Cwindows", 400),
    (b"/pith/" + G.encode() + b"%00/state.json", 400),
    (b"/pith/./" + G.encode(), 400),
    (b"//evil.example/", 400),  # no protocol-relative redirect
    (b"/pith//" + G.encode(), 400),
    (b"/pith/%ff%fe", 400),
    (b"/doi/10.48550%2Farxiv.1812.04754", 400),
    (b"http://127.0.0.1/pith/" + G.encode() + b"/state.json", 400),
    (b"*", 400),
    (b"/pith/" + b"A" * 10 * 1024, 414),
]


async def test_path_tricks_are_rejected_and_the_server_carries_on(
        url: str, client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        before = await client.get(f"/pith/{G}/state.json")  # keeps a connection open
        for target, status in TRICKS:
            r = await raw_request(url, get(target))
            assert_json_error(r.status, r.headers.get("content-type"), r.body, status)
        # rejected by hypercorn's parser before the app sees them: a raw NUL, raw non-ASCII
        for target in (b"/pith/\x00/state.json", b"/pith/\xff", b"/pith/a b"):
            assert (await raw_request(url, get(target))).status == 400
        for method in (b"BREW", b"TRACE", b"POST", b"CONNECT"):
            r = await raw_request(url, get(b"/", method))
            assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
        ws = await raw_request(url, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade"
                                    b"\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert ws.status == 403
        after = await client.get(f"/pith/{G}/state.json")
        async with httpx.AsyncClient(base_url=url) as fresh:
            other = await fresh.get(f"/pith/{G}/state.json")
    assert before.content == after.content == other.content == GOLDEN.read_bytes()


# ---------------------------------------------------------------- pages


async def test_record_page_shows_the_record(api: FakeMirrorNode,
                                            client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.get(f"/pith/{G}")
    assert r.status_code == 200
    page = Page(r.text)
    text = page.visible
    assert f"<title>{GOLDEN_TITLE} · pithnode</title>" in r.text
    assert GOLDEN_TITLE in text
    assert "Daniel A. Roberts, Ethan Dyer, Guy Gur-Ari" in text
    assert "gradient dynamically converges to a very small subspace" in text
    assert "submitted 2018-12-12 00:36:17" in text
    for alias in api.golden.view.aliases:
        assert alias["alias_value"] in text
    assert GOLDEN_PN in text and f"pith:{G[:8]}" in text
    assert GOLDEN_SHA in text
    assert "✓ registry receipt valid" in text and "pith-v1-2026-05" in text
    hrefs = {v for k, v in page.attrs if k == "href"}
    assert {f"/pith/{G}/state.json", f"/pith/{G}/bundle.json",
            f"/.well-known/pith/{G}/bundle.json", "https://arxiv.org/abs/1812.04754v1",
            "https://doi.org/10.48550/arxiv.1812.04754"} <= hrefs
    for section in ("Author attestations (0)", "Timestamp anchors (0)", "Mirrors (0)",
                    "Storage attestations (0)", "Citation signatures (0)",
                    "Replication records (0)", "Corrections (0)", "Invalid events (0)",
                    "Equivocations (0)"):
        assert section in text
    assert "script" not in page.tags


async def test_record_page_shows_an_invalid_receipt(api: FakeMirrorNode,
                                                    client: httpx.AsyncClient) -> None:
    api.golden.view = dataclasses.replace(api.golden.view, receipt_valid=False,
                                          receipt_detail="bad_receipt")
    with trio.fail_after(TIMEOUT):
        text = Page((await client.get(f"/pith/{G}")).text).visible
    assert "✗ registry receipt invalid" in text and "bad_receipt" in text
    assert "receipt valid" not in text


async def test_hostile_record_page_is_escaped(api: FakeMirrorNode,
                                              client: httpx.AsyncClient) -> None:
    suffix = hostile_suffix(api)
    with trio.fail_after(TIMEOUT):
        r = await client.get(f"/pith/{suffix}")
    assert r.status_code == 200
    page = Page(r.text)
    # the markup arrives as text, never as elements or attributes
    assert set(page.tags) <= {"html", "head", "meta", "title", "link", "style", "body",
                              "header", "div", "a", "span", "form", "input", "button",
                              "main", "h1", "h2", "h3", "p", "section", "code", "dl", "dt",
                              "dd", "table", "thead", "tbody", "tr", "th", "td", "ul", "li",
                              "br", "footer", "b", "small"}
    assert "&lt;b&gt;Subspaces&lt;/b&gt;" in r.text and "<b>Subspaces" not in r.text
    assert not [k for k, _ in page.attrs if k.startswith("on")]
    assert not [v for k, v in page.attrs if k == "href" and not (v or "").startswith(
        ("/", "https://", "http://127.0.0.1:8042", "data:"))]
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in r.text
    text = page.visible
    assert HOSTILE_TITLE in text and HOSTILE_AUTHORS in text
    assert "<svg onload=alert(1)>" in text and "<script>cite()</script>" in text
    assert JS_URL in text  # shown, not linked
    # every kind of attestation is there
    assert "Author attestations (1)" in text and "0000-0002-1825-0097" in text
    assert "Timestamp anchors (1)" in text and "opentimestamps" in text
    assert "Storage attestations (1)" in text
    assert "✓ 1 verified" in text and "✗ 1 failed" in text
    assert "Citation signatures (1)" in text and GOLDEN_PN in text and "supports" in text
    assert "Replication records (2)" in text and "differs" in text
    assert "Corrections (1)" in text and "<b>fixed</b>" in text
    assert "Mirrors (1)" in text and ("href", "http://127.0.0.1:8042") in page.attrs
    assert "Invalid events (1)" in text and "signer_not_authorised" in text
    assert "Equivocations (1)" in text and "mirror_hint" in text
    assert "hep-ex/0002044v2" in text and "10.48550/arxiv.hep-ex/0002044" in text
    assert ("href", f"/pith/{G}") in page.attrs  # the citation links to the cited record


async def test_status_page(api: FakeMirrorNode, client: httpx.AsyncClient, url: str) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.get("/")
    assert r.status_code == 200
    page = Page(r.text)
    text = page.visible
    assert "Node status" in text and PEER_ID in text and "pith-mainnet" in text
    assert "2 Records" in text and "16 Events" in text and "1 Invalid events" in text
    assert "1 / 2 Peers connected" in text and "1 h 02 min" in text
    assert "12D3KooWPeer<b>Beta</b>" in r.text.replace("&lt;", "<").replace("&gt;", ">")
    assert "<b>Beta</b>" not in r.text
    assert "Sync rounds 42" in text and "Gossip events in / out 310 / 205" in text
    assert "Last sync 2026-05-19 20:12:26 with" in text and "(7 fetched, 2 pushed)" in text
    assert "/ip4/127.0.0.1/tcp/4001" in text and url in text
    assert "Recent events" in text and "mirror_hint" in text and "record_created" in text
    assert "import <script>" in text and "script" not in page.tags
    assert ("action", "/resolve") in page.attrs and ("name", "id") in page.attrs
    assert "/tmp/pithnode.sock" not in text  # the local socket path stays private
    assert ("href", f"/pith/{hostile_suffix(api)}") in page.attrs


# ---------------------------------------------------------------- metrics


async def test_metrics_parse_and_count_requests(client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            assert (await client.get(f"/pith/{G}/state.json")).status_code == 200
        assert (await client.get(f"/pith/{G[:8]}/state.json")).status_code == 302
        assert (await client.get("/nope")).status_code == 404
        assert (await client.get("/pith/%2e%2e/x")).status_code == 400
        r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value
                for s in families["pithnode_http_requests"].samples
                if s.name == "pithnode_http_requests_total"}
    assert requests[("state", "200")] == 3
    assert requests[("state", "302")] == 1
    assert requests[("unknown", "404")] == 1
    assert requests[("invalid", "400")] == 1
    assert families["pithnode_records"].samples[0].value == 2
    for name in ("pithnode_events_ingested", "pithnode_events_rejected",
                 "pithnode_peers_connected", "pithnode_gossip_messages", "pithnode_gossip_events",
                 "pithnode_gossip_rejected", "pithnode_sync_rounds", "pithnode_sync_errors",
                 "pithnode_sync_events_fetched", "pithnode_sync_bytes",
                 "pithnode_store_size_bytes", "pithnode_events", "pithnode_socket_requests"):
        assert name in families, name


def test_node_metrics_use_their_own_registry() -> None:
    a, b = NodeMetrics(), NodeMetrics()  # a second instance would clash in a shared registry
    a.http_requests.labels(route="state", status="200").inc()
    assert b'pithnode_http_requests_total{route="state",status="200"} 1.0' in a.render()
    assert b"pithnode_http_requests_total{" not in b.render()


# ---------------------------------------------------------------- serving


async def test_many_concurrent_clients(api: FakeMirrorNode, url: str) -> None:
    results: list[tuple[int, bytes]] = []
    tls = ssl.create_default_context()  # unused over http, but httpx builds one per client

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, verify=tls) as c:
            for path in (f"/pith/{G}/state.json", f"/pith/{G}/bundle.json", f"/pith/{G}"):
                r = await c.get(path)
                results.append((r.status_code, r.content))

    with trio.fail_after(TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one_client)
    assert len(results) == 120
    assert {status for status, _ in results} == {200}
    assert {body for _, body in results if body.startswith(b'{"state')} == {GOLDEN.read_bytes()}
    families = {f.name: f for f in text_string_to_metric_families(api.metrics_text().decode())}
    total = sum(s.value for s in families["pithnode_http_requests"].samples
                if s.name == "pithnode_http_requests_total")
    assert total == 120


async def test_port_zero_reports_the_bound_port_and_closes_it(api: FakeMirrorNode) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            first = await nursery.start(serve_http, api)
            second = await nursery.start(partial(serve_http, api, host="127.0.0.1", port=0))
            assert first.startswith("http://127.0.0.1:") and second.startswith("http://127.0.0.1:")
            assert first != second and int(first.rsplit(":", 1)[1]) > 0
            async with httpx.AsyncClient() as c:
                assert (await c.get(first + "/healthz")).status_code == 200
                assert (await c.get(second + "/healthz")).status_code == 200
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", int(first.rsplit(":", 1)[1]))


# ---------------------------------------------------------------- HTTP/2

NOT_ASCII = {"status": 400, "message": NOT_ASCII_TARGET}
H2_REFUSED = [
    # what hypercorn cannot build a request of: answered 400 before it tries
    (h2_request_headers(b"/pith/\xc3\xa9"), None, NOT_ASCII),
    (h2_request_headers(b"/pith/" + G.encode() + b"/?id=\xff"), None, NOT_ASCII),
    (h2_request_headers(b"/\x80", b"POST"), b"x" * 50_000, NOT_ASCII),  # with a body
    (h2_request_headers(b"/", b"G\xc3\x89T"), None,
     {"status": 400, "message": "the request method must be ASCII"}),
    ([(b":method", b"CONNECT"), (b":authority", b"mirror.test:443")], None,
     {"status": 400, "message": "an HTTP/2 request to this mirror needs a :path"}),
]


@pytest.mark.parametrize(("headers", "body", "error"), H2_REFUSED,
                         ids=["path", "query", "body", "method", "connect"])
async def test_http2_requests_hypercorn_cannot_build_get_400(
        url: str, headers: list[tuple[bytes, bytes]], body: bytes | None,
        error: dict[str, Any]) -> None:
    with trio.fail_after(TIMEOUT):
        client = await H2Client.open(url)
        try:
            bad = await client.response(await client.request(headers, body))
            for _ in range(4 if body is not None else 0):  # a refused body must not use
                # up the connection's window (its first frame comes with the headers)
                again = await client.response(await client.request(headers, body))
                assert (again.status, again.body) == (bad.status, bad.body)
            # the connection carries on with its other streams
            ok = await client.response(await client.request(
                h2_request_headers(f"/pith/{G}/state.json".encode())))
            # more than the 64 KiB connection window was sent: the server gave it back
            assert client.conn.outbound_flow_control_window > 0
        finally:
            await client.aclose()
    assert bad.status == 400 and bad.headers[b"content-type"] == b"application/json"
    assert json.loads(bad.body) == {"error": error}
    assert bad.headers[b"content-length"] == str(len(bad.body)).encode()
    assert ok.status == 200 and ok.body == GOLDEN.read_bytes()


async def test_http2_head_with_a_non_ascii_path_gets_400_without_a_body(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        client = await H2Client.open(url)
        try:
            head = await client.response(await client.request(
                h2_request_headers(b"/\xff", b"HEAD")))
        finally:
            await client.aclose()
    assert (head.status, head.body, head.ended) == (400, b"", True)
    assert head.headers[b"content-length"] == b"0"


async def test_http2_refused_request_reset_by_the_client_in_the_same_write(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    """By the time the refusal runs, h2 has closed and forgotten that stream: nothing to
    answer (sending on it failed with StreamIDTooLowError and cost the connection)."""
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.ERROR):
        client = await H2Client.open(url)
        try:
            gone = client.queue(h2_request_headers(b"/\xff", b"HEAD"))
            client.conn.reset_stream(gone)
            ok = client.queue(h2_request_headers(b"/healthz"))
            await client.flush()
            answer = await client.response(ok)
        finally:
            await client.aclose()
    assert answer.status == 200 and client.responses[gone].status is None
    assert not [r for r in caplog.records if r.name == "pithnode.node.http_server"]


async def test_http2_requests_the_app_sees_are_checked_by_the_app(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        client = await H2Client.open(url)
        try:
            control = await client.response(await client.request(
                h2_request_headers(b"/pith/\x01")))
            slash = await client.response(await client.request(
                h2_request_headers(b"/pith/%C3%A9/?q=%FF")))
            header = await client.response(await client.request(
                [*h2_request_headers(b"/healthz"), (b"x-name", b"\xc3\xa9\xff")]))
        finally:
            await client.aclose()
    assert control.status == 400 and json.loads(control.body)["error"] == NOT_ASCII
    assert slash.status == 308 and slash.headers[b"location"] == b"/pith/%C3%A9?q=%FF"
    assert header.status == 200


async def test_http2_body_of_a_request_answered_early_is_dropped(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The app answers 405 before the body is in; hypercorn then looked the finished
    stream up for each DATA frame and failed (KeyError), which stopped the server."""
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.ERROR):
        client = await H2Client.open(url)
        try:
            posts = [await client.response(await client.request(
                h2_request_headers(b"/healthz", b"POST"), b"x" * 200_000)) for _ in range(3)]
            ok = await client.response(await client.request(h2_request_headers(b"/healthz")))
        finally:
            await client.aclose()
    for post in posts:
        assert post.status == 405 and json.loads(post.body)["error"]["status"] == 405
    assert ok.status == 200 and not client.closed
    # 600 kB offered into a 64 KiB connection window: what was sent was given back
    assert client.conn.outbound_flow_control_window > 0
    assert not [r for r in caplog.records if r.name == "pithnode.node.http_server"]


async def test_http2_priority_for_streams_never_opened_is_ignored(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    """hypercorn kept each such stream in its priority tree and failed at the 1,001st,
    which stopped the server."""
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.ERROR):
        client = await H2Client.open(url)
        try:
            for i in range(1200):
                client.conn.prioritize(1001 + 2 * i, weight=16)
            ok = await client.response(await client.request(h2_request_headers(b"/healthz")))
        finally:
            await client.aclose()
    assert ok.status == 200 and not client.closed
    assert not [r for r in caplog.records if r.name == "pithnode.node.http_server"]


def h2c_upgrade(settings: bytes) -> bytes:
    return (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings"
            b"\r\nUpgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n")


@pytest.mark.parametrize("settings", [b"AAAAA", b"AAMAAABkAAR", b"AAMAAABkAAQAAAAAAAIAAAAC"],
                         ids=["base64", "frame", "value"])
async def test_h2c_upgrade_with_bad_settings_closes_that_connection_only(
        url: str, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
        settings: bytes) -> None:
    """hypercorn answers 101, then h2 cannot read the settings: that used to stop the
    server. Now the connection is closed (too late for a 400) and the server serves on."""
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.INFO):
        upgraded = await raw_request(url, h2c_upgrade(settings))  # reads until closed
        after = await client.get("/healthz")
    assert upgraded.status == 101 and after.status_code == 200
    logged = [r for r in caplog.records if r.name == "pithnode.node.http_server"]
    assert len(logged) == 1 and logged[0].levelno == logging.INFO
    assert "bad HTTP2-Settings" in logged[0].getMessage() and logged[0].exc_info is None


async def test_h2c_upgrade_still_works(url: str) -> None:
    good = base64.urlsafe_b64encode(b"\x00\x03\x00\x00\x00\x64")  # MAX_CONCURRENT_STREAMS
    port = int(url.rsplit(":", 1)[1])
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(h2c_upgrade(good))
            data = b""
            while b'{"status":"ok"}' not in data:  # the answer, in HTTP/2 frames on stream 1
                chunk = await stream.receive_some(65536)
                assert chunk, data
                data += chunk
    assert data.startswith(b"HTTP/1.1 101 ")


async def test_data_pipelined_after_a_websocket_upgrade_closes_that_connection(
        url: str, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    """hypercorn takes the pipelined request for WebSocket data, starts a 400 and fails
    finishing it on an h11 connection already in error: that used to stop the server."""
    upgrade = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.WARNING):
        refused = await raw_request(url, upgrade + get(b"/healthz"))  # reads until closed
        after = await client.get("/healthz")
    assert refused.status == 400 and after.status_code == 200
    logged = [r for r in caplog.records if r.name == "pithnode.node.http_server"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    assert logged[0].exc_info is None
    assert "tripped over its input (LocalProtocolError" in logged[0].getMessage()


async def test_a_connection_that_fails_inside_the_server_ends_alone(
        url: str, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Whatever else goes wrong inside hypercorn ends that connection, not the server."""
    async def broken(self: object, events: object) -> None:
        raise RuntimeError("a bug inside the HTTP/2 stack")

    monkeypatch.setattr(http_server._H2Protocol, "_handle_events", broken)
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.ERROR):
        h2c = await H2Client.open(url)
        try:
            lost = await h2c.response(await h2c.request(h2_request_headers(b"/healthz")))
        finally:
            await h2c.aclose()
        monkeypatch.undo()
        after = await client.get("/healthz")
    assert lost.status is None and h2c.closed
    assert after.status_code == 200
    failures = [r for r in caplog.records if r.name == "pithnode.node.http_server"]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_make_app_wants_an_http_base_url(api: FakeMirrorNode) -> None:
    with pytest.raises(ValueError, match="base_url"):
        make_app(api, base_url="ftp://example.org")
    assert make_app(api, base_url="https://mirror.example/").base_url == "https://mirror.example"
