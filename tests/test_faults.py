"""Faults of the machine under a node: a full disk and a read-only data directory.

The data directory sits on a small tmpfs mounted for the test (``mount -t tmpfs -o size=N``;
the test runs as root, as in CI) and remounted read-only or larger as each test needs. Without
the right to mount, the full disk is simulated with ``RLIMIT_FSIZE`` in the child process
and the read-only tests are skipped (root ignores file modes, so ``chmod`` proves nothing).

Every test checks what the operator sees (one ``error:`` line, no traceback, a non-zero exit
code), that the store is clean under ``pithnode fsck`` afterwards, and that nothing the node
acknowledged (``--progress jsonl`` lines of an import, ``new``/``duplicate`` outcomes of
``events.submit``) is missing from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pithnode.node.query_socket import RpcError, call_sync
from pithnode.protocol.events import Event
from pithnode.storage.store import Store

from .corpus import Keys, bulk_events, corpus, jsonl, net_spec, net_toml

pytestmark = pytest.mark.slow

#: The ``pithnode`` command itself (its entry point, with its mapping of errors to lines).
PITHNODE = (sys.executable, "-c", "from pithnode.node.cli import entry; entry()")
KEYS = Keys.make("faults")
SPEC = net_spec(KEYS, KEYS.node)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Corpus:
    registry: list[Event]
    natives: list[Event]

    def lines(self) -> bytes:
        return jsonl(self.registry) + jsonl(self.natives)


def make_corpus(records: int, per_record: int) -> Corpus:
    recs = corpus(KEYS, records)
    natives = [e for r in recs for e in r.natives] + bulk_events(KEYS, recs, per_record)
    return Corpus([e for r in recs for e in r.registry], natives)


# ---------------------------------------------------------------------------- the disk


class Disk:
    """A small file system for one test: a tmpfs, or (without the right to mount) a plain
    directory whose children get ``RLIMIT_FSIZE``."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        path.mkdir()
        self.mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True, check=False).returncode == 0

    def remount(self, *options: str) -> None:
        assert self.mounted
        subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(self.path)],
                       check=True, capture_output=True)

    def grow(self, size: int) -> None:
        if self.mounted:
            self.remount(f"size={size}")
        self.size = size

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
            self.mounted = False

    def preexec(self) -> Callable[[], None] | None:
        """For the child: without a tmpfs, files may not grow past the disk size."""
        if self.mounted:
            return None
        size = self.size

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

        return limit


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: int) -> Iterator[Disk]:
    disk = Disk(tmp_path / "disk", size)
    try:
        yield disk
    finally:
        disk.unmount()


def read_only(disk: Disk) -> None:
    if not disk.mounted:
        pytest.skip("cannot mount here: a read-only data directory cannot be made for root")
    disk.remount("ro")


def data_dir(disk: Disk) -> Path:
    d = disk.path / "data"
    d.mkdir()
    (d / "node.key").write_bytes(KEYS.node.to_file_bytes())
    (d / "network.toml").write_text(net_toml(KEYS, KEYS.node), "utf-8")
    return d


def fill(disk: Disk) -> None:
    """Take every free byte of the disk (a tmpfs only)."""
    assert disk.mounted
    with open(disk.path / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


# ---------------------------------------------------------------------------- the CLI


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(*args: str, disk: Disk | None = None, timeout: float = 120.0) -> Run:
    proc = subprocess.run([*PITHNODE, *args], capture_output=True,
                          text=True, timeout=timeout,
                          preexec_fn=disk.preexec() if disk else None, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(run: Run, *words: str) -> None:
    lines = run.err.strip().splitlines()
    assert run.code != 0, run
    assert "Traceback" not in run.err, run.err
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err
    assert any(w in lines[0] for w in words), (words, lines[0])


def committed(out: str) -> int:
    """Lines the import reported committed (``--progress jsonl``)."""
    n = 0
    for line in out.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            n = max(n, int(json.loads(line).get("committed", 0)))
    return n


def stored_ids(directory: Path, ids: Sequence[str]) -> set[str]:
    with Store(directory / "store.sqlite", SPEC, readonly=True) as store:
        return {e.event_id for e in store.events_by_ids(list(ids))}


def assert_fsck_clean(directory: Path) -> None:
    run = cli("fsck", "--data-dir", str(directory))
    assert run.code == 0 and "clean" in run.out, run


NO_SPACE = ("disk is full", "No space left", "File too large", "disk I/O error")


# ---------------------------------------------------------------------------- import


def test_import_onto_a_full_disk_fails_in_one_line_and_keeps_what_it_committed(
        tmp_path: Path) -> None:
    data = make_corpus(30, 60)  # ~1.4 MB of JSON Lines, more than the disk holds
    source = tmp_path / "events.jsonl"
    source.write_bytes(data.lines())
    with small_disk(tmp_path, 2 << 20) as disk:
        d = data_dir(disk)
        run = cli("import", "--data-dir", str(d), "--progress", "jsonl", "--batch-size", "50",
                  str(source), disk=disk)
        assert_one_line_error(run, *NO_SPACE)
        n = committed(run.out)
        assert 0 < n < len(data.registry) + len(data.natives), n
        assert_fsck_clean(d)
        # every native event of a committed line is stored (the registry lines come first
        # and are stored inside import attestations)
        acked = data.natives[:max(0, n - len(data.registry))]
        assert stored_ids(d, [e.event_id for e in acked]) == {e.event_id for e in acked}

        again = cli("import", "--data-dir", str(d), str(source), disk=disk)
        assert_one_line_error(again, *NO_SPACE)
        assert_fsck_clean(d)

        disk.grow(32 << 20)
        done = cli("import", "--data-dir", str(d), str(source), disk=disk)
        assert done.code == 0, done
        assert_fsck_clean(d)
        ids = [e.event_id for e in data.natives]
        assert stored_ids(d, ids) == set(ids)


def test_import_into_a_read_only_data_dir_fails_in_one_line(tmp_path: Path) -> None:
    data = make_corpus(5, 4)
    source = tmp_path / "events.jsonl"
    source.write_bytes(data.lines())
    with small_disk(tmp_path, 8 << 20) as disk:
        d = data_dir(disk)
        first = tmp_path / "first.jsonl"
        first.write_bytes(jsonl(data.registry) + jsonl(data.natives[:10]))
        assert cli("import", "--data-dir", str(d), str(first)).code == 0
        read_only(disk)
        run = cli("import", "--data-dir", str(d), str(source))
        assert_one_line_error(run, "Read-only file system")
        fresh = cli("import", "--data-dir", str(disk.path / "new"), str(source))
        assert_one_line_error(fresh, "Read-only file system")
        disk.remount("rw")
        assert_fsck_clean(d)
        ids = [e.event_id for e in data.natives]
        assert stored_ids(d, ids) == set(ids[:10])


# ---------------------------------------------------------------------------- run


class Daemon:
    """``pithnode run`` as a child process, its config and log outside the small disk."""

    def __init__(self, tmp_path: Path, directory: Path, disk: Disk | None = None) -> None:
        self.directory = directory
        self.config = tmp_path / "node.toml"
        self.config.write_text('[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n\n'
                               "[http]\nenabled = false\n", "utf-8")
        self.log = tmp_path / "node.log"
        self.disk = disk
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str | None:
        """The ready line, or None when the process exited first (its exit code is set)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*PITHNODE, "run", "--config", str(self.config),
                 "--data-dir", str(self.directory)], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log,
                preexec_fn=self.disk.preexec() if self.disk else None)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                assert left > 0, f"no ready line:\n{self.log_text()}"
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                    self.proc.stdout.close()
                    return None
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    @property
    def socket(self) -> Path:
        return self.directory / "node.sock"

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return call_sync(self.socket, method, params, timeout=CALL_TIMEOUT_S)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def log_text(self) -> str:
        return self.log.read_text("utf-8", errors="replace") if self.log.exists() else ""


def test_run_on_a_read_only_data_dir_fails_in_one_line(tmp_path: Path) -> None:
    data = make_corpus(5, 4)
    source = tmp_path / "events.jsonl"
    source.write_bytes(data.lines())
    with small_disk(tmp_path, 8 << 20) as disk:
        d = data_dir(disk)
        assert cli("import", "--data-dir", str(d), str(source)).code == 0
        read_only(disk)
        daemon = Daemon(tmp_path, d)
        assert daemon.start() is None
        assert daemon.proc is not None and daemon.proc.returncode == 2
        log = daemon.log_text()
        assert "Traceback" not in log, log
        errors = [line for line in log.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Read-only file system" in errors[0], log
        fresh = Daemon(tmp_path, disk.path / "fresh")
        assert fresh.start() is None
        assert "Traceback" not in fresh.log_text()
        disk.remount("rw")
        assert_fsck_clean(d)


def _submit_until_full(daemon: Daemon, events: Sequence[Event], batch: int
                       ) -> tuple[set[str], list[str]]:
    """Submit batches; the ids the node acknowledged and the errors it answered."""
    acked: set[str] = set()
    errors: list[str] = []
    for i in range(0, len(events), batch):
        part = events[i:i + batch]
        try:
            result = daemon.call("events.submit", {"events": [e.to_json() for e in part]})
        except RpcError as exc:
            errors.append(str(exc))
            continue
        acked |= {o["event_id"] for o in result["outcomes"]
                  if o["outcome"] in ("new", "duplicate")}
    return acked, errors


def test_run_on_a_full_disk_stays_up_and_loses_nothing_it_acknowledged(tmp_path: Path
                                                                      ) -> None:
    data = make_corpus(20, 40)
    with small_disk(tmp_path, 3 << 20) as disk:
        d = data_dir(disk)
        head = tmp_path / "head.jsonl"
        head.write_bytes(jsonl(data.registry) + jsonl(data.natives[:100]))
        assert cli("import", "--data-dir", str(d), str(head)).code == 0
        daemon = Daemon(tmp_path, d, disk)
        assert daemon.start() is not None, daemon.log_text()
        try:
            if disk.mounted:
                fill(disk)
            acked, errors = _submit_until_full(daemon, data.natives[100:], 50)
            assert errors, "the disk never filled up"
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()
            status = daemon.call("node.status")  # still answering
            assert status["events"] >= 100
            if disk.mounted:  # room again: the node takes events again, without a restart
                (disk.path / "filler").unlink()
                disk.grow(32 << 20)
                more, errors_after = _submit_until_full(daemon, data.natives[100:], 50)
                assert errors_after == [], errors_after
                acked |= more
        finally:
            daemon.stop(signal.SIGKILL)  # a crash: whatever was acknowledged must be there
        disk.grow(32 << 20)
        assert_fsck_clean(d)
        assert stored_ids(d, sorted(acked)) == acked


def test_run_on_a_full_disk_says_so_clearly(tmp_path: Path) -> None:
    data = make_corpus(10, 20)
    with small_disk(tmp_path, 3 << 20) as disk:
        if not disk.mounted:
            pytest.skip("needs a tmpfs to fill")
        d = data_dir(disk)
        daemon = Daemon(tmp_path, d, disk)
        assert daemon.start() is not None, daemon.log_text()
        try:
            fill(disk)
            _, errors = _submit_until_full(daemon, data.natives, 50)
        finally:
            daemon.stop()
        assert errors
        assert all(any(w in e for w in NO_SPACE) for e in errors), errors
        assert "Traceback" not in daemon.log_text()
