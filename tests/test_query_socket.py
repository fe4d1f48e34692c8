"""The local query socket: JSON-RPC over a real Unix socket against the in-memory FakeNode.

Nothing sleeps on the wall clock: tests wait on events (the fake's ``wait_until``, replies,
EOF) inside ``fail_after``, or run on trio's MockClock with autojump for the timeouts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pithnode.node.query_socket import (
    BUSY,
    ERROR_CODES,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    METHODS,
    NOT_FOUND,
    PARSE_ERROR,
    REJECTED,
    STORE_ERROR,
    ConnectionLost,
    ErrorReply,
    NoNodeRunning,
    QuerySocketServer,
    Request,
    RpcError,
    SocketInUse,
    SocketLimits,
    SocketPathError,
    decode_request_line,
    encode_message,
    open_query_client,
)
from pithnode.protocol.bundle import parse_bundle
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import make_native_event
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.state import served_json
from pithnode.storage.errors import StoreClosed, StoreCorrupt, StoreFull, StoreIOError
from tests.fake_node import GOLDEN, GOLDEN_PN, GOLDEN_SHA, GOLDEN_TITLE, PEER_B, FakeNode

TIMEOUT = 10.0


@pytest.fixture
def sock_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a short directory: sun_path holds at most 107 bytes
    return tmp_path_factory.mktemp("qs") / "node.sock"


class Harness:
    """A running server and the raw clients a test opened (closed at the end)."""

    def __init__(self, server: QuerySocketServer) -> None:
        self.server = server
        self.clients: list[Raw] = []

    async def connect(self) -> Raw:
        client = await Raw.open(self.server.path)
        self.clients.append(client)
        return client


@asynccontextmanager
async def running(api: FakeNode, path: Path, limits: SocketLimits | None = None
                  ) -> AsyncIterator[Harness]:
    harness = Harness(QuerySocketServer(api, path, limits=limits or SocketLimits()))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(harness.server.run)
            yield harness
            nursery.cancel_scope.cancel()
    finally:
        for client in harness.clients:
            await trio.aclose_forcefully(client.stream)


class Raw:
    """A bare line-level client, to send anything at all."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self._ids = 0

    @classmethod
    async def open(cls, path: Path) -> Raw:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise EOFError("closed by the server")
            self.buf += data
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return line

    async def message(self) -> Any:
        return json.loads(await self.line())

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self._ids += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": self._ids, "method": method}
        if params is not None:
            req["params"] = params
        await self.send(json.dumps(req).encode() + b"\n")
        return await self.message()

    async def wait_closed(self) -> bytes:
        """Read until the server closes; returns what was left unread."""
        rest = bytes(self.buf)
        while True:
            try:
                data = await self.stream.receive_some(1 << 16)
            except trio.BrokenResourceError:  # ECONNRESET: closed with our bytes unread
                return rest
            if not data:
                return rest
            rest += data

    async def aclose(self) -> None:
        await self.stream.aclose()


def native_event(note: str = "hello", t: str = "2026-05-18T00:00:00Z") -> dict[str, Any]:
    ev = make_native_event(SigningKey(b"\x07" * 32), event_type="citation_signature",
                           subject=GOLDEN_PN,
                           payload={"cited": GOLDEN_PN, "relation": "cites", "note": note},
                           created_at=t, signer_id="node-test", signer_type="node")
    return ev.to_json()


# --------------------------------------------------------------------------- the file

async def test_socket_file_is_0600_and_removed_on_shutdown(sock_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(FakeNode(), sock_path):
            st_ = os.stat(sock_path)
            assert stat.S_ISSOCK(st_.st_mode)
            assert stat.S_IMODE(st_.st_mode) == 0o600
            assert [p.name for p in sock_path.parent.iterdir()] == ["node.sock"]
    assert not sock_path.exists()


async def test_stale_socket_file_is_replaced(sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens: a crashed node's leftover
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with trio.fail_after(TIMEOUT):
        async with running(FakeNode(), sock_path) as h:
            client = await h.connect()
            assert (await client.request("node.status"))["result"]["records"] == 1
            assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600


async def test_second_server_on_a_live_socket_is_refused(sock_path: Path) -> None:
    fake = FakeNode()
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path) as h:
            before = os.stat(sock_path).st_ino
            with pytest.raises(SocketInUse, match="already running"):
                await QuerySocketServer(fake, sock_path).run()
            assert os.stat(sock_path).st_ino == before
            client = await h.connect()
            assert "result" in await client.request("node.status")


async def test_unusable_paths_are_refused(sock_path: Path) -> None:
    sock_path.write_text("not a socket")
    with pytest.raises(SocketPathError, match="not a socket"):
        await QuerySocketServer(FakeNode(), sock_path).run()
    assert sock_path.read_text() == "not a socket"
    with pytest.raises(SocketPathError, match="too long"):
        await QuerySocketServer(FakeNode(), sock_path.parent / ("x" * 120)).run()
    with pytest.raises(SocketPathError, match="not a directory"):
        await QuerySocketServer(FakeNode(), sock_path.parent / "nope" / "node.sock").run()
    assert sorted(p.name for p in sock_path.parent.iterdir()) == ["node.sock"]


# --------------------------------------------------------------------------- methods

async def test_every_method(sock_path: Path) -> None:
    fake = FakeNode()
    golden_bytes = GOLDEN.read_bytes()
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path), open_query_client(sock_path) as client:
            status = await client.call("node.status")
            assert status["records"] == 1 and status["network"] == "pith-mainnet"
            peers = (await client.call("node.peers"))["peers"]
            assert [p["peer_id"] for p in peers] == [p["peer_id"] for p in fake.peer_list]
            for ident in (GOLDEN_PN, "pith:32UK2ZWI", "1812.04754", "arXiv:1812.04754v1",
                          "https://doi.org/10.48550/arXiv.1812.04754"):
                assert await client.call("record.resolve", {"id": ident}) == {
                    "pith_number": GOLDEN_PN}
            state = await client.call("record.state", {"id": "pith:32UK2ZWI"})
            assert state["pith_number"] == GOLDEN_PN and state["state_sha256"] == GOLDEN_SHA
            assert served_json(state["state"]) == golden_bytes
            bundle = await client.call("record.bundle", {"id": GOLDEN_PN})
            assert served_json(bundle["bundle"]) == fake.records[GOLDEN_PN].bundle_bytes
            assert parse_bundle(bundle["bundle"]).pith_number == GOLDEN_PN
            events = await client.call("record.events", {"id": GOLDEN_PN})
            assert {e["event_id"] for e in events["events"]} == set(
                json.loads(golden_bytes)["applied_event_ids"])
            view = await client.call("record.view", {"id": GOLDEN_PN})
            assert view["title"] == GOLDEN_TITLE and view["counts"]["event_count"] == 2
            assert await client.call("events.recent") == {"events": []}

            good, tampered = native_event(), native_event("other")
            tampered["payload"]["note"] = "changed after signing"
            registry = json.loads(fake.records[GOLDEN_PN].bundle_bytes)["events"][0]
            result = await client.call("events.submit",
                                       {"events": [good, good, tampered, registry, 42]})
            assert [(o["outcome"], o["reason"]) for o in result["outcomes"]] == [
                ("new", None), ("duplicate", None), ("rejected", "event_id_mismatch"),
                ("rejected", "unsigned_registry_event"), ("rejected", "bad_envelope")]
            assert (result["new"], result["duplicate"], result["rejected"]) == (1, 1, 3)
            recent = await client.call("events.recent", {"limit": 5})
            assert [e["event_id"] for e in recent["events"]] == [good["event_id"]]

            explained = await client.call("explain", {"id": good["event_id"]})
            assert explained["kind"] == "event" and explained["in_state"] is False
            explained = await client.call("explain", {"id": "1812.04754"})
            assert explained["kind"] == "record" and explained["events"] == 3

            assert (await client.call("sync.trigger"))["peers"] == 1
            assert (await client.call("sync.trigger", {"peer": PEER_B}))["peers"] == 1
            assert (await client.call("sync.trigger", {"peer": None}))["rounds"] == 1
            assert fake.sync_requests == [None, PEER_B, None]

            for method, params in [("record.state", {"id": "pith:AAAAAAAA"}),
                                   ("record.bundle", {"id": "2101.00001"}),
                                   ("record.events", {"id": "garbage!"}),
                                   ("record.view", {"id": "pith:AAAAAAAA"}),
                                   ("explain", {"id": "sha256:" + "0" * 64}),
                                   ("sync.trigger", {"peer": "12D3KooWUnknown"})]:
                with pytest.raises(RpcError) as info:
                    await client.call(method, params)
                assert info.value.code == NOT_FOUND, method
                assert info.value.message.startswith("not found: ")


async def test_state_bytes_travel_unchanged(sock_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(FakeNode(), sock_path) as h:
            client = await h.connect()
            await client.send(b'{"jsonrpc":"2.0","id":7,"method":"record.state",'
                              b'"params":{"id":"pith:32UK2ZWI"}}\n')
            line = await client.line()
            assert GOLDEN.read_bytes() in line  # spliced in, byte for byte
            assert json.loads(line)["id"] == 7


async def test_answers_held_in_memory_are_written_inline(sock_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """Pipelined lines: those the node holds in memory (the fake: by full Pith Number) are
    answered inline, the rest by the usual path; every request gets its own reply, and a
    failing memory lookup only sends its request the usual way."""
    fake = FakeNode()
    golden = GOLDEN.read_bytes()
    ids = [GOLDEN_PN, "1812.04754", GOLDEN_PN, "pith:AAAAAAAA", GOLDEN_PN]
    lines = b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "record.state",
                                 "params": {"id": ident}}).encode() + b"\n"
                     for i, ident in enumerate(ids))
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path) as h:
            client = await h.connect()
            await client.send(lines + b'{"jsonrpc":"2.0","id":9,"method":"record.bundle",'
                              b'"params":{"id":"' + GOLDEN_PN.encode() + b'"}}\n')
            raw = {}
            for _ in range(len(ids) + 1):
                line = await client.line()
                raw[json.loads(line)["id"]] = line
            assert fake.calls.count("served_state") == 2  # only the arXiv id and the unknown
            assert "served_bundle" not in fake.calls
            fake.failing.add("cached_state")
            again = await client.request("record.state", {"id": GOLDEN_PN})
    for i, ident in enumerate(ids):
        if ident == "pith:AAAAAAAA":
            assert json.loads(raw[i])["error"]["code"] == NOT_FOUND
        else:
            assert golden in raw[i] and json.loads(raw[i])["result"]["state_sha256"] == \
                GOLDEN_SHA
    bundle = json.loads(raw[9])["result"]
    assert served_json(bundle["bundle"]) == fake.records[GOLDEN_PN].bundle_bytes
    assert again["result"]["pith_number"] == GOLDEN_PN
    assert fake.calls.count("served_state") == 3
    assert any("inline answer of record.state failed" in r.message for r in caplog.records)
    assert h.server.stats.internal_errors == 0


async def test_subscribe_notify_unsubscribe(sock_path: Path) -> None:
    fake = FakeNode()
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path), open_query_client(sock_path) as client:
            assert await client.call("subscribe") == {"subscribed": True}
            assert await client.call("subscribe") == {"subscribed": True}  # idempotent
            await fake.wait_until(lambda: fake.subscriber_count == 1)
            await fake.publish({"kind": "event", "event_id": "sha256:" + "1" * 64})
            await fake.publish({"kind": "state", "pith_number": GOLDEN_PN})
            first = await client.notifications.receive()
            second = await client.notifications.receive()
            assert first == {"dropped": 0, "notification": {"kind": "event",
                                                            "event_id": "sha256:" + "1" * 64}}
            assert second["notification"]["kind"] == "state"
            assert await client.call("unsubscribe") == {"subscribed": False}
            await fake.wait_until(lambda: fake.subscriber_count == 0)
            assert await client.call("unsubscribe") == {"subscribed": False}
            assert (await client.call("node.status"))["records"] == 1


async def test_subscription_ends_when_the_connection_closes(sock_path: Path) -> None:
    fake = FakeNode()
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path) as h:
            client = await h.connect()
            assert (await client.request("subscribe"))["result"] == {"subscribed": True}
            await fake.wait_until(lambda: fake.subscriber_count == 1)
            await client.aclose()
            await fake.wait_until(lambda: fake.subscriber_count == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert h.server.stats.active == 0


# --------------------------------------------------------------------------- bad requests

BAD_LINES: list[tuple[bytes, int, str]] = [
    (b'{"jsonrpc": "2.0", "id": 1, "method": "node.status"', PARSE_ERROR, "not JSON"),
    (b"\xff\xfe{}", PARSE_ERROR, "not UTF-8"),
    (b'{"jsonrpc":"2.0","id":1,"method":"node.status","params":{"x":NaN}}', PARSE_ERROR,
     "NaN"),
    (b'{"id":' + b"1" * 5000 + b"}", PARSE_ERROR, "parse error"),
    (b"[" * 70 + b"]" * 70, PARSE_ERROR, "nested"),
    (b"42", INVALID_REQUEST, "a request is a JSON object"),
    (b'"node.status"', INVALID_REQUEST, "a request is a JSON object"),
    (b"[]", INVALID_REQUEST, "empty batch"),
    (b'{"id":1,"method":"node.status"}', INVALID_REQUEST, '"jsonrpc" must be "2.0"'),
    (b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST, '"method" must be'),
    (b'{"jsonrpc":"2.0","id":1.5,"method":"node.status"}', INVALID_REQUEST, "id must be"),
    (b'{"jsonrpc":"2.0","id":1,"method":"node.status","x":1}', INVALID_REQUEST,
     "unknown member 'x'"),
    (b'{"jsonrpc":"2.0","id":1,"method":"node.status","params":3}', INVALID_REQUEST,
     '"params" must be an object'),
    (b'{"jsonrpc":"2.0","id":1,"method":"node.reboot"}', METHOD_NOT_FOUND,
     "method not found: 'node.reboot'"),
    (b'{"jsonrpc":"2.0","id":"\\ud800","method":"nope"}', METHOD_NOT_FOUND,
     "method not found"),
    (b'{"jsonrpc":"2.0","id":1,"method":"record.state"}', INVALID_PARAMS,
     "missing param 'id'"),
    (b'{"jsonrpc":"2.0","id":1,"method":"record.state","params":{"id":5}}', INVALID_PARAMS,
     "param 'id' must be a non-empty string"),
    (b'{"jsonrpc":"2.0","id":1,"method":"record.state","params":{"id":""}}', INVALID_PARAMS,
     "param 'id' must be"),
    (b'{"jsonrpc":"2.0","id":1,"method":"record.state","params":{"id":"x","y":1}}',
     INVALID_PARAMS, "record.state has no param 'y'"),
    (b'{"jsonrpc":"2.0","id":1,"method":"record.state","params":["x"]}', INVALID_PARAMS,
     "named params"),
    (b'{"jsonrpc":"2.0","id":1,"method":"events.submit","params":{"events":{}}}',
     INVALID_PARAMS, "param 'events' must be a non-empty array"),
    (b'{"jsonrpc":"2.0","id":1,"method":"events.submit","params":{"events":[]}}',
     INVALID_PARAMS, "param 'events'"),
    (b'{"jsonrpc":"2.0","id":1,"method":"events.recent","params":{"limit":true}}',
     INVALID_PARAMS, "param 'limit' must be an integer"),
    (b'{"jsonrpc":"2.0","id":1,"method":"sync.trigger","params":{"peer":7}}',
     INVALID_PARAMS, "param 'peer' must be a peer id or null"),
]


@pytest.mark.parametrize(("line", "code", "text"), BAD_LINES,
                         ids=[f"{i}:{c}" for i, (_, c, _t) in enumerate(BAD_LINES)])
async def test_bad_requests_get_error_objects(sock_path: Path, line: bytes, code: int,
                                              text: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(FakeNode(), sock_path) as h:
            client = await h.connect()
            await client.send(line + b"\n")
            reply = await client.message()
            assert reply["jsonrpc"] == "2.0" and "result" not in reply
            assert reply["error"]["code"] == code
            assert text in reply["error"]["message"]
            assert "Traceback" not in reply["error"]["message"]
            # the connection stays usable
            assert "result" in await client.request("node.status")


async def test_notifications_get_no_reply_and_batches_answer_in_order(sock_path: Path
                                                                      ) -> None:
    fake = FakeNode()
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path) as h:
            client = await h.connect()
            await client.send(b'{"jsonrpc":"2.0","method":"sync.trigger"}\n'
                              b'{"jsonrpc":"2.0","method":"no.such"}\n'
                              b'{"jsonrpc":"2.0","id":"a","method":"node.peers"}\n')
            reply = await client.message()
            assert reply["id"] == "a" and len(reply["result"]["peers"]) == 2
            assert fake.sync_requests == [None]
            batch = [{"jsonrpc": "2.0", "id": 1, "method": "record.resolve",
                      "params": {"id": "1812.04754"}},
                     {"jsonrpc": "2.0", "method": "node.status"},
                     {"jsonrpc": "2.0", "id": 2, "method": "nope"}, 5]
            await client.send(json.dumps(batch).encode() + b"\n")
            replies = await client.message()
            assert [r["id"] for r in replies] == [1, 2, None]
            assert replies[0]["result"] == {"pith_number": GOLDEN_PN}
            assert replies[1]["error"]["code"] == METHOD_NOT_FOUND
            assert replies[2]["error"]["code"] == INVALID_REQUEST
            too_many = [{"jsonrpc": "2.0", "id": i, "method": "node.status"}
                        for i in range(33)]
            await client.send(json.dumps(too_many).encode() + b"\n")
            reply = await client.message()
            assert reply["error"]["code"] == INVALID_REQUEST
            assert "at most 32" in reply["error"]["message"]


async def test_oversized_line_is_refused_and_closed(sock_path: Path) -> None:
    limits = SocketLimits(max_request_bytes=1024)
    with trio.fail_after(TIMEOUT):
        async with running(FakeNode(), sock_path, limits) as h:
            ok = b'{"jsonrpc":"2.0","id":1,"method":"node.status"}'
            client = await h.connect()
            await client.send(ok + b" " * (1024 - len(ok)) + b"\n")  # exactly at the limit
            assert "result" in await client.message()
            for payload in (b"x" * 1100, b'{"a":"' + b"y" * 1100 + b'"}\n'):
                client = await h.connect()
                await client.send(payload)
                reply = await client.message()
                assert reply["error"]["code"] == INVALID_REQUEST
                assert reply["error"]["message"].startswith("request too large")
                assert reply["id"] is None
                assert await client.wait_closed() == b""
            assert h.server.stats.too_large == 2


async def test_internal_errors_are_logged_not_sent(sock_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNode()
    fake.failing.add("status")

    async def refuse(identifier: str) -> dict[str, Any]:
        raise InputError("bad_identifier", f"cannot explain {identifier!r}")

    fake.explain = refuse  # type: ignore[method-assign]
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.ERROR):
        async with running(fake, sock_path) as h, \
                open_query_client(sock_path) as client:
            with pytest.raises(RpcError) as info:
                await client.call("node.status")
            assert info.value.code == INTERNAL_ERROR
            assert info.value.message == "internal error (see the node's log)"
            with pytest.raises(RpcError) as info:
                await client.call("explain", {"id": "zzz"})
            assert info.value.code == REJECTED and "cannot explain 'zzz'" in str(info.value)
            assert h.server.stats.internal_errors == 1
    failures = [r for r in caplog.records if "internal error in node.status" in r.message]
    assert failures and failures[0].exc_info is not None


STORE_FAILURES = [
    (StoreFull("cannot store the batch: database or disk is full"),
     "store full / disk full: cannot store the batch: database or disk is full (free disk "
     "space under the data directory"),
    (StoreIOError("cannot store the batch: disk I/O error"),
     "store I/O error: cannot store the batch: disk I/O error (check free disk space"),
    (StoreCorrupt("cannot look up events: the database is damaged"),
     "store damaged: cannot look up events: the database is damaged (run 'pithnode fsck'"),
    (StoreClosed("the store service is not running"),
     "store closed: the store service is not running (the node is stopping"),
]


@pytest.mark.parametrize(("error", "message"), STORE_FAILURES,
                         ids=[type(e).__name__ for e, _ in STORE_FAILURES])
async def test_store_failures_are_answered_plainly(
        sock_path: Path, caplog: pytest.LogCaptureFixture, error: Exception,
        message: str) -> None:
    """A full disk (or another condition of the machine) is the operator's to fix: its own
    code and the store's words, no traceback in the log, and the node answers on."""
    fake = FakeNode()
    failing = True

    async def submit(events: list[Any]) -> Any:
        if failing:
            raise error
        return await FakeNode.submit(fake, events)

    fake.submit = submit  # type: ignore[method-assign]
    event = native_event()
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.WARNING):
        async with running(fake, sock_path) as h, \
                open_query_client(sock_path) as client:
            with pytest.raises(RpcError) as info:
                await client.call("events.submit", {"events": [event]})
            assert info.value.code == STORE_ERROR
            assert info.value.message.startswith(message), info.value.message
            assert info.value.message.endswith(
                "none of the events was stored, submit them again once this is fixed")
            status = await client.call("node.status")  # the node answers on
            assert event["event_id"] not in fake.stored
            assert status["events"] == len(fake.stored)
            failing = False  # room again: the same events are taken, nothing was lost
            again = await client.call("events.submit", {"events": [event]})
            assert [o["outcome"] for o in again["outcomes"]] == ["new"]
            assert h.server.stats.store_errors == 1 and h.server.stats.internal_errors == 0
    logged = [r for r in caplog.records if r.name == "pithnode.node.query_socket"
              and r.levelno >= logging.WARNING]
    assert len(logged) == 1 and logged[0].exc_info is None
    assert "events.submit failed" in logged[0].getMessage()


async def test_store_failures_of_reads_do_not_claim_a_submit(sock_path: Path) -> None:
    fake = FakeNode()

    async def served_state(identifier: str) -> None:
        raise StoreIOError("cannot read the store: disk I/O error")

    fake.served_state = served_state  # type: ignore[method-assign]
    fake.cached_state = lambda identifier: None  # type: ignore[method-assign]  # a miss
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path), open_query_client(sock_path) as client:
            with pytest.raises(RpcError) as info:
                await client.call("record.state", {"id": GOLDEN_PN})
    assert info.value.code == STORE_ERROR
    assert info.value.message == ("store I/O error: cannot read the store: disk I/O error "
                                  "(check free disk space and the permissions of the data "
                                  "directory)")


# --------------------------------------------------------------------------- limits

async def test_stalled_and_idle_clients_are_closed_others_served(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    limits = SocketLimits(idle_timeout=5.0)
    # the server binds in a worker thread: start it before any deadline exists, or the
    # autojump clock would jump to that deadline while the thread runs
    async with running(FakeNode(), sock_path, limits) as h:
        with trio.fail_after(60):
            stalled, idle, busy = [await h.connect() for _ in range(3)]
            t0 = trio.current_time()
            await stalled.send(b'{"jsonrpc": "2.0", "id": 1, "meth')
            assert "result" in await busy.request("node.status")
            assert trio.current_time() - t0 < 5.0  # served while the other one stalls
            assert await stalled.wait_closed() == b""
            assert await idle.wait_closed() == b""
            assert trio.current_time() - t0 >= 5.0
            # a client dripping one byte a second cannot keep a line open forever
            drip = await h.connect()
            t1 = trio.current_time()
            with pytest.raises(trio.BrokenResourceError):  # closed under its feet
                for byte in b'{"jsonrpc":"2.0","id":1,"method":"node.status"}':
                    await drip.send(bytes([byte]))
                    await trio.sleep(1)  # virtual time (MockClock)
            assert 5.0 <= trio.current_time() - t1 <= 6.0
            fresh = await h.connect()
            assert "result" in await fresh.request("node.status")
            assert h.server.stats.idle_timeouts >= 3


async def test_connections_beyond_the_limit_are_refused(sock_path: Path) -> None:
    limits = SocketLimits(max_connections=2)
    with trio.fail_after(TIMEOUT):
        async with running(FakeNode(), sock_path, limits) as h:
            a, b = await h.connect(), await h.connect()
            assert "result" in await a.request("node.status")
            assert "result" in await b.request("node.status")
            for _ in range(5):
                extra = await h.connect()
                reply = await extra.message()
                assert reply["error"]["code"] == BUSY and "limit 2" in reply["error"]["message"]
                assert await extra.wait_closed() == b""
            assert h.server.stats.refused == 5
            await a.aclose()
            await trio.testing.wait_all_tasks_blocked()
            c = await h.connect()
            assert "result" in await c.request("node.status")
            assert "result" in await b.request("node.status")


async def test_in_flight_requests_per_connection_are_bounded(sock_path: Path) -> None:
    fake = FakeNode()
    fake.gate = trio.Event()
    limits = SocketLimits(max_in_flight=2)
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path, limits) as h:
            client = await h.connect()
            lines = [json.dumps({"jsonrpc": "2.0", "id": i, "method": "events.submit",
                                 "params": {"events": [native_event(f"n{i}")]}}).encode()
                     for i in range(3)]
            await client.send(b"\n".join(lines) + b"\n")
            await fake.wait_until(lambda: fake.submits_in_progress == 2)
            await trio.testing.wait_all_tasks_blocked()
            assert fake.submits_in_progress == 2  # the third waits for a free slot
            other = await h.connect()
            assert "result" in await other.request("node.status")
            fake.gate.set()
            replies = [await client.message() for _ in range(3)]
            assert sorted(r["id"] for r in replies) == [0, 1, 2]
            assert all(r["result"]["new"] == 1 for r in replies)


async def test_a_subscriber_that_never_reads_gets_a_dropped_count(sock_path: Path) -> None:
    fake = FakeNode()
    limits = SocketLimits(max_queued_notifications=4, write_timeout=60.0)
    total = 300
    with trio.fail_after(TIMEOUT):
        async with running(fake, sock_path, limits) as h:
            sub = await h.connect()
            assert (await sub.request("subscribe"))["result"] == {"subscribed": True}
            await fake.wait_until(lambda: fake.subscriber_count == 1)
            pad = "x" * 8192
            for n in range(total):
                await fake.publish({"kind": "event", "n": n, "pad": pad})
            await trio.testing.wait_all_tasks_blocked()
            dropped = h.server.stats.notifications_dropped
            assert dropped > 0  # the socket buffer and the queue are full
            other = await h.connect()
            assert "result" in await other.request("node.status")
            seen: list[int] = []
            reported = 0
            while len(seen) + reported < total:
                msg = await sub.message()
                assert msg["method"] == "notify"
                seen.append(msg["params"]["notification"]["n"])
                reported += msg["params"]["dropped"]
            assert reported == dropped == total - len(seen)
            assert seen == sorted(seen) and seen[0] == 0


async def test_a_stuck_subscriber_is_closed_after_the_write_timeout(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeNode()
    limits = SocketLimits(max_queued_notifications=4, write_timeout=5.0)
    async with running(fake, sock_path, limits) as h:  # started before any deadline
        with trio.fail_after(60):
            sub = await h.connect()
            assert (await sub.request("subscribe"))["result"] == {"subscribed": True}
            await fake.wait_until(lambda: fake.subscriber_count == 1)
            t0 = trio.current_time()
            for n in range(300):
                await fake.publish({"kind": "event", "n": n, "pad": "x" * 8192})
            await fake.wait_until(lambda: fake.subscriber_count == 0)
            assert trio.current_time() - t0 >= 5.0
            assert h.server.stats.write_timeouts == 1
            other = await h.connect()
            assert "result" in await other.request("node.status")


# --------------------------------------------------------------------------- clients

async def test_client_errors(sock_path: Path) -> None:
    with pytest.raises(NoNodeRunning, match="no pithnode is running"):
        async with open_query_client(sock_path):
            pass
    fake = FakeNode()
    fake.gate = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = QuerySocketServer(fake, sock_path)
            scope = trio.CancelScope()

            async def serve(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await server.run(task_status=task_status)

            await nursery.start(serve)
            async with open_query_client(sock_path) as client:
                async with trio.open_nursery() as inner:
                    async def stuck_call() -> None:
                        with pytest.raises(ConnectionLost, match="closed the connection"):
                            await client.call("events.submit", {"events": [1]})

                    inner.start_soon(stuck_call)
                    await fake.wait_until(lambda: fake.submits_in_progress == 1)
                    scope.cancel()  # the node stops while a call is in flight
                with pytest.raises(ConnectionLost):
                    await client.call("node.status")


# --------------------------------------------------------------------------- fuzz

def check_decoded(out: Any, *, requests_allowed: bool) -> None:
    for item in out if isinstance(out, list) else [out]:
        if isinstance(item, Request):
            assert requests_allowed
            spec = METHODS[item.method]
            assert all(p.name in item.params for p in spec.params if p.required)
            assert set(item.params) <= {p.name for p in spec.params}
            continue
        assert isinstance(item, ErrorReply)
        assert item.code in ERROR_CODES
        line = encode_message(item.to_json())
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        msg = json.loads(line.decode("utf-8"))
        assert set(msg) == {"jsonrpc", "id", "error"} and msg["jsonrpc"] == "2.0"
        assert isinstance(msg["id"], str | int | None)
        assert set(msg["error"]) == {"code", "message"}
        assert isinstance(msg["error"]["message"], str) and msg["error"]["message"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=20)
request_like = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
     "method": st.sampled_from([*METHODS, "nope", ""]) | json_values},
    optional={"id": st.none() | st.integers() | st.text(max_size=300) | json_values,
              "params": st.dictionaries(st.sampled_from(["id", "events", "peer", "limit", "z"]),
                                        json_values, max_size=3) | json_values,
              "extra": json_values})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_fuzz_random_bytes(data: bytes) -> None:
    check_decoded(decode_request_line(data, max_request_bytes=200, max_batch=4),
                  requests_allowed=False)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]",:0123456789.-+eE tnrufals\\ud8', max_size=120))
def test_decoder_fuzz_json_like_text(text: str) -> None:
    check_decoded(decode_request_line(text.encode("utf-8", "surrogatepass")),
                  requests_allowed=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(request_like, min_size=0, max_size=5) | request_like | json_values)
def test_decoder_fuzz_json_values(value: Any) -> None:
    line = json.dumps(value).encode()
    out = decode_request_line(line, max_batch=4)
    check_decoded(out, requests_allowed=True)
    if not isinstance(value, dict | list):
        assert isinstance(out, ErrorReply)
