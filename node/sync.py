"""Set reconciliation with peers over ``/pith/sync/1.0.0``: Negentropy, then bounded fetches.

The wire messages and the session's transition table live in ``protocol/wire.py``; this
module does the I/O: it reads the store's sync items, drives Negentropy, fetches what the peer
has and we lack, pushes what we have and it lacks, and ingests everything through the store
(which verifies signatures before anything is written). Every read has a timeout; a session
that ends without its ``done`` marker is a failure, and since every fetched batch is
committed as it arrives, the next session simply resumes from what is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from pithnode.protocol.errors import InputError, ProtocolError
from pithnode.protocol.events import Event
from pithnode.protocol.negentropy import Negentropy, NegentropyError, VectorStorage
from pithnode.protocol.wire import (
    MAX_EVENTS_PER_FRAME,
    MAX_GETS_IN_FLIGHT,
    MAX_IDS_PER_GET,
    MAX_PUTS_IN_FLIGHT,
    Frame,
    Role,
    SessionMachine,
    decode_events,
    encode_frame,
    prefixes_match,
)

from .errors import leaf_exception
from .transport import PeerId, Stream, TransportError, short_id

log = logging.getLogger(__name__)

SYNC_PROTOCOL = "/pith/sync/1.0.0"
#: Bytes of event data per ``events``/``put`` frame (below the transport's frame limit).
MAX_FRAME_EVENT_BYTES = 512 * 1024
#: Negentropy rounds one session may take before it is abandoned.
MAX_ROUNDS = 10_000
#: Decoded ``events`` frames that may wait for the store while the next ones arrive.
INGEST_QUEUE_FRAMES = 2
#: Tasks ingesting fetched frames at once (the store service commits them in turn).
INGEST_TASKS = 2


class SyncStore(Protocol):
    """What a sync session needs of the store (implemented by the store service)."""

    async def sync_items(self, prefixes: Sequence[str]) -> list[tuple[int, bytes]]:
        """(seconds, raw id) of every stored event whose record matches ``prefixes``."""
        ...

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]:
        """Canonical bytes of the stored events among ``ids`` (unknown ids are skipped)."""
        ...

    async def ingest_events(self, events: Sequence[Event], *, source: str
                            ) -> tuple[int, int, int]:
        """Ingest; returns (new, duplicate, rejected) after the batch is durably committed."""
        ...


class SyncFailed(Exception):
    """A session did not complete; its reason is for logs and metrics."""


@dataclass(slots=True)
class SyncResult:
    peer: str
    role: str
    have: int = 0  # ids we had and the peer lacked
    need: int = 0  # ids the peer had and we lacked
    fetched_new: int = 0
    rejected: int = 0
    pushed: int = 0
    rounds: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    errors: list[str] = field(default_factory=list)


def _in_scope(mine: Sequence[str], theirs: Sequence[str]) -> list[str]:
    """Prefixes describing records both sides mirror (an over-approximation is fine: the
    store filters by both lists)."""
    if not mine:
        return list(theirs)
    if not theirs:
        return list(mine)
    out = {a if a.startswith(b) else b for a in mine for b in theirs
           if a.startswith(b) or b.startswith(a)}
    return sorted(out) if out else ["~"]  # "~" matches no base32 suffix: empty scope


def _chunks(raw: Sequence[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = [[]]
    size = 0
    for data in raw:
        if out[-1] and (size + len(data) > MAX_FRAME_EVENT_BYTES
                        or len(out[-1]) >= MAX_EVENTS_PER_FRAME):
            out.append([])
            size = 0
        out[-1].append(data)
        size += len(data)
    return out


class _Early:
    """A storage read in the background of a session's first frames. Its error, if any,
    is raised by :meth:`get` (where the session needs it), not by the nursery."""

    def __init__(self, scope: list[str]) -> None:
        self.scope = scope
        self._done = trio.Event()
        self._value: VectorStorage | None = None
        self._error: Exception | None = None

    async def run(self, build: Callable[[Sequence[str]], Awaitable[VectorStorage]]) -> None:
        try:
            self._value = await build(self.scope)
        except Exception as exc:
            self._error = exc
        finally:
            self._done.set()

    async def get(self) -> VectorStorage:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class SyncEngine:
    def __init__(self, store: SyncStore, *, prefixes: Sequence[str], timeout_s: float,
                 fetch_batch: int, frame_size_limit: int) -> None:
        self.store = store
        self.prefixes = tuple(prefixes)
        self.timeout_s = timeout_s
        self.fetch_batch = min(fetch_batch, MAX_IDS_PER_GET)
        self.frame_size_limit = frame_size_limit

    # -- helpers -----------------------------------------------------------------------------
    async def _send(self, stream: Stream, result: SyncResult, data: bytes) -> None:
        with trio.fail_after(self.timeout_s):
            await stream.send_frame(data)
        result.bytes_out += len(data)

    async def _recv(self, stream: Stream, machine: SessionMachine, result: SyncResult
                    ) -> Frame:
        with trio.fail_after(self.timeout_s):
            data = await stream.receive_frame()
        result.bytes_in += len(data)
        return machine.receive(data)

    def _scope_filter(self, events: Sequence[Event], scope: Sequence[str]) -> list[Event]:
        return [e for e in events if prefixes_match(e.subject.rsplit(":", 1)[-1], scope)
                and prefixes_match(e.subject.rsplit(":", 1)[-1], self.prefixes)]

    async def _storage(self, scope: Sequence[str]) -> VectorStorage:
        items = await self.store.sync_items(scope)
        return await trio.to_thread.run_sync(VectorStorage.from_items, items)

    def _build_early(self, nursery: trio.Nursery, scope: Sequence[str]) -> _Early:
        """Start reading the sync items of ``scope`` while the first frames travel, so that
        neither side's read waits for the other's (each takes a tenth of a second per
        100,000 events)."""
        early = _Early(list(scope))
        nursery.start_soon(early.run, self._storage)
        return early

    # -- initiator ---------------------------------------------------------------------------
    async def sync_with(self, peer: PeerId, stream: Stream) -> SyncResult:
        """Run one session on an open stream. Raises SyncFailed with the reason."""
        result = SyncResult(str(peer), "initiator")
        machine = SessionMachine(Role.INITIATOR)
        try:
            await self._initiate(stream, machine, result)
        except (TransportError, InputError, ProtocolError, NegentropyError,
                trio.TooSlowError) as exc:
            with trio.move_on_after(1):
                await stream.reset()
            raise SyncFailed(f"{type(exc).__name__}: {exc}") from exc
        return result

    async def _initiate(self, stream: Stream, machine: SessionMachine,
                        result: SyncResult) -> None:
        peer = str(stream.remote_peer)
        try:
            async with trio.open_nursery() as nursery:
                early = self._build_early(nursery, self.prefixes)  # the usual scope: ours
                await self._send(stream, result, encode_frame("hello", prefixes=self.prefixes))
                hello = await self._recv(stream, machine, result)
                scope = _in_scope(self.prefixes, hello.fields["prefixes"])
                storage = await early.get()
        except BaseExceptionGroup as group:  # the nursery wraps what the session raised
            raise leaf_exception(group) from None
        if scope != early.scope:  # the peer mirrors less than we do
            storage = await self._storage(scope)
        neg = Negentropy(storage, self.frame_size_limit)
        msg: bytes | None = neg.initiate()
        have: list[bytes] = []
        need: list[bytes] = []
        while msg is not None:
            result.rounds += 1
            if result.rounds > MAX_ROUNDS:
                raise ProtocolError("too many reconciliation rounds")
            await self._send(stream, result, encode_frame("neg", m=msg))
            reply = await self._recv(stream, machine, result)
            msg, h, n = neg.reconcile_initiator(reply.fields["m"])
            have.extend(h)
            need.extend(n)
        machine.reconciled()
        need = list(dict.fromkeys(need))
        have = list(dict.fromkeys(have))
        result.have, result.need = len(have), len(need)
        await self._fetch(stream, machine, result, need, scope, peer)
        unacked = 0  # up to MAX_PUTS_IN_FLIGHT puts before their acks are read
        for i in range(0, len(have), self.fetch_batch):
            raw = await self.store.raw_events(have[i:i + self.fetch_batch])
            for chunk in _chunks(raw):
                if not chunk:
                    continue
                if unacked >= MAX_PUTS_IN_FLIGHT:
                    await self._take_ack(stream, machine, result)
                    unacked -= 1
                await self._send(stream, result, encode_frame("put", events=chunk))
                unacked += 1
        for _ in range(unacked):
            await self._take_ack(stream, machine, result)
        await self._send(stream, result, encode_frame("done"))
        await self._recv(stream, machine, result)
        with trio.move_on_after(self.timeout_s):
            await stream.close()

    async def _take_ack(self, stream: Stream, machine: SessionMachine, result: SyncResult
                        ) -> None:
        ack = await self._recv(stream, machine, result)
        if ack.kind != "ack":
            raise ProtocolError(f"expected an ack, got {ack.kind!r}")
        result.pushed += ack.fields["new"]

    async def _fetch(self, stream: Stream, machine: SessionMachine, result: SyncResult,
                     need: Sequence[bytes], scope: Sequence[str], peer: str) -> None:
        """Fetch ``need`` in gets of ``fetch_batch`` ids, up to MAX_GETS_IN_FLIGHT of them
        outstanding, while INGEST_TASKS tasks ingest what has arrived (at most
        INGEST_QUEUE_FRAMES decoded frames wait for them, so memory stays bounded). With
        two ingests outstanding, the store checks one frame's events while it commits the
        frame before."""
        gets = [need[i:i + self.fetch_batch] for i in range(0, len(need), self.fetch_batch)]
        if not gets:
            return
        send_q, recv_q = trio.open_memory_channel[list[Event]](INGEST_QUEUE_FRAMES)

        async def ingest(frames: trio.MemoryReceiveChannel[list[Event]]) -> None:
            async with frames:
                async for events in frames:
                    new, _dup, rejected = await self.store.ingest_events(
                        self._scope_filter(events, scope), source=f"sync:{peer}")
                    result.fetched_new += new
                    result.rejected += rejected

        try:
            async with trio.open_nursery() as nursery:
                async with recv_q:  # each ingesting task holds a clone
                    for _ in range(INGEST_TASKS):
                        nursery.start_soon(ingest, recv_q.clone())
                async with send_q:
                    sent = 0
                    for wanted in gets:
                        while sent < len(gets) and machine.gets_in_flight < MAX_GETS_IN_FLIGHT:
                            await self._send(stream, result,
                                             encode_frame("get", ids=gets[sent]))
                            machine.sent_get()
                            sent += 1
                        await self._receive_events(stream, machine, result, set(wanted),
                                                   send_q)
        except BaseExceptionGroup as group:  # one task failed: raise its error as it is
            raise leaf_exception(group) from None

    async def _receive_events(self, stream: Stream, machine: SessionMachine,
                              result: SyncResult, wanted: set[bytes],
                              out: trio.MemorySendChannel[list[Event]]) -> None:
        """The events and end answering one get; decoded batches go to ``out``."""
        received = 0
        while True:
            frame = await self._recv(stream, machine, result)
            if frame.kind == "end":
                if frame.fields["count"] != received:
                    raise ProtocolError(f"peer announced {frame.fields['count']} events, "
                                        f"sent {received}")
                return
            events = await trio.to_thread.run_sync(decode_events, frame.fields["events"])
            received += len(events)
            for ev in events:
                if bytes.fromhex(ev.event_id.removeprefix("sha256:")) not in wanted:
                    raise ProtocolError(f"peer sent an event we did not ask for: {ev.event_id}")
            await out.send(events)

    # -- responder ---------------------------------------------------------------------------
    async def handle_stream(self, stream: Stream) -> SyncResult:
        """Serve one session opened by a peer."""
        result = SyncResult(str(stream.remote_peer), "responder")
        machine = SessionMachine(Role.RESPONDER)
        peer = short_id(stream.remote_peer)
        try:
            await self._respond(stream, machine, result)
        except (TransportError, InputError, ProtocolError, NegentropyError,
                trio.TooSlowError) as exc:
            log.info("sync from %s failed: %s: %s", peer, type(exc).__name__, exc)
            result.errors.append(type(exc).__name__)
            with trio.move_on_after(1):
                await stream.reset()
        return result

    async def _respond(self, stream: Stream, machine: SessionMachine,
                       result: SyncResult) -> None:
        hello = await self._recv(stream, machine, result)
        theirs = hello.fields["prefixes"]
        scope = _in_scope(self.prefixes, theirs)
        try:
            async with trio.open_nursery() as nursery:
                early = self._build_early(nursery, scope)  # for the first neg frame
                await self._send(stream, result, encode_frame("hello", prefixes=self.prefixes))
                await self._serve(stream, machine, result, scope, early)
        except BaseExceptionGroup as group:  # the nursery wraps what the session raised
            raise leaf_exception(group) from None

    async def _serve(self, stream: Stream, machine: SessionMachine, result: SyncResult,
                     scope: Sequence[str], early: _Early) -> None:
        """Answer frames until ``done``. Pushed batches (``put``) are ingested by up to
        MAX_PUTS_IN_FLIGHT tasks while the next ones are read, each acknowledged when it
        is committed; ``done`` is answered after every ``put`` is."""
        neg: Negentropy | None = None
        sending = trio.Lock()  # the put tasks send their acks beside this loop
        slots = trio.Semaphore(MAX_PUTS_IN_FLIGHT)

        async def send(data: bytes) -> None:
            async with sending:
                await self._send(stream, result, data)

        async def take_put(raw: list[bytes]) -> None:
            try:
                events = await trio.to_thread.run_sync(decode_events, raw)
                in_scope = self._scope_filter(events, scope)
                new, dup, rejected = await self.store.ingest_events(
                    in_scope, source=f"sync:{result.peer}")
                rejected += len(events) - len(in_scope)
                result.fetched_new += new
                result.rejected += rejected
                await send(encode_frame("ack", new=new, duplicate=dup, rejected=rejected))
            finally:
                slots.release()

        async with trio.open_nursery() as puts:
            while True:
                frame = await self._recv(stream, machine, result)
                if frame.kind == "neg":
                    if neg is None:
                        neg = Negentropy(await early.get(), self.frame_size_limit)
                    result.rounds += 1
                    if result.rounds > MAX_ROUNDS:
                        raise ProtocolError("too many reconciliation rounds")
                    reply = await trio.to_thread.run_sync(neg.reconcile, frame.fields["m"])
                    await send(encode_frame("neg", m=reply))
                elif frame.kind == "get":
                    raw = await self.store.raw_events(frame.fields["ids"])
                    sent = 0
                    for chunk in _chunks(raw):
                        if chunk:
                            await send(encode_frame("events", events=chunk))
                            sent += len(chunk)
                    await send(encode_frame("end", count=sent))
                    result.have += sent
                elif frame.kind == "put":
                    await slots.acquire()  # (released by the task) bounds what waits in memory
                    puts.start_soon(take_put, frame.fields["events"])
                else:  # done: answered once the puts are (the nursery waits for them)
                    break
        await self._send(stream, result, encode_frame("done"))
        with trio.move_on_after(self.timeout_s):
            await stream.close()
