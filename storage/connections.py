"""The store's write lock, its pool of read-only connections and its WAL checkpointer."""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SchemaTooNew, StoreClosed, StoreError, StoreIOError, StoreLocked
from .migrate import connect, schema_version, translate, translate_os

__all__ = ["CHECKPOINT_DELAY_S", "WRITER_AUTOCHECKPOINT_PAGES", "ReaderPool", "WalCheckpointer",
           "acquire_lock", "lock_path"]

log = logging.getLogger(__name__)

#: A commit leaves the copying of its WAL frames into the database to the checkpointer
#: thread, which waits this long after a commit so that one checkpoint serves a run of
#: commits (a page changed by several of them is copied once).
CHECKPOINT_DELAY_S = 0.2
#: WAL pages at which the write connection checkpoints by itself, in the commit: only
#: when the checkpointer falls far behind (4 KiB pages: 64 MiB).
WRITER_AUTOCHECKPOINT_PAGES = 16_384


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


class WalCheckpointer:
    """Copies committed WAL frames into the database on a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses its threshold, so a
    writer waits for it (tens of milliseconds for a batch of events, whose random ids touch
    pages all over the indexes). A PASSIVE checkpoint on another connection runs beside
    the writer and the readers instead, and releases the GIL while it copies. The write
    connection keeps a high threshold of its own (:data:`WRITER_AUTOCHECKPOINT_PAGES`)
    for when this thread falls behind. Durability is unchanged: every commit has fsynced
    its WAL frames before it returns.
    """

    def __init__(self, path: Path, *, delay_s: float = CHECKPOINT_DELAY_S) -> None:
        self.path = path
        self.delay_s = delay_s
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: checkpoints run, and WAL frames they copied (for tests and metrics)
        self.runs = 0
        self.frames = 0

    def committed(self) -> None:
        """Note a commit: a checkpoint follows within ``delay_s``."""
        with self._lock:
            if self._stopped.is_set():
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="store-checkpoint",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running); idempotent. The last
        connection to close checkpoints whatever is left."""
        with self._lock:
            self._stopped.set()
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            # close() sets _stopped before _wake: a clear() of _wake that follows close()
            # is seen by the check at the top, so the thread never waits after a close
            while not self._stopped.is_set():
                self._wake.wait()
                if self._stopped.wait(self.delay_s):
                    return
                self._wake.clear()
                try:
                    if conn is None:
                        conn = connect(self.path)
                    _, _, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.runs += 1
                    self.frames += max(0, int(copied))
                except sqlite3.Error as exc:  # the writer's own checkpoints take over
                    log.warning("checkpoint of %s failed: %s", self.path.name, exc)
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()
