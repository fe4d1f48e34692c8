"""Opening, creating and upgrading the store's SQLite database.

The schema lives in ``storage/schema/NNNN_name.sql`` (package data), one file per version;
``PRAGMA user_version`` holds the version a database is at. A new database is built in a
temporary file beside the target and renamed into place, so a crash never leaves a
half-made store. A database at a version newer than the code knows is refused.
"""

from __future__ import annotations

import errno
import importlib.resources
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import NotAStore, SchemaTooNew, StoreCorrupt, StoreError, StoreFull, StoreIOError

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_MS",
    "SchemaStep",
    "connect",
    "create_atomically",
    "schema_steps",
    "schema_version",
    "translate",
    "upgrade",
]

log = logging.getLogger(__name__)

#: ``PRAGMA application_id`` of a pithnode store: "PITH".
APPLICATION_ID = int.from_bytes(b"PITH", "big")
#: How long a connection waits for another connection's lock before failing.
BUSY_TIMEOUT_MS = 10_000
#: The WAL file is truncated back to this size after checkpoints.
JOURNAL_SIZE_LIMIT = 64 << 20
#: Page cache of the write connection and of each read connection, in KiB (negative
#: cache_size means KiB). Small: the OS page cache holds the file anyway, and every read
#: connection of the pool keeps its own cache, which counts in the process' memory.
CACHE_KIB = 4 << 10
READ_CACHE_KIB = 1 << 10
_STEP_RE = re.compile(r"([0-9]{4})_[a-z0-9_]+\.sql")


@dataclass(frozen=True, slots=True)
class SchemaStep:
    version: int
    name: str
    sql: str


@cache
def schema_steps() -> tuple[SchemaStep, ...]:
    """The numbered upgrade files, in order; versions must run 1, 2, 3, ... without gaps."""
    folder = importlib.resources.files("pithnode.storage") / "schema"
    steps = []
    for entry in folder.iterdir():
        m = _STEP_RE.fullmatch(entry.name)
        if m:
            steps.append(SchemaStep(int(m.group(1)), entry.name, entry.read_text("utf-8")))
    steps.sort(key=lambda s: s.version)
    if [s.version for s in steps] != list(range(1, len(steps) + 1)):
        raise StoreError(f"schema files are not numbered 1..n: {[s.name for s in steps]}")
    return tuple(steps)


def schema_version() -> int:
    """The newest schema version this code knows."""
    return schema_steps()[-1].version


def translate(exc: sqlite3.Error, what: str) -> StoreError:
    """Our exception for a ``sqlite3`` one (raise it ``from exc``)."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database"
                                                   in text):
        return StoreCorrupt(f"{what}: the database is damaged ({text})")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StoreIOError(f"{what}: the database stayed locked ({text})",
                            hint="another process holds a long transaction; try again")
    # sqlite3 sets the code on the errors it raises (SQLITE_FULL: "database or disk is full")
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in text:
        return StoreFull(f"{what}: {text}")
    return StoreIOError(f"{what}: {text}")


#: ``errno`` values that mean "no room" (disk full, quota, file size limit).
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def translate_os(exc: OSError, what: str) -> StoreIOError:
    """Our exception for an OS error of the store's files (raise it ``from exc``)."""
    text = f"{what}: {exc.strerror or exc}"
    return StoreFull(text) if exc.errno in NO_ROOM_ERRNOS else StoreIOError(text)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with our pragmas: WAL, synchronous=FULL, foreign keys, busy timeout.

    ``synchronous=FULL`` in WAL mode fsyncs the WAL at every commit, so a batch whose
    outcomes were returned survives a power cut, not only a crash of the process.
    Connections are in autocommit mode; the store issues BEGIN/COMMIT itself.
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB if readonly else CACHE_KIB}")
        conn.execute("PRAGMA temp_store = MEMORY")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    except sqlite3.Error as exc:
        raise translate(exc, f"cannot open {path}") from exc
    return conn


def _check_identity(conn: sqlite3.Connection, path: Path) -> int:
    """The database's schema version, after checking it is ours and not too new."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if app_id != APPLICATION_ID:
        raise NotAStore(f"{path} is not a pithnode store (application id {app_id:#x})")
    if version > schema_version():
        raise SchemaTooNew(str(path), version, schema_version())
    return version


def upgrade(conn: sqlite3.Connection, path: Path, *, fresh: bool = False) -> int:
    """Bring the database up to :func:`schema_version`, one transaction per step."""
    try:
        current = 0 if fresh else _check_identity(conn, path)
        for step in schema_steps():
            if step.version <= current:
                continue
            log.info("upgrading %s to schema %d (%s)", path.name, step.version, step.name)
            try:
                conn.executescript(f"BEGIN IMMEDIATE;\n{step.sql}\n"
                                   f"PRAGMA user_version = {step.version};\nCOMMIT;")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            current = step.version
    except sqlite3.Error as exc:
        raise translate(exc, f"cannot upgrade {path}") from exc
    return current


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_atomically(path: Path) -> None:
    """Create a new store database at ``path``: build it aside, then rename it into place.

    The caller holds the store lock, so no other process races this creation.
    """
    tmp = path.with_name(f".{path.name}.new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm"),
                     tmp.with_name(tmp.name + "-journal")):
        leftover.unlink(missing_ok=True)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            upgrade(conn, path, fresh=True)
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise translate(exc, f"cannot create {path}") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise translate_os(exc, f"cannot create {path}") from exc
    except StoreError:
        tmp.unlink(missing_ok=True)
        raise
