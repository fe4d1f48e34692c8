"""Exceptions of the storage package.

One root, :class:`StoreError`. Every ``sqlite3`` and OS error the store meets is translated
at the boundary into one of the leaves below (``raise ... from exc``), so callers never see
a foreign exception. Each error carries a ``hint``: the fix, written for the user.
"""

from __future__ import annotations

__all__ = [
    "BatchTooLarge",
    "NotAStore",
    "SchemaTooNew",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreIOError",
    "StoreLocked",
    "StoreMissing",
]


class StoreError(Exception):
    """Root of every exception raised by ``pithnode.storage``."""

    default_hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint if hint is not None else self.default_hint


class SchemaTooNew(StoreError):
    """The database was written by a newer pithnode (its schema version is unknown to us)."""

    default_hint = "upgrade pithnode, or use another --data-dir"

    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(f"{path} has schema version {found}, but this pithnode knows schema "
                         f"versions up to {known}")
        self.found = found
        self.known = known


class StoreLocked(StoreError):
    """Another process holds the store's write lock."""

    default_hint = "stop the other pithnode process, or use another --data-dir"


class StoreMissing(StoreError):
    """A read-only open of a store that does not exist."""

    default_hint = "import something first ('pithnode import'), or check --data-dir"


class NotAStore(StoreError):
    """The file exists but is not a pithnode store (another application's database)."""

    default_hint = "point --data-dir at a pithnode data directory"


class StoreCorrupt(StoreError):
    """Stored bytes or indexes are inconsistent (a damaged object, a broken database)."""

    default_hint = "run 'pithnode fsck', then 'pithnode fsck --repair'"


class StoreIOError(StoreError):
    """The database could not be read or written (disk full, permissions, I/O error)."""

    default_hint = "check free disk space and the permissions of the data directory"


class StoreFull(StoreIOError):
    """No room to write: the disk (or the quota, or the file size limit) under the store is
    full. Nothing of the failed write is stored; the store takes writes again once there is
    room, without a restart."""

    default_hint = "free disk space under the data directory (or give it a larger disk)"


class StoreClosed(StoreError):
    """The store (or the service in front of it) is closed."""


class BatchTooLarge(StoreError):
    """An ingest batch over ``MAX_BATCH_EVENTS`` events or ``MAX_BATCH_BYTES`` bytes (our bug:
    callers split their input with :meth:`Store.ingest_many`)."""
