"""The node's local query socket: JSON-RPC 2.0 over a Unix socket, one JSON value per line.

The socket file is created with mode 0600 (bound inside a fresh 0700 directory, chmodded,
then renamed into place, so it is never reachable by others) and removed on shutdown. A
live server already answering at the path is never replaced; a stale socket file is.

Framing: every request and every reply is one line of UTF-8 JSON ending in ``\\n``. A line
is size-checked before it is decoded; a line longer than ``max_request_bytes`` is answered
with -32600 "request too large" and the connection is closed, since framing is lost. Batches
(a JSON array of requests) are supported up to ``max_batch`` requests and answered in order.
Requests without an ``id`` are notifications and get no reply (JSON-RPC 2.0 section 4.1).
A connection's requests are answered concurrently (up to ``max_in_flight``), so replies may
come in another order than the requests: match them by ``id``. ``record.state`` and
``record.bundle`` of a record the node holds in memory are answered inline by the
connection's reader (no task, no thread), and the replies of all the lines it has read are
written at once.

Methods (``METHODS`` holds the same table; identifiers are a full or short Pith Number, an
arXiv id or a DOI unless stated):

=================  ==============================  ===========================================
method             params                          result
=================  ==============================  ===========================================
node.status        (none)                          the node's status object
node.peers         (none)                          ``{"peers": [peer, ...]}``
record.resolve     ``id``                          ``{"pith_number"}``
record.state       ``id``                          ``{"pith_number", "state_sha256", "state"}``
                                                   (``state`` is the served document, bytes
                                                   spliced in unchanged)
record.bundle      ``id``                          ``{"pith_number", "bundle"}``
record.events      ``id``                          ``{"pith_number", "events": [wire form]}``
record.view        ``id``                          the RecordView fields
events.recent      ``limit`` (optional, 1..1000)   ``{"events": [...]}`` newest first
events.submit      ``events`` (array, 1..4096)     ``{"outcomes": [{event_id, outcome,
                                                   reason}], "new", "duplicate", "rejected"}``
                                                   after the batch is durably committed
explain            ``id`` (record or event id)     the node's explanation object
sync.trigger       ``peer`` (optional, or null)    the reconciliation figures
subscribe          (none)                          ``{"subscribed": true}``, then pushes
unsubscribe        (none)                          ``{"subscribed": false}``
=================  ==============================  ===========================================

After ``subscribe`` the server pushes ``{"jsonrpc": "2.0", "method": "notify", "params":
{"dropped": N, "notification": {...}}}`` lines. The per-connection queue holds
``max_queued_notifications``; when it is full new notifications are dropped and counted, and
``dropped`` of the next delivered one says how many were lost since the previous one. A
write that does not complete within ``write_timeout`` closes the connection.

Error codes: -32700 parse error, -32600 invalid request (also: request too large, batch too
large), -32601 method not found, -32602 invalid params (the message names the param),
-32603 internal error (logged; no details leave the node), -32004 not found, -32005 busy
(too many connections; the connection is then closed), -32010 input rejected by the node,
-32020 store error: the node's store cannot read or write (``store full / disk full: ...``,
``store I/O error: ...``, ``store damaged: ...``, ``store closed: ...``; the message names
the cause and the fix). ``events.submit`` answered -32020 stored none of its events (one
transaction), so the client may send them again once the cause is fixed.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import socket
import stat
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from pithnode.protocol.errors import InputError
from pithnode.storage.errors import StoreClosed, StoreCorrupt, StoreFull, StoreIOError

from .api import NodeAPI, NotFound, Served
from .errors import NodeError

if TYPE_CHECKING:
    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

__all__ = [
    "BUSY", "INTERNAL_ERROR", "INVALID_PARAMS", "INVALID_REQUEST", "METHODS",
    "METHOD_NOT_FOUND", "NOT_FOUND", "PARSE_ERROR", "REJECTED", "STORE_ERROR",
    "ConnectionLost", "ErrorReply", "MethodSpec", "NoNodeRunning", "QueryClient",
    "QuerySocketError", "QuerySocketServer", "QueryTimeout", "Request", "RpcError",
    "ServerStats", "SocketInUse", "SocketLimits", "SocketPathError", "SyncQueryClient",
    "call_sync", "decode_request_line", "encode_message", "open_query_client",
    "store_error_message",
]

log = logging.getLogger(__name__)

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND = -32700, -32600, -32601
INVALID_PARAMS, INTERNAL_ERROR = -32602, -32603
NOT_FOUND, BUSY, REJECTED, STORE_ERROR = -32004, -32005, -32010, -32020
ERROR_CODES = frozenset({PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS,
                         INTERNAL_ERROR, NOT_FOUND, BUSY, REJECTED, STORE_ERROR})

#: One request line; holds one maximum-size event (1 MiB canonical) with room to spare.
MAX_REQUEST_BYTES = 4 << 20
#: One reply line the clients accept (a served state or bundle can be large).
MAX_RESPONSE_BYTES = 256 << 20
MAX_BATCH = 32
MAX_SUBMIT_EVENTS = 4096
MAX_RECENT_EVENTS = 1000
MAX_IDENTIFIER_CHARS = 512
MAX_ID_CHARS = 256
MAX_DEPTH = 64
#: ``sun_path`` holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
READ_CHUNK_BYTES = 64 << 10
#: Lines longer than this are decoded in a worker thread, off the trio thread.
INLINE_DECODE_BYTES = 64 << 10
PROBE_TIMEOUT_S = 2.0
#: How long closing the node's notification feed may take when a subscription ends.
FEED_CLOSE_TIMEOUT_S = 2.0
ACCEPT_BACKOFF_S = 0.1
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
NOTIFY_METHOD = "notify"
DEFAULT_CALL_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- errors

class QuerySocketError(NodeError):
    """Root of the query socket's errors."""


class SocketPathError(QuerySocketError):
    """The socket path cannot be used (too long, not a socket, no such directory)."""


class SocketInUse(QuerySocketError):
    """A live server already answers at the socket path."""


class NoNodeRunning(QuerySocketError):
    """Nothing listens at the socket path (no file, or connection refused)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no pithnode is running at {path}")
        self.path = path


class ConnectionLost(QuerySocketError):
    """The connection closed, or the node sent something that is not a reply."""


class QueryTimeout(QuerySocketError):
    """The node did not answer in time."""


class RpcError(QuerySocketError):
    """A JSON-RPC error object the node answered with."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


# --------------------------------------------------------------------------- limits

@dataclass(frozen=True, slots=True)
class SocketLimits:
    """Bounds of one query socket server (defaults suit a local admin socket)."""

    max_request_bytes: int = MAX_REQUEST_BYTES
    #: Connections beyond this get one -32005 error line and are closed.
    max_connections: int = 32
    #: A connection with nothing in flight and no subscription, or with a partial line that
    #: has not been completed, is closed this many seconds after its last activity (or after
    #: the partial line began).
    idle_timeout: float = 60.0
    #: A reply or notification not written within this many seconds closes the connection.
    write_timeout: float = 10.0
    #: Requests answered concurrently per connection; the reader waits for a free slot
    #: (backpressure) rather than queueing more.
    max_in_flight: int = 8
    max_batch: int = MAX_BATCH
    #: Per-subscriber queue; full policy: drop and count (reported as ``dropped``).
    max_queued_notifications: int = 256
    backlog: int = 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"SocketLimits.{f.name} must be positive, not {value!r}")


@dataclass(slots=True)
class ServerStats:
    """Counters of a server (read by tests and the node's metrics)."""

    connections: int = 0
    active: int = 0
    refused: int = 0
    idle_timeouts: int = 0
    write_timeouts: int = 0
    too_large: int = 0
    internal_errors: int = 0
    #: requests answered -32020 (the store could not read or write)
    store_errors: int = 0
    notifications_sent: int = 0
    notifications_dropped: int = 0


# --------------------------------------------------------------------------- decoding

RequestId = str | int | None


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed request for a known method with checked params."""

    id: RequestId
    method: str
    params: Mapping[str, Any]
    notification: bool = False


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A JSON-RPC error; ``silent`` when the faulty request was a notification."""

    id: RequestId
    code: int
    message: str
    silent: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": self.id,
                "error": {"code": self.code, "message": self.message}}


Decoded = Request | ErrorReply


def _is_str(limit: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and 0 < len(v) <= limit


def _is_opt_str(v: Any) -> bool:
    return v is None or _is_str(MAX_IDENTIFIER_CHARS)(v)


def _is_events(v: Any) -> bool:
    return isinstance(v, list) and 0 < len(v) <= MAX_SUBMIT_EVENTS


def _is_limit(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_RECENT_EVENTS


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    required: bool
    check: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    params: tuple[Param, ...]
    result: str
    errors: tuple[int, ...] = ()


_ID = Param("id", True, _is_str(MAX_IDENTIFIER_CHARS),
            f"a non-empty string of at most {MAX_IDENTIFIER_CHARS} characters")
METHODS: Mapping[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("node.status", (), "status object"),
    MethodSpec("node.peers", (), "{peers: [...]}"),
    MethodSpec("record.resolve", (_ID,), "{pith_number}", (NOT_FOUND, REJECTED, STORE_ERROR)),
    MethodSpec("record.state", (_ID,), "{pith_number, state_sha256, state}",
               (NOT_FOUND, REJECTED, STORE_ERROR)),
    MethodSpec("record.bundle", (_ID,), "{pith_number, bundle}",
               (NOT_FOUND, REJECTED, STORE_ERROR)),
    MethodSpec("record.events", (_ID,), "{pith_number, events}",
               (NOT_FOUND, REJECTED, STORE_ERROR)),
    MethodSpec("record.view", (_ID,), "RecordView fields", (NOT_FOUND, REJECTED, STORE_ERROR)),
    MethodSpec("events.recent", (Param("limit", False, _is_limit,
                                       f"an integer from 1 to {MAX_RECENT_EVENTS}"),),
               "{events}"),
    MethodSpec("events.submit", (Param("events", True, _is_events,
                                       f"a non-empty array of at most {MAX_SUBMIT_EVENTS} "
                                       "events"),),
               "{outcomes, new, duplicate, rejected}", (REJECTED, STORE_ERROR)),
    MethodSpec("explain", (_ID,), "explanation object", (NOT_FOUND, REJECTED, STORE_ERROR)),
    MethodSpec("sync.trigger", (Param("peer", False, _is_opt_str, "a peer id or null"),),
               "sync figures", (NOT_FOUND, REJECTED)),
    MethodSpec("subscribe", (), "{subscribed: true}"),
    MethodSpec("unsubscribe", (), "{subscribed: false}"),
    MethodSpec("checkpoint.latest", (),
               "{note, origin, tree_size, root_hex, mirror_prefixes, signed_at}"),
    MethodSpec("checkpoint.split_views", (), "{split_views: [...]}"),
)}


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth_ok(obj: Any) -> bool:
    stack = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return True


def parse_json_line(line: bytes, limit: int) -> Any:
    """Size check, then strict UTF-8, then JSON; raises ValueError with a readable reason."""
    if len(line) > limit:
        raise OverflowError(f"request too large: a line may hold at most {limit} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from exc
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, oversized integers, NaN/Infinity
        raise ValueError(f"not JSON: {str(exc)[:120]}") from exc
    if not _depth_ok(obj):
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH}")
    return obj


def decode_request_line(line: bytes, *, max_request_bytes: int = MAX_REQUEST_BYTES,
                        max_batch: int = MAX_BATCH) -> Decoded | list[Decoded]:
    """Decode one line into checked requests or error replies. Never raises on bad input."""
    try:
        obj = parse_json_line(line, max_request_bytes)
    except OverflowError as exc:
        return ErrorReply(None, INVALID_REQUEST, str(exc))
    except ValueError as exc:
        return ErrorReply(None, PARSE_ERROR, f"parse error: {exc}")
    if isinstance(obj, list):
        if not obj:
            return ErrorReply(None, INVALID_REQUEST, "invalid request: empty batch")
        if len(obj) > max_batch:
            return ErrorReply(None, INVALID_REQUEST,
                              f"invalid request: a batch holds at most {max_batch} requests")
        return [decode_request(item) for item in obj]
    return decode_request(obj)


def decode_request(obj: Any) -> Decoded:
    """Check one decoded JSON value as a request for a method of :data:`METHODS`."""
    if not isinstance(obj, dict):
        return ErrorReply(None, INVALID_REQUEST, "invalid request: a request is a JSON object")
    rid = obj.get("id")
    if not (rid is None or (isinstance(rid, int) and not isinstance(rid, bool))
            or (isinstance(rid, str) and len(rid) <= MAX_ID_CHARS)):
        return ErrorReply(None, INVALID_REQUEST,
                          f"invalid request: id must be a string of at most {MAX_ID_CHARS} "
                          "characters, an integer or null")
    silent = "id" not in obj
    if obj.get("jsonrpc") != "2.0":
        return ErrorReply(rid, INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"',
                          silent)
    unknown = sorted(set(obj) - {"jsonrpc", "id", "method", "params"})
    if unknown:
        return ErrorReply(rid, INVALID_REQUEST,
                          f"invalid request: unknown member {_short(unknown[0])}", silent)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return ErrorReply(rid, INVALID_REQUEST,
                          'invalid request: "method" must be a non-empty string', silent)
    spec = METHODS.get(method)
    if spec is None:
        return ErrorReply(rid, METHOD_NOT_FOUND, f"method not found: {_short(method)}",
                          silent)
    params = obj.get("params", {})
    if isinstance(params, list):
        return ErrorReply(rid, INVALID_PARAMS,
                          f"invalid params: {method} takes named params (an object)", silent)
    if not isinstance(params, dict):
        return ErrorReply(rid, INVALID_REQUEST,
                          'invalid request: "params" must be an object', silent)
    known = {p.name for p in spec.params}
    extra = sorted(set(params) - known)
    if extra:
        return ErrorReply(rid, INVALID_PARAMS,
                          f"invalid params: {method} has no param {_short(extra[0])}", silent)
    for p in spec.params:
        if p.name not in params:
            if p.required:
                return ErrorReply(rid, INVALID_PARAMS,
                                  f"invalid params: missing param '{p.name}' "
                                  f"({p.expected})", silent)
        elif not p.check(params[p.name]):
            return ErrorReply(rid, INVALID_PARAMS,
                              f"invalid params: param '{p.name}' must be {p.expected}", silent)
    return Request(rid, method, params, silent)


def store_error_message(exc: StoreIOError | StoreCorrupt | StoreClosed, method: str) -> str:
    """The -32020 message for a store failure: what happened, then the fix."""
    if isinstance(exc, StoreFull):
        cause = "store full / disk full"
    elif isinstance(exc, StoreIOError):
        cause = "store I/O error"
    elif isinstance(exc, StoreCorrupt):
        cause = "store damaged"
    else:
        cause = "store closed"
    hint = exc.hint or "the node is stopping; retry once it runs again"
    text = f"{cause}: {exc} ({hint})"
    if method == "events.submit":  # one store transaction: all of the batch or nothing
        text += "; none of the events was stored, submit them again once this is fixed"
    return text


def encode_message(obj: Any) -> bytes:
    """One line of compact UTF-8 JSON (lone surrogates are escaped, never sent raw)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
    return data + b"\n"


@dataclass(frozen=True, slots=True)
class Spliced:
    """A result object with one member whose value is already-encoded JSON (a document)."""

    head: dict[str, Any]
    key: str
    raw: bytes

    def encode(self) -> bytes:
        head = encode_message(self.head)[:-2]  # drop "}\n"
        sep = b"," if self.head else b""
        return head + sep + encode_message(self.key)[:-1] + b":" + self.raw + b"}"


def _encode_result(rid: RequestId, result: Any) -> bytes:
    body = result.encode() if isinstance(result, Spliced) else encode_message(result)[:-1]
    return b'{"jsonrpc":"2.0","id":' + encode_message(rid)[:-1] + b',"result":' + body + b"}"


# --------------------------------------------------------------------------- server

@dataclass(slots=True)
class _Call:
    """One request being answered; hooks run once its reply is written."""

    conn: _Connection
    after_reply: list[Callable[[], None]] = field(default_factory=list)


Handler = Callable[["QuerySocketServer", Mapping[str, Any], _Call], Awaitable[Any]]


async def _pith_number(api: NodeAPI, identifier: str) -> str:
    pn = await api.resolve(identifier)
    if pn is None:
        raise NotFound(f"no record known as {_short(identifier, 80)}")
    return pn


def _document(raw: bytes, what: str) -> bytes:
    if b"\n" in raw:  # would break the line framing; our store never serves such bytes
        raise ValueError(f"served {what} contains a raw newline")
    return raw


async def _h_status(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return await srv.api.status()


async def _h_peers(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return {"peers": await srv.api.peers()}


async def _h_resolve(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return {"pith_number": await _pith_number(srv.api, p["id"])}


def _state_result(found: Served) -> Spliced:
    return Spliced({"pith_number": found.pith_number, "state_sha256": found.etag}, "state",
                   _document(found.data, "state"))


def _bundle_result(found: Served) -> Spliced:
    return Spliced({"pith_number": found.pith_number}, "bundle", _document(found.data,
                                                                          "bundle"))


async def _h_state(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    found = await srv.api.served_state(p["id"])
    if found is None:
        raise NotFound(f"no record known as {_short(p['id'], 80)}")
    return _state_result(found)


async def _h_bundle(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    found = await srv.api.served_bundle(p["id"])
    if found is None:
        raise NotFound(f"no record known as {_short(p['id'], 80)}")
    return _bundle_result(found)


def _q_state(srv: QuerySocketServer, p: Mapping[str, Any]) -> Spliced | None:
    found = srv.api.cached_state(p["id"])
    return None if found is None or b"\n" in found.data else _state_result(found)


def _q_bundle(srv: QuerySocketServer, p: Mapping[str, Any]) -> Spliced | None:
    found = srv.api.cached_bundle(p["id"])
    return None if found is None or b"\n" in found.data else _bundle_result(found)


#: Methods the node may answer from memory (``NodeAPI.cached_*``): the connection's reader
#: answers those inline, with no task and no thread, and writes the replies of every line
#: it has at once with one write. Anything else (and any failure) takes the usual path.
QUICK: Mapping[str, Callable[[QuerySocketServer, Mapping[str, Any]], Spliced | None]] = {
    "record.state": _q_state, "record.bundle": _q_bundle,
}


async def _h_events(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    pn = await _pith_number(srv.api, p["id"])
    return {"pith_number": pn, "events": await srv.api.events(pn)}


async def _h_view(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    pn = await _pith_number(srv.api, p["id"])
    view = await srv.api.record_view(pn)
    if view is None:
        raise NotFound(f"no record {pn}")
    return dataclasses.asdict(view)


async def _h_recent(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return {"events": await srv.api.recent_events(p.get("limit", 50))}


async def _h_submit(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    outcomes = await srv.api.submit(list(p["events"]))
    counts = {k: sum(o.outcome == k for o in outcomes) for k in ("new", "duplicate",
                                                                  "rejected")}
    return {"outcomes": [o.to_json() for o in outcomes], **counts}


async def _h_explain(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return await srv.api.explain(p["id"])


async def _h_sync(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return await srv.api.trigger_sync(p.get("peer"))


async def _h_subscribe(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    c.conn.subscribe(c)
    return {"subscribed": True}


async def _h_unsubscribe(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    c.conn.unsubscribe()
    return {"subscribed": False}


async def _h_checkpoint(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return await srv.api.checkpoint()


async def _h_split_views(srv: QuerySocketServer, p: Mapping[str, Any], c: _Call) -> Any:
    return {"split_views": await srv.api.split_views()}


HANDLERS: Mapping[str, Handler] = {
    "node.status": _h_status, "node.peers": _h_peers, "record.resolve": _h_resolve,
    "record.state": _h_state, "record.bundle": _h_bundle, "record.events": _h_events,
    "record.view": _h_view, "events.recent": _h_recent, "events.submit": _h_submit,
    "explain": _h_explain, "sync.trigger": _h_sync, "subscribe": _h_subscribe,
    "unsubscribe": _h_unsubscribe, "checkpoint.latest": _h_checkpoint,
    "checkpoint.split_views": _h_split_views,
}
assert set(HANDLERS) == set(METHODS)


async def _close_iterator(it: AsyncIterator[Any]) -> None:
    """Finalise an async generator now (not at garbage collection), briefly shielded."""
    if isinstance(it, AsyncGenerator):
        with trio.CancelScope(shield=True), trio.move_on_after(FEED_CLOSE_TIMEOUT_S):
            await it.aclose()


@dataclass(slots=True)
class _Subscription:
    send: trio.MemorySendChannel[Any]
    recv: trio.MemoryReceiveChannel[Any]
    ready: trio.Event = field(default_factory=trio.Event)
    pump_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    active: bool = True
    dropped: int = 0  # since the last delivered notification


class _Connection:
    def __init__(self, server: QuerySocketServer, stream: trio.SocketStream, name: str,
                 nursery: trio.Nursery) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.name = name
        self.nursery = nursery
        self._write_lock = trio.Lock()
        self._slots = trio.Semaphore(self.limits.max_in_flight)
        self._read_scope: trio.CancelScope | None = None
        self._line_started: float | None = None
        self._last_activity = trio.current_time()
        self._subscription: _Subscription | None = None
        self._broken = False

    # -- reading
    def _read_deadline(self) -> float:
        if self._line_started is not None:
            return self._line_started + self.limits.idle_timeout
        in_flight = self._slots.value < self.limits.max_in_flight
        if in_flight or self._subscription is not None:
            return math.inf
        return self._last_activity + self.limits.idle_timeout

    def _rearm(self) -> None:
        if self._read_scope is not None:
            self._read_scope.deadline = self._read_deadline()

    async def serve(self) -> None:
        graceful = await self._read_requests()
        if graceful:  # the client closed its side: let replies in flight go out first
            for _ in range(self.limits.max_in_flight):
                await self._slots.acquire()
        self.nursery.cancel_scope.cancel()

    async def _read_requests(self) -> bool:
        """Read lines and start their answers; True on EOF, False when we close."""
        limit = self.limits.max_request_bytes
        buf = bytearray()
        scan = 0
        out: list[bytes] = []  # replies answered inline, not yet written
        while True:
            nl = buf.find(b"\n", scan)
            if nl >= 0:
                if nl > limit:
                    break
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                scan = 0
                now = trio.current_time()
                self._line_started = now if buf else None
                self._last_activity = now
                if line.strip():  # blank lines are ignored (friendly to people using nc)
                    decoded = self.server.decode(line) if len(line) <= INLINE_DECODE_BYTES \
                        else None
                    quick = None if decoded is None else self.server.answer_at_once(decoded)
                    if quick is not None:
                        out.append(quick)
                        continue
                    if out and not await self._flush(out):
                        return False
                    await self._slots.acquire()
                    self.nursery.start_soon(self._answer, line, decoded)
                continue
            if out and not await self._flush(out):
                return False
            scan = len(buf)
            if len(buf) > limit:
                break
            if buf and self._line_started is None:
                self._line_started = trio.current_time()
            with trio.CancelScope(deadline=self._read_deadline()) as scope:
                self._read_scope = scope
                try:
                    data = await self.stream.receive_some(READ_CHUNK_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
                finally:
                    self._read_scope = None
            if scope.cancelled_caught:
                self.server.stats.idle_timeouts += 1
                log.info("query socket: closing %s after %.0f s idle or stalled", self.name,
                         self.limits.idle_timeout)
                return False
            if not data:
                return True
            buf += data
        self.server.stats.too_large += 1
        log.info("query socket: closing %s: request line over %d bytes", self.name, limit)
        await self.send(encode_message(ErrorReply(
            None, INVALID_REQUEST,
            f"request too large: a line may hold at most {limit} bytes").to_json()))
        return False

    async def _flush(self, out: list[bytes]) -> bool:
        """Write the replies answered inline, in one write; False if the connection broke."""
        data = b"".join(out)
        out.clear()
        return await self.send(data)

    async def _answer(self, line: bytes, decoded: Decoded | list[Decoded] | None) -> None:
        call = _Call(self)
        try:
            reply = await self.server.answer_line(line, call, decoded)
            if reply is None or await self.send(reply):
                for hook in call.after_reply:
                    hook()
        finally:
            self._slots.release()
            self._last_activity = trio.current_time()
            self._rearm()

    # -- writing
    def _abort(self) -> None:
        self._broken = True
        self.nursery.cancel_scope.cancel()

    async def send(self, data: bytes) -> bool:
        """Write one whole line; on failure or timeout close the connection, False."""
        async with self._write_lock:
            if self._broken:
                return False
            with trio.move_on_after(self.limits.write_timeout) as scope:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._abort()
                    return False
            if scope.cancelled_caught:
                self.server.stats.write_timeouts += 1
                log.info("query socket: closing %s: a write took over %.0f s", self.name,
                         self.limits.write_timeout)
                self._abort()
                return False
        return True

    # -- subscriptions
    def subscribe(self, call: _Call) -> None:
        if self._subscription is not None:
            return
        send, recv = trio.open_memory_channel[Any](self.limits.max_queued_notifications)
        sub = _Subscription(send, recv)
        self._subscription = sub
        call.after_reply.append(sub.ready.set)
        self.nursery.start_soon(self._pump, sub)
        self.nursery.start_soon(self._deliver, sub)
        self._rearm()

    def unsubscribe(self) -> None:
        sub = self._subscription
        if sub is not None:
            sub.active = False
            sub.pump_scope.cancel()
            self._subscription = None
            self._rearm()

    async def _pump(self, sub: _Subscription) -> None:
        """Move the node's notifications into this connection's queue; never blocks."""
        stats = self.server.stats
        with sub.pump_scope:
            notes = self.server.api.subscribe()
            try:
                async for note in notes:
                    try:
                        sub.send.send_nowait(note)
                    except trio.WouldBlock:
                        sub.dropped += 1
                        stats.notifications_dropped += 1
            except Exception:  # edge: a failing feed ends this subscription, not the node
                log.exception("query socket: notification feed failed for %s", self.name)
            finally:
                sub.send.close()
                await _close_iterator(notes)

    async def _deliver(self, sub: _Subscription) -> None:
        await sub.ready.wait()
        async for note in sub.recv:
            if not sub.active:
                break
            dropped, sub.dropped = sub.dropped, 0
            try:
                data = encode_message({"jsonrpc": "2.0", "method": NOTIFY_METHOD,
                                       "params": {"dropped": dropped, "notification": note}})
            except (TypeError, ValueError):
                log.warning("query socket: dropping a notification that is not JSON")
                sub.dropped += dropped + 1
                continue
            if not await self.send(data):
                return
            self.server.stats.notifications_sent += 1
        if self._subscription is sub:  # the node's feed ended
            self._subscription = None
            self._rearm()


class QuerySocketServer:
    """Serves :class:`NodeAPI` on a Unix socket (see the module docstring)."""

    def __init__(self, api: NodeAPI, path: Path, *, limits: SocketLimits | None = None
                 ) -> None:
        self.api = api
        self.path = Path(path)
        self.limits = limits if limits is not None else SocketLimits()
        self.stats = ServerStats()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock, ident = await self._bind()
        try:
            listener = trio.SocketListener(sock)
            log.info("query socket listening at %s", self.path)
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._accept_loop(listener, nursery)
        finally:
            sock.close()
            self._remove_if_ours(ident)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.warning("query socket: cannot accept (%s); retrying", exc.strerror)
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            self.stats.connections += 1
            if self.stats.active >= self.limits.max_connections:
                self.stats.refused += 1
                await self._refuse(stream)
                continue
            self.stats.active += 1
            nursery.start_soon(self._serve_connection, stream, f"c{self.stats.connections}")

    async def _refuse(self, stream: trio.SocketStream) -> None:
        reply = ErrorReply(None, BUSY, "busy: too many connections "
                           f"(limit {self.limits.max_connections}); retry later")
        try:
            with trio.move_on_after(self.limits.write_timeout):
                await stream.send_all(encode_message(reply.to_json()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("query socket: refused client left before the error was sent")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SocketStream, name: str) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await _Connection(self, stream, name, nursery).serve()
        except Exception:  # edge: one connection's failure must not stop the server
            log.exception("query socket: connection %s failed; closed it", name)
        finally:
            self.stats.active -= 1
            await trio.aclose_forcefully(stream)

    def decode(self, line: bytes) -> Decoded | list[Decoded]:
        return decode_request_line(line, max_request_bytes=self.limits.max_request_bytes,
                                   max_batch=self.limits.max_batch)

    def answer_at_once(self, decoded: Decoded | list[Decoded]) -> bytes | None:
        """The reply line to a request the node answers from memory, else None."""
        if not isinstance(decoded, Request) or decoded.notification:
            return None
        quick = QUICK.get(decoded.method)
        if quick is None:
            return None
        try:
            result = quick(self, decoded.params)
        except Exception:  # edge: our bug; logged, and the usual path answers the request
            log.exception("query socket: inline answer of %s failed", decoded.method)
            return None
        return None if result is None else _encode_result(decoded.id, result) + b"\n"

    async def answer_line(self, line: bytes, call: _Call,
                          decoded: Decoded | list[Decoded] | None = None) -> bytes | None:
        """The reply line to one request line (``decoded``, when it was decoded already),
        or None when nothing is to be sent."""
        if decoded is None:
            if len(line) > INLINE_DECODE_BYTES:
                decoded = await trio.to_thread.run_sync(self.decode, line)
            else:
                decoded = self.decode(line)
        if isinstance(decoded, list):
            parts = [r for d in decoded if (r := await self._answer_one(d, call)) is not None]
            return b"[" + b",".join(parts) + b"]\n" if parts else None
        reply = await self._answer_one(decoded, call)
        return None if reply is None else reply + b"\n"

    async def _answer_one(self, req: Decoded, call: _Call) -> bytes | None:
        if isinstance(req, ErrorReply):
            return None if req.silent else encode_message(req.to_json())[:-1]
        try:
            result = await HANDLERS[req.method](self, req.params, call)
            reply = _encode_result(req.id, result)
        except NotFound as exc:
            reply = encode_message(ErrorReply(req.id, NOT_FOUND,
                                              f"not found: {exc}").to_json())[:-1]
        except InputError as exc:
            reply = encode_message(ErrorReply(req.id, REJECTED,
                                              f"rejected: {exc}").to_json())[:-1]
        except (StoreIOError, StoreCorrupt, StoreClosed) as exc:
            # a condition of the machine or the node (disk full, I/O error, shutting down):
            # the operator's to fix, so it is said plainly, without a traceback
            self.stats.store_errors += 1
            log.warning("query socket: %s failed: %s", req.method, exc)
            reply = encode_message(ErrorReply(req.id, STORE_ERROR,
                                              store_error_message(exc, req.method)
                                              ).to_json())[:-1]
        except Exception:  # edge: a node bug becomes -32603 for the client and a log entry
            self.stats.internal_errors += 1
            log.exception("query socket: internal error in %s", req.method)
            reply = encode_message(ErrorReply(
                req.id, INTERNAL_ERROR, "internal error (see the node's log)").to_json())[:-1]
        return None if req.notification else reply

    # -- the socket file
    async def _bind(self) -> tuple[trio.socket.SocketType, tuple[int, int]]:
        if not self.path.parent.is_dir():
            raise SocketPathError(f"cannot create socket {self.path}: {self.path.parent} is "
                                  "not a directory")
        await self._clear_stale()
        # filesystem calls (mkdtemp, bind, chmod, rename) run off the trio thread
        sock, ident = await trio.to_thread.run_sync(self._bind_sync)
        return trio.socket.from_stdlib_socket(sock), ident

    def _bind_sync(self) -> tuple[socket.socket, tuple[int, int]]:
        path = self.path
        # A fresh 0700 directory: nobody else can reach the socket until it is 0600.
        tmpdir = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
        tmp = tmpdir / "s"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            # clients connect to ``path``; we bind at ``tmp``: both must fit in sun_path
            longest = max(len(os.fsencode(path)), len(os.fsencode(tmp)))
            if longest > MAX_SOCKET_PATH_BYTES:
                raise SocketPathError(
                    f"socket path {path} is too long for a Unix socket ({longest} bytes, "
                    f"at most {MAX_SOCKET_PATH_BYTES})")
            sock.bind(os.fspath(tmp))
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
            sock.listen(self.limits.backlog)
            sock.setblocking(False)
            st = os.stat(path)
            bound = True
        finally:
            if not bound:
                sock.close()
            tmp.unlink(missing_ok=True)
            tmpdir.rmdir()
        return sock, (st.st_dev, st.st_ino)

    async def _clear_stale(self) -> None:
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketPathError(f"{path} exists and is not a socket; remove it or choose "
                                  "another path")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.move_on_after(PROBE_TIMEOUT_S):
                await probe.connect(os.fspath(path))
            raise SocketInUse(f"a node is already running at {path}")
        except ConnectionRefusedError:
            log.info("query socket: removing stale socket file %s", path)
            path.unlink(missing_ok=True)
        except FileNotFoundError:
            return
        except BlockingIOError as exc:  # backlog full: someone is listening
            raise SocketInUse(f"a node is already running at {path}") from exc
        finally:
            probe.close()

    def _remove_if_ours(self, ident: tuple[int, int]) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == ident:
            self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- clients

@dataclass(slots=True)
class _Reply:
    id: Any
    result: Any = None
    error: RpcError | None = None


def _interpret(line: bytes) -> _Reply | dict[str, Any]:
    """A reply, or the params of a notification; ConnectionLost for anything else."""
    try:
        msg = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError
        raise ConnectionLost("the node sent a line that is not JSON") from exc
    if isinstance(msg, dict) and msg.get("method") == NOTIFY_METHOD and "id" not in msg:
        params = msg.get("params")
        return params if isinstance(params, dict) else {"notification": params, "dropped": 0}
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or "id" not in msg:
        raise ConnectionLost("the node sent a line that is not a JSON-RPC reply")
    err = msg.get("error")
    if err is not None:
        if not isinstance(err, dict):
            raise ConnectionLost("the node sent a malformed error object")
        code = err.get("code")
        return _Reply(msg["id"], error=RpcError(code if isinstance(code, int) else
                                                INTERNAL_ERROR, str(err.get("message", "")),
                                                err.get("data")))
    return _Reply(msg["id"], msg.get("result"))


def _request(rid: int, method: str, params: Mapping[str, Any] | None) -> bytes:
    return encode_message({"jsonrpc": "2.0", "id": rid, "method": method,
                           "params": dict(params or {})})


class _LineBuffer:
    """Splits received bytes into lines, refusing a line over ``limit`` before decoding."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._scan = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        nl = self._buf.find(b"\n", self._scan)
        if nl < 0:
            self._scan = len(self._buf)
            if len(self._buf) > self.limit:
                raise ConnectionLost(f"the node sent a reply over {self.limit} bytes")
            return None
        line = bytes(self._buf[:nl])
        del self._buf[:nl + 1]
        self._scan = 0
        return line


class QueryClient:
    """An async connection to a node's query socket; open it with :func:`open_query_client`.

    ``notifications`` yields the params of pushed notifications. Its queue is bounded; when
    full, new ones are dropped and counted in ``dropped_notifications``.
    """

    def __init__(self, stream: trio.SocketStream, *, max_response_bytes: int,
                 max_queued_notifications: int) -> None:
        self._stream = stream
        self._lines = _LineBuffer(max_response_bytes)
        self._next_id = 0
        self._pending: dict[int, tuple[trio.Event, list[_Reply]]] = {}
        self._write_lock = trio.Lock()
        self._notes_send, self.notifications = trio.open_memory_channel[dict[str, Any]](
            max_queued_notifications)
        self.dropped_notifications = 0
        self._closed: QuerySocketError | None = None

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """The method's result; raises :class:`RpcError` or :class:`ConnectionLost`."""
        if self._closed is not None:
            raise ConnectionLost(str(self._closed))
        self._next_id += 1
        rid = self._next_id
        done, box = trio.Event(), list[_Reply]()
        self._pending[rid] = (done, box)
        try:
            async with self._write_lock:
                try:
                    await self._stream.send_all(_request(rid, method, params))
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise ConnectionLost("the node closed the connection") from exc
            await done.wait()
        finally:
            self._pending.pop(rid, None)
        if not box:
            closed = self._closed
            raise closed if isinstance(closed, RpcError) else ConnectionLost(str(closed))
        if box[0].error is not None:
            raise box[0].error
        return box[0].result

    async def _read_loop(self) -> None:
        reason: QuerySocketError = ConnectionLost("the node closed the connection")
        try:
            while True:
                line = self._lines.next_line()
                if line is None:
                    data = await self._stream.receive_some(READ_CHUNK_BYTES)
                    if not data:
                        break
                    self._lines.feed(data)
                    continue
                msg = _interpret(line)
                if isinstance(msg, dict):
                    try:
                        self._notes_send.send_nowait(msg)
                    except trio.WouldBlock:
                        self.dropped_notifications += 1
                elif isinstance(msg.id, int) and msg.id in self._pending:
                    done, box = self._pending[msg.id]
                    box.append(msg)
                    done.set()
                elif msg.error is not None:  # an error about the connection (busy, too large)
                    reason = msg.error
        except ConnectionLost as exc:
            reason = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the node went away: reason stays "closed the connection"
        finally:
            self._closed = reason
            for done, _ in list(self._pending.values()):
                done.set()
            self._notes_send.close()


async def _connect_unix(path: Path) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
        raise NoNodeRunning(path) from exc


@asynccontextmanager
async def open_query_client(path: Path, *, max_response_bytes: int = MAX_RESPONSE_BYTES,
                            max_queued_notifications: int = 256
                            ) -> AsyncIterator[QueryClient]:
    """Connect; the client's reader task lives in a nursery this context owns."""
    stream = await _connect_unix(Path(path))
    try:
        async with trio.open_nursery() as nursery:
            client = QueryClient(stream, max_response_bytes=max_response_bytes,
                                 max_queued_notifications=max_queued_notifications)
            nursery.start_soon(client._read_loop)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


class SyncQueryClient:
    """A blocking client for the CLI. ``timeout``: seconds without progress, None: wait."""

    def __init__(self, path: Path, *, timeout: float | None = DEFAULT_CALL_TIMEOUT_S,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.path = Path(path)
        self._lines = _LineBuffer(max_response_bytes)
        self._next_id = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(os.fspath(self.path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            self._sock.close()
            raise NoNodeRunning(self.path) from exc
        except TimeoutError as exc:
            self._sock.close()
            raise QueryTimeout(f"the node at {self.path} did not accept the connection") \
                from exc
        except OSError:
            self._sock.close()
            raise

    def __enter__(self) -> SyncQueryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _read_message(self) -> _Reply | dict[str, Any]:
        while True:
            line = self._lines.next_line()
            if line is not None:
                return _interpret(line)
            try:
                data = self._sock.recv(READ_CHUNK_BYTES)
            except TimeoutError as exc:
                raise QueryTimeout("the node did not answer in time") from exc
            except ConnectionResetError as exc:
                raise ConnectionLost("the node closed the connection") from exc
            if not data:
                raise ConnectionLost("the node closed the connection")
            self._lines.feed(data)

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        self._next_id += 1
        try:
            self._sock.sendall(_request(self._next_id, method, params))
        except TimeoutError as exc:
            raise QueryTimeout("the node did not read the request in time") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionLost("the node closed the connection") from exc
        while True:
            msg = self._read_message()
            if isinstance(msg, dict):
                continue  # a notification of an earlier subscribe; call() does not keep it
            if msg.error is not None and msg.id in (self._next_id, None):
                raise msg.error
            if msg.id == self._next_id:
                return msg.result

    def notifications(self) -> Iterator[dict[str, Any]]:
        """Pushed notifications' params, waiting as long as it takes for each."""
        self._sock.settimeout(None)
        while True:
            msg = self._read_message()
            if isinstance(msg, dict):
                yield msg


def call_sync(socket_path: Path, method: str, params: Mapping[str, Any] | None = None,
              timeout: float | None = DEFAULT_CALL_TIMEOUT_S) -> Any:
    """Connect, make one call, close: the CLI's usual round trip."""
    with SyncQueryClient(socket_path, timeout=timeout) as client:
        return client.call(method, params)
