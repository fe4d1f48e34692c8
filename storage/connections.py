"""The store's write lock and its pool of read-only connections."""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SchemaTooNew, StoreClosed, StoreError, StoreIOError, StoreLocked
from .migrate import connect, schema_version, translate, translate_os

__all__ = ["ReaderPool", "acquire_lock", "lock_path"]


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def acquire_lock(path: Path) -> int:
    """Take the write lock of the store at ``path`` (``flock`` on ``<db>.lock``).

    Returns the lock file's descriptor; closing it (or the process dying) releases the lock.
    Raises :class:`StoreLocked`, naming the holder's pid, when another process has it.
    """
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise translate_os(exc, f"cannot create the lock file {lock}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StoreLocked(f"the store {path} is in use by another pithnode process "
                          f"(pid {holder})") from None
    except OSError as exc:
        os.close(fd)
        raise StoreIOError(f"cannot lock {lock}: {exc.strerror or exc}") from exc
    try:  # the holder's pid, for the message of the next process that finds it locked
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise translate_os(exc, f"cannot write the lock file {lock}") from exc
    return fd


class ReaderPool:
    """Read-only connections (``query_only``), made on demand and reused by any thread.

    WAL mode lets them read a consistent snapshot while the write connection commits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _get(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        conn = connect(self.path, readonly=True)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, f"cannot read {self.path}") from exc
        if version != schema_version():
            conn.close()
            if version > schema_version():
                raise SchemaTooNew(str(self.path), version, schema_version())
            raise StoreError(f"{self.path} is at schema version {version}; this pithnode "
                             f"needs {schema_version()}",
                             hint="open the store once for writing to upgrade it")
        with self._lock:
            if self._closed:
                conn.close()
                raise StoreClosed("the store is closed")
            self._all.append(conn)
        return conn

    @contextmanager
    def read(self, what: str, *, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection for one read; ``snapshot`` keeps all its queries on one snapshot.

        ``sqlite3`` errors become store errors whose message starts with ``what``. A read
        that ends in an exception closes its connection instead of returning it to the
        pool: a cursor the exception's traceback keeps alive (one raised from mid-way
        through its rows, e.g. at a damaged object) holds a read snapshot open, which is
        invisible to ``in_transaction`` outside a ``BEGIN``, and every later read on the
        connection would see the store as it was then (a repair's deletions, for one).
        """
        if self._closed:
            raise StoreClosed("the store is closed")
        conn = self._get()
        reusable = False
        try:
            if snapshot:
                conn.execute("BEGIN")
            yield conn
            reusable = True
        except sqlite3.Error as exc:
            raise translate(exc, what) from exc
        finally:
            if reusable and conn.in_transaction:
                conn.execute("ROLLBACK")
            if reusable and not self._closed:
                self._idle.put(conn)
            else:
                self._discard(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        conn.close()  # statements still referenced are finalised when their cursors go

    def check(self) -> None:
        """Open one connection now (so a missing or foreign database fails early)."""
        with self.read("cannot open the store"):
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
