"""Gossip of signed events: batching out, validation and rate limits in.

GossipSub is best effort (correctness comes from sync): a message carries a batch of events'
canonical bytes, bounded in count and bytes. The topic validator decodes and size-checks the
batch and verifies every signature (protocol code), so a bad message is rejected and
GossipSub's scoring penalises its sender; each signer is held to a token-bucket rate. Accepted
batches are handed to the store's ingest by one consumer task.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import trio

from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event
from pithnode.protocol.ingest import accept
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.wire import decode_events, decode_gossip, encode_gossip, prefixes_match

from .sync import SyncStore
from .transport import GossipMessage, PeerId, Transport, short_id

log = logging.getLogger(__name__)

_V = TypeVar("_V")

#: Signers whose token buckets are remembered (least recently seen are forgotten).
MAX_TRACKED_SIGNERS = 10_000
#: Event ids remembered to drop duplicates before they reach the store.
MAX_SEEN_IDS = 10_000
#: Events waiting to be published; beyond this, publish() blocks (back-pressure).
OUTBOX_EVENTS = 10_000
#: Batches remembered between validation and delivery (validated messages' decoded events,
#: and the batches this node published itself); least recently added are forgotten.
MAX_REMEMBERED_BATCHES = 32


@dataclass(slots=True)
class GossipStats:
    messages_in: int = 0
    events_in: int = 0
    events_new: int = 0
    duplicates: int = 0
    rejected_messages: int = 0
    rate_limited: int = 0
    out_of_scope: int = 0
    messages_out: int = 0
    events_out: int = 0


def _decode_batch(data: bytes) -> list[Event]:
    return decode_events(decode_gossip(data))


def _remember(table: OrderedDict[bytes, _V], key: bytes, value: _V) -> None:
    table[key] = value
    while len(table) > MAX_REMEMBERED_BATCHES:
        table.popitem(last=False)


class TokenBuckets:
    """Per-key token buckets with a bounded number of keys (least recently used evicted)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, n: int = 1) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= n
        if ok:
            tokens -= n
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED_SIGNERS:
            self._buckets.popitem(last=False)
        return ok


class Gossip:
    def __init__(self, transport: Transport, store: SyncStore, spec: NetworkSpec, *,
                 prefixes: Sequence[str], max_batch_events: int, max_batch_bytes: int,
                 flush_interval_s: float, rate_per_signer: float,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.transport = transport
        self.store = store
        self.spec = spec
        self.topic = spec.gossip_topic
        self.prefixes = tuple(prefixes)
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval_s = flush_interval_s
        self.buckets = TokenBuckets(rate_per_signer, max(rate_per_signer * 2, 50), clock)
        self.stats = GossipStats()
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: message bytes -> its events, decoded and verified by validate(), for consume()
        self._validated: OrderedDict[bytes, list[Event]] = OrderedDict()
        #: message bytes of batches _send_batch published (their events are stored already)
        self._own: OrderedDict[bytes, None] = OrderedDict()
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](OUTBOX_EVENTS)

    # -- inbound -----------------------------------------------------------------------------
    def validate(self, sender: PeerId, data: bytes) -> bool:
        """Topic validator: runs on the trio thread; never raises (the transport guards it).

        A batch this engine published itself is not checked again: every event in it was
        accepted by our store before it was queued for gossip (libp2p validates local
        publishes too). Anything else our transport publishes is checked like a peer's.
        """
        if sender == self.transport.peer_id and data in self._own:
            del self._own[data]
            return True
        try:
            events = decode_events(decode_gossip(data))
        except InputError as exc:
            self.stats.rejected_messages += 1
            log.debug("gossip from %s rejected: %s", short_id(sender), exc.reason)
            return False
        for ev in events:
            reason = accept(ev, self.spec)
            if reason is not None:
                self.stats.rejected_messages += 1
                log.info("gossip from %s rejected: event %s %s", short_id(sender),
                         ev.event_id[7:19], reason)
                return False
        signer_counts: dict[str, int] = {}
        for ev in events:
            signer_counts[ev.signer.public_key_fingerprint] = signer_counts.get(
                ev.signer.public_key_fingerprint, 0) + 1
        for signer, n in signer_counts.items():
            if not self.buckets.take(signer, n):
                self.stats.rate_limited += 1
                return False
        _remember(self._validated, data, events)
        return True

    def _fresh(self, events: list[Event]) -> list[Event]:
        out = []
        for ev in events:
            if ev.event_id in self._seen:
                self.stats.duplicates += 1
                continue
            self._seen[ev.event_id] = None
            if len(self._seen) > MAX_SEEN_IDS:
                self._seen.popitem(last=False)
            if not prefixes_match(ev.subject.rsplit(":", 1)[-1], self.prefixes):
                self.stats.out_of_scope += 1
                continue
            out.append(ev)
        return out

    async def consume(self, channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for msg in channel:
            self.stats.messages_in += 1
            events = self._validated.pop(msg.data, None)  # decoded when it was validated
            if events is None:
                try:
                    events = await trio.to_thread.run_sync(_decode_batch, msg.data)
                except InputError:  # validated already; a decoder bug must not stop the loop
                    log.exception("validated gossip failed to decode")
                    continue
            self.stats.events_in += len(events)
            fresh = self._fresh(events)
            if fresh:
                new, _dup, _rej = await self.store.ingest_events(
                    fresh, source=f"gossip:{msg.sender}")
                self.stats.events_new += new

    # -- outbound ----------------------------------------------------------------------------
    async def publish(self, raw_events: Sequence[bytes]) -> None:
        """Queue events (canonical bytes) for gossip; blocks while the outbox is full."""
        for data in raw_events:
            await self._out_send.send(data)

    def mark_seen(self, event_ids: Sequence[str]) -> None:
        for eid in event_ids:
            self._seen[eid] = None
        while len(self._seen) > MAX_SEEN_IDS:
            self._seen.popitem(last=False)

    async def flush_loop(self) -> None:
        """Send batches of at most max_batch_events / max_batch_bytes."""
        async with self._out_recv:
            while True:
                data = await self._out_recv.receive()
                batch, size = [data], len(data)
                with trio.move_on_after(self.flush_interval_s):
                    while len(batch) < self.max_batch_events:
                        nxt = await self._out_recv.receive()
                        if size + len(nxt) > self.max_batch_bytes:
                            await self._send_batch(batch)
                            batch, size = [], 0
                        batch.append(nxt)
                        size += len(nxt)
                if batch:
                    await self._send_batch(batch)

    async def _send_batch(self, batch: list[bytes]) -> None:
        if not batch:
            return
        try:
            data = encode_gossip(batch)
            _remember(self._own, data, None)
            await self.transport.publish(self.topic, data)
        except Exception:  # edge: a failed publish is logged; sync delivers the events
            log.exception("gossip publish of %d events failed", len(batch))
            return
        self.stats.messages_out += 1
        self.stats.events_out += len(batch)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        channel = self.transport.subscribe(self.topic, self.validate)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.consume, channel)
            nursery.start_soon(self.flush_loop)
            task_status.started()
