"""What a node signs about what it holds, audits of what others claim, and split-view checks.

:class:`Attestor` runs beside a :class:`~pithnode.node.daemon.Node` (in its nursery) and
keeps these services, each bounded and rate-limited (docs/PROTOCOL.md, sections 12-16):

* **Attestations.** For every record it holds the node signs a ``state_attestation`` of the
  record's *content state* (the merge of its events without node attestations, so signing
  never changes what is attested), ``storage_attestation`` events naming the objects of the
  record's first content events (the exact bytes of events, which every node holds
  identically) and one ``mirror_hint``. Each is signed only when missing or when what it
  would say changed; the newer ``created_at`` supersedes the older in its slot, and
  ``created_at`` never repeats within a slot (no self-equivocation, even across restarts).
  Changed records (the node's notifications) come first; a full pass runs at start and every
  ``mirror_hint_interval_s``. One token bucket bounds all signing.
* **Audits** over ``/pith/audit/1.0.0`` (one framed CBOR challenge, one answer; see
  ``protocol/audit.py``). The holder re-reads every object from the store for every challenge
  and answers at most ``holder_challenges_per_minute`` per peer. The challenger samples
  records for attestations of connected peers, challenges one holder every
  ``audit_interval_s``, compares with its own copy (or, lacking one, the majority of the
  holders it asked the same challenge) and signs ``storage_audit`` events.
* **Repair.** Damage found by the node's own reads, or a ``storage_audit`` naming it as
  failed, leads to a store repair (``Store.fsck(repair=True)`` drops damaged objects and
  rebuilds states) and a sync with peers that hold the object; bundles and states are
  derived from events, so re-fetching the events and re-materialising is the whole repair.
* **Equivocation evidence.** When a record's state lists an equivocation this node has not
  spread yet, it gossips every stored event of it (ordinary signed events: the evidence).
* **Checkpoints** every ``checkpoint_interval_s``: the RFC 6962 tree over (Pith Number,
  state_sha256) of every record held, signed as a C2SP note whose extension lines state the
  coverage (mirror prefixes) and the signing time. Peers swap checkpoints over
  ``/pith/checkpoint/1.0.0``; the same coverage and tree size with another root is a possible
  split view: the node syncs with the peer and compares fresh checkpoints, bisecting key
  ranges of the two trees to name the records whose states differ; records still differing
  after two completed syncs confirm it (:meth:`Attestor.split_views` explains each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import cbor2
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from pithnode.protocol.audit import (
    CHALLENGE_ID_BYTES,
    NONCE_BYTES,
    Answer,
    AuditError,
    AuditResult,
    Challenge,
    ChallengerSession,
    ObjectOutcome,
    answer_challenge,
    decode_audit_message,
    encode_audit_message,
    majority_outcome,
    storage_audit_payload,
)
from pithnode.protocol.checkpoint import (
    Checkpoint,
    RecordTree,
    checkpoint_origin,
    format_checkpoint_body,
    sign_note,
    verify_note,
)
from pithnode.protocol.errors import DecodeError, InputError, ProtocolError
from pithnode.protocol.events import Event, make_native_event, utc_timestamp
from pithnode.protocol.identifiers import fingerprint_hex
from pithnode.protocol.ingest import event_set_fingerprint
from pithnode.protocol.keys import SigningKey, public_key_from_key_id
from pithnode.protocol.merge import merge
from pithnode.protocol.payloads import slot_key
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.wire import cbor_loads
from pithnode.storage.errors import StoreCorrupt, StoreError
from pithnode.storage.store import Store

from .config import AttestConfig
from .gossip import TokenBuckets
from .store_service import StoreService
from .sync import SyncFailed
from .transport import PeerId, Stream, TransportError, peer_id_from_ed25519_public_key, short_id

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from .daemon import Node

__all__ = [
    "ATTESTATION_TYPES", "AUDIT_PROTOCOL", "CHECKPOINT_PROTOCOL", "AttestLimits",
    "AttestMetrics", "Attestor", "AuditOutcome", "CheckpointExchangeError", "PeerCheckpoint",
    "SignedCheckpoint", "SplitView", "checkpoint_coverage", "content_state_payload",
    "make_checkpoint", "public_key_of_peer", "record_states",
]

log = logging.getLogger(__name__)

AUDIT_PROTOCOL = "/pith/audit/1.0.0"
CHECKPOINT_PROTOCOL = "/pith/checkpoint/1.0.0"
#: Event types a node signs about what it holds; they are left out of the content state.
ATTESTATION_TYPES = frozenset({"mirror_hint", "storage_attestation", "storage_audit",
                               "state_attestation"})
#: Source name of the events this node signs, in the store's provenance.
LOCAL_SOURCE = "local:attest"
#: Checkpoint extension lines (docs/PROTOCOL.md, "Checkpoints").
EXT_PREFIXES = "pithnode-prefixes "
EXT_TIME = "pithnode-time "
ALL_RECORDS = "*"
#: One checkpoint protocol message, refused before decoding when larger.
MAX_CP_MESSAGE_BYTES = 256 << 10
MAX_CP_RANGES = 64
MAX_CP_LEAVES = 512
#: Requests one checkpoint session may make after the hellos.
MAX_CP_REQUESTS = 64
#: Bisection rounds and ranges followed per round when naming differing records.
MAX_DIFF_ROUNDS = 8
MAX_DIFF_PENDING = 4
DIFF_SPLIT = 16
#: A key range with at most this many of our leaves is compared leaf by leaf.
DIFF_LEAF_RANGE = 64
#: Completed syncs after which records whose states still differ confirm a split view.
CONFIRM_SYNCS = 2
#: Seconds a challenge's issued_at may differ from the holder's clock.
MAX_CLOCK_SKEW_S = 600
REPAIR_QUEUE = 64
#: Records visited per attestation round before yielding to other work.
MAX_VISITS_PER_ROUND = 1000
_REMEMBERED = 100_000
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ED25519_PEER_PREFIX = b"\x00\x24\x08\x01\x12\x20"


# -- configuration, metrics and reports ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AttestLimits:
    """Bounds of the attestor's work (the intervals are in ``[attest]``, node/config.py)."""

    #: events signed per second, all kinds together (token bucket), and the burst
    sign_rate: float = 20.0
    sign_burst: int = 200
    #: content events of a record whose objects get a storage attestation (oldest first)
    objects_per_record: int = 16
    #: records sampled per audit round to find attestations of connected peers
    audit_sample_records: int = 64
    #: further holders asked the same challenge when this node lacks a copy
    majority_holders: int = 2
    #: challenges a holder answers per peer per minute (token bucket)
    holder_challenges_per_minute: int = 6
    #: peers a checkpoint round exchanges with
    checkpoint_peers: int = 8
    #: least seconds between two checkpoint computations, unless a fresh one is needed
    checkpoint_min_gap_s: float = 10.0
    #: fresh checkpoints (a full recomputation) a peer may ask for per minute
    refreshes_per_minute: int = 4
    #: least seconds between two store repairs (a repair rebuilds every state)
    repair_min_gap_s: float = 60.0
    #: peers a repair syncs with, at most, to fetch the damaged events again
    repair_peers: int = 3
    #: changed records remembered; beyond, they are forgotten and a full pass is scheduled
    max_dirty: int = 100_000
    #: split views kept for status, and records named per split view
    max_split_views: int = 64
    max_reported_records: int = 256


class AttestMetrics:
    """The attestor's metrics, registered in the node's own registry (node/metrics.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"pithnode_{name}", doc, labels, registry=registry)

        self.signed = counter("attest_signed", "Events the node signed about what it holds, "
                              "by event type.", ("event_type",))
        self.audits = counter("audits", "Storage audits, by role (challenger, holder) and "
                              "outcome.", ("role", "outcome"))
        self.split_views = counter(
            "checkpoint_split_views", "Peers whose checkpoint of the same coverage and size "
            "has another root, by stage (suspected, confirmed, resolved).", ("stage",))
        self.evidence = counter("equivocation_evidence",
                                "Equivocations whose events were gossiped as evidence.")
        self.repairs = counter("store_repairs", "Store repairs after damage, by outcome.",
                               ("outcome",))
        self.tree_size = Gauge("pithnode_checkpoint_tree_size",
                               "Records in the latest signed checkpoint.", registry=registry)


@dataclass(frozen=True, slots=True)
class AuditOutcome:
    """One object of one audit, as the challenger scored (and signed) it."""

    holder: str
    object_sha256: str
    outcome: str  # verified | failed | missing | unknown | no_answer
    reason: str
    audit_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    holder: PeerId
    object_id: bytes
    attestation_event_id: str
    subject: str


@dataclass(frozen=True, slots=True)
class _RepairRequest:
    reason: str
    object_sha256: str | None = None
    record: str | None = None
    peers: tuple[PeerId, ...] = ()

    @property
    def key(self) -> str:
        return self.object_sha256 or self.record or "store"


# -- pure helpers ------------------------------------------------------------------------------
def public_key_of_peer(peer: str) -> bytes | None:
    """The Ed25519 key an (inlined-key) libp2p peer id names, or None."""
    if not isinstance(peer, str) or not 0 < len(peer) <= 64 or not set(peer) <= set(_B58):
        return None
    n = 0
    for c in peer:
        n = n * 58 + _B58.index(c)
    raw = b"\0" * (len(peer) - len(peer.lstrip("1"))) + n.to_bytes((n.bit_length() + 7) // 8,
                                                                    "big")
    if len(raw) != 38 or not raw.startswith(_ED25519_PEER_PREFIX):
        return None
    pub = raw[6:]
    return pub if peer_id_from_ed25519_public_key(pub) == peer else None


def _peer_of_key_id(key_id: str) -> PeerId | None:
    try:
        return peer_id_from_ed25519_public_key(public_key_from_key_id(key_id))
    except (InputError, ValueError):
        return None


def content_state_payload(subject: str, events: Iterable[Event],
                          spec: NetworkSpec) -> dict[str, Any] | None:
    """The ``state_attestation`` payload of a record's events (docs: "Attestations").

    The content state is the merge of the events whose type is not a node attestation;
    None when no such event is held.
    """
    content = [e for e in events if e.event_type not in ATTESTATION_TYPES]
    if not content:
        return None
    state = merge(subject, content, spec, verify_signatures=False)
    return {"state_sha256": state.state_sha256,
            "event_set_fingerprint": event_set_fingerprint(e.event_id for e in content),
            "event_count": state.doc["event_count"]}


def record_states(store: Store) -> list[tuple[str, str]]:
    """(Pith Number, state_sha256) of every stored record, sorted. Blocking: run it in a
    worker thread."""
    return store.record_states()


def _coverage_text(prefixes: Sequence[str]) -> str:
    return ",".join(sorted(set(prefixes))) if prefixes else ALL_RECORDS


def checkpoint_coverage(cp: Checkpoint) -> tuple[tuple[str, ...], int] | None:
    """(mirror prefixes, signing time) from a checkpoint's extension lines, or None."""
    prefixes: tuple[str, ...] | None = None
    signed_at: int | None = None
    for line in cp.extensions:
        if line.startswith(EXT_PREFIXES):
            text = line[len(EXT_PREFIXES):]
            prefixes = () if text == ALL_RECORDS else tuple(text.split(","))
        elif line.startswith(EXT_TIME) and line[len(EXT_TIME):].isdigit():
            signed_at = int(line[len(EXT_TIME):])
    if prefixes is None or signed_at is None or any(not p for p in prefixes):
        return None
    return prefixes, signed_at


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint this node signed, with its tree (kept to answer peers' comparisons)."""

    note: str
    origin: str
    tree: RecordTree
    #: state digests, in the tree's (sorted) order
    shas: tuple[bytes, ...]
    prefixes: tuple[str, ...]
    signed_at: int
    #: the store service's batch counter when the records were read (freshness)
    batches: int = 0

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def root(self) -> bytes:
        return self.tree.root

    def to_json(self) -> dict[str, Any]:
        return {"note": self.note, "origin": self.origin, "tree_size": self.size,
                "root_hex": self.root.hex(), "mirror_prefixes": list(self.prefixes),
                "signed_at": self.signed_at}


def make_checkpoint(pairs: Iterable[tuple[str, str]], *, network: str, key: SigningKey,
                    prefixes: Sequence[str], signed_at: int, batches: int = 0
                    ) -> SignedCheckpoint:
    """Build the record tree over ``pairs`` and sign its checkpoint note."""
    ordered = sorted(pairs, key=itemgetter(0))  # RecordTree's own sort is then linear
    tree = RecordTree(ordered)
    origin = checkpoint_origin(network, key.public_key)
    ext = (EXT_PREFIXES + _coverage_text(prefixes), f"{EXT_TIME}{int(signed_at)}")
    note = sign_note(format_checkpoint_body(tree.checkpoint(origin, ext)), origin, key)
    return SignedCheckpoint(note, origin, tree, tuple(bytes.fromhex(s) for _, s in ordered),
                            tuple(sorted(set(prefixes))), int(signed_at), batches)


@dataclass(frozen=True, slots=True)
class PeerCheckpoint:
    """A peer's checkpoint, verified against the key its peer id names."""

    peer: str
    note: str
    size: int
    root: bytes
    prefixes: tuple[str, ...]
    signed_at: int

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "note": self.note, "tree_size": self.size,
                "root_hex": self.root.hex(), "mirror_prefixes": list(self.prefixes),
                "signed_at": self.signed_at}


@dataclass(slots=True)
class SplitView:
    """A peer that signed a checkpoint of the same coverage and size with another root."""

    peer: str
    prefixes: tuple[str, ...]
    tree_size: int
    my_root: str
    their_root: str
    my_checkpoint: str
    their_checkpoint: str
    first_seen: float
    last_checked: float
    status: str = "suspected"  # suspected -> confirmed or resolved
    syncs: int = 0
    differing: list[dict[str, str | None]] = field(default_factory=list)
    truncated: bool = False

    def explain(self) -> str:
        scope = ("every record" if not self.prefixes
                 else "records under " + ", ".join(self.prefixes))
        head = (f"peer {self.peer} signed a checkpoint of {self.tree_size} records ({scope}, "
                f"as ours) with root {self.their_root[:16]}, ours is {self.my_root[:16]}")
        if self.status == "resolved":
            return head + "; after a sync the roots agree (the difference was lag)"
        if self.status == "suspected":
            return head + "; a sync with the peer should settle it"
        names = ", ".join(
            f"{d['pith_number']} (ours {(d['mine'] or 'absent')[:12]}, theirs "
            f"{(d['theirs'] or 'absent')[:12]})" for d in self.differing[:5])
        more = " and more" if self.truncated or len(self.differing) > 5 else ""
        return (head + f"; after {self.syncs} completed sync(s) the states still differ for "
                f"{len(self.differing)} record(s): {names}{more}. One side holds events the "
                "other does not get (withheld) or serves different states for them; "
                "compare with 'pithnode explain RECORD' on both nodes")

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "status": self.status, "mirror_prefixes": list(self.prefixes),
                "tree_size": self.tree_size, "my_root": self.my_root,
                "their_root": self.their_root, "my_checkpoint": self.my_checkpoint,
                "their_checkpoint": self.their_checkpoint, "first_seen": self.first_seen,
                "last_checked": self.last_checked, "syncs": self.syncs,
                "differing_records": list(self.differing),
                "differing_truncated": self.truncated, "explanation": self.explain()}


# -- the checkpoint exchange's messages ------------------------------------------------------
class CheckpointExchangeError(DecodeError):
    """A checkpoint protocol message from a peer is malformed or breaks the protocol."""


_CP_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "cp_hello": {"note": (str,), "public_key": (bytes,), "fresh": (bool,)},
    "cp_ranges": {"ranges": (list,)},
    "cp_digests": {"digests": (list,)},
    "cp_leaves": {"lo": (str,), "hi": (str, type(None)), "limit": (int,)},
    "cp_leaf_list": {"leaves": (list,), "more": (bool,)},
    "cp_bye": {},
}


def _cp_encode(kind: str, **fields: Any) -> bytes:
    data: bytes = cbor2.dumps({"v": 1, "t": kind, **fields})
    if len(data) > MAX_CP_MESSAGE_BYTES:
        raise ProtocolError(f"checkpoint message of {len(data)} bytes exceeds the limit")
    return data


def _cp_decode(data: bytes, *kinds: str) -> tuple[str, dict[str, Any]]:
    def bad(message: str) -> CheckpointExchangeError:
        return CheckpointExchangeError("bad_checkpoint_message", message)

    if len(data) > MAX_CP_MESSAGE_BYTES:
        raise bad(f"message of {len(data)} bytes exceeds {MAX_CP_MESSAGE_BYTES}")
    try:
        obj = cbor_loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
            MemoryError) as exc:
        raise bad(f"malformed CBOR: {type(exc).__name__}") from exc
    if not isinstance(obj, dict) or obj.get("v") != 1 or obj.get("t") not in kinds:
        raise bad(f"expected one of {kinds} of version 1")
    kind = str(obj["t"])
    schema = _CP_FIELDS[kind]
    if set(obj) != {"v", "t", *schema}:
        raise bad(f"{kind} must have exactly the fields {sorted(schema)}")
    for name, types in schema.items():
        value = obj[name]
        if not isinstance(value, types) or (bool in types) != isinstance(value, bool):
            raise bad(f"{kind}.{name} has the wrong type")
        if isinstance(value, str) and len(value) > 32 << 10:
            raise bad(f"{kind}.{name} is too long")
    return kind, obj


def _pith_bound(value: Any, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise CheckpointExchangeError("bad_checkpoint_message", "a key bound is a short string")
    return value


def _span(pns: Sequence[str], lo: str, hi: str | None) -> tuple[int, int]:
    i = bisect_left(pns, lo)
    return i, (len(pns) if hi is None else max(i, bisect_left(pns, hi)))


def _range_digest(cp: SignedCheckpoint, i: int, j: int) -> bytes:
    h = hashlib.sha256((j - i).to_bytes(8, "big"))
    for k in range(i, j):
        h.update(cp.tree.tree.leaf(k))
    return h.digest()


def _range_digests(cp: SignedCheckpoint, ranges: Sequence[tuple[str, str | None]]
                   ) -> list[list[Any]]:
    """``[count, digest]`` of our leaves in each key range (the ``cp_digests`` form)."""
    out: list[list[Any]] = []
    for lo, hi in ranges:
        i, j = _span(cp.tree.pith_numbers, lo, hi)
        out.append([j - i, _range_digest(cp, i, j)])
    return out


# -- the attestor ------------------------------------------------------------------------------
class Attestor:
    """Attestations, audits, repair, equivocation evidence and checkpoints of one node.

    Start with ``await nursery.start(attestor.run)`` once the node runs. ``clock`` (seconds,
    default trio's) drives the token buckets; created_at times come from ``node.wall``.
    """

    def __init__(self, node: Node, cfg: AttestConfig, *, limits: AttestLimits | None = None,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.node = node
        self.cfg = cfg
        self.limits = limits = limits if limits is not None else AttestLimits()
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.key = node.key
        self.fingerprint = node.key.fingerprint
        self.metrics = AttestMetrics(node.metrics.registry)
        self._signing = TokenBuckets(limits.sign_rate, limits.sign_burst, clock)
        per_min = limits.holder_challenges_per_minute
        self._holder_buckets = TokenBuckets(per_min / 60, per_min, clock)
        self._refresh_buckets = TokenBuckets(limits.refreshes_per_minute / 60,
                                             limits.refreshes_per_minute, clock)
        self._dirty: OrderedDict[str, None] = OrderedDict()
        self._scan: list[str] = []
        self._scan_requested = True
        self._wake = trio.Event()
        self._attest_lock = trio.Lock()
        self._last_signed: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self._evidence_sent: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._repair_send, self._repair_recv = trio.open_memory_channel[_RepairRequest](
            REPAIR_QUEUE)
        self._repair_pending: set[str] = set()
        self._audits_seen: OrderedDict[str, None] = OrderedDict()
        self._repairing = False
        self._last_repair: float | None = None
        self.repairs: deque[dict[str, Any]] = deque(maxlen=32)
        self._checkpoint: SignedCheckpoint | None = None
        self._checkpoint_at = 0.0
        self._checkpoint_lock = trio.Lock()
        self._store_changed = False
        self.peer_checkpoints: dict[str, PeerCheckpoint] = {}
        self._split_views: OrderedDict[str, SplitView] = OrderedDict()
        self._last_challenged: dict[str, float] = {}
        self._changed = trio.Event()
        self.changes = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def install_handlers(self) -> None:
        """Serve the audit and checkpoint protocols (``run`` does it too; idempotent)."""
        self.node.transport.set_stream_handler(AUDIT_PROTOCOL, self._on_audit_stream)
        self.node.transport.set_stream_handler(CHECKPOINT_PROTOCOL, self._on_checkpoint_stream)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._svc()
        self.install_handlers()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch_states)
            nursery.start_soon(self._attest_loop)
            nursery.start_soon(self._audit_loop)
            nursery.start_soon(self._checkpoint_loop)
            nursery.start_soon(self._repair_loop)
            task_status.started()

    def _svc(self) -> StoreService:
        if self.node.service is None:
            raise RuntimeError("the attestor needs a running node")
        return self.node.service

    def _bump(self) -> None:
        self.changes += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_change(self) -> None:
        """Return at the next change worth looking at (signed events, a repair, a
        checkpoint, a split view): for status watchers and tests."""
        await self._changed.wait()

    @property
    def idle(self) -> bool:
        """No changed record waits, no full pass is under way, no repair is pending."""
        return (not self._dirty and not self._scan and not self._scan_requested
                and not self._repair_pending and not self._repairing)

    def status(self) -> dict[str, Any]:
        cp = self._checkpoint
        return {"checkpoint": cp.to_json() if cp else None,
                "split_views": sum(v.status != "resolved" for v in self._split_views.values()),
                "peer_checkpoints": len(self.peer_checkpoints),
                "records_waiting": len(self._dirty) + len(self._scan),
                "repairs": list(self.repairs)}

    # -- changed records ---------------------------------------------------------------------
    async def _watch_states(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        started = False
        while True:
            feed = self.node.subscribe()
            try:
                if not started:
                    started = True
                    task_status.started()
                async for note in feed:
                    if note.get("kind") == "state" and isinstance(note.get("pith_number"), str):
                        self._mark_dirty(note["pith_number"])
            except InputError as exc:  # every subscriber slot is taken: full passes only
                log.warning("attestor cannot follow changes (%s); relying on full passes", exc)
            finally:
                if isinstance(feed, AsyncGenerator):
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await feed.aclose()
            await trio.sleep(self.cfg.mirror_hint_interval_s)

    def _mark_dirty(self, pn: str) -> None:
        self._dirty[pn] = None
        self._dirty.move_to_end(pn)
        if len(self._dirty) > self.limits.max_dirty:
            self._dirty.clear()
            self._scan_requested = True
        self._wake.set()

    def _next_record(self) -> str | None:
        if self._dirty:
            return self._dirty.popitem(last=False)[0]
        if self._scan:
            return self._scan.pop()
        return None

    # -- attestations ------------------------------------------------------------------------
    async def _attest_loop(self) -> None:
        interval = self.cfg.mirror_hint_interval_s
        next_pass = trio.current_time()
        while True:
            if trio.current_time() >= next_pass:
                self._scan_requested = True
                next_pass = trio.current_time() + interval
            try:
                await self.attest_once()
            except StoreError as exc:
                log.warning("attestation round failed: %s", exc)
            if self._dirty or self._scan:
                await trio.sleep(1 / self.limits.sign_rate)  # budget spent: wait for tokens
                continue
            self._wake = trio.Event()
            with trio.move_on_at(next_pass):
                await self._wake.wait()

    async def attest_once(self, *, full: bool = False) -> int:
        """Visit changed records (then those of a full pass) and sign what is missing or
        stale, until the signing budget or one round's visits are spent. Returns the number
        of events signed. ``full`` starts a full pass over every record first."""
        async with self._attest_lock:
            svc = self._svc()
            if self._repairing:
                return 0  # sign nothing about a store being repaired
            if full or self._scan_requested:
                self._scan_requested = False
                records = await trio.to_thread.run_sync(svc.store.records)
                self._scan = records[::-1]
            signed = 0
            for _ in range(MAX_VISITS_PER_ROUND if not full else 1 << 62):
                pn = self._next_record()
                if pn is None:
                    break
                done, n = await self._visit(pn)
                signed += n
                if not done:
                    self._dirty[pn] = None
                    self._dirty.move_to_end(pn, last=False)
                    break
            return signed

    async def _visit(self, pn: str) -> tuple[bool, int]:
        """Evidence, audit failures and attestations of one record; (finished, signed)."""
        svc = self._svc()
        try:
            st = await svc.state(pn, cached=False)  # a scan: leave the cache alone
            if st is None:
                return True, 0
            doc = json.loads(st.data)
            if st.equivocation_count:
                await self._spread_evidence(doc)
            self._note_audit_failures(doc)
            events = await svc.events(pn)
        except StoreCorrupt as exc:
            log.warning("record %s cannot be read: %s", pn, exc)
            self._request_repair(_RepairRequest("own_read_failed", record=pn))
            return True, 0
        wanted = await trio.to_thread.run_sync(self._wanted, pn, events, self.hint_payload())
        held = {e.event_id: e for e in events}
        out: list[Event] = []
        finished = True
        for etype, payload, slot, latest in wanted:
            if etype == "storage_attestation":
                prov = await svc.provenance(payload.pop("event_id"))
                if prov is None:
                    continue
                payload["held_since"] = utc_timestamp(prov.received_at)
            if not self._signing.take("sign"):
                finished = False
                break
            out.append(self._sign(pn, etype, payload, slot, held.get(latest or "")))
        if out:
            try:
                await self._publish(out)
            except StoreError as exc:
                log.warning("attestations of %s not stored: %s", pn, exc)
                self._request_repair(_RepairRequest("own_write_failed", record=pn))
        return finished, len(out)

    def _wanted(self, pn: str, events: Sequence[Event], hint: dict[str, Any] | None
                ) -> list[tuple[str, dict[str, Any], str, str | None]]:
        """What this node should sign about a record now: (type, payload, slot, event id of
        its newest own event in that slot). Storage payloads still lack ``held_since`` and
        carry the event's id instead (its provenance gives the time)."""
        mine: dict[tuple[str, str], Event] = {}
        for e in events:
            if e.signer.public_key_fingerprint == self.fingerprint \
                    and e.event_type in ATTESTATION_TYPES:
                k = (e.event_type, slot_key(e.event_type, e.payload, e.event_id))
                if k not in mine or e.time_key > mine[k].time_key:
                    mine[k] = e
        content = sorted((e for e in events if e.event_type not in ATTESTATION_TYPES),
                         key=lambda e: (e.time_key, e.event_id))
        if not content:
            return []
        out: list[tuple[str, dict[str, Any], str, str | None]] = []

        def want(etype: str, payload: dict[str, Any], slot: str) -> None:
            have = mine.get((etype, slot))
            if have is None or have.payload != payload:
                out.append((etype, payload, slot, have.event_id if have else None))

        state = content_state_payload(pn, content, self.node.spec)
        if state is not None:
            want("state_attestation", state, "state")
        for e in content[:self.limits.objects_per_record]:
            data = e.canonical_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if ("storage_attestation", sha) not in mine:  # an object's attestation stands
                out.append(("storage_attestation", {"object_sha256": sha, "size": len(data),
                                                    "kind": "event", "event_id": e.event_id},
                            sha, None))
        if hint is not None:
            want("mirror_hint", hint, "mirror")
        return out

    def hint_payload(self) -> dict[str, Any] | None:
        """This node's mirror hint: its base URL, multiaddrs and mirror prefixes."""
        base = self.node.cfg.http.public_url or self.node.http_url or ""
        addrs = [a for a in self.node.transport.listen_addresses() if 0 < len(a) <= 512][:64]
        if not base and not addrs:
            return None
        return {"base_urls": [base] if base else [], "multiaddrs": addrs,
                "prefixes": list(self.node.prefixes)}

    def _sign(self, subject: str, etype: str, payload: dict[str, Any], slot: str,
              latest: Event | None) -> Event:
        """Sign one event whose created_at is after every earlier own event of its slot."""
        key = (subject, etype, slot)
        now = int(self.node.wall())
        floor = max(latest.time_key // 1_000_000 if latest else -1,
                    self._last_signed.get(key, -1)) + 1
        seconds = max(now, floor)
        signed = self._last_signed
        signed[key] = seconds
        signed.move_to_end(key)
        # An entry older than the clock can no longer raise a floor (the clock is above
        # it), so only the last few seconds' signatures are kept: oldest first, in order
        # of signing.
        while signed and (len(signed) > _REMEMBERED or next(iter(signed.values())) < now):
            signed.popitem(last=False)
        return make_native_event(self.key, event_type=etype, subject=subject, payload=payload,
                                 created_at=utc_timestamp(seconds), signer_id=self.node.name,
                                 signer_type="node")

    async def _publish(self, events: Sequence[Event]) -> None:
        """Store signed events (they enter this node's states), then gossip them."""
        outcomes = {o.event_id: o for o in await self.node.ingest(events, source=LOCAL_SOURCE)}
        fresh = []
        for ev in events:
            o = outcomes.get(ev.event_id)
            if o is not None and o.outcome == "new":
                fresh.append(ev)
                self.metrics.signed.labels(ev.event_type).inc()
            elif o is not None and o.outcome == "rejected":
                log.error("own %s event %s rejected: %s", ev.event_type, ev.event_id[7:19],
                          o.reason)
        if fresh:
            self.node.gossip.mark_seen([e.event_id for e in fresh])
            await self.node.gossip.publish([e.canonical_bytes() for e in fresh])
            self._bump()

    # -- equivocation evidence ---------------------------------------------------------------
    async def _spread_evidence(self, doc: dict[str, Any]) -> None:
        for q in doc.get("equivocations", []):
            ids = tuple(q.get("event_ids", []))
            if not ids or ids in self._evidence_sent:
                continue
            events = await self._svc().events_by_ids(list(ids))
            self._evidence_sent[ids] = None
            if len(self._evidence_sent) > _REMEMBERED:
                self._evidence_sent.popitem(last=False)
            if events:
                self.metrics.evidence.inc()
                log.info("equivocation by %s in %s: gossiping %d events as evidence",
                         q.get("signer", {}).get("public_key_fingerprint", "?")[:12],
                         doc.get("pith_number"), len(events))
                await self.node.gossip.publish([e.canonical_bytes() for e in events])
                self._bump()

    # -- audits: the holder ------------------------------------------------------------------
    async def _on_audit_stream(self, stream: Stream) -> None:
        peer = stream.remote_peer
        if not self._holder_buckets.take(str(peer)):
            self.metrics.audits.labels("holder", "rate_limited").inc()
            await stream.reset()
            return
        timeout = self.node.cfg.sync.timeout_s
        try:
            with trio.fail_after(timeout):
                msg = decode_audit_message(await stream.receive_frame())
            pub = public_key_of_peer(peer)
            if not isinstance(msg, Challenge):
                raise AuditError("not_a_challenge", "a holder takes challenges")
            if pub is None or fingerprint_hex(pub) != msg.challenger:
                raise AuditError("wrong_challenger", "the challenger field names another key")
            if abs(msg.issued_at - self.node.wall()) > MAX_CLOCK_SKEW_S:
                raise AuditError("stale_challenge", "issued_at is too far from our clock")
            answer = await self.answer(msg)
            with trio.fail_after(timeout):
                await stream.send_frame(encode_audit_message(answer))
        except AuditError as exc:
            self.metrics.audits.labels("holder", "bad_request").inc()
            log.info("audit from %s refused: %s", short_id(peer), exc.reason)
            await stream.reset()
            return
        except trio.TooSlowError:
            self.metrics.audits.labels("holder", "timeout").inc()
            await stream.reset()
            return
        self.metrics.audits.labels("holder", "answered").inc()

    async def answer(self, challenge: Challenge) -> Answer:
        """Re-read every challenged object from the store now and sign its nonce digest
        (an unreadable object is answered as missing and scheduled for repair)."""
        store = self._svc().store
        damaged: list[bytes] = []

        def read(oid: bytes) -> bytes | None:
            try:
                return store.object(oid)
            except StoreCorrupt:
                damaged.append(oid)
                return None

        ans = await trio.to_thread.run_sync(answer_challenge, challenge, read, self.key)
        for oid in damaged:
            self._request_repair(_RepairRequest("own_read_failed", object_sha256=oid.hex()))
        return ans

    # -- audits: the challenger --------------------------------------------------------------
    async def _audit_loop(self) -> None:
        while True:
            await trio.sleep(self.cfg.audit_interval_s * self.rng.uniform(0.9, 1.1))
            try:
                await self.audit_once()
            except StoreError as exc:
                log.warning("audit round failed: %s", exc)

    def _peer_fingerprints(self) -> dict[str, PeerId]:
        out = {}
        for p in self.node.transport.connected_peers():
            pub = public_key_of_peer(p)
            if pub is not None:
                out[fingerprint_hex(pub)] = p
        return out

    async def _targets(self, sample: int | None) -> list[_Target]:
        """Storage attestations of connected peers, in a sample of the records held."""
        svc = self._svc()
        records = await trio.to_thread.run_sync(svc.store.records)
        if sample is not None and len(records) > sample:
            records = self.rng.sample(records, sample)
        peers = self._peer_fingerprints()
        out = []
        for pn in records:
            st = await svc.state(pn, cached=False)  # a scan: leave the cache alone
            if st is None:
                continue
            for e in json.loads(st.data)["current"]["storage_attestations"]:
                p, fp = e["payload"], e["signer"]["public_key_fingerprint"]
                if e["target"] == "storage" and p.get("kind") == "event" and fp in peers \
                        and fp != self.fingerprint:
                    out.append(_Target(peers[fp], bytes.fromhex(p["object_sha256"]),
                                       e["event_id"], pn))
        return out

    async def audit_once(self, *, holder: PeerId | None = None,
                         objects: Sequence[str] | None = None) -> list[AuditOutcome]:
        """One audit round: challenge a holder (random, or ``holder``) for a sample of the
        objects it attested (or those of ``objects``, hex), sign the outcomes and gossip
        them. Returns what was scored."""
        targets = await self._targets(None if holder or objects else
                                      self.limits.audit_sample_records)
        by_holder: dict[PeerId, list[_Target]] = {}
        for t in targets:
            by_holder.setdefault(t.holder, []).append(t)
        if holder is None:
            now = trio.current_time()
            ready = [h for h in sorted(by_holder) if now - self._last_challenged.get(
                h, -1e18) >= self.cfg.audit_interval_s / 2]
            if not ready:
                return []
            holder = self.rng.choice(ready)
        mine = by_holder.get(holder, [])
        if objects is not None:
            wanted = {bytes.fromhex(o) for o in objects}
            mine = [t for t in mine if t.object_id in wanted]
        chosen: dict[bytes, _Target] = {}
        for t in self.rng.sample(mine, len(mine)):
            if len(chosen) < self.cfg.audit_objects:
                chosen.setdefault(t.object_id, t)
        if not chosen:
            return []
        self._last_challenged[str(holder)] = trio.current_time()
        oids = tuple(sorted(chosen))
        own = await self._read_own(oids)
        holders = [holder]
        lacking = {o for o in oids if o not in own}
        for t in targets:  # others attesting what we lack: a majority settles it
            if t.object_id in lacking and t.holder not in holders \
                    and len(holders) <= self.limits.majority_holders:
                holders.append(t.holder)
        challenge = self.new_challenge(oids)
        results: dict[str, AuditResult] = {}
        outcomes: list[AuditOutcome] = []
        for h in holders:
            r = await self.challenge(h, challenge, own=own)
            if r is not None:
                results[h] = r
                continue
            self.metrics.audits.labels("challenger", "no_answer").inc()
            if h == holder:
                outcomes += [AuditOutcome(h, o.hex(), "no_answer", "no_answer") for o in oids]
        if lacking and len(results) > 1:
            results = majority_outcome(results, quorum=2)
        attested = {(t.holder, t.object_id): t for t in targets}
        signed: list[Event] = []
        for who, result in results.items():
            for o in result.outcomes:
                target = attested.get((PeerId(who), o.object_id))
                if target is None:
                    continue
                self.metrics.audits.labels("challenger", o.outcome).inc()
                event_id = None
                slot = target.attestation_event_id
                try:  # nothing is signed about a record this node cannot read
                    latest = await self._own_latest(target.subject, "storage_audit", slot)
                except StoreCorrupt:
                    self._request_repair(_RepairRequest("own_read_failed",
                                                        record=target.subject))
                    o = ObjectOutcome(o.object_id, "unknown", "challenger_record_damaged")
                if o.outcome != "unknown":
                    payload = storage_audit_payload(result, o.object_id, slot)
                    ev = self._sign(target.subject, "storage_audit", payload, slot, latest)
                    signed.append(ev)
                    event_id = ev.event_id
                outcomes.append(AuditOutcome(who, o.object_id.hex(), o.outcome, o.reason,
                                             event_id))
        if signed:
            await self._publish(signed)
        return outcomes

    def new_challenge(self, object_ids: Sequence[bytes]) -> Challenge:
        return Challenge(challenge_id=secrets.token_bytes(CHALLENGE_ID_BYTES),
                         nonce=secrets.token_bytes(NONCE_BYTES), object_ids=tuple(object_ids),
                         issued_at=int(self.node.wall()), challenger=self.fingerprint)

    async def _read_own(self, oids: Sequence[bytes]) -> dict[bytes, bytes]:
        """Our own intact copies of ``oids`` (damaged ones are scheduled for repair)."""
        store = self._svc().store
        damaged: list[bytes] = []

        def read() -> dict[bytes, bytes]:
            out = {}
            for oid in oids:
                try:
                    data = store.object(oid)
                except StoreCorrupt:
                    damaged.append(oid)
                    continue
                if data is not None:
                    out[oid] = data
            return out

        own = await trio.to_thread.run_sync(read)
        for oid in damaged:
            self._request_repair(_RepairRequest("own_read_failed", object_sha256=oid.hex()))
        return own

    async def _own_latest(self, subject: str, etype: str, slot: str) -> Event | None:
        latest = None
        for e in await self._svc().events(subject):
            if e.signer.public_key_fingerprint == self.fingerprint and e.event_type == etype \
                    and slot_key(etype, e.payload, e.event_id) == slot \
                    and (latest is None or e.time_key > latest.time_key):
                latest = e
        return latest

    async def challenge(self, peer: PeerId, challenge: Challenge, *,
                        own: dict[bytes, bytes] | None = None) -> AuditResult | None:
        """Send one challenge to one holder and score its answer; None without an answer.

        An answer that does not answer this challenge (replayed, for another nonce, badly
        signed or malformed) fails every object, with the reason.
        """
        pub = public_key_of_peer(peer)
        if pub is None:
            return None
        copies = own if own is not None else await self._read_own(challenge.object_ids)
        timeout = self.node.cfg.sync.timeout_s
        session = await trio.to_thread.run_sync(partial(  # hashes our copies: off-thread
            ChallengerSession, challenge, holder_public_key=pub, read_own=copies.get,
            timeout=max(1, int(timeout))))
        session.send(int(self.node.wall()))
        try:
            with trio.fail_after(timeout):
                stream = await self.node.transport.open_stream(peer, AUDIT_PROTOCOL)
                try:
                    await stream.send_frame(encode_audit_message(challenge))
                    data = await stream.receive_frame()
                finally:
                    with trio.move_on_after(1):
                        await stream.close()
        except (TransportError, trio.TooSlowError) as exc:
            log.info("audit of %s: no answer (%s)", short_id(peer), type(exc).__name__)
            return None
        try:
            msg = decode_audit_message(data)
            if not isinstance(msg, Answer):
                raise AuditError("not_an_answer", "the holder sent a challenge back")
            return session.receive_answer(msg, int(self.node.wall()))
        except AuditError as exc:
            log.info("audit of %s: answer rejected (%s)", short_id(peer), exc.reason)
            return AuditResult(challenge, session.holder, tuple(
                ObjectOutcome(o, "failed", f"answer_rejected:{exc.reason}")
                for o in challenge.object_ids))

    # -- repair --------------------------------------------------------------------------------
    def _note_audit_failures(self, doc: dict[str, Any]) -> None:
        for e in doc["current"]["storage_attestations"]:
            p = e["payload"]
            if e["target"] != "audit" or p.get("holder_fingerprint") != self.fingerprint \
                    or p.get("outcome") != "failed" or e["event_id"] in self._audits_seen:
                continue
            self._audits_seen[e["event_id"]] = None
            if len(self._audits_seen) > _REMEMBERED:
                self._audits_seen.popitem(last=False)
            challenger = _peer_of_key_id(e["signer"]["key_id"])
            self._request_repair(_RepairRequest(
                "audit_failed", object_sha256=p["object_sha256"],
                peers=(challenger,) if challenger else ()))

    def report_damage(self, *, record: str | None = None,
                      object_sha256: str | None = None) -> None:
        """Schedule a repair after the store reported damage elsewhere (e.g. an ingest that
        raised ``StoreCorrupt``)."""
        self._request_repair(_RepairRequest("store_damaged", object_sha256=object_sha256,
                                            record=record))

    def _request_repair(self, req: _RepairRequest) -> None:
        if req.key in self._repair_pending:
            return
        try:
            self._repair_send.send_nowait(req)
        except trio.WouldBlock:
            self.metrics.repairs.labels("dropped").inc()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the repair loop has stopped: the attestor is shutting down
        self._repair_pending.add(req.key)

    async def _repair_loop(self) -> None:
        async for req in self._repair_recv:
            try:
                await self.repair(req)
            except StoreError as exc:
                log.error("repair after %s failed: %s", req.reason, exc)
                self.metrics.repairs.labels("failed").inc()
            finally:
                self._repair_pending.discard(req.key)
                self._repairing = False
                self._bump()

    async def _object_state(self, sha: str) -> str:
        store = self._svc().store

        def check() -> str:
            try:
                return "ok" if store.object(sha) is not None else "missing"
            except StoreCorrupt:
                return "damaged"

        return await trio.to_thread.run_sync(check)

    async def repair(self, req: _RepairRequest) -> str:
        """Drop damaged objects (fsck repair), fetch their events again from peers that hold
        them, check the result. Returns the outcome: repaired, not_needed or failed."""
        svc = self._svc()
        state = "damaged" if req.object_sha256 is None else await self._object_state(
            req.object_sha256)
        if state == "ok":
            log.info("repair after %s: object %s reads intact", req.reason,
                     req.object_sha256[:16] if req.object_sha256 else "")
            return self._repaired(req, "not_needed", [])
        dropped: list[str] = []
        if state == "damaged":  # a missing object only needs fetching
            if self._last_repair is not None:
                await trio.sleep_until(self._last_repair + self.limits.repair_min_gap_s)
            self._repairing = True
            self._last_repair = trio.current_time()
            report = await svc.repair()
            self._store_changed = True
            dropped = list(report.dropped_events)
            log.warning("repair after %s: dropped %d damaged event(s)", req.reason,
                        len(dropped))
            if not dropped and req.object_sha256 is None:
                return self._repaired(req, "not_needed", dropped)
        connected = self.node.transport.connected_peers()
        peers = [p for p in dict.fromkeys([*req.peers, *self.rng.sample(connected,
                                                                         len(connected))])
                 if p in connected][:self.limits.repair_peers]
        for peer in peers:
            if await self._restored(req, dropped):
                break
            try:
                await self.node.sync_with(peer)
            except SyncFailed as exc:
                log.info("repair: sync with %s failed: %s", short_id(peer), exc)
        ok = await self._restored(req, dropped)
        return self._repaired(req, "repaired" if ok else "failed", dropped)

    async def _restored(self, req: _RepairRequest, dropped: Sequence[str]) -> bool:
        if req.object_sha256 is not None and await self._object_state(
                req.object_sha256) != "ok":
            return False
        found = await self._svc().events_by_ids(list(dropped)) if dropped else []
        return len(found) == len(dropped)

    def _repaired(self, req: _RepairRequest, outcome: str, dropped: Sequence[str]) -> str:
        self.metrics.repairs.labels(outcome).inc()
        self.repairs.append({"reason": req.reason, "object_sha256": req.object_sha256,
                             "record": req.record, "outcome": outcome,
                             "dropped_events": len(dropped), "at": self.node.wall()})
        self._repairing = False
        if outcome == "failed":
            self._scan_requested = True  # states lost events: attest them again
        self._wake.set()
        return outcome

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._checkpoint

    async def checkpoint_now(self, *, force: bool = False) -> SignedCheckpoint:
        """This node's checkpoint over the records it holds now, recomputed when the store
        changed (at most every ``checkpoint_min_gap_s`` unless ``force``)."""
        async with self._checkpoint_lock:
            svc = self._svc()
            cp = self._checkpoint
            if cp is not None and not self._store_changed and cp.batches == svc.batches:
                return cp
            if cp is not None and not force and (trio.current_time() - self._checkpoint_at
                                                 < self.limits.checkpoint_min_gap_s):
                return cp
            batches, self._store_changed = svc.batches, False
            store, spec = svc.store, self.node.spec
            pairs = await trio.to_thread.run_sync(record_states, store)
            cp = await trio.to_thread.run_sync(partial(
                make_checkpoint, pairs, network=spec.name, key=self.key,
                prefixes=self.node.prefixes, signed_at=int(self.node.wall()), batches=batches))
            self._checkpoint, self._checkpoint_at = cp, trio.current_time()
            self.metrics.tree_size.set(cp.size)
            self._bump()
            return cp

    async def _checkpoint_loop(self) -> None:
        """A checkpoint at start; then, every interval, a new one and the exchanges."""
        first = True
        while True:
            try:
                await self.checkpoint_now()
            except StoreError as exc:
                log.warning("checkpoint failed: %s", exc)
            peers = [] if first else self.node.transport.connected_peers()
            first = False
            for peer in self.rng.sample(peers, min(len(peers), self.limits.checkpoint_peers)):
                try:
                    await self.exchange_checkpoints(peer)
                except (TransportError, InputError, StoreError, trio.TooSlowError) as exc:
                    log.info("checkpoint exchange with %s failed: %s", short_id(peer), exc)
            await trio.sleep(self.cfg.checkpoint_interval_s * self.rng.uniform(0.9, 1.1))

    def split_views(self) -> list[dict[str, Any]]:
        """Every split view seen (open ones first), with both roots and an explanation."""
        views = sorted(self._split_views.values(),
                       key=lambda v: (v.status == "resolved", -v.last_checked))
        return [v.to_json() for v in views]

    def _check_hello(self, peer: PeerId, f: dict[str, Any]) -> PeerCheckpoint:
        pub = f["public_key"]
        if len(pub) != 32 or peer_id_from_ed25519_public_key(pub) != peer:
            raise CheckpointExchangeError("key_not_peer", "the key does not name the peer")
        origin = checkpoint_origin(self.node.spec.name, pub)
        cp = verify_note(f["note"], origin, pub, origin=origin)
        coverage = checkpoint_coverage(cp)
        if coverage is None:
            raise CheckpointExchangeError("no_coverage", "the checkpoint states no coverage")
        theirs = PeerCheckpoint(str(peer), f["note"], cp.size, cp.root, *coverage)
        self.peer_checkpoints[str(peer)] = theirs
        if len(self.peer_checkpoints) > 4 * self.node.cfg.p2p.max_peers:
            self.peer_checkpoints.pop(next(iter(self.peer_checkpoints)))
        return theirs

    async def exchange_checkpoints(self, peer: PeerId) -> dict[str, Any]:
        """Swap checkpoints with a peer. The same coverage and size with another root is a
        possible split view: sync with the peer and compare fresh checkpoints, naming the
        records whose states differ; records that still differ after
        :data:`CONFIRM_SYNCS` completed syncs confirm it (events in flight do not survive
        two syncs, a withheld event does). Returns what was found."""
        mine = await self.checkpoint_now()
        status, theirs, _, _ = await self._exchange(peer, mine, fresh=False, diff=False)
        if status != "mismatch":
            view = self._split_views.get(str(peer))
            if status == "match" and view is not None and view.status != "resolved":
                self._settle(view, "resolved")
            return {"peer": str(peer), "status": status, "theirs": theirs.to_json()}
        view = self._suspect(str(peer), mine, theirs)
        persistent: set[str] | None = None
        differing: list[dict[str, str | None]] = []
        truncated = False
        for _ in range(CONFIRM_SYNCS):
            try:
                await self.node.sync_with(peer)
            except SyncFailed as exc:
                log.info("split view with %s: sync failed: %s", short_id(peer), exc)
                return {"peer": str(peer), "status": "mismatch", "split_view": view.to_json()}
            view.syncs += 1
            mine = await self.checkpoint_now(force=True)
            status, theirs, differing, truncated = await self._exchange(peer, mine, fresh=True,
                                                                        diff=True)
            view.last_checked = self.node.wall()
            if status != "mismatch":
                break
            names = {str(d["pith_number"]) for d in differing}
            persistent = names if persistent is None else persistent & names
            if not persistent and not truncated:
                break  # the differences moved: lag, not a split view
        if status == "match":
            self._settle(view, "resolved")
        elif status == "mismatch" and (persistent or truncated):
            view.my_root, view.their_root = mine.root.hex(), theirs.root.hex()
            view.my_checkpoint, view.their_checkpoint = mine.note, theirs.note
            view.differing = [d for d in differing if persistent is None
                              or d["pith_number"] in persistent]
            view.truncated = truncated
            self._settle(view, "confirmed")
            log.warning("split view with %s: %s", short_id(peer), view.explain())
        return {"peer": str(peer), "status": status, "split_view": view.to_json()}

    def _suspect(self, peer: str, mine: SignedCheckpoint, theirs: PeerCheckpoint) -> SplitView:
        now = self.node.wall()
        view = self._split_views.pop(peer, None)
        roots = (mine.root.hex(), theirs.root.hex())
        if view is None or view.status == "resolved" or (view.my_root, view.their_root) != roots:
            self.metrics.split_views.labels("suspected").inc()
            view = SplitView(peer, mine.prefixes, mine.size, *roots, mine.note, theirs.note,
                             now, now)
        self._split_views[peer] = view
        while len(self._split_views) > self.limits.max_split_views:
            self._split_views.popitem(last=False)
        self._bump()
        return view

    def _settle(self, view: SplitView, status: str) -> None:
        view.last_checked = self.node.wall()
        if view.status != status:
            view.status = status
            self.metrics.split_views.labels(status).inc()
        self._bump()

    async def _exchange(self, peer: PeerId, mine: SignedCheckpoint, *, fresh: bool, diff: bool
                        ) -> tuple[str, PeerCheckpoint, list[dict[str, str | None]], bool]:
        timeout = self.node.cfg.sync.timeout_s
        differing: list[dict[str, str | None]] = []
        truncated = False
        with trio.fail_after(timeout):
            stream = await self.node.transport.open_stream(peer, CHECKPOINT_PROTOCOL)
        try:
            with trio.fail_after(timeout):
                await stream.send_frame(_cp_encode("cp_hello", note=mine.note,
                                                   public_key=self.key.public_key,
                                                   fresh=fresh))
                _, hello = _cp_decode(await stream.receive_frame(), "cp_hello")
            theirs = self._check_hello(peer, hello)
            if theirs.prefixes != mine.prefixes or theirs.size != mine.size:
                status = "other_coverage"
            elif theirs.root == mine.root:
                status = "match"
            else:
                status = "mismatch"
                if diff:
                    differing, truncated = await self._diff(stream, mine, timeout)
            with trio.fail_after(timeout):
                await stream.send_frame(_cp_encode("cp_bye"))
        finally:
            with trio.move_on_after(1):
                await stream.close()
        return status, theirs, differing, truncated

    async def _ask(self, stream: Stream, timeout: float, kind: str, reply: str,
                   **fields: Any) -> dict[str, Any]:
        with trio.fail_after(timeout):
            await stream.send_frame(_cp_encode(kind, **fields))
            return _cp_decode(await stream.receive_frame(), reply)[1]

    async def _diff(self, stream: Stream, mine: SignedCheckpoint, timeout: float
                    ) -> tuple[list[dict[str, str | None]], bool]:
        """Bisect key ranges of the two trees; compare the small differing ranges leaf by
        leaf. Bounded in rounds, ranges and leaves; returns (records, truncated)."""
        pns = mine.tree.pith_numbers
        found: dict[str, tuple[str | None, str | None]] = {}
        pending: list[tuple[str, str | None]] = [("", None)]
        truncated = False
        for _ in range(MAX_DIFF_ROUNDS):
            if not pending or len(found) >= self.limits.max_reported_records:
                break
            if len(pending) > MAX_DIFF_PENDING:
                pending, truncated = pending[:MAX_DIFF_PENDING], True
            ranges: list[tuple[str, str | None]] = []
            for lo, hi in pending:
                i, j = _span(pns, lo, hi)
                if j - i <= DIFF_LEAF_RANGE:
                    truncated |= await self._compare_leaves(stream, mine, lo, hi, found,
                                                            timeout)
                    continue
                cuts = [pns[i + k * (j - i) // DIFF_SPLIT] for k in range(1, DIFF_SPLIT)]
                bounds: list[str | None] = [lo, *dict.fromkeys(cuts), hi]
                ranges += [(str(a), b) for a, b in pairwise(bounds)]
            pending = []
            if ranges:
                got = await self._ask(stream, timeout, "cp_ranges", "cp_digests",
                                      ranges=[[a, b] for a, b in ranges])
                theirs = got["digests"]
                if len(theirs) != len(ranges):
                    raise CheckpointExchangeError("bad_checkpoint_message",
                                                  "one digest per range")
                ours = await trio.to_thread.run_sync(_range_digests, mine, ranges)
                pending = [r for r, a, b in zip(ranges, ours, theirs, strict=True) if a != b]
        truncated |= bool(pending)
        out = [{"pith_number": pn, "mine": a, "theirs": b} for pn, (a, b) in sorted(
            found.items())][:self.limits.max_reported_records]
        return out, truncated or len(found) > len(out)

    async def _compare_leaves(self, stream: Stream, mine: SignedCheckpoint, lo: str,
                              hi: str | None, found: dict[str, tuple[str | None, str | None]],
                              timeout: float) -> bool:
        got = await self._ask(stream, timeout, "cp_leaves", "cp_leaf_list", lo=lo, hi=hi,
                              limit=MAX_CP_LEAVES)
        theirs: dict[str, str] = {}
        last = lo
        for leaf in got["leaves"][:MAX_CP_LEAVES]:
            if not (isinstance(leaf, list) and len(leaf) == 2 and isinstance(leaf[0], str)
                    and isinstance(leaf[1], bytes) and len(leaf[1]) == 32
                    and last <= leaf[0] and (hi is None or leaf[0] < hi)
                    and leaf[0] not in theirs):
                raise CheckpointExchangeError("bad_checkpoint_message",
                                              "leaves must be sorted (pith, 32 bytes) pairs "
                                              "inside the range asked")
            theirs[leaf[0]], last = leaf[1].hex(), leaf[0]
        i, j = _span(mine.tree.pith_numbers, lo, hi)
        ours = {mine.tree.pith_numbers[k]: mine.shas[k].hex() for k in range(i, j)}
        more = got["more"]
        for pn in sorted(set(ours) | set(theirs)):
            if more and pn > last:
                break
            if ours.get(pn) != theirs.get(pn):
                found[pn] = (ours.get(pn), theirs.get(pn))
        return bool(more)

    async def _on_checkpoint_stream(self, stream: Stream) -> None:
        peer = stream.remote_peer
        timeout = self.node.cfg.sync.timeout_s
        try:
            with trio.fail_after(timeout):
                _, hello = _cp_decode(await stream.receive_frame(), "cp_hello")
            self._check_hello(peer, hello)
            force = hello["fresh"] and self._refresh_buckets.take(str(peer))
            mine = await self.checkpoint_now(force=force)
            with trio.fail_after(timeout):
                await stream.send_frame(_cp_encode("cp_hello", note=mine.note,
                                                   public_key=self.key.public_key,
                                                   fresh=False))
            for _ in range(MAX_CP_REQUESTS):
                with trio.fail_after(timeout):
                    kind, f = _cp_decode(await stream.receive_frame(), "cp_ranges",
                                         "cp_leaves", "cp_bye")
                if kind == "cp_bye":
                    return
                reply = await trio.to_thread.run_sync(self._serve_request, mine, kind, f)
                with trio.fail_after(timeout):
                    await stream.send_frame(reply)
            raise CheckpointExchangeError("too_many_requests", "checkpoint session too long")
        except (InputError, trio.TooSlowError) as exc:
            log.info("checkpoint session from %s ended: %s", short_id(peer), exc)
            await stream.reset()

    @staticmethod
    def _serve_request(mine: SignedCheckpoint, kind: str, f: dict[str, Any]) -> bytes:
        pns = mine.tree.pith_numbers
        if kind == "cp_ranges":
            ranges = f["ranges"]
            if not 0 < len(ranges) <= MAX_CP_RANGES or not all(
                    isinstance(r, list) and len(r) == 2 for r in ranges):
                raise CheckpointExchangeError("bad_checkpoint_message",
                                              f"1 to {MAX_CP_RANGES} [lo, hi] ranges")
            bounds = [(str(_pith_bound(lo, False)), _pith_bound(hi, True)) for lo, hi in ranges]
            return _cp_encode("cp_digests", digests=_range_digests(mine, bounds))
        if not 0 < f["limit"] <= MAX_CP_LEAVES:
            raise CheckpointExchangeError("bad_checkpoint_message", "bad leaf limit")
        i, j = _span(pns, str(_pith_bound(f["lo"], False)), _pith_bound(f["hi"], True))
        end = min(j, i + f["limit"])
        return _cp_encode("cp_leaf_list", leaves=[[pns[k], mine.shas[k]] for k in range(i, end)],
                          more=end < j)
