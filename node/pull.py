"""Pulling records from HTTP mirrors (Pith itself or another pithnode): fetch, verify, store.

A *source* is a mirror's base URL or its manifest (``…/pith-mirrors.json``, Pith's format,
read strictly by :func:`parse_manifest`). A record is named by a Pith Number, a short form, an
arXiv id or a DOI; forms only the source can resolve are put in place of ``{suffix}`` in the
mirror's pattern and the source's redirect is followed (bounded; loops are detected).

For every record the bundle and the state are fetched (:class:`Fetcher`: per-request
timeouts, retries with exponential backoff and jitter on connection errors and 5xx/429 within
a Retry-After cap, a concurrency limit, a per-host token bucket, JSON content types only, a
size limit enforced while streaming, conditional requests remembered in ``pull-cache.json``),
then verified with protocol code (:func:`verify_pair`: ``verify_bytes`` on each, and the state
the bundle merges to must be the state served). Only then is the bundle ingested, through
``Store.ingest_document`` (the CLI) or the daemon's own ingest (:func:`run_scheduled_pull`);
registry events are admitted by import attestations signed with the node key. A document that
fails is reported by URL and check (:class:`DocumentFailed`) and nothing of its record is
stored.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote

import httpx
import trio

from pithnode.protocol.bundle import ParsedBundle, parse_bundle
from pithnode.protocol.documents import MAX_DOCUMENT_BYTES, decode_document, decode_json
from pithnode.protocol.errors import DecodeError, InputError, ProtocolError
from pithnode.protocol.events import Event, utc_timestamp
from pithnode.protocol.identifiers import fingerprint_hex, normalise_alias, parse_pith_number
from pithnode.protocol.ingest import accept, make_registry_imports
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.merge import admission_from_import
from pithnode.protocol.spec import MERGE_VERSION, NetworkSpec
from pithnode.protocol.state import parse_state
from pithnode.protocol.verify import Report, verify_bytes
from pithnode.storage.errors import StoreError
from pithnode.storage.store import Store

from .api import SubmitOutcome
from .errors import NodeError

if TYPE_CHECKING:
    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

__all__ = [
    "CACHE_FILE",
    "MAX_MANIFEST_BYTES",
    "CacheEntry",
    "DocumentFailed",
    "FetchConfig",
    "Fetched",
    "Fetcher",
    "Manifest",
    "MirrorEntry",
    "NodeSink",
    "PullCache",
    "PullError",
    "PullNode",
    "PullSummary",
    "Puller",
    "RecordRef",
    "RecordResult",
    "Source",
    "SourceError",
    "StoreSink",
    "choose_mirror",
    "manifest_bytes",
    "open_fetcher",
    "parse_manifest",
    "parse_record_ref",
    "resolve_source",
    "run_scheduled_pull",
    "verify_pair",
    "write_manifest",
]

log = logging.getLogger(__name__)

#: The conditional-request table in the data directory.
CACHE_FILE = "pull-cache.json"
CACHE_VERSION = 1
MAX_CACHE_BYTES = 64 << 20
MAX_CACHE_ENTRIES = 1_000_000
#: Longest ETag or Last-Modified value remembered (longer ones are not sent back).
MAX_VALIDATOR_CHARS = 256
MAX_MANIFEST_BYTES = 1 << 20
MAX_MIRRORS = 256
MAX_URL_CHARS = 2048
MANIFEST_TYPE = "pith_mirror_manifest"
MANIFEST_VERSION = "1.0"
USER_AGENT = "pithnode-pull/1"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
SUFFIX_FIELD = "{suffix}"


# ---------------------------------------------------------------------------- errors
class PullError(NodeError):
    """Root of the puller's errors."""


class SourceError(PullError):
    """The source cannot be used at all: a bad URL, an unreadable manifest, no usable mirror."""


class DocumentFailed(PullError):
    """One document could not be fetched or failed a check; ``check`` names which."""

    def __init__(self, url: str, check: str, detail: str) -> None:
        super().__init__(f"{url}: {check}: {detail}")
        self.url = url
        self.check = check
        self.detail = detail


class _Retryable(Exception):
    """A failure worth another attempt (connection trouble, 5xx, 429)."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


# ---------------------------------------------------------------------------- the manifest
@dataclass(frozen=True, slots=True)
class MirrorEntry:
    """One entry of ``mirrors[]``; ``extra`` keeps keys beyond Pith's (e.g. a peer id)."""

    name: str
    mirror_type: str
    base_url: str
    bundle_pattern: str | None = None
    state_pattern: str | None = None
    well_known_pattern: str | None = None
    public_key: Mapping[str, Any] | None = None
    status: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.bundle_pattern is not None and self.state_pattern is not None

    @classmethod
    def for_base_url(cls, name: str, base_url: str, *, mirror_type: str = "https",
                     status: str | None = "mirror") -> MirrorEntry:
        """A mirror serving Pith's paths under ``base_url``."""
        base = base_url.rstrip("/")
        return cls(name, mirror_type, base, f"{base}/pith/{{suffix}}/bundle.json",
                   f"{base}/pith/{{suffix}}/state.json",
                   f"{base}/.well-known/pith/{{suffix}}/bundle.json", None, status)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "mirror_type": self.mirror_type,
                               "base_url": self.base_url}
        for key in ("bundle_pattern", "state_pattern", "well_known_pattern"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.public_key is not None:
            out["public_key"] = dict(self.public_key)
        if self.status is not None:
            out["status"] = self.status
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    generated_at: str
    mirrors: tuple[MirrorEntry, ...]
    merge_version: str = MERGE_VERSION
    notes: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_MIRROR_KEYS = ("name", "mirror_type", "base_url", "bundle_pattern", "state_pattern",
                "well_known_pattern", "public_key", "status")
_TOP_KEYS = ("manifest_type", "manifest_version", "generated_at", "merge_version", "mirrors",
             "notes")


def _bad(where: str, message: str) -> DecodeError:
    return DecodeError("bad_manifest", f"{where}: {message}")


def _text(obj: Mapping[str, Any], key: str, where: str, limit: int, *,
          required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _bad(f"{where}.{key}", f"must be a non-empty string of at most {limit} characters")
    return value


def _http_url(value: str, where: str) -> None:
    try:
        url = httpx.URL(value.replace(SUFFIX_FIELD, "S"))
    except httpx.InvalidURL as exc:
        raise _bad(where, f"not a URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise _bad(where, "must be an http(s) URL")


def _check_public_key(pk: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(pk, dict):
        raise _bad(where, "must be an object")
    for key, value in pk.items():
        if value is not None and not isinstance(value, str):
            raise _bad(f"{where}.{key}", "must be a string or null")
    raw: bytes | None = None
    if pk.get("public_key_hex") is not None:
        try:
            raw = bytes.fromhex(pk["public_key_hex"])
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise _bad(f"{where}.public_key_hex", "must be 64 hex digits")
    if pk.get("public_key_b64") is not None:
        try:
            decoded = base64.b64decode(pk["public_key_b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"{where}.public_key_b64", "not base64") from exc
        if len(decoded) != 32 or (raw is not None and decoded != raw):
            raise _bad(f"{where}.public_key_b64", "does not match public_key_hex")
        raw = decoded
    fp = pk.get("fingerprint_sha256_hex")
    if fp is not None and raw is not None and fp != fingerprint_hex(raw):
        raise _bad(f"{where}.fingerprint_sha256_hex", "does not match the public key")
    return pk


def _mirror(obj: Any, where: str) -> MirrorEntry:
    if not isinstance(obj, dict):
        raise _bad(where, "must be an object")
    name = _text(obj, "name", where, 256)
    mirror_type = _text(obj, "mirror_type", where, 64)
    base_url = _text(obj, "base_url", where, MAX_URL_CHARS)
    assert name is not None and mirror_type is not None and base_url is not None
    _http_url(base_url, f"{where}.base_url")
    patterns: dict[str, str | None] = {}
    for key in ("bundle_pattern", "state_pattern", "well_known_pattern"):
        value = _text(obj, key, where, MAX_URL_CHARS, required=False)
        if value is not None:
            if value.count(SUFFIX_FIELD) != 1:
                raise _bad(f"{where}.{key}", "must contain {suffix} exactly once")
            _http_url(value, f"{where}.{key}")
        patterns[key] = value
    pk = obj.get("public_key")
    status = _text(obj, "status", where, 64, required=False)
    return MirrorEntry(name, mirror_type, base_url, patterns["bundle_pattern"],
                       patterns["state_pattern"], patterns["well_known_pattern"],
                       None if pk is None else _check_public_key(pk, f"{where}.public_key"),
                       status, {k: v for k, v in obj.items() if k not in _MIRROR_KEYS})


def parse_manifest(data: bytes) -> Manifest:
    """Read a ``pith-mirrors.json`` strictly: size first, then JSON, then every known field's
    type; unknown versions are refused. Raises :class:`DecodeError` (reason ``bad_manifest``,
    ``bad_version``, ``too_large``, ``bad_json``)."""
    doc = decode_json(data, limit=MAX_MANIFEST_BYTES)
    if not isinstance(doc, dict) or doc.get("manifest_type") != MANIFEST_TYPE:
        raise DecodeError("wrong_document_type", "not a Pith mirror manifest")
    if doc.get("manifest_version") != MANIFEST_VERSION:
        raise DecodeError("bad_version",
                          f"unsupported manifest_version {doc.get('manifest_version')!r}")
    generated_at = _text(doc, "generated_at", "manifest", 64)
    merge_version = _text(doc, "merge_version", "manifest", 64)
    assert generated_at is not None and merge_version is not None
    if merge_version != MERGE_VERSION:
        raise DecodeError("bad_version", f"unsupported merge_version {merge_version!r}")
    mirrors = doc.get("mirrors")
    if not isinstance(mirrors, list) or len(mirrors) > MAX_MIRRORS:
        raise _bad("manifest.mirrors", f"must be a list of at most {MAX_MIRRORS} mirrors")
    notes = _text(doc, "notes", "manifest", 4096, required=False)
    return Manifest(generated_at, tuple(_mirror(m, f"mirrors[{i}]") for i, m in
                                        enumerate(mirrors)), merge_version, notes,
                    {k: v for k, v in doc.items() if k not in _TOP_KEYS})


def manifest_bytes(manifest: Manifest) -> bytes:
    """Pith's form: its key order, compact, UTF-8, one trailing newline."""
    doc: dict[str, Any] = {"manifest_type": MANIFEST_TYPE, "manifest_version": MANIFEST_VERSION,
                           "generated_at": manifest.generated_at,
                           "merge_version": manifest.merge_version,
                           "mirrors": [m.to_json() for m in manifest.mirrors]}
    if manifest.notes is not None:
        doc["notes"] = manifest.notes
    doc.update(manifest.extra)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8") + b"\n"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write a manifest atomically (a reader never sees half a file)."""
    _write_atomic(path, manifest_bytes(manifest))


# ---------------------------------------------------------------------------- sources, records
@dataclass(frozen=True, slots=True)
class Source:
    """Where documents come from: a mirror's URL patterns."""

    given: str
    name: str
    bundle_pattern: str
    state_pattern: str

    def bundle_url(self, path: str) -> str:
        return self.bundle_pattern.replace(SUFFIX_FIELD, path)

    def state_url(self, path: str) -> str:
        return self.state_pattern.replace(SUFFIX_FIELD, path)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def choose_mirror(manifest: Manifest, manifest_url: str) -> MirrorEntry:
    """The usable mirror whose base URL is the manifest's origin, else the first usable one."""
    usable = [m for m in manifest.mirrors if m.usable]
    if not usable:
        raise SourceError(f"the manifest {manifest_url} lists no mirror with bundle and state "
                          "patterns")
    here = _origin(httpx.URL(manifest_url))
    for m in usable:
        if _origin(httpx.URL(m.base_url)) == here:
            return m
    return usable[0]


def _source_url(text: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise SourceError(f"not a URL: {text[:200]!r} ({exc})") from exc
    if url.scheme not in ("http", "https") or not url.host or len(text) > MAX_URL_CHARS:
        raise SourceError(f"not an http(s) URL: {text[:200]!r}")
    return url


def check_source(text: str) -> None:
    """Raise :class:`SourceError` unless ``text`` could name a source (no network)."""
    _source_url(text)


async def resolve_source(fetcher: Fetcher, text: str) -> Source:
    """A base URL gives Pith's paths under it; a ``.json`` URL is read as a manifest."""
    url = _source_url(text)
    if not url.path.endswith(".json"):
        m = MirrorEntry.for_base_url(str(url.copy_with(query=None, fragment=None)),
                                     str(url.copy_with(query=None, fragment=None)))
        assert m.bundle_pattern is not None and m.state_pattern is not None
        return Source(text, m.name, m.bundle_pattern, m.state_pattern)
    try:
        got = await fetcher.get(str(url), limit=MAX_MANIFEST_BYTES)
        assert got.body is not None
        manifest = parse_manifest(got.body)
    except DocumentFailed as exc:
        raise SourceError(f"cannot read the manifest {exc.url}: {exc.check}: {exc.detail}"
                          ) from exc
    except InputError as exc:
        raise SourceError(f"the manifest {text} is not usable: {exc}") from exc
    mirror = choose_mirror(manifest, got.url)
    assert mirror.bundle_pattern is not None and mirror.state_pattern is not None
    return Source(text, mirror.name, mirror.bundle_pattern, mirror.state_pattern)


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A record as named by the user: ``kind`` and ``value`` as :func:`normalise_alias` gives
    them. ``optional`` records (from ``--all-known``) may be missing at the source."""

    text: str
    kind: str
    value: str
    optional: bool = False

    @property
    def path(self) -> str:
        """What replaces ``{suffix}``: the suffix of a Pith Number, else the identifier."""
        if self.kind == "pith":
            return self.value.rsplit(":", 1)[-1]
        return quote(self.value, safe="/")

    def matches(self, pith_number: str, aliases: Sequence[Mapping[str, str]]) -> bool:
        """Does a record with this Pith Number and these aliases answer the request?"""
        suffix = pith_number.rsplit(":", 1)[-1]
        if self.kind == "pith":
            return pith_number == self.value if ":" in self.value else suffix == self.value
        if self.kind.startswith("pith_short_"):
            return suffix.startswith(self.value)
        for a in aliases:
            try:
                if normalise_alias(a["alias_value"]) == (self.kind, self.value):
                    return True
            except InputError:
                continue
        return False


def parse_record_ref(text: str, *, optional: bool = False) -> RecordRef:
    """Raises :class:`InputError` for text that is no Pith Number, arXiv id or DOI."""
    kind, value = normalise_alias(text)
    if kind == "pith" and ":" not in value:  # a bare 26-character suffix
        value = parse_pith_number(value).suffix
    return RecordRef(text.strip(), kind, value, optional)


# ---------------------------------------------------------------------------- the cache
@dataclass(frozen=True, slots=True)
class CacheEntry:
    etag: str | None
    last_modified: str | None
    pith_number: str

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


def _validator(value: Any) -> str | None:
    if value is None or not isinstance(value, str) or len(value) > MAX_VALIDATOR_CHARS:
        return None
    return value if value.isprintable() else None


class PullCache:
    """Validators (ETag, Last-Modified) of documents already verified and stored, per URL.

    Kept in ``pull-cache.json`` in the data directory, written atomically; an unreadable file
    is ignored (the next pull fetches in full). Only documents whose record was stored are
    remembered, so a 304 always means "you hold this already".
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, CacheEntry] = {}
        self.dirty = False

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, url: str) -> CacheEntry | None:
        return self._entries.get(url)

    def put(self, url: str, etag: str | None, last_modified: str | None,
            pith_number: str) -> None:
        etag, last_modified = _validator(etag), _validator(last_modified)
        self._entries.pop(url, None)
        if etag is None and last_modified is None:
            self.dirty = True
            return
        self._entries[url] = CacheEntry(etag, last_modified, pith_number)
        while len(self._entries) > MAX_CACHE_ENTRIES:
            del self._entries[next(iter(self._entries))]
        self.dirty = True

    @classmethod
    def load(cls, path: Path) -> tuple[PullCache, str | None]:
        """The cache at ``path`` and a warning when the file existed but could not be used."""
        cache = cls(path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CACHE_BYTES + 1)
        except FileNotFoundError:
            return cache, None
        except OSError as exc:
            return cache, f"cannot read {path}: {exc.strerror or exc}; fetching in full"
        try:
            doc = decode_json(data, limit=MAX_CACHE_BYTES)
            if not isinstance(doc, dict) or doc.get("cache_version") != CACHE_VERSION \
                    or not isinstance(doc.get("entries"), dict):
                raise DecodeError("bad_cache", "not a pull cache of version 1")
        except InputError as exc:
            return cache, f"ignoring {path}: {exc}; fetching in full"
        for url, e in doc["entries"].items():
            if isinstance(e, dict) and isinstance(e.get("pith_number"), str):
                cache._entries[url] = CacheEntry(_validator(e.get("etag")),
                                                 _validator(e.get("last_modified")),
                                                 e["pith_number"])
        return cache, None

    def save(self) -> None:
        """Write the table atomically, if anything changed. Raises OSError."""
        if self.path is None or not self.dirty:
            return
        doc = {"cache_version": CACHE_VERSION, "entries": {
            url: {"etag": e.etag, "last_modified": e.last_modified,
                  "pith_number": e.pith_number} for url, e in self._entries.items()}}
        _write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode("utf-8"))
        self.dirty = False


# ---------------------------------------------------------------------------- fetching
@dataclass(frozen=True, slots=True)
class FetchConfig:
    concurrency: int = 4
    #: requests per second to one host (token bucket)
    rate_per_host: float = 4.0
    burst: float = 1.0
    connect_timeout_s: float = 10.0
    #: longest wait for the next bytes of an answer
    read_timeout_s: float = 30.0
    #: longest a whole request (headers and body) may take
    total_timeout_s: float = 300.0
    retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_cap_s: float = 120.0
    max_redirects: int = 5
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    #: honour HTTP(S)_PROXY and friends from the environment
    trust_env: bool = True

    @classmethod
    def from_timeout(cls, timeout_s: float, **kwargs: Any) -> FetchConfig:
        """Connect and read timeouts of ``timeout_s``; a whole document gets ten times that."""
        return cls(connect_timeout_s=timeout_s, read_timeout_s=timeout_s,
                   total_timeout_s=10 * timeout_s, **kwargs)


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str  # after redirects
    status: Literal[200, 304]
    body: bytes | None
    etag: str | None
    last_modified: str | None


@dataclass(slots=True)
class FetchStats:
    requests: int = 0
    retries: int = 0
    bodies: int = 0
    not_modified: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Redirect:
    location: str


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; waiters queue on a lock."""

    def __init__(self, rate: float, burst: float, clock: Clock, sleep: Sleep) -> None:
        self.rate, self.burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._tokens, self._last = burst, clock()
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.rate)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or ("/" in media and media.endswith("+json"))


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after", "").strip()
    if value.isdigit() and len(value) <= 9:
        return float(value)
    try:  # an HTTP-date, measured against the server's own Date (no local clock needed)
        delta = (parsedate_to_datetime(value) - parsedate_to_datetime(headers["date"]))
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return max(0.0, delta.total_seconds())


def _retryable_status(status: int) -> bool:
    return status == 429 or (500 <= status <= 599 and status not in (501, 505))


class Fetcher:
    """GETs documents for the puller; see the module docstring for the rules."""

    def __init__(self, client: httpx.AsyncClient, config: FetchConfig, *,
                 clock: Clock = trio.current_time, sleep: Sleep = trio.sleep,
                 rng: random.Random | None = None) -> None:
        self.client = client
        self.config = config
        self.stats = FetchStats()
        self._clock, self._sleep = clock, sleep
        self._rng = rng if rng is not None else random.Random()
        self._limit = trio.CapacityLimiter(config.concurrency)
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, url: httpx.URL) -> TokenBucket:
        host = f"{url.host}:{url.port or ''}"
        if host not in self._buckets:
            self._buckets[host] = TokenBucket(self.config.rate_per_host, self.config.burst,
                                              self._clock, self._sleep)
        return self._buckets[host]

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with equal jitter; at least Retry-After (capped) when the server said."""
        c = self.config
        ceiling = min(c.backoff_max_s, c.backoff_base_s * (1 << min(attempt, 30)))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, c.retry_after_cap_s))
        return delay

    async def get(self, url: str, *, limit: int, cache: PullCache | None = None) -> Fetched:
        """The document at ``url`` (redirects followed), or 304 when ``cache`` holds validators
        the server accepts. Raises :class:`DocumentFailed`."""
        seen = [url]
        current = url
        for _ in range(self.config.max_redirects + 1):
            got = await self._with_retries(current, limit, cache)
            if isinstance(got, Fetched):
                return got
            if got.location in seen:
                raise DocumentFailed(url, "redirect_loop", " -> ".join([*seen, got.location]))
            seen.append(got.location)
            current = got.location
        raise DocumentFailed(url, "too_many_redirects",
                             f"more than {self.config.max_redirects} redirects")

    async def _with_retries(self, url: str, limit: int, cache: PullCache | None
                            ) -> Fetched | _Redirect:
        attempt = 0
        while True:
            try:
                return await self._attempt(url, limit, cache)
            except _Retryable as exc:
                if attempt >= self.config.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise DocumentFailed(url, exc.reason, exc.detail + tries) from None
                delay = self.backoff(attempt, exc.retry_after)
                log.info("%s: %s; retrying in %.1fs", url, exc.reason, delay)
                self.stats.retries += 1
                attempt += 1
                await self._sleep(delay)

    async def _attempt(self, url: str, limit: int, cache: PullCache | None
                       ) -> Fetched | _Redirect:
        entry = cache.get(url) if cache is not None else None
        headers = entry.headers() if entry is not None else {}
        c = self.config
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise DocumentFailed(url, "bad_url", str(exc)) from exc
        async with self._limit:
            await self._bucket(target).acquire()
            self.stats.requests += 1
            try:
                with trio.fail_after(c.total_timeout_s):
                    async with self.client.stream("GET", target, headers=headers) as resp:
                        return await self._answer(url, resp, limit, entry)
            except trio.TooSlowError:
                raise _Retryable("timeout", f"no complete answer within {c.total_timeout_s:g}s"
                                 ) from None
            except httpx.ConnectTimeout:
                raise _Retryable("connect_timeout", f"no connection within "
                                 f"{c.connect_timeout_s:g}s") from None
            except httpx.ReadTimeout:
                raise _Retryable("read_timeout", f"no data for {c.read_timeout_s:g}s") from None
            except httpx.TimeoutException as exc:
                raise _Retryable("timeout", str(exc) or type(exc).__name__) from None
            except httpx.ConnectError as exc:
                raise _Retryable("connect_error", str(exc) or "connection failed") from None
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                raise _Retryable("connection_lost", str(exc) or type(exc).__name__) from None
            except httpx.UnsupportedProtocol as exc:
                raise DocumentFailed(url, "bad_url", str(exc)) from None
            except httpx.HTTPError as exc:  # the rest of httpx's tree: the server is at fault
                raise DocumentFailed(url, "http_error", str(exc) or type(exc).__name__
                                     ) from None

    async def _answer(self, url: str, resp: httpx.Response, limit: int,
                      entry: CacheEntry | None) -> Fetched | _Redirect:
        status = resp.status_code
        if status in REDIRECTS:
            return self._redirect(url, resp)
        if status == 304:
            if entry is None:
                raise DocumentFailed(url, "unexpected_304", "304 to an unconditional request")
            self.stats.not_modified += 1
            return Fetched(url, 304, None, resp.headers.get("etag") or entry.etag,
                           resp.headers.get("last-modified") or entry.last_modified)
        if _retryable_status(status):
            raise _Retryable(f"http_{status}", f"{status} {resp.reason_phrase}".strip(),
                             _retry_after(resp.headers))
        if status == 404:
            raise DocumentFailed(url, "not_found", "404: the source has no such document")
        if status != 200:
            raise DocumentFailed(url, f"http_{status}", f"{status} {resp.reason_phrase}".strip())
        ctype = resp.headers.get("content-type", "")
        if not _is_json(ctype):
            raise DocumentFailed(url, "content_type",
                                 f"served as {ctype[:80]!r}, not JSON" if ctype
                                 else "served without a Content-Type")
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise DocumentFailed(url, "content_encoding", f"unasked-for encoding {encoding!r}")
        declared: int | None = None
        if "content-length" in resp.headers:
            text = resp.headers["content-length"].strip()
            if not text.isdigit() or len(text) > 18:
                raise DocumentFailed(url, "bad_length", f"Content-Length {text[:40]!r}")
            declared = int(text)
            if declared > limit:
                raise DocumentFailed(url, "too_large", f"Content-Length {declared} exceeds "
                                     f"the limit of {limit} bytes")
        body = bytearray()
        chunks = resp.aiter_raw()
        try:
            async for chunk in chunks:
                if len(body) + len(chunk) > limit:
                    await _abandon(resp, chunks)
                    raise DocumentFailed(url, "too_large", f"the body exceeds the limit of "
                                         f"{limit} bytes (cut at {len(body)})")
                body += chunk
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            expected = f" of {declared}" if declared is not None else ""
            raise _Retryable("truncated", f"the connection closed after {len(body)}{expected} "
                             f"bytes ({exc})") from None
        self.stats.bodies += 1
        self.stats.bytes += len(body)
        return Fetched(url, 200, bytes(body), resp.headers.get("etag"),
                       resp.headers.get("last-modified"))

    @staticmethod
    def _redirect(url: str, resp: httpx.Response) -> _Redirect:
        location = resp.headers.get("location", "")
        if not location or len(location) > MAX_URL_CHARS:
            raise DocumentFailed(url, "bad_redirect", f"{resp.status_code} without a usable "
                                 "Location")
        try:
            target = resp.url.join(location)
        except httpx.InvalidURL as exc:
            raise DocumentFailed(url, "bad_redirect", f"Location {location[:200]!r}: {exc}"
                                 ) from None
        if target.scheme not in ("http", "https") or (
                resp.url.scheme == "https" and target.scheme == "http"):
            raise DocumentFailed(url, "bad_redirect", f"refusing a redirect to {target}")
        return _Redirect(str(target))


async def _abandon(resp: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    """Stop reading a body half-way: close the connection, then let the read error unwind
    httpx's chain of async generators (closing only the outer one would leave the inner ones
    suspended until garbage collection)."""
    await resp.aclose()
    for _ in range(1024):  # what h11 had buffered, then the error of the closed connection
        try:
            await chunks.__anext__()
        except (StopAsyncIteration, httpx.HTTPError, httpx.StreamError):
            return


@asynccontextmanager
async def open_fetcher(config: FetchConfig, *, clock: Clock = trio.current_time,
                       sleep: Sleep = trio.sleep, rng: random.Random | None = None
                       ) -> AsyncIterator[Fetcher]:
    """A :class:`Fetcher` over a fresh HTTP client (closed on exit)."""
    timeout = httpx.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s,
                            write=config.read_timeout_s, pool=config.total_timeout_s)
    limits = httpx.Limits(max_connections=config.concurrency,
                          max_keepalive_connections=config.concurrency)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json",
               "Accept-Encoding": "identity"}
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers,
                                 follow_redirects=False, trust_env=config.trust_env) as client:
        yield Fetcher(client, config, clock=clock, sleep=sleep, rng=rng)


# ---------------------------------------------------------------------------- verification
@dataclass(frozen=True, slots=True)
class VerifiedPair:
    bundle: ParsedBundle
    state_sha256: str


def _verified(data: bytes, kind: str, url: str, spec: NetworkSpec, *,
              superseded: frozenset[str] = frozenset()) -> Report:
    try:
        report = verify_bytes(data, spec)
    except InputError as exc:
        raise DocumentFailed(url, exc.reason, str(exc)) from None
    except ProtocolError as exc:  # input the checks should have refused (a protocol bug):
        # still this document's fault, and it must not stop the other records
        raise DocumentFailed(url, "unverifiable", str(exc)) from None
    if report.kind != kind:
        raise DocumentFailed(url, "wrong_document_type",
                             f"a {report.kind} document where a {kind} was expected")
    failed = [c for c in report.checks if not c.ok and c.name not in superseded]
    if failed:
        raise DocumentFailed(url, failed[0].name,
                             "; ".join(f"{c.name}: {c.detail}" for c in failed)[:2000])
    return report


def verify_pair(bundle: bytes, state: bytes, spec: NetworkSpec, ref: RecordRef, *,
                bundle_url: str, state_url: str) -> VerifiedPair:
    """Every check of ``protocol.verify`` on both documents (canonical hash, Pith Number,
    receipt against the spec's registry keys, signatures, state hash and re-merge), then:
    both name the record asked for, and the bundle merges to the served state."""
    b = _verified(bundle, "bundle", bundle_url, spec)
    # A state's own "merge" check re-merges only the events it lists as applied, so it fails
    # for every state with superseded, invalid or equivocating events; the bundle, which
    # carries all of them, must merge to the served state instead (below).
    s = _verified(state, "state", state_url, spec, superseded=frozenset({"merge"}))
    if s.pith_number != b.pith_number:
        raise DocumentFailed(state_url, "same_record", f"the state is about {s.pith_number}, "
                             f"the bundle about {b.pith_number}")
    parsed = parse_bundle(decode_document(bundle).doc)
    if not ref.matches(b.pith_number, parsed.source_aliases):
        raise DocumentFailed(bundle_url, "requested_record",
                             f"{b.pith_number} is not the record {ref.text!r} names")
    # the "state_sha256" check passed: the claimed hash is the hash of the served content
    claimed = parse_state(decode_document(state).doc).claimed_sha256
    if b.state_sha256 != claimed:
        raise DocumentFailed(state_url, "state_matches_bundle",
                             f"served state {claimed}, but the bundle merges to "
                             f"{b.state_sha256}")
    return VerifiedPair(parsed, claimed)


def _bundle_subject(data: bytes, url: str) -> str:
    """The full Pith Number a fetched bundle claims (checked in full later)."""
    try:
        doc = decode_document(data)
        pith = doc.doc.get("pith_number")
        if doc.kind != "bundle" or not isinstance(pith, str) or \
                not parse_pith_number(pith).is_full:
            raise DecodeError("wrong_document_type", "not a bundle naming a full Pith Number")
    except InputError as exc:
        raise DocumentFailed(url, exc.reason, str(exc)) from None
    return pith


# ---------------------------------------------------------------------------- where it goes
@dataclass(slots=True)
class IngestOutcome:
    new: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    attestations: int = 0
    error: tuple[str, str] | None = None  # (reason, message): nothing was stored


class StoreSink:
    """Pulled bundles into a :class:`Store` (the CLI; the store is this process's)."""

    def __init__(self, store: Store, key: SigningKey, node_id: str, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._store_ref = store
        self.key = key
        self.node_id = node_id
        self._wall = wall_clock
        self._write = trio.Lock()

    @property
    def store(self) -> Store:
        return self._store_ref

    async def known_records(self) -> list[str]:
        return await trio.to_thread.run_sync(self.store.records)

    async def has_record(self, pith_number: str) -> bool:
        return await trio.to_thread.run_sync(self.store.resolve, pith_number) is not None

    async def local_state_sha256(self, pith_number: str) -> str | None:
        st = await trio.to_thread.run_sync(self.store.state, pith_number)
        return None if st is None else st.state_sha256

    async def unadmitted(self, bundle: ParsedBundle) -> int:
        """Registry events of ``bundle`` that no trusted attestation in the store admits."""
        held, _ = await trio.to_thread.run_sync(self.store.admitted, bundle.pith_number)
        covered = {e.canonical_bytes() for e in held}
        return sum(1 for e in bundle.events
                   if e.signature is None and e.canonical_bytes() not in covered)

    async def ingest_bundle(self, data: bytes, bundle: ParsedBundle, *,
                            source: str) -> IngestOutcome:
        async with self._write:
            res = await trio.to_thread.run_sync(partial(
                self.store.ingest_document, data, source=source, node_key=self.key,
                node_id=self.node_id, received_at=self._wall()))
        s = res.summary
        return IngestOutcome(s.new, s.duplicate, Counter(s.rejected), res.attestations,
                             None if res.error is None
                             else (res.error_reason or "error", res.error))


class _Gossip(Protocol):
    def mark_seen(self, event_ids: Sequence[str]) -> None: ...

    async def publish(self, raw_events: Sequence[bytes]) -> None: ...


class PullNode(Protocol):
    """What the scheduled pull needs of the daemon (``node.daemon.Node``)."""

    @property
    def key(self) -> SigningKey: ...

    @property
    def spec(self) -> NetworkSpec: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def store(self) -> Store | None: ...

    @property
    def gossip(self) -> _Gossip: ...

    async def ingest(self, events: Sequence[Event], *, source: str) -> list[SubmitOutcome]: ...


def needed_attestations(key: SigningKey, *, node_id: str, spec: NetworkSpec, source: str,
                        document: bytes, bundle: ParsedBundle, held: Sequence[Event],
                        held_aliases: Sequence[Mapping[str, str]]) -> list[Event]:
    """The import attestations ``Store.ingest_document`` would make for this bundle: none
    when the key is no trusted importer or when trusted attestations (held, or carried by the
    bundle) already admit its registry events and aliases; else attestations of them all."""
    registry = [e for e in bundle.events if e.signature is None]
    if not registry or not spec.is_trusted_importer(key.public_key):
        return []
    covered = {e.canonical_bytes() for e in held}
    since: dict[tuple[str, str], str] = {}

    def note(a: Mapping[str, str]) -> None:
        k = (a["alias_kind"], a["alias_value"])
        since[k] = min(since.get(k, a["created_at"]), a["created_at"])

    for a in held_aliases:
        note(a)
    for imp in bundle.events:
        if imp.event_type != "registry_import" or not imp.signature or accept(imp, spec):
            continue
        adm = admission_from_import(imp, spec)
        if adm is not None:
            covered.update(e.canonical_bytes() for e in adm.events)
            for a in adm.source_aliases:
                note(a)
    missing = [e for e in registry if e.canonical_bytes() not in covered]
    missing_aliases = [a for a in bundle.source_aliases
                       if since.get((a["alias_kind"], a["alias_value"]), "\uffff")
                       > a["created_at"]]
    if not missing and not missing_aliases:
        return []
    try:
        created_at = utc_timestamp(max(e.time_key for e in registry) // 1_000_000)
    except InputError as exc:
        raise DecodeError("bad_created_at", f"a registry event has an unusable created_at: "
                          f"{exc}") from exc
    return make_registry_imports(key, subject=bundle.pith_number, source=source,
                                 document=document, events=registry,
                                 source_aliases=bundle.source_aliases, created_at=created_at,
                                 signer_id=node_id)


class NodeSink(StoreSink):
    """Pulled bundles through the running daemon's ingest; new events go to gossip."""

    def __init__(self, node: PullNode, node_id: str) -> None:
        if node.store is None:
            raise PullError("the node is not running (no store)")
        super().__init__(node.store, node.key, node_id)
        self.node = node

    async def ingest_bundle(self, data: bytes, bundle: ParsedBundle, *,
                            source: str) -> IngestOutcome:
        held, held_aliases = await trio.to_thread.run_sync(self.store.admitted,
                                                           bundle.pith_number)
        try:
            atts = needed_attestations(self.key, node_id=self.node_id, spec=self.node.spec,
                                       source=source, document=data, bundle=bundle, held=held,
                                       held_aliases=held_aliases)
        except InputError as exc:
            return IngestOutcome(error=(exc.reason, str(exc)))
        events = [*atts, *(e for e in bundle.events if e.signature)]
        outcomes = await self.node.ingest(events, source=source)
        out = IngestOutcome(attestations=len(atts))
        new_ids = {o.event_id for o in outcomes if o.outcome == "new"}
        for o in outcomes:
            if o.outcome == "new":
                out.new += 1
            elif o.outcome == "duplicate":
                out.duplicate += 1
            else:
                out.rejected[o.reason or "unknown"] += 1
        fresh = [e for e in events if e.event_id in new_ids]
        if fresh:
            self.node.gossip.mark_seen([e.event_id for e in fresh])
            await self.node.gossip.publish([e.canonical_bytes() for e in fresh])
        return out


class PullSink(Protocol):
    async def known_records(self) -> list[str]: ...

    async def has_record(self, pith_number: str) -> bool: ...

    async def local_state_sha256(self, pith_number: str) -> str | None: ...

    async def unadmitted(self, bundle: ParsedBundle) -> int: ...

    async def ingest_bundle(self, data: bytes, bundle: ParsedBundle, *,
                            source: str) -> IngestOutcome: ...


# ---------------------------------------------------------------------------- the puller
Status = Literal["pulled", "not_modified", "failed", "absent"]


@dataclass(slots=True)
class RecordResult:
    ref: RecordRef
    status: Status = "failed"
    pith_number: str | None = None
    #: the document a failure is about, its failed check and what was wrong
    url: str | None = None
    check: str | None = None
    detail: str | None = None
    new: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    attestations: int = 0
    #: registry events of the record that no trusted attestation admits here
    not_admitted: int = 0
    #: this store's state of the record is the one served (None: not pulled)
    matches_source: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"record": self.ref.text, "status": self.status,
                "pith_number": self.pith_number, "url": self.url, "check": self.check,
                "detail": self.detail, "new": self.new, "duplicate": self.duplicate,
                "rejected": dict(self.rejected), "attestations": self.attestations,
                "registry_not_admitted": self.not_admitted,
                "matches_source": self.matches_source}


@dataclass(slots=True)
class PullSummary:
    requested: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    new: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    attestations: int = 0
    not_admitted: int = 0
    differing: int = 0
    failed_by: Counter[str] = field(default_factory=Counter)
    fetch: FetchStats = field(default_factory=FetchStats)
    results: list[RecordResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.by_status["failed"]

    def add(self, r: RecordResult, *, keep: bool) -> None:
        self.by_status[r.status] += 1
        self.new += r.new
        self.duplicate += r.duplicate
        self.rejected.update(r.rejected)
        self.attestations += r.attestations
        self.not_admitted += r.not_admitted
        self.differing += int(r.matches_source is False)
        if r.status == "failed" and r.check is not None:
            self.failed_by[r.check] += 1
        if keep:
            self.results.append(r)

    def to_json(self) -> dict[str, Any]:
        f = self.fetch
        return {"records_requested": self.requested, "records_pulled": self.by_status["pulled"],
                "records_not_modified": self.by_status["not_modified"],
                "records_failed": self.failed, "records_not_at_source": self.by_status["absent"],
                "documents_fetched": f.bodies, "documents_not_modified": f.not_modified,
                "bytes_fetched": f.bytes, "requests": f.requests, "retries": f.retries,
                "events_new": self.new, "events_duplicate": self.duplicate,
                "events_rejected": dict(self.rejected),
                "import_attestations_made": self.attestations,
                "registry_events_not_admitted": self.not_admitted,
                "states_differing_from_source": self.differing,
                "failed_by_check": dict(self.failed_by)}


class Puller:
    """Pulls records from one source at a time into a sink, ``concurrency`` at once."""

    def __init__(self, fetcher: Fetcher, sink: PullSink, spec: NetworkSpec, cache: PullCache,
                 *, force: bool = False, keep_results: bool = True,
                 on_result: Callable[[RecordResult], None] | None = None) -> None:
        self.fetcher = fetcher
        self.sink = sink
        self.spec = spec
        self.cache = cache
        self.force = force
        self.keep_results = keep_results
        self.on_result = on_result

    async def pull(self, source: Source, refs: Sequence[RecordRef]) -> PullSummary:
        self.fetcher.stats = FetchStats()  # what this pull fetched (not the manifest)
        summary = PullSummary(requested=len(refs), fetch=self.fetcher.stats)
        send, receive = trio.open_memory_channel[RecordRef](0)  # full policy: block
        async with trio.open_nursery() as nursery:
            async with receive:
                for _ in range(max(1, min(self.fetcher.config.concurrency, len(refs)))):
                    nursery.start_soon(self._worker, source, receive.clone(), summary)
            async with send:
                for ref in refs:
                    await send.send(ref)
        return summary

    async def _worker(self, source: Source, refs: trio.MemoryReceiveChannel[RecordRef],
                      summary: PullSummary) -> None:
        async with refs:
            async for ref in refs:
                result = await self.pull_one(source, ref)
                summary.add(result, keep=self.keep_results)
                if self.on_result is not None:
                    self.on_result(result)

    async def pull_one(self, source: Source, ref: RecordRef) -> RecordResult:
        res = RecordResult(ref)
        try:
            await self._pull(source, ref, res)
        except DocumentFailed as exc:
            res.status = "absent" if ref.optional and exc.check == "not_found" else "failed"
            res.url, res.check, res.detail = exc.url, exc.check, exc.detail
        return res

    async def _get(self, url: str, *, conditional: bool) -> Fetched:
        use = self.cache if conditional and not self.force else None
        return await self.fetcher.get(url, limit=self.fetcher.config.max_document_bytes,
                                      cache=use)

    async def _pull(self, source: Source, ref: RecordRef, res: RecordResult) -> None:
        bundle = await self._get(source.bundle_url(ref.path), conditional=True)
        if bundle.body is not None:
            pith = _bundle_subject(bundle.body, bundle.url)
        else:
            entry = self.cache.get(bundle.url)
            if entry is None:
                raise DocumentFailed(bundle.url, "unexpected_304", "no remembered record")
            pith = entry.pith_number
        res.pith_number = pith
        state = await self._get(source.state_url(pith.rsplit(":", 1)[1]), conditional=True)
        if bundle.body is None and state.body is None:
            if await self.sink.has_record(pith):
                res.status = "not_modified"
                return
            bundle = await self._get(bundle.url, conditional=False)
            state = await self._get(state.url, conditional=False)
        elif bundle.body is None:
            bundle = await self._get(bundle.url, conditional=False)
        elif state.body is None:
            state = await self._get(state.url, conditional=False)
        assert bundle.body is not None and state.body is not None
        pair = await trio.to_thread.run_sync(partial(
            verify_pair, bundle.body, state.body, self.spec, ref, bundle_url=bundle.url,
            state_url=state.url))
        outcome = await self.sink.ingest_bundle(bundle.body, pair.bundle, source=bundle.url)
        if outcome.error is not None:
            raise DocumentFailed(bundle.url, outcome.error[0], outcome.error[1])
        res.pith_number = pair.bundle.pith_number
        res.status = "pulled"
        res.new, res.duplicate, res.rejected = outcome.new, outcome.duplicate, outcome.rejected
        res.attestations = outcome.attestations
        res.not_admitted = await self.sink.unadmitted(pair.bundle)
        res.matches_source = await self.sink.local_state_sha256(
            pair.bundle.pith_number) == pair.state_sha256
        for doc in (bundle, state):
            self.cache.put(doc.url, doc.etag, doc.last_modified, pair.bundle.pith_number)


def dedupe(refs: Sequence[RecordRef]) -> list[RecordRef]:
    """First occurrence of each (kind, value); a named record beats an optional one."""
    out: dict[tuple[str, str], RecordRef] = {}
    for r in refs:
        key = (r.kind, r.value)
        if key not in out or (out[key].optional and not r.optional):
            out[key] = r
    return list(out.values())


# ---------------------------------------------------------------------------- the daemon's service
def default_node_id(key: SigningKey) -> str:
    """``signer_id`` of import attestations (the same as ``pithnode import`` uses)."""
    return f"pithnode:{key.fingerprint[:16]}"


async def run_scheduled_pull(
    node: PullNode,
    sources: Sequence[str],
    interval_s: float,
    records: Sequence[str],
    *,
    all_known: bool = True,
    config: FetchConfig | None = None,
    on_round: Callable[[str, PullSummary | None], None] | None = None,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Pull from every source now, then every ``interval_s`` seconds, until cancelled.

    Each round pulls ``records`` and (``all_known``) every record the store already holds,
    verifies everything like ``pithnode pull`` and ingests through ``node.ingest``; events
    new to the node are handed to gossip. A source that cannot be used is logged and retried
    next round. ``on_round(source, summary)`` is called after each source (None: unusable).
    """
    try:
        refs = [parse_record_ref(r) for r in records]
        for s in sources:
            check_source(s)
    except (InputError, SourceError) as exc:
        raise PullError(f"[pull] in the node config: {exc}") from exc
    cache, warning = await trio.to_thread.run_sync(PullCache.load, node.data_dir / CACHE_FILE)
    if warning:
        log.warning("%s", warning)
    sink = NodeSink(node, default_node_id(node.key))
    async with open_fetcher(config or FetchConfig()) as fetcher:
        task_status.started()
        while True:
            for text in sources:
                summary = await _scheduled_round(fetcher, sink, node.spec, cache, text, refs,
                                                 all_known)
                if on_round is not None:
                    on_round(text, summary)
            try:
                await trio.to_thread.run_sync(cache.save)
            except OSError as exc:
                log.warning("cannot write %s: %s", cache.path, exc.strerror or exc)
            await trio.sleep(interval_s)


async def _scheduled_round(fetcher: Fetcher, sink: NodeSink, spec: NetworkSpec,
                           cache: PullCache, text: str, refs: Sequence[RecordRef],
                           all_known: bool) -> PullSummary | None:
    try:
        source = await resolve_source(fetcher, text)
        wanted = list(refs)
        if all_known:
            wanted += [RecordRef(p, "pith", p, optional=True)
                       for p in await sink.known_records()]
        summary = await Puller(fetcher, sink, spec, cache, keep_results=False,
                               on_result=_log_failure).pull(source, dedupe(wanted))
    except SourceError as exc:
        log.warning("scheduled pull from %s: %s", text, exc)
        return None
    except StoreError as exc:  # e.g. the store closing at shutdown: try again next round
        log.error("scheduled pull from %s stopped: %s", text, exc)
        return None
    s = summary
    log.info("pulled from %s: %d records pulled, %d not modified, %d failed, %d new events",
             text, s.by_status["pulled"], s.by_status["not_modified"], s.failed, s.new)
    return summary


def _log_failure(r: RecordResult) -> None:
    if r.status == "failed":
        log.info("pull of %s failed: %s: %s", r.ref.text, r.url, r.check)
