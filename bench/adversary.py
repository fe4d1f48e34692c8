"""A peer that speaks pithnode's wire protocols and misbehaves on purpose.

:class:`Adversary` runs our own libp2p transport (``Libp2pTransport``, a fresh key), so the
nodes see a real libp2p peer: it joins the gossip topic, publishes what it likes, opens sync
streams and answers the sync streams nodes open to it, lying as told by its
``responder_mode``. The event factories below make what it sends: forged events (bad
signatures, ids that do not match), equivocations (two validly signed events, same slot,
same second), floods from many fresh keys. Process helpers read a node's RSS, open file
descriptors and ``/metrics``. Used by ``tests/test_adversary.py`` and ``bench/soak.py``.

Every misbehaviour a method performs is one the nodes must survive: stay up, keep answering,
store nothing invalid, count it in their metrics.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from pithnode.node.libp2p_transport import Libp2pTransport
from pithnode.node.sync import SYNC_PROTOCOL
from pithnode.node.transport import (
    ByteStream,
    FramedStream,
    GossipMessage,
    PeerAddress,
    PeerId,
    Stream,
    TransportConfig,
    TransportError,
    encode_uvarint,
)
from pithnode.protocol.errors import InputError
from pithnode.protocol.events import Event, event_from_json, make_native_event, utc_timestamp
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.negentropy import Negentropy, NegentropyError, VectorStorage
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.wire import (
    MAX_FRAME_BYTES,
    decode_frame,
    encode_frame,
    encode_gossip,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = [
    "Adversary",
    "ResponderMode",
    "equivocation",
    "flood",
    "forged_variants",
    "metric",
    "metrics_of",
    "native",
    "open_fds",
    "rss_kib",
]

#: How long a stalling adversary holds a stream open without a word.
STALL_S = 3600.0
#: Frames the adversary may send: above the node's MAX_FRAME_BYTES (4 MiB), on purpose.
ADVERSARY_FRAME_BYTES = 16 << 20
BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z, as pithnode.node.synth


# ---------------------------------------------------------------------------- events


def native(key: SigningKey, subject: str, *, event_type: str = "mirror_hint", t: int = 0,
           payload: dict[str, Any] | None = None, signer_type: str = "node") -> Event:
    """A validly signed native event (a mirror hint unless told otherwise)."""
    if payload is None:
        payload = {"base_urls": [f"http://adversary.invalid/{t}"], "multiaddrs": [],
                   "prefixes": []}
    return make_native_event(key, event_type=event_type, subject=subject, payload=payload,
                             created_at=utc_timestamp(BASE_TIME + t),
                             signer_id=f"{signer_type}-{key.fingerprint[:8]}",
                             signer_type=signer_type)


def _with(ev: Event, **changes: Any) -> Event:
    obj = ev.to_json()
    obj.update(changes)
    return event_from_json(obj)


def forged_variants(ev: Event, other: SigningKey) -> dict[str, Event]:
    """Forgeries of ``ev`` (which must never be sent as it is), by the reason a node gives.

    Every forgery parses (it is well formed) and every one has an event id no valid event
    has, so a node that stored one would show it under that id.
    """
    payload = dict(ev.payload, base_urls=["http://forged.invalid/"])
    changed = _with(ev, payload=payload)  # id and signature of the original: id mismatch
    recomputed = _with(changed, event_id=changed.computed_id())  # old signature: bad
    wrong_key = _with(ev, signer=dict(ev.signer.to_json(), key_id=other.key_id))
    wrong_key = _with(wrong_key, event_id=wrong_key.computed_id())
    garbage_sig = _with(recomputed, signature_b64=base64.b64encode(bytes(64)).decode())
    return {"event_id_mismatch": changed, "bad_signature": recomputed,
            "fingerprint_mismatch": wrong_key, "bad_signature_zero": garbage_sig}


def equivocation(key: SigningKey, subject: str, t: int) -> tuple[Event, Event]:
    """Two validly signed mirror hints by one key, same slot, same second, different."""
    a = native(key, subject, t=t, payload={"base_urls": ["http://a.invalid/"],
                                          "multiaddrs": [], "prefixes": []})
    b = native(key, subject, t=t, payload={"base_urls": ["http://b.invalid/"],
                                          "multiaddrs": [], "prefixes": []})
    return a, b


def flood(subjects: Sequence[str], keys: int, per_key: int, *, seed: int = 0
          ) -> list[Event]:
    """``keys`` fresh keys, each signing ``per_key`` valid replication records."""
    rng = random.Random(seed)
    out = []
    for k in range(keys):
        key = SigningKey(hashlib.sha256(f"flood:{seed}:{k}".encode()).digest())
        for j in range(per_key):
            out.append(native(key, rng.choice(subjects), event_type="replication_record",
                              t=10_000 + j, payload={
                                  "kind": "replication", "reference": f"flood/{seed}/{k}/{j}",
                                  "outcome": "replicated", "note": ""}))
    return out


# ---------------------------------------------------------------------------- the peer


class ResponderMode(enum.Enum):
    """How the adversary answers a sync stream a node opens to it."""

    GARBAGE_NEG = "garbage_neg"  # a neg reply that is not a Negentropy message
    COUNT_LIE = "count_lie"  # offers ids, then announces events it never sends
    UNASKED = "unasked"  # answers a get with an event that was not asked for
    STALL = "stall"  # says hello, then nothing
    OVERSIZED = "oversized"  # a frame header announcing more than MAX_FRAME_BYTES


@dataclass(slots=True)
class AdversaryStats:
    streams_served: int = 0
    published: int = 0
    publish_failures: int = 0


class Adversary:
    """One misbehaving libp2p peer. ``await nursery.start(adv.run)``, then misbehave."""

    def __init__(self, spec: NetworkSpec, *, seed: bytes | None = None,
                 unasked_event: Event | None = None) -> None:
        self.key = SigningKey(seed or os.urandom(32))
        self.topic = spec.gossip_topic
        self.transport = Libp2pTransport(self.key.seed, TransportConfig(
            listen_addrs=("/ip4/127.0.0.1/tcp/0",), max_frame_bytes=ADVERSARY_FRAME_BYTES,
            max_message_bytes=1_000_000, dial_timeout=10.0))
        self.responder_mode = ResponderMode.GARBAGE_NEG
        #: what UNASKED sends (any well-formed event; default: one of its own)
        self.unasked_event = unasked_event or native(self.key, "pith:2026:" + "A" * 26)
        #: (seconds, raw id) items COUNT_LIE claims to hold: ids no node has
        rng = random.Random(self.key.seed)
        self.fake_items = [(BASE_TIME + i, rng.randbytes(32)) for i in range(12)]
        self.stats = AdversaryStats()

    @property
    def peer_id(self) -> PeerId:
        return self.transport.peer_id

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.transport.set_stream_handler(SYNC_PROTOCOL, self._serve_sync)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.run)
            channel = self.transport.subscribe(self.topic, self._accept_everything)
            nursery.start_soon(self._drain, channel)
            task_status.started()

    @staticmethod
    def _accept_everything(sender: PeerId, data: bytes) -> bool:
        return True  # our own publishes pass our own validator, whatever they hold

    @staticmethod
    async def _drain(channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for _ in channel:
            pass

    async def connect(self, multiaddrs: Iterable[str], *, timeout: float = 30.0) -> None:
        """Connect to nodes and wait until each is in our gossip mesh."""
        peers = []
        with trio.fail_after(timeout):
            for addr in multiaddrs:
                pa = PeerAddress.parse(addr)
                await self.transport.connect(pa)
                peers.append(pa.peer_id)
            await self.transport.wait_for_topic_peers(self.topic, peers)

    # -- gossip
    async def publish(self, data: bytes) -> None:
        """One gossip message of any bytes (up to 1 MB, py-libp2p's cap)."""
        try:
            await self.transport.publish(self.topic, data)
            self.stats.published += 1
        except TransportError:
            self.stats.publish_failures += 1
            raise

    async def gossip_events(self, events: Sequence[Event], *, batch: int = 100) -> None:
        for i in range(0, len(events), batch):
            await self.publish(encode_gossip(e.canonical_bytes() for e in events[i:i + batch]))

    @staticmethod
    def malformed_gossip() -> dict[str, bytes]:
        """Messages every node must reject (decode error, shape error, limits)."""
        return {
            "random_bytes": os.urandom(512),
            "not_a_batch": encode_frame("done"),
            "empty_batch": cbor2.dumps({"v": 1, "events": []}),
            "too_many_events": encode_gossip([b"{}"] * 5001),
            "bad_json_event": encode_gossip([b"{not json"]),
            "deep_cbor": b"\x81" * 100_000,
            "bignum_version": cbor2.dumps({"v": cbor2.CBORTag(2, b"\xff" * 2000),
                                           "events": [b"{}"]}),
            "near_limit_garbage": os.urandom(900_000),
        }

    # -- sync, as the initiator
    async def open_sync(self, peer: PeerId) -> Stream:
        return await self.transport.open_stream(peer, SYNC_PROTOCOL)

    async def sync_put(self, peer: PeerId, events: Sequence[Event]) -> dict[str, int]:
        """hello, put the events (any events: forged, replayed, out of scope), done.

        Returns the node's ack (new, duplicate, rejected).
        """
        stream = await self.open_sync(peer)
        with trio.fail_after(30):
            await stream.send_frame(encode_frame("hello", prefixes=()))
            decode_frame(await stream.receive_frame())
            await stream.send_frame(encode_frame("put", events=[e.canonical_bytes()
                                                                for e in events]))
            ack = decode_frame(await stream.receive_frame())
            await stream.send_frame(encode_frame("done"))
            decode_frame(await stream.receive_frame())
            await stream.close()
        return dict(ack.fields)

    async def sync_garbage_neg(self, peer: PeerId) -> None:
        """hello, then a neg frame whose message is not Negentropy; the node must hang up."""
        stream = await self.open_sync(peer)
        with trio.fail_after(30):
            await stream.send_frame(encode_frame("hello", prefixes=()))
            await stream.receive_frame()
            await stream.send_frame(encode_frame("neg", m=b"\x61\x05\xff\xff\xff\xff\xff"))
            await _expect_hangup(stream)

    async def sync_oversized(self, peer: PeerId) -> None:
        """hello, then a frame header announcing more than the node's MAX_FRAME_BYTES."""
        stream = await self.open_sync(peer)
        with trio.fail_after(30):
            await stream.send_frame(encode_frame("hello", prefixes=()))
            await stream.receive_frame()
            await _raw(stream).write_all(encode_uvarint(MAX_FRAME_BYTES + 1) + b"\x00" * 4096)
            await _expect_hangup(stream)

    async def sync_stall(self, peer: PeerId, *, say_hello: bool = True) -> Stream | None:
        """Open a sync stream and then say nothing; the caller decides when to let go.

        None when the node refused the stream (it serves a bounded number at once).
        """
        try:
            stream = await self.open_sync(peer)
            if say_hello:
                await stream.send_frame(encode_frame("hello", prefixes=()))
        except TransportError:
            return None
        return stream

    # -- sync, as the responder (a node syncs with us)
    async def _serve_sync(self, stream: Stream) -> None:
        self.stats.streams_served += 1
        mode = self.responder_mode
        try:
            decode_frame(await stream.receive_frame())  # hello
            if mode is ResponderMode.OVERSIZED:
                await _raw(stream).write_all(encode_uvarint(MAX_FRAME_BYTES + 1)
                                             + b"\x00" * 4096)
                await _expect_hangup(stream)
                return
            await stream.send_frame(encode_frame("hello", prefixes=()))
            if mode is ResponderMode.STALL:
                await trio.sleep(STALL_S)
                return
            neg = Negentropy(VectorStorage.from_items(self.fake_items))
            while True:
                frame = decode_frame(await stream.receive_frame())
                if frame.kind == "neg":
                    reply = (b"\x61\x05\xff\xff\xff" if mode is ResponderMode.GARBAGE_NEG
                             else neg.reconcile(frame.fields["m"]))
                    await stream.send_frame(encode_frame("neg", m=reply))
                elif frame.kind == "get":
                    ids = frame.fields["ids"]
                    if mode is ResponderMode.UNASKED:
                        await stream.send_frame(encode_frame(
                            "events", events=[self.unasked_event.canonical_bytes()]))
                        await stream.send_frame(encode_frame("end", count=1))
                    else:  # COUNT_LIE: announce every asked id, send none
                        await stream.send_frame(encode_frame("end", count=len(ids)))
                elif frame.kind == "done":
                    await stream.send_frame(encode_frame("done"))
                    return
                else:  # put: acknowledge nothing new
                    await stream.send_frame(encode_frame("ack", new=0, duplicate=0,
                                                         rejected=0))
        except (TransportError, InputError, NegentropyError):
            return  # the node hung up on us, as it should


def _raw(stream: Stream) -> ByteStream:
    """The bytes under the framing (``FramedStream.raw`` is public for this purpose)."""
    if not isinstance(stream, FramedStream):
        raise TypeError(f"not a FramedStream: {type(stream).__name__}")
    return stream.raw


async def _expect_hangup(stream: Stream) -> None:
    """Read until the node resets or closes the stream (anything it sends is ignored)."""
    try:
        while True:
            await stream.receive_frame()
    except TransportError:
        return


# ---------------------------------------------------------------------------- processes


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metrics_of(http_url: str, *, timeout: float = 10.0) -> Metrics:
    """A node's /metrics as {(sample name, sorted labels): value}."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        resp = await client.get(f"{http_url}/metrics")
        resp.raise_for_status()
    out: Metrics = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample (0 when absent: a counter never incremented is not exported)."""
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)
