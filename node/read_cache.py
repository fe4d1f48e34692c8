"""What the node serves most, kept in memory: served documents of records, and the
identifiers that were resolved to them.

:class:`ReadCache` sits in :class:`~pithnode.node.store_service.StoreService` and is used only
on the trio thread (it takes no locks), so a lookup it answers costs no worker thread and no
SQLite read. Two maps, each a bounded LRU:

* documents, by kind and Pith Number: a record's state (the fields of
  :class:`~pithnode.storage.results.StoredState`) and its served bundle, bounded by bytes
  (``max_bytes``, counted as the document's length plus ``DOCUMENT_OVERHEAD`` per entry); a
  document over ``max_bytes // MAX_ENTRY_FRACTION`` is not kept, so one large bundle cannot
  flush the cache.
* names, by the identifier exactly as asked (an arXiv id, a DOI, a short form, a bare
  suffix): the Pith Number it resolved to, bounded by count (``max_names``, about
  ``NAME_BYTES`` each); identifiers longer than ``MAX_NAME_CHARS`` are not kept. A full Pith
  Number spelt as the store spells it needs no name: it can only name the record whose Pith
  Number it is (the store resolves it in the records table, exactly).

A state the store keeps compressed is kept in the cache as the store's blob (about a third
of its size: three times the records in the same ``max_bytes``) when its served form is at
most ``MAX_INFLATE_BYTES``, and inflated on each hit (tens of microseconds for a typical
state, on the trio thread); a larger one is kept as served bytes. ``max_bytes`` counts what
is held.

So the cache holds at most about ``max_bytes + max_names * NAME_BYTES`` (tests measure it).
Entries are tuples of strings, bytes and integers, which the cyclic garbage collector stops
tracking: a cache of 100,000 states adds nothing to the collector's full passes, which would
otherwise stall the trio thread for hundreds of milliseconds.

Invalidation is exact. The store changes a record's state, bundle and aliases only when an
ingest commit (or a repair) touches that record. After each commit the store service calls
:meth:`ReadCache.invalidate` with the touched records and the alias keys those records now
have, before anyone waiting for the commit resumes: it drops their documents, every name
that resolved to them, and every name whose normalised key is one of their aliases (a newer
alias can take a name over from another record). Resolution of a name can change in no
other way: alias rows of untouched records did not change.

A fill races with commits: a worker thread may read a state, a commit may replace it, and
the fill may arrive after the invalidation. So every fill carries the ``ticket`` (the
generation) read before its store read began, and every invalidation starts a new
generation; a fill with an older ticket is still served to its caller but not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TypeVar, cast

from pithnode.protocol.errors import InputError
from pithnode.protocol.identifiers import normalise_alias
from pithnode.storage.codec import CODEC_DEFLATE, CODEC_RAW, decode_bytes
from pithnode.storage.results import StoredState

from .api import Served

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_NAMES",
    "DOCUMENT_OVERHEAD",
    "MAX_ENTRY_FRACTION",
    "MAX_INFLATE_BYTES",
    "MAX_NAME_CHARS",
    "NAME_BYTES",
    "CacheLimits",
    "CacheStats",
    "ReadCache",
]

DEFAULT_MAX_BYTES = 128 << 20
DEFAULT_MAX_NAMES = 65_536
#: Bytes counted per document beside its data: the entry tuple, its key and the state's
#: strings (measured: about 560).
DOCUMENT_OVERHEAD = 640
#: A document larger than ``max_bytes // MAX_ENTRY_FRACTION`` is served but not kept.
MAX_ENTRY_FRACTION = 16
#: A compressed state larger than this, served, is cached inflated (so no hit inflates more).
MAX_INFLATE_BYTES = 64 << 10
#: Longer identifiers are resolved every time (names hold at most this many characters).
MAX_NAME_CHARS = 128
#: Memory of one name with its index entries, measured for a 40-character identifier.
NAME_BYTES = 600

AliasKey = tuple[str, str]
K = TypeVar("K")
#: (size, pith_number, held bytes, codec of the held bytes, served size, state_sha256,
#: fingerprint, stored_events, event_count, valid_count, invalid_count, equivocation_count)
_StateEntry = tuple[int, str, bytes, int, int, str, str, int, int, int, int, int]
#: (size, pith_number, data, etag)
_BundleEntry = tuple[int, str, bytes, str]
#: (pith_number, alias kind, alias value)
_Name = tuple[str, str, str]
_STATE, _BUNDLE = "S", "B"  # document keys: kind letter + Pith Number


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """Bounds of a :class:`ReadCache`; ``max_bytes = 0`` turns the cache off."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_names: int = DEFAULT_MAX_NAMES

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_names < 0:
            raise ValueError("cache limits must be >= 0")


@dataclass(slots=True)
class CacheStats:
    """Counters of a cache (exported as metrics; read by tests)."""

    hits: int = 0
    misses: int = 0
    #: fills dropped because a commit may have overlapped their read
    stale_fills: int = 0
    evictions: int = 0
    #: documents dropped because a commit touched their record
    invalidated: int = 0


class ReadCache:
    """Documents and names of records (see the module docstring). Trio thread only."""

    def __init__(self, limits: CacheLimits | None = None) -> None:
        self.limits = limits if limits is not None else CacheLimits()
        self.stats = CacheStats()
        self._generation = 0
        self._docs: OrderedDict[str, _StateEntry | _BundleEntry] = OrderedDict()
        self._bytes = 0
        self._names: OrderedDict[str, _Name] = OrderedDict()
        self._names_of: dict[str, tuple[str, ...]] = {}  # Pith Number -> names of it
        self._names_by_key: dict[AliasKey, tuple[str, ...]] = {}  # alias key -> names
        self._max_entry = self.limits.max_bytes // MAX_ENTRY_FRACTION

    # -- figures ---------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        """Bytes counted against ``max_bytes`` (documents and their overhead)."""
        return self._bytes

    @property
    def documents(self) -> int:
        return len(self._docs)

    @property
    def names(self) -> int:
        return len(self._names)

    @property
    def ticket(self) -> int:
        """Take before a store read; give to the fill that keeps its result."""
        return self._generation

    # -- lookups -----------------------------------------------------------------------------
    def pith_of(self, identifier: str) -> str | None:
        """The Pith Number ``identifier`` resolved to, if known."""
        name = self._names.get(identifier)
        if name is not None:
            self._names.move_to_end(identifier)
            return name[0]
        if _STATE + identifier in self._docs or _BUNDLE + identifier in self._docs:
            return identifier  # a stored record's own Pith Number
        return None

    def state(self, identifier: str) -> StoredState | None:
        """The state of the record ``identifier`` names, if held (counts a hit or miss)."""
        e = cast(_StateEntry | None, self._lookup(_STATE, identifier))
        return None if e is None else StoredState(e[1], _served(e), *e[5:])

    def served_state(self, identifier: str) -> Served | None:
        """The served state document of the record ``identifier`` names, if held."""
        e = cast(_StateEntry | None, self._lookup(_STATE, identifier))
        return None if e is None else Served(e[1], _served(e), e[5])

    def bundle(self, identifier: str) -> Served | None:
        e = cast(_BundleEntry | None, self._lookup(_BUNDLE, identifier))
        return None if e is None else Served(e[1], e[2], e[3])

    def peek_state(self, identifier: str) -> Served | None:
        """``served_state``, but a miss is not counted (the caller asks again on a miss)."""
        e = cast(_StateEntry | None, self._lookup(_STATE, identifier, count_miss=False))
        return None if e is None else Served(e[1], _served(e), e[5])

    def peek_bundle(self, identifier: str) -> Served | None:
        e = cast(_BundleEntry | None, self._lookup(_BUNDLE, identifier, count_miss=False))
        return None if e is None else Served(e[1], e[2], e[3])

    def _lookup(self, kind: str, identifier: str, *, count_miss: bool = True
                ) -> _StateEntry | _BundleEntry | None:
        name = self._names.get(identifier)
        key = kind + (identifier if name is None else name[0])
        entry = self._docs.get(key)
        if entry is None:
            self.stats.misses += count_miss
            return None
        if name is not None:
            self._names.move_to_end(identifier)
        self._docs.move_to_end(key)
        self.stats.hits += 1
        return entry

    # -- fills -------------------------------------------------------------------------------
    def put_name(self, ticket: int, identifier: str, pith_number: str) -> None:
        """Remember that ``identifier`` resolved to ``pith_number`` (read under ``ticket``)."""
        if ticket != self._generation:
            self.stats.stale_fills += 1
            return
        self._remember(identifier, pith_number)

    def put_state(self, ticket: int, identifier: str, st: StoredState) -> None:
        held, codec = st.data, CODEC_RAW
        if (st.stored_codec == CODEC_DEFLATE and st.stored_blob
                and len(st.data) <= MAX_INFLATE_BYTES):
            held, codec = st.stored_blob, CODEC_DEFLATE
        size = len(held) + DOCUMENT_OVERHEAD
        entry: _StateEntry = (size, st.pith_number, held, codec, len(st.data),
                              st.state_sha256, st.fingerprint, st.stored_events,
                              st.event_count, st.valid_count, st.invalid_count,
                              st.equivocation_count)
        self._put(ticket, identifier, _STATE, st.pith_number, entry)

    def put_bundle(self, ticket: int, identifier: str, bundle: Served) -> None:
        size = len(bundle.data) + DOCUMENT_OVERHEAD
        entry: _BundleEntry = (size, bundle.pith_number, bundle.data, bundle.etag)
        self._put(ticket, identifier, _BUNDLE, bundle.pith_number, entry)

    def _put(self, ticket: int, identifier: str, kind: str, pith_number: str,
             entry: _StateEntry | _BundleEntry) -> None:
        if ticket != self._generation:
            self.stats.stale_fills += 1
            return
        self._remember(identifier, pith_number)
        size = entry[0]
        if size > self._max_entry:
            return
        key = kind + pith_number
        old = self._docs.pop(key, None)
        if old is not None:
            self._bytes -= old[0]
        self._docs[key] = entry
        self._bytes += size
        while self._bytes > self.limits.max_bytes:
            _, dropped = self._docs.popitem(last=False)
            self._bytes -= dropped[0]
            self.stats.evictions += 1

    def _remember(self, identifier: str, pith_number: str) -> None:
        if (identifier == pith_number or self.limits.max_names == 0
                or len(identifier) > MAX_NAME_CHARS):
            return
        old = self._names.get(identifier)
        if old is not None:
            if old[0] == pith_number:
                self._names.move_to_end(identifier)
                return
            self._forget_name(identifier)
        try:
            kind, value = normalise_alias(identifier)
        except InputError:  # it resolved, so it is an identifier; keep nothing if not
            return
        self._names[identifier] = (pith_number, kind, value)
        _index(self._names_of, pith_number, identifier)
        _index(self._names_by_key, (kind, value), identifier)
        while len(self._names) > self.limits.max_names:
            self._forget_name(next(iter(self._names)))

    def _forget_name(self, identifier: str) -> None:
        pith_number, kind, value = self._names.pop(identifier)
        _unindex(self._names_of, pith_number, identifier)
        _unindex(self._names_by_key, (kind, value), identifier)

    # -- invalidation ------------------------------------------------------------------------
    def invalidate(self, records: Collection[str], alias_keys: Iterable[AliasKey] | None
                   ) -> None:
        """A commit touched ``records``, which now have ``alias_keys``; None: their aliases
        are unknown, so every name is dropped."""
        self._generation += 1
        if not records:
            return
        for pith in records:
            for kind in (_STATE, _BUNDLE):
                entry = self._docs.pop(kind + pith, None)
                if entry is not None:
                    self._bytes -= entry[0]
                    self.stats.invalidated += 1
            for identifier in self._names_of.get(pith, ()):
                self._forget_name(identifier)
        if alias_keys is None:
            self._clear_names()
            return
        for key in alias_keys:
            for identifier in self._names_by_key.get(key, ()):
                self._forget_name(identifier)

    def clear(self) -> None:
        """Forget everything (a repair rebuilt the store)."""
        self._generation += 1
        self.stats.invalidated += len(self._docs)
        self._docs.clear()
        self._bytes = 0
        self._clear_names()

    def _clear_names(self) -> None:
        self._names.clear()
        self._names_of.clear()
        self._names_by_key.clear()


def _served(entry: _StateEntry) -> bytes:
    """The served bytes of a state entry (inflated if held compressed; the store checked
    them against their SHA-256 when it read them)."""
    if entry[3] == CODEC_RAW:
        return entry[2]
    return decode_bytes(entry[3], entry[2], entry[4])


def _index(index: dict[K, tuple[str, ...]], key: K, identifier: str) -> None:
    index[key] = (*index.get(key, ()), identifier)


def _unindex(index: dict[K, tuple[str, ...]], key: K, identifier: str) -> None:
    held = tuple(i for i in index[key] if i != identifier)
    if held:
        index[key] = held
    else:
        del index[key]
