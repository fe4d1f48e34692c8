"""The read-only HTTP mirror of a node: an ASGI app served by hypercorn on trio.

Pith's own paths are served byte for byte as the node stores them (``/pith/{suffix}/state.json``,
``/pith/{suffix}/bundle.json``, ``/.well-known/pith/{suffix}/bundle.json``,
``/pith-mirrors.json``), so a Pith client can use this node as a conforming mirror. Every other
identifier (short Pith Number, ``pith:YEAR:SUFFIX``, arXiv id, DOI) redirects to the canonical
path: 308 when it only spells the same full Pith Number differently, 302 when it is an alias
that may later point elsewhere (an unversioned arXiv id, a short form). People get an HTML
record page (``/pith/{suffix}``) and a status page (``/``); machines get ``/metrics`` and
``/healthz``.

Only GET and HEAD. The request target is checked before anything is decoded: at most
``MAX_PATH_BYTES``, visible ASCII only (other bytes must be percent-encoded, as in HTTP/1.1),
no dot segments, no encoded slash, backslash or control character, no empty segment, UTF-8
only once percent-decoded. Errors are JSON ``{"error": {"status", "message"}}`` (an HTML page when a
browser asks for a page); a 500 never carries a traceback, it is logged instead.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, unquote_to_bytes

import trio
from hypercorn.config import Config
from prometheus_client import Counter

from pithnode.protocol.errors import InputError
from pithnode.protocol.identifiers import normalise_alias, parse_pith_number

from .api import NodeAPI, NotFound, RecordView
from .errors import NodeError
from .http_server import NOT_ASCII_TARGET, serve_asgi
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import NodeMetrics

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_PATH_BYTES",
    "HttpError",
    "MirrorApp",
    "make_app",
    "serve_http",
]

log = logging.getLogger(__name__)

#: Longest request target (path and query, raw bytes); longer gets 414.
MAX_PATH_BYTES = 2048
#: Most header bytes (names and values) and header lines; more gets 431.
MAX_HEADER_BYTES = 8192
MAX_HEADER_LINES = 64
#: Hard limit of hypercorn's HTTP/1 parser for a whole request head (it answers 431 itself).
MAX_HEAD_BYTES = 16 * 1024
MAX_QUERY_FIELDS = 8
MAX_IDENTIFIER_CHARS = 512
RECENT_EVENTS = 25
#: Rows shown per table on a page; the rest is counted, not listed.
MAX_ROWS = 200

DOCUMENT_CACHE = "public, max-age=60"
PAGE_CACHE = "no-cache"
JSON = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'")
_HTML_HEADERS = (("Content-Security-Policy", _CSP), ("Referrer-Policy", "no-referrer"))
_ALLOW = "GET, HEAD"
_BAD_SEGMENT_CHAR = re.compile(r"[\x00-\x1f\x7f/\\]")
#: Anything but visible ASCII in a raw request target (RFC 9112 and 3986: a request target is
#: visible ASCII; other bytes travel percent-encoded).
_NOT_VISIBLE_ASCII = re.compile(rb"[^\x21-\x7e]")
#: What a response header value may not hold (it would end the header, or cannot be sent).
_BAD_HEADER_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_SHORT_RE = re.compile(r"[A-Z2-7]{8,26}")
_TS_RE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?Z")
_ORCID_RE = re.compile(r"[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{3}[0-9X]")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HttpError(NodeError):
    """An HTTP error answer: the request (or the record it names) is at fault."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = (), *, query: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        #: what the person looked for, to fill the search box of an HTML error page
        self.query = query


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # checked here, inside the app's error handling, not when sending: a header that
        # cannot be sent is our bug and becomes a logged 500, never an escaped exception
        for name, value in self.headers:
            if _BAD_HEADER_VALUE.search(value):
                raise ValueError(f"response header {name} holds a character that cannot be "
                                 f"sent: {value[:80]!r}")


@dataclass(frozen=True, slots=True)
class Request:
    """A checked request: ``raw_path`` and ``query`` are visible ASCII (see _parse_request)."""

    method: str
    segments: tuple[str, ...]
    trailing_slash: bool
    raw_path: bytes
    query: bytes
    headers: Mapping[str, str]

    @property
    def wants_html(self) -> bool:
        return "text/html" in self.headers.get("accept", "")


Handler = Callable[[Request], Awaitable[Response]]


# ---------------------------------------------------------------- request parsing


def _parse_request(scope: Mapping[str, Any]) -> Request:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogatepass")
    query: bytes = scope.get("query_string", b"")
    if len(raw_path) + len(query) > MAX_PATH_BYTES:
        raise HttpError(414, f"request target longer than {MAX_PATH_BYTES} bytes")
    if _NOT_VISIBLE_ASCII.search(raw_path) or _NOT_VISIBLE_ASCII.search(query):
        raise HttpError(400, NOT_ASCII_TARGET)
    raw_headers: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
    if (len(raw_headers) > MAX_HEADER_LINES
            or sum(len(n) + len(v) for n, v in raw_headers) > MAX_HEADER_BYTES):
        raise HttpError(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    segments, trailing = _split_path(raw_path)
    return Request(str(scope["method"]).upper(), segments, trailing, raw_path, query, headers)


def _split_path(raw: bytes) -> tuple[tuple[str, ...], bool]:
    """Decode each segment on its own, so an encoded slash can never make a new segment."""
    if not raw.startswith(b"/"):
        raise HttpError(400, "the request target must be a path starting with '/'")
    parts = raw[1:].split(b"/")
    if parts == [b""]:
        return (), False
    trailing = parts[-1] == b""
    if trailing:
        parts.pop()
    segments: list[str] = []
    for part in parts:
        if not part:
            raise HttpError(400, "empty path segment")
        try:
            segment = unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "the path is not UTF-8") from None
        if segment in (".", ".."):
            raise HttpError(400, "dot segments are not allowed in paths")
        if _BAD_SEGMENT_CHAR.search(segment):
            raise HttpError(400, "encoded slash, backslash or control character in the path")
        segments.append(segment)
    return tuple(segments), trailing


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    want = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == want for tag in if_none_match.split(","))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _short_text(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@contextmanager
def _api_errors() -> Iterator[None]:
    """The API's "unknown" and "bad input" answers become 404 and 400."""
    try:
        yield
    except NotFound as exc:
        raise HttpError(404, str(exc) or "not found") from None
    except InputError as exc:
        raise HttpError(400, str(exc)) from None


# ---------------------------------------------------------------- the app


class MirrorApp:
    """The ASGI application. Stateless apart from the API it asks and the metrics it counts."""

    def __init__(self, api: NodeAPI, *, base_url: str, metrics: NodeMetrics | None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        # the request counter's children, by (route, status): a few dozen at most
        self._counters: dict[tuple[str, int], Counter] = {}

    def _counter(self, route: str, status: int) -> Counter:
        child = self._counters.get((route, status))
        if child is None:
            assert self.metrics is not None
            child = self._counters[route, status] = self.metrics.http_requests.labels(
                route=route, status=str(status))
        return child

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, send)
        elif kind == "websocket":
            await receive()  # websocket.connect; closing before accepting answers 403
            await send({"type": "websocket.close", "code": 1008})
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Message, send: Send) -> None:
        route, html_errors, req = "invalid", False, None
        try:
            req = _parse_request(scope)
            route, html_errors, handler = self._route(req)
            if req.method not in ("GET", "HEAD"):
                raise HttpError(405, f"method {_short_text(req.method, 20)} not allowed; "
                                     "this mirror is read-only", (("Allow", _ALLOW),))
            response = await handler(req)
        except HttpError as exc:
            response = self._error(exc, html=html_errors and req is not None and req.wants_html)
        except Exception:
            # The edge of the app: log our bug with its traceback, answer a bare 500, go on.
            log.exception("HTTP handler failed (route %s)", route)
            response = self._error(HttpError(500, "internal error"), html=False)
        if req is not None and response.status == 200:
            inm = req.headers.get("if-none-match")
            etag = None if inm is None else next(
                (v for k, v in response.headers if k == "ETag"), None)
            if etag is not None and inm is not None and _etag_matches(inm, etag):
                keep = ("ETag", "Cache-Control", "Vary", "Access-Control-Allow-Origin")
                response = Response(304, headers=tuple(
                    h for h in response.headers if h[0] in keep))
        if self.metrics is not None:  # counted before sending, so a client that got its
            # answer also sees it counted
            self._counter(route, response.status).inc()
        head = scope.get("method") == "HEAD" or response.status == 304
        await _send(send, response, head=head)

    def _route(self, req: Request) -> tuple[str, bool, Handler]:
        """(route name for metrics, may answer errors in HTML, handler)."""
        s = req.segments
        if req.trailing_slash:
            return "redirect", True, self._slash_redirect
        if not s:
            return "status", True, self._status_page
        if len(s) == 1:
            single: dict[str, tuple[str, bool, Handler]] = {
                "healthz": ("healthz", False, self._healthz),
                "metrics": ("metrics", False, self._metrics),
                "pith-mirrors.json": ("manifest", False, self._manifest),
                "resolve": ("resolve", True, self._resolve_query),
            }
            if s[0] in single:
                return single[s[0]]
        if s[0] == "pith" and len(s) >= 3 and s[-1] in ("state.json", "bundle.json"):
            kind = s[-1].removesuffix(".json")
            return kind, False, partial(self._document, "/".join(s[1:-1]), kind)
        if s[0] == "pith" and len(s) >= 3 and s[-1].endswith(".json"):
            return "unknown", False, self._no_document
        if s[0] == "pith" and len(s) >= 2:
            return "record", True, partial(self._record, "/".join(s[1:]))
        if s[:2] == (".well-known", "pith") and len(s) >= 4 and s[-1] == "bundle.json":
            return "well_known", False, partial(self._document, "/".join(s[2:-1]), "well_known")
        if s[0] in ("arxiv", "doi") and len(s) >= 2:
            return s[0], True, partial(self._alias_redirect, s[0], "/".join(s[1:]))
        return "unknown", True, self._unknown

    async def _unknown(self, req: Request) -> Response:
        raise HttpError(404, "no such page on this mirror")

    async def _no_document(self, req: Request) -> Response:
        raise HttpError(404, "this mirror serves state.json and bundle.json of a record")

    # ------------------------------------------------------------ resolution

    async def _resolve(self, ident: str, *, kinds: tuple[str, ...] | None = None) -> str:
        """Full Pith Number of ``ident``; 400 when it is no identifier, 404 when unknown."""
        shown = _short_text(ident, 80)
        try:
            kind, _ = normalise_alias(ident)
        except InputError:
            raise HttpError(400, f"not a Pith Number, arXiv id or DOI: {shown!r}",
                            query=ident) from None
        if kinds is not None and kind not in kinds:
            raise HttpError(400, f"not an identifier of this kind: {shown!r}", query=ident)
        with _api_errors():
            full = await self.api.resolve(ident)
        if full is None:
            raise HttpError(404, f"no record known for {shown!r}", query=ident)
        return full

    @staticmethod
    def _redirect(ident: str, suffix: str, location: str) -> Response:
        try:
            same = parse_pith_number(ident).suffix == suffix
        except InputError:
            same = False
        status = 308 if same else 302
        cache = DOCUMENT_CACHE if same else PAGE_CACHE
        return Response(status, headers=(("Location", location), ("Cache-Control", cache)))

    async def _slash_redirect(self, req: Request) -> Response:
        # the exact bytes asked for, less the slash: _parse_request let only visible ASCII
        # through, and _split_path only segments that percent-decode to UTF-8
        target = req.raw_path[:-1] + (b"?" + req.query if req.query else b"")
        return Response(308, headers=(("Location", target.decode("ascii")),
                                      ("Cache-Control", DOCUMENT_CACHE)))

    async def _alias_redirect(self, kind: str, ident: str, req: Request) -> Response:
        kinds = ("arxiv", "arxiv_version") if kind == "arxiv" else ("doi",)
        suffix = parse_pith_number(await self._resolve(ident, kinds=kinds)).suffix
        return Response(302, headers=(("Location", f"/pith/{suffix}"),
                                      ("Cache-Control", PAGE_CACHE)))

    async def _resolve_query(self, req: Request) -> Response:
        try:
            fields = parse_qsl(req.query.decode("ascii"), keep_blank_values=True,
                               max_num_fields=MAX_QUERY_FIELDS, errors="strict")
        except ValueError:  # UnicodeDecodeError included; too many fields
            raise HttpError(400, "malformed query string") from None
        ident = dict(fields).get("id", "").strip()
        if not ident:
            raise HttpError(400, "give an identifier: ?id=<Pith Number, arXiv id or DOI>")
        if len(ident) > MAX_IDENTIFIER_CHARS or _CONTROL_CHAR.search(ident):
            raise HttpError(400, "not a Pith Number, arXiv id or DOI")
        suffix = parse_pith_number(await self._resolve(ident)).suffix
        return Response(302, headers=(("Location", f"/pith/{suffix}"),
                                      ("Cache-Control", PAGE_CACHE)))

    # ------------------------------------------------------------ documents

    async def _document(self, ident: str, kind: str, req: Request) -> Response:
        with _api_errors():  # one lookup: a cached record never leaves the trio thread
            found = await (self.api.served_state(ident) if kind == "state"
                           else self.api.served_bundle(ident))
        if found is None:  # no identifier (400), no record (404), or a record without it
            full = await self._resolve(ident)
            raise HttpError(404, f"this node holds no {kind.replace('well_known', 'bundle')} "
                                 f"document for {full}")
        suffix = found.pith_number.rpartition(":")[2]
        if ident != suffix:
            path = (f"/.well-known/pith/{suffix}/bundle.json" if kind == "well_known"
                    else f"/pith/{suffix}/{kind}.json")
            return self._redirect(ident, suffix, path)
        return Response(200, found.data, JSON, (("ETag", f'"{found.etag}"'),
                                                ("Cache-Control", DOCUMENT_CACHE),
                                                ("Access-Control-Allow-Origin", "*")))

    async def _manifest(self, req: Request) -> Response:
        body = _json_bytes(await self.api.manifest())
        return Response(200, body, JSON, (("ETag", f'"{hashlib.sha256(body).hexdigest()}"'),
                                          ("Cache-Control", DOCUMENT_CACHE),
                                          ("Access-Control-Allow-Origin", "*")))

    async def _healthz(self, req: Request) -> Response:
        return Response(200, b'{"status":"ok"}', JSON, (("Cache-Control", "no-store"),))

    async def _metrics(self, req: Request) -> Response:
        return Response(200, self.api.metrics_text(), METRICS_CONTENT_TYPE,
                        (("Cache-Control", "no-store"),))

    # ------------------------------------------------------------ pages

    async def _record(self, ident: str, req: Request) -> Response:
        full = await self._resolve(ident)
        suffix = parse_pith_number(full).suffix
        if ident != suffix:
            return self._redirect(ident, suffix, f"/pith/{suffix}")
        with _api_errors():
            view = await self.api.record_view(full)
        if view is None:
            raise HttpError(404, f"no record view for {full}")
        title = view.title or view.pith_number
        return self._html(200, title, _record_body(view, suffix, self.base_url))

    async def _status_page(self, req: Request) -> Response:
        status = await self.api.status()
        peers = await self.api.peers()
        recent = await self.api.recent_events(RECENT_EVENTS)
        return self._html(200, "Node status",
                          _status_body(status, peers, recent, self.base_url))

    def _html(self, status: int, title: str, body: str) -> Response:
        return Response(status, _page(title, body), HTML_TYPE,
                        (("Cache-Control", PAGE_CACHE), *_HTML_HEADERS))

    def _error(self, exc: HttpError, *, html: bool) -> Response:
        headers = (*exc.headers, ("Cache-Control", "no-store"), ("Vary", "Accept"))
        if html:
            page = _page(_REASONS.get(exc.status, "Error"),
                         _error_body(exc.status, exc.message, exc.query))
            return Response(exc.status, page, HTML_TYPE, (*headers, *_HTML_HEADERS))
        body = _json_bytes({"error": {"status": exc.status, "message": exc.message}})
        return Response(exc.status, body, JSON, headers)


async def _send(send: Send, response: Response, *, head: bool) -> None:
    headers = [(b"x-content-type-options", b"nosniff")]
    if response.content_type is not None:
        headers.append((b"content-type", response.content_type.encode("latin-1")))
    if response.status != 304:
        headers.append((b"content-length", str(len(response.body)).encode("ascii")))
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


def make_app(api: NodeAPI, *, base_url: str,
             metrics: NodeMetrics | None = None) -> MirrorApp:
    """The mirror's ASGI app. ``base_url`` is the public URL shown on pages (links stay
    relative); ``metrics``, when given, counts requests by route and status."""
    return MirrorApp(api, base_url=base_url, metrics=metrics)


def _hypercorn_config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger(f"{__name__}.hypercorn")
    config.include_server_header = False
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.h2_max_header_list_size = MAX_HEAD_BYTES
    config.read_timeout = 30
    config.keep_alive_timeout = 5
    config.backlog = 128
    return config


async def serve_http(
    api: NodeAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    base_url: str | None = None,
    metrics: NodeMetrics | None = None,
    task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the mirror until cancelled; ``task_status.started(url)`` gives the bound URL.

    The listening socket is bound here (port 0 picks a free port atomically, read back with
    ``getsockname``) and handed to :func:`.http_server.serve_asgi` (hypercorn, with guards
    that keep one client's request from stopping the server), so the port is known before the
    first request and the socket is closed when serving ends.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    config = _hypercorn_config()
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(config.backlog)
        sock.setblocking(False)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
        url = f"http://{shown}:{bound_port}"
        app = make_app(api, base_url=base_url or url, metrics=metrics)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_asgi, cast("ASGIFramework", app), config, sock)
            log.info("HTTP mirror listening on %s", url)
            task_status.started(url)
    finally:
        sock.close()


# ---------------------------------------------------------------- HTML

_REASONS = {400: "Bad request", 404: "Not found", 405: "Method not allowed",
            414: "Address too long", 431: "Headers too large", 500: "Internal error"}

_CSS = """
:root{--fg:#1c2230;--muted:#5d6677;--bg:#f5f6f8;--card:#fff;--line:#e2e5ea;--accent:#2453c4;
--ok:#146c34;--okbg:#e3f4e8;--bad:#a8261b;--badbg:#fbe9e7;--warn:#7a5200;--warnbg:#fdf1d6;
--code:#eef0f4}
@media (prefers-color-scheme:dark){:root{--fg:#e4e8ef;--muted:#9aa4b5;--bg:#11141a;
--card:#1a1f28;--line:#2b3240;--accent:#80a6ff;--ok:#74d294;--okbg:#18301f;--bad:#ff9a8f;
--badbg:#3a1d1b;--warn:#f0c566;--warnbg:#392d14;--code:#232a35}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.wrap{max-width:1080px;margin:0 auto;padding:0 24px}
header.top{background:var(--card);border-bottom:1px solid var(--line)}
header.top .wrap{display:flex;align-items:center;gap:20px;padding-top:12px;padding-bottom:12px;
flex-wrap:wrap}
.brand{font-weight:700;font-size:18px;color:var(--fg);letter-spacing:-.01em}
.brand span{color:var(--accent)}.brand:hover{text-decoration:none}
form.search{display:flex;gap:8px;flex:1;min-width:280px}
form.search input{flex:1;min-width:0;padding:8px 12px;border:1px solid var(--line);
border-radius:8px;background:var(--bg);color:var(--fg);font:inherit}
form.search button{padding:8px 16px;border:0;border-radius:8px;background:var(--accent);
color:#fff;font:inherit;font-weight:600;cursor:pointer}
main.wrap{padding-top:28px;padding-bottom:32px}
h1{font-size:27px;line-height:1.25;margin:0 0 10px;letter-spacing:-.01em}
h2{font-size:16px;margin:0 0 12px}h2 .count{color:var(--muted);font-weight:400}
h3{font-size:14px;margin:16px 0 8px;color:var(--muted)}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:18px 22px;margin:0 0 16px;overflow-x:auto}
.lead{font-size:16px;margin:0 0 6px}.muted{color:var(--muted)}.small{font-size:13px}
.abstract{margin:14px 0 20px;max-width:80ch}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
code{background:var(--code);padding:1px 5px;border-radius:4px}
.hash{word-break:break-all}
table{width:100%;border-collapse:collapse;font-size:14px}
th,td{text-align:left;padding:7px 10px 7px 0;border-bottom:1px solid var(--line);
vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;
letter-spacing:.04em}
tr:last-child td{border-bottom:0}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:6px 18px;margin:0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;min-width:0}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12.5px;
font-weight:600;white-space:nowrap}
.ok{background:var(--okbg);color:var(--ok)}.bad{background:var(--badbg);color:var(--bad)}
.warn{background:var(--warnbg);color:var(--warn)}.neutral{background:var(--code);color:var(--fg)}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:12px;
margin:0 0 16px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:12px 16px}
.stat b{display:block;font-size:24px;line-height:1.2}.stat.alert b{color:var(--bad)}
.stat span{color:var(--muted);font-size:13px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:0 16px}
.docs a{display:inline-block;margin:0 14px 6px 0}
ul.plain{margin:0;padding:0;list-style:none}
.none{color:var(--muted);margin:0}
.card.empty{display:flex;align-items:baseline;gap:14px;padding:12px 22px}
.card.empty h2{margin:0}
.hero{padding:8px 0 4px}.hero form.search{max-width:640px}
footer{color:var(--muted);font-size:13px;padding-bottom:28px}
"""


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(_fmt(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        return value
    return _short_text(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str), 300)


def _when(value: Any) -> str:
    """A timestamp for people, escaped: ISO text or seconds since the epoch."""
    if isinstance(value, str) and (m := _TS_RE.fullmatch(value)):
        return f'<span title="{_e(value)}">{m.group(1)} {m.group(2)}</span>'
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11:
        text = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f'<span title="{_e(value)}">{text}</span>'
    return _e(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return _e(seconds)
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {s:02d} s"


def _short_id(value: Any, keep: int = 12) -> str:
    """An event id or hash, shortened for tables (full value in the tooltip)."""
    text = _fmt(value)
    body = text.removeprefix("sha256:")
    shown = body if len(body) <= keep + 2 else body[:keep] + "…"
    return f'<code class="hash" title="{_e(text)}">{_e(shown)}</code>'


def _link(url: Any, text: Any = None) -> str:
    """A link only for http(s) URLs; anything else (``javascript:``, ``data:``) stays text."""
    shown = _e(url if text is None else text)
    if isinstance(url, str) and re.match(r"https?://[^\s\"'<>]+$", url):
        return f'<a href="{html.escape(url, quote=True)}" rel="nofollow noopener">{shown}</a>'
    return shown


def _record_link(pith_number: Any) -> str:
    try:
        pn = parse_pith_number(pith_number) if isinstance(pith_number, str) else None
    except InputError:
        pn = None
    if pn is None or not pn.is_full:
        return _e(pith_number)
    return f'<a class="mono" href="/pith/{pn.suffix}">{_e(str(pn))}</a>'


def _badge(text: Any, tone: str) -> str:
    return f'<span class="badge {tone}">{_e(text)}</span>'


def _signer(entry: Mapping[str, Any]) -> str:
    signer = entry.get("signer")
    if not isinstance(signer, Mapping):
        return _e(signer)
    tip = f"{_fmt(signer.get('key_id'))} · fingerprint {_fmt(signer.get('public_key_fingerprint'))}"
    return (f'<span title="{_e(tip)}">{_e(signer.get("signer_id"))}</span> '
            f'<span class="muted small">{_e(signer.get("signer_type"))}</span>')


def _table(headers: Iterable[str], rows: list[list[str]], *, empty: str = "None.") -> str:
    """Cells are HTML already; rows past MAX_ROWS are counted, not shown."""
    if not rows:
        return f'<p class="none">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in rows[:MAX_ROWS])
    more = (f'<p class="muted small">and {len(rows) - MAX_ROWS:,} more</p>'
            if len(rows) > MAX_ROWS else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _dl(items: Iterable[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _card(title: str, body: str, count: int | None = None) -> str:
    n = f' <span class="count">({count:,})</span>' if count is not None else ""
    if body.startswith('<p class="none">'):  # an empty table: one line is enough
        return f'<section class="card empty"><h2>{_e(title)}{n}</h2>{body}</section>'
    return f'<section class="card"><h2>{_e(title)}{n}</h2>{body}</section>'


def _payload(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    payload = entry.get("payload")
    return payload if isinstance(payload, Mapping) else {}


def _tone(value: Any, good: Iterable[str], bad: Iterable[str]) -> str:
    return "ok" if value in good else "bad" if value in bad else "neutral"


def _search_form(query: str = "", *, autofocus: bool = False) -> str:
    focus = " autofocus" if autofocus else ""
    return ('<form class="search" method="get" action="/resolve" role="search">'
            f'<input type="search" name="id" value="{_e(query) if query else ""}" '
            'placeholder="Pith Number, short form, arXiv id or DOI" aria-label="Identifier" '
            f'maxlength="{MAX_IDENTIFIER_CHARS}" required{focus}>'
            '<button type="submit">Look up</button></form>')


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)} · pithnode</title><link rel="icon" href="data:,">'
        f'<style>{_CSS}</style></head><body>'
        '<header class="top"><div class="wrap"><a class="brand" href="/">pith<span>node</span>'
        f'</a>{_search_form()}</div></header><main class="wrap">{body}</main>'
        '<footer class="wrap">Read-only mirror of the Pith Open Graph · '
        '<a href="/pith-mirrors.json">pith-mirrors.json</a> · <a href="/metrics">metrics</a>'
        "</footer></body></html>"
    ).encode()


def _error_body(status: int, message: str, query: str) -> str:
    return (f'<h1>{_e(_REASONS.get(status, "Error"))}</h1>'
            f'<section class="card"><p class="lead">{_e(message)}</p>'
            '<p class="muted">Look up a record by its Pith Number (<code>pith:2018:32UK2ZWI…</code>'
            ' or the short <code>pith:32UK2ZWI</code>), an arXiv id (<code>1812.04754</code>, '
            '<code>hep-ex/0002044</code>) or a DOI.</p>'
            f'<div class="hero">{_search_form(query, autofocus=True)}</div></section>')


# ---------------------------------------------------------------- record page

_ALIAS_NAMES = {"arxiv": "arXiv", "arxiv_version": "arXiv version", "doi": "DOI",
                "pith_short_8": "Short (8)", "pith_short_12": "Short (12)",
                "pith_short_16": "Short (16)"}


def _alias_value(kind: Any, value: Any) -> str:
    if not isinstance(value, str):
        return _e(value)
    if kind in ("arxiv", "arxiv_version"):
        return _link("https://arxiv.org/abs/" + quote(value, safe="/.:"), value)
    if kind == "doi":
        return _link("https://doi.org/" + quote(value, safe="/.:()"), value)
    if isinstance(kind, str) and kind.startswith("pith_short_") and _SHORT_RE.fullmatch(value):
        return f'<a class="mono" href="/pith/{value}">pith:{_e(value)}</a>'
    return _e(value)


def _record_body(view: RecordView, suffix: str, base_url: str) -> str:
    out: list[str] = []
    title = view.title or "Untitled record"
    out.append(f"<h1>{_e(title)}</h1>")
    if view.authors:
        out.append(f'<p class="lead">{_e(view.authors)}</p>')
    meta = [f'<code class="hash">{_e(view.pith_number)}</code>']
    if view.submitted_at:
        meta.append(f"submitted {_when(view.submitted_at)}")
    source = view.source or {}
    if source.get("kind") == "arxiv" and isinstance(source.get("id"), str):
        sid = source["id"] + (f"v{source['version']}" if isinstance(source.get("version"), int)
                              else "")
        meta.append("arXiv " + _link("https://arxiv.org/abs/" + quote(sid, safe="/.:"), sid))
    elif source:
        meta.append(_e(f"{_fmt(source.get('kind'))} {_fmt(source.get('id'))}"))
    receipt = (_badge("✓ registry receipt valid", "ok") if view.receipt_valid
               else _badge("✗ registry receipt invalid", "bad"))
    meta.append(receipt)
    out.append(f'<p class="muted">{" · ".join(meta)}</p>')
    if view.abstract:
        out.append(f'<p class="abstract">{_e(view.abstract)}</p>')

    stats = "".join(
        f'<div class="stat{" alert" if v and k in _ALERT_COUNTS else ""}"><b>{_e(v)}</b>'
        f"<span>{_e(_COUNT_NAMES.get(k, k.replace('_', ' ')))}</span></div>"
        for k, v in view.counts.items())
    if stats:
        out.append(f'<div class="stats">{stats}</div>')

    aliases = [[_e(_ALIAS_NAMES.get(a.get("alias_kind", ""), a.get("alias_kind"))),
                _alias_value(a.get("alias_kind"), a.get("alias_value")),
                _when(a.get("created_at"))] for a in view.aliases]
    idents = _dl([("Pith Number", f'<code class="hash">{_e(view.pith_number)}</code>'),
                  ("Short form", f"<code>pith:{_e(suffix[:8])}</code>")])

    docs = [(f"/pith/{suffix}/state.json", "state.json"),
            (f"/pith/{suffix}/bundle.json", "bundle.json"),
            (f"/.well-known/pith/{suffix}/bundle.json", "well-known bundle.json")]
    links = "".join(f'<a href="{p}" title="{_e(base_url + p)}">{name}</a>' for p, name in docs)
    snapshots = view.lists.get("graph_snapshots", [])
    builders = sorted({str(_payload(s).get("graph_snapshot", {}).get("builder_version", ""))
                       for s in snapshots if isinstance(_payload(s).get("graph_snapshot"),
                                                        Mapping)} - {""})
    out.append(_card("State", _dl([
        ("state_sha256", f'<code class="hash">{_e(view.state_sha256)}</code>'),
        ("Registry receipt", f"{receipt} {_e(view.receipt_detail)}"),
        ("Graph snapshots", _e(len(snapshots)) + (
            f' <span class="muted small">{_e(", ".join(builders))}</span>' if builders else "")),
        ("Documents", f'<div class="docs">{links}</div>'),
        ("Mirror URL", f'<code class="hash">{_e(base_url)}/pith/{suffix}</code>'),
    ])))
    out.append(_card("Identifiers", idents + "<h3>Aliases</h3>" + _table(
        ("Kind", "Value", "Since"), aliases, empty="No aliases.")))
    out.extend(_attestation_cards(view))
    out.append(_card("Invalid events", _table(
        ("Event", "Type", "Reason"),
        [[f'<code class="hash">{_e(i.get("event_id"))}</code>', _e(i.get("event_type")),
          _badge(i.get("reason"), "bad")] for i in view.invalid_events]),
        len(view.invalid_events)))
    out.append(_card("Equivocations", _table(
        ("Type", "Slot", "Signer", "Time", "Conflicting events"),
        [[_e(q.get("event_type")), f'<code class="hash">{_e(q.get("slot"))}</code>',
          _signer(q), _when(q.get("created_at")),
          "<br>".join(_short_id(i, 20) for i in q.get("event_ids") or [])]
         for q in view.equivocations]), len(view.equivocations)))
    return "".join(out)


_COUNT_NAMES = {"event_count": "events", "valid_event_count": "valid",
                "invalid_event_count": "invalid", "equivocation_count": "equivocations"}
_ALERT_COUNTS = ("invalid_event_count", "equivocation_count")


def _attestation_cards(view: RecordView) -> Iterator[str]:
    lists = view.lists

    def rows(name: str, target: str | None = None) -> list[Mapping[str, Any]]:
        return [e for e in lists.get(name, []) if isinstance(e, Mapping)
                and (target is None or e.get("target") == target)]

    authors = rows("author_attestations")
    yield _card("Author attestations", _table(
        ("ORCID", "Name", "Claim", "Signed by", "Time"),
        [[_orcid(_payload(e).get("orcid")), _e(_payload(e).get("name")),
          _badge(_payload(e).get("claim"), _tone(_payload(e).get("claim"), ["author"],
                                                 ["not_author"])),
          _signer(e), _when(e.get("created_at"))] for e in authors]), len(authors))

    anchors = rows("timestamp_anchors")
    yield _card("Timestamp anchors", _table(
        ("Kind", "Digest", "Proof", "Signed by", "Time"),
        [[_e(_payload(e).get("kind")), _short_id(_payload(e).get("digest_sha256"), 16),
          _e(f"{len(str(_payload(e).get('proof_b64') or ''))} chars base64"),
          _signer(e), _when(e.get("created_at"))] for e in anchors]), len(anchors))

    held = rows("storage_attestations", "storage")
    audits = rows("storage_attestations", "audit")
    by_attestation: dict[str, list[Any]] = {}
    for a in audits:
        by_attestation.setdefault(str(_payload(a).get("attestation_event_id")), []).append(
            _payload(a).get("outcome"))

    def audit_summary(event_id: Any) -> str:
        outcomes = by_attestation.get(str(event_id), [])
        if not outcomes:
            return '<span class="muted">not audited</span>'
        ok, failed = outcomes.count("verified"), outcomes.count("failed")
        parts = ([_badge(f"✓ {ok} verified", "ok")] if ok else []) + (
            [_badge(f"✗ {failed} failed", "bad")] if failed else [])
        return " ".join(parts) or _e(outcomes)

    storage = _table(
        ("Object", "Kind", "Size", "Held since", "Holder", "Audits"),
        [[_short_id(_payload(e).get("object_sha256"), 16), _e(_payload(e).get("kind")),
          _e(_size(_payload(e).get("size"))), _when(_payload(e).get("held_since")),
          _signer(e), audit_summary(e.get("event_id"))] for e in held])
    if audits:
        storage += "<h3>Audits</h3>" + _table(
            ("Attestation", "Outcome", "Auditor", "Time"),
            [[_short_id(_payload(a).get("attestation_event_id")),
              _badge(_payload(a).get("outcome"),
                     _tone(_payload(a).get("outcome"), ["verified"], ["failed"])),
              _signer(a), _when(a.get("created_at"))] for a in audits])
    yield _card("Storage attestations", storage, len(held))

    cites = rows("citation_signatures")
    yield _card("Citation signatures", _table(
        ("Cites", "Relation", "Note", "Signed by", "Time"),
        [[_record_link(_payload(e).get("cited")),
          _badge(_payload(e).get("relation"),
                 _tone(_payload(e).get("relation"), ["supports", "reproduces"], ["refutes"])),
          _e(_payload(e).get("note") or ""), _signer(e), _when(e.get("created_at"))]
         for e in cites]), len(cites))

    reps = rows("replication_records", "replication")
    states = rows("replication_records", "state")
    replication = _table(
        ("Kind", "Reference", "Outcome", "Note", "Signed by", "Time"),
        [[_e(_payload(e).get("kind")), _link(_payload(e).get("reference")),
          _badge(_payload(e).get("outcome"), _tone(_payload(e).get("outcome"),
                                                   ["replicated", "bridged"], ["failed"])),
          _e(_payload(e).get("note") or ""), _signer(e), _when(e.get("created_at"))]
         for e in reps])
    if states:
        replication += "<h3>State attestations</h3>" + _table(
            ("State", "Matches this node", "Events", "Signed by", "Time"),
            [[_short_id(_payload(e).get("state_sha256"), 16),
              _badge("matches", "ok") if _payload(e).get("state_sha256") == view.state_sha256
              else _badge("differs", "warn"),
              _e(_payload(e).get("event_count")), _signer(e), _when(e.get("created_at"))]
             for e in states])
    yield _card("Replication records", replication, len(reps) + len(states))

    corrections = rows("corrections")
    yield _card("Corrections", _table(
        ("Field", "Value", "Reason", "Signed by", "Time"),
        [[f"<code>{_e(_payload(e).get('field'))}</code>", _e(_payload(e).get("value")),
          _e(_payload(e).get("reason")), _signer(e), _when(e.get("created_at"))]
         for e in corrections]), len(corrections))

    mirrors = rows("mirror_hints")
    yield _card("Mirrors", _table(
        ("Base URLs", "Multiaddrs", "Prefixes", "Announced by", "Time"),
        [[_list_html(_payload(e).get("base_urls"), _link),
          _list_html(_payload(e).get("multiaddrs"), lambda a: f'<code class="hash">{_e(a)}'
                                                             "</code>"),
          _e(", ".join(map(str, _payload(e).get("prefixes") or [])) or "all"),
          _signer(e), _when(e.get("created_at"))] for e in mirrors],
        empty="No mirror hints."), len(mirrors))

    known = {"graph_snapshots", "author_attestations", "timestamp_anchors",
             "storage_attestations", "citation_signatures", "replication_records",
             "corrections", "mirror_hints"}
    for name in sorted(set(lists) - known):
        other = rows(name)
        yield _card(name.replace("_", " ").capitalize(), _table(
            ("Event", "Payload", "Signed by", "Time"),
            [[_short_id(e.get("event_id")), _e(e.get("payload")), _signer(e),
              _when(e.get("created_at"))] for e in other]), len(other))


def _orcid(value: Any) -> str:
    if isinstance(value, str) and _ORCID_RE.fullmatch(value):
        return _link(f"https://orcid.org/{value}", value)
    return _e(value)


def _size(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return _fmt(value)
    if value < 1024:
        return f"{value:,} bytes"
    size = float(value)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:,.1f} {unit}"
    return f"{size / 1024:,.1f} TiB"


def _list_html(values: Any, render: Callable[[Any], str]) -> str:
    if not isinstance(values, list) or not values:
        return '<span class="muted">—</span>'
    return '<ul class="plain">' + "".join(f"<li>{render(v)}</li>" for v in values[:16]) + "</ul>"


# ---------------------------------------------------------------- status page


def _last_sync(last: Any) -> str:
    """The daemon's ``sync.last`` figures: when, and with which peer."""
    if not isinstance(last, Mapping):
        return '<span class="muted">never</span>'
    return (f'{_when(last.get("at"))} <span class="muted">with</span> '
            f'{_short_id(last.get("peer"), 16)} <span class="muted">('
            f'{_e(last.get("fetched_new"))} fetched, {_e(last.get("pushed"))} pushed)</span>')


def _source(value: Any) -> str:
    """``sync:PEER`` / ``gossip:PEER`` with the peer id shortened (full in the tooltip)."""
    text = _fmt(value)
    kind, sep, peer = text.partition(":")
    return f"{_e(kind)}:{_short_id(peer, 12)}" if sep and len(peer) > 14 else _e(text)


def _status_body(status: Mapping[str, Any], peers: list[dict[str, Any]],
                 recent: list[dict[str, Any]], base_url: str) -> str:
    out = ['<h1>Node status</h1>',
           f'<p class="muted">Network <b>{_e(status.get("network"))}</b> · peer '
           f'<code class="hash">{_e(status.get("peer_id"))}</code></p>',
           '<section class="card"><h2>Look up a record</h2>'
           f'<div class="hero">{_search_form(autofocus=True)}</div>'
           '<p class="muted small">A Pith Number (<code>pith:2018:32UK2ZWI…</code>), a short '
           'form (<code>pith:32UK2ZWI</code>), an arXiv id (<code>1812.04754v1</code>, '
           '<code>hep-ex/0002044</code>) or a DOI.</p></section>']
    connected = sum(1 for p in peers if p.get("connected"))
    stats = [("Records", _e(status.get("records"))), ("Events", _e(status.get("events"))),
             ("Invalid events", _e(status.get("invalid"))),
             ("Peers connected", _e(connected) + f'<small class="muted"> / {len(peers)}</small>'),
             ("Uptime", _duration(status.get("uptime_s")))]
    out.append('<div class="stats">' + "".join(
        f'<div class="stat"><b>{v}</b><span>{_e(k)}</span></div>' for k, v in stats) + "</div>")
    sync: Mapping[str, Any] = status.get("sync") or {}
    gossip: Mapping[str, Any] = status.get("gossip") or {}
    if not isinstance(sync, Mapping):
        sync = {}
    if not isinstance(gossip, Mapping):
        gossip = {}
    addrs = status.get("listen_addrs") or []
    out.append('<div class="grid2">' + _card("Identity", _dl([
        ("Peer id", f'<code class="hash">{_e(status.get("peer_id"))}</code>'),
        ("Network", _e(status.get("network"))),
        ("Mirror URL", _link(base_url)),
        ("Listening on", _list_html(addrs, lambda a: f'<code class="hash">{_e(a)}</code>')),
    ])) + _card("Sync and gossip", _dl([
        ("Sync rounds", _e(sync.get("rounds"))),
        ("Sync errors", _e(sync.get("errors"))),
        ("Last sync", _last_sync(sync.get("last"))),
        ("Gossip events in / out",
         f'{_e(gossip.get("events_in"))} / {_e(gossip.get("events_out"))}'),
        ("Gossip rejected", _e(gossip.get("rejected"))),
    ])) + "</div>")
    out.append(_card("Peers", _table(
        ("Peer", "State", "Addresses", "Last sync", "Received", "Sync errors"),
        [[_short_id(p.get("peer_id"), 16),
          _badge("connected", "ok") if p.get("connected") else _badge("known", "neutral"),
          _list_html(p.get("addrs"), lambda a: f'<code class="hash">{_e(a)}</code>'),
          _when(p.get("last_sync")), _e(p.get("received")), _e(p.get("sync_errors"))]
         for p in peers], empty="No peers yet."), len(peers)))
    out.append(_card("Recent events", _table(
        ("Received", "Type", "Record", "Event", "Source"),
        [[_when(r.get("received_at")), _e(r.get("event_type")), _record_link(r.get("subject")),
          _short_id(r.get("event_id")), _source(r.get("source"))] for r in recent],
        empty="No events received yet.")))
    return "".join(out)
