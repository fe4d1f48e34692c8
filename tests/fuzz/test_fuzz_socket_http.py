"""Fuzzing the node's front doors: query socket request lines and HTTP request targets.

The socket's decoder (``decode_request_line``) promises never to raise: every line becomes
requests or error replies that can be written back. The HTTP mirror is driven as an ASGI app
(a fake ``receive``/``send`` and ``tests.fake_node.FakeNode`` behind it): whatever the method,
target, query and headers, it answers exactly one response, never lets an exception out and
never answers 500 (a target that is not visible ASCII, which HTTP/1.1 refuses, gets 400); a
redirect's Location is visible ASCII, and the trailing-slash redirect keeps the exact bytes.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cbor2
import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pithnode.node.http_mirror import MAX_HEADER_LINES, MAX_PATH_BYTES, make_app, serve_http
from pithnode.node.http_server import NOT_ASCII_TARGET
from pithnode.node.metrics import NodeMetrics
from pithnode.node.query_socket import (
    ERROR_CODES,
    MAX_BATCH,
    METHODS,
    ErrorReply,
    Request,
    decode_request_line,
    encode_message,
)
from tests.fake_node import GOLDEN_PN, FakeNode
from tests.fuzz import (
    Target,
    check,
    corpus_cases,
    fuzz_settings,
    json_bytes,
    json_values,
    mutated_bytes,
    mutated_tree,
    peak_allocation,
    replay,
)
from tests.h2_client import H2Client, h2_request_headers

# ---------------------------------------------------------------------------- the socket


def _check_decoded(item: object) -> None:
    if isinstance(item, ErrorReply):
        assert item.code in ERROR_CODES
        line = encode_message(item.to_json())  # the reply can always be written back
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
    else:
        assert isinstance(item, Request), item
        spec = METHODS[item.method]
        assert set(item.params) <= {p.name for p in spec.params}


def run_request_line(data: bytes) -> object:
    decoded = decode_request_line(data)
    if isinstance(decoded, list):
        assert 0 < len(decoded) <= MAX_BATCH
        for item in decoded:
            _check_decoded(item)
    else:
        _check_decoded(decoded)
    return decoded


REQUEST_LINE = Target("decode_request_line", run_request_line, ())

REQUESTS: list[Any] = [
    {"jsonrpc": "2.0", "id": 1, "method": "node.status"},
    {"jsonrpc": "2.0", "id": "a", "method": "record.state", "params": {"id": GOLDEN_PN}},
    {"jsonrpc": "2.0", "id": 2, "method": "events.recent", "params": {"limit": 10}},
    {"jsonrpc": "2.0", "id": 3, "method": "events.submit", "params": {"events": [{}]}},
    {"jsonrpc": "2.0", "id": None, "method": "sync.trigger", "params": {"peer": None}},
    {"jsonrpc": "2.0", "method": "subscribe"},
    [{"jsonrpc": "2.0", "id": 4, "method": "explain", "params": {"id": "sha256:" + "0" * 64}},
     {"jsonrpc": "2.0", "id": 5, "method": "node.peers"}],
]
METHOD_NAMES = sorted(METHODS)


@st.composite
def requests(draw: st.DrawFn) -> Any:
    """Requests with any method name, params and id: known ones mostly."""
    req: dict[str, Any] = {}
    if draw(st.booleans()):
        req["jsonrpc"] = draw(st.sampled_from(("2.0", "1.0", 2.0)) | json_values(3))
    if draw(st.booleans()):
        req["id"] = draw(st.integers() | st.text(max_size=300) | st.none() | json_values(3))
    req["method"] = draw(st.sampled_from(METHOD_NAMES) | st.text(max_size=20) | json_values(3))
    if draw(st.booleans()):
        req["params"] = draw(st.dictionaries(st.sampled_from(("id", "limit", "events", "peer"))
                                             | st.text(max_size=8), json_values(5), max_size=3)
                             | json_values(4))
    return req


request_lines = st.one_of(
    st.binary(max_size=300),
    st.builds(json_bytes, json_values(), ascii_only=st.booleans()),
    requests().map(json_bytes),
    st.lists(requests(), max_size=4).map(json_bytes),
    st.lists(st.sampled_from(REQUESTS[:6]), min_size=MAX_BATCH - 1,
             max_size=MAX_BATCH + 1).map(json_bytes),
    mutated_tree(REQUESTS, json_values(5)).map(json_bytes),
    mutated_bytes([json_bytes(r) for r in REQUESTS]),
)


@fuzz_settings(300)
@given(request_lines)
def test_decode_request_line(data: bytes) -> None:
    check(REQUEST_LINE, data)


# ---------------------------------------------------------------------------- HTTP

API = FakeNode()
APP = make_app(API, base_url="http://mirror.test", metrics=NodeMetrics())
VISIBLE_ASCII = frozenset(range(0x21, 0x7F))


async def _call_app(scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await APP(scope, receive, send)
    return sent


def run_http(data: bytes) -> object:
    """CBOR ``[method, raw_path, query_string, [[name, value], ...]]``."""
    req = _cbor(data)
    if not (isinstance(req, list) and len(req) == 4 and isinstance(req[0], str)
            and isinstance(req[1], bytes) and isinstance(req[2], bytes)
            and isinstance(req[3], list) and all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, bytes) for x in h)
                for h in req[3])):
        return None
    method, raw_path, query, headers = req
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": raw_path.decode("latin-1"),
             "raw_path": raw_path, "query_string": query, "root_path": "",
             "headers": [tuple(h) for h in headers], "client": ("127.0.0.1", 4000),
             "server": ("127.0.0.1", 80)}
    sent = trio.run(_call_app, scope)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"], sent
    status = sent[0]["status"]
    assert 200 <= status < 600
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in sent[0]["headers"])
    target = raw_path + b"?" + query
    assert status != 500, (method, target, sent[1]["body"][:200])
    if not set(target) <= VISIBLE_ASCII:
        assert status in (400, 414), (target, status)
    location = dict(sent[0]["headers"]).get(b"location")
    if 300 <= status < 400 and status != 304:
        assert location is not None and set(location) <= VISIBLE_ASCII, location
    if status == 308 and len(raw_path) > 1 and raw_path.endswith(b"/"):  # trailing slash
        assert location == raw_path[:-1] + (b"?" + query if query else b""), location
    return status


def _cbor(data: bytes) -> Any:
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return None


HTTP = Target("http_request", run_http, ())

SUFFIX = GOLDEN_PN.rsplit(":", 1)[1]
SEGMENTS = ("pith", "arxiv", "doi", ".well-known", "state.json", "bundle.json", "x.json",
            "metrics", "healthz", "resolve", "pith-mirrors.json", SUFFIX, SUFFIX[:8],
            SUFFIX.lower(), GOLDEN_PN, "pith:" + SUFFIX[:12], "1812.04754", "1812.04754v1",
            "hep-th/9901001", "10.48550", "arxiv.1812.04754", "%2F", "%2f", "%00", "%5C", "..",
            ".", "%2E%2E", "", "%ff", "%C3%A9", "%E2%80%94", "a" * 600, "index.html", "\\")


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(("GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE",
                                   "OPTIONS", "get", "BREW")) | st.text(max_size=10))
    if draw(st.integers(0, 5)) == 0:
        raw_path = draw(st.binary(max_size=80))
    else:
        parts = draw(st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=12).map(quote),
                              max_size=6))
        raw_path = ("/" + "/".join(parts)).encode("utf-8", "surrogatepass")
        if draw(st.booleans()):
            raw_path += b"/"
    query = draw(st.sampled_from((b"", b"id=" + GOLDEN_PN.encode(), b"id=1812.04754",
                                  b"id=", b"id=%00", b"id=%ff", b"a=1&" * 10, b"id=doi:10.1/x"))
                 | st.binary(max_size=40) | st.text(max_size=20).map(
                     lambda t: b"id=" + quote(t).encode()))
    headers = draw(st.lists(st.tuples(
        st.sampled_from((b"accept", b"if-none-match", b"host", b"x-long")) | st.binary(max_size=10),
        st.sampled_from((b"text/html", b"*/*", b'"' + b"0" * 64 + b'"', b"*", b"W/\"a\", \"b\"",
                         b"x" * 9000)) | st.binary(max_size=40)), max_size=MAX_HEADER_LINES + 2))
    if draw(st.integers(0, 9)) == 0:
        raw_path += b"/pith" * (MAX_PATH_BYTES // 5)
    return cbor2.dumps([method, raw_path, query, [list(h) for h in headers]])


@fuzz_settings(200)
@given(http_requests())
def test_http_request(data: bytes) -> None:
    check(HTTP, data)


# ---------------------------------------------------------------------------- a real server


async def test_http2_non_ascii_path_does_not_stop_the_server() -> None:
    """hypercorn 0.18 decodes an HTTP/2 :path as ASCII outside the app; the error used to
    escape its connection handler and stop serve_http, and with it the node."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_http, FakeNode(), host="127.0.0.1",
                                              port=0))
            h2c = await H2Client.open(url)
            try:
                bad = await h2c.response(await h2c.request(h2_request_headers(
                    b"/pith/\xc3\xa9/")))
                # the same connection goes on serving
                ok = await h2c.response(await h2c.request(h2_request_headers(b"/healthz")))
            finally:
                await h2c.aclose()
            async with httpx.AsyncClient() as client:
                resp = await client.get(f"{url}/healthz")
            nursery.cancel_scope.cancel()
    assert (bad.status, bad.ended) == (400, True)
    assert bad.headers[b"content-type"] == b"application/json"
    assert json.loads(bad.body)["error"] == {"status": 400, "message": NOT_ASCII_TARGET}
    assert (ok.status, ok.body) == (200, b'{"status":"ok"}')
    assert resp.status_code == 200


# ---------------------------------------------------------------------------- corpus and size

TARGETS = (REQUEST_LINE, HTTP)


@pytest.mark.parametrize(("target", "path"), corpus_cases(TARGETS))
def test_corpus(target: Target, path: Path) -> None:
    replay(target, path)


def test_seed_requests_decode() -> None:
    for req in REQUESTS:
        decoded = decode_request_line(json.dumps(req).encode())
        items = decoded if isinstance(decoded, list) else [decoded]
        assert all(isinstance(i, Request) for i in items), items


MIB = 1 << 20


@pytest.mark.parametrize("data", [
    b"[" + b"{}," * (MIB // 12) + b"{}]",
    b"[" * MIB,
    json_bytes({"jsonrpc": "2.0", "id": 1, "method": "events.submit",
                "params": {"events": [{"payload": "x" * 1000}] * 1000}}),
    b"x" * (5 << 20),  # over MAX_REQUEST_BYTES: refused before decoding
], ids=["objects", "deep", "submit", "over-limit"])
def test_big_request_lines_stay_bounded(data: bytes) -> None:
    peak = peak_allocation(REQUEST_LINE, data)
    assert peak <= 64 * len(data), peak
