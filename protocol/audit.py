"""The storage audit: a challenger asks a holder to prove it still holds objects. Sans-io.

A challenge names up to :data:`MAX_OBJECTS_PER_CHALLENGE` objects (by SHA-256) and a fresh
32-byte nonce. The holder re-reads each object and answers ``SHA-256(nonce || bytes)``, or
``None`` for an object it does not have; it signs the answer with its node key. No digest
computed earlier can answer, because the nonce is new. The challenger compares each digest
with its own copy's, or, lacking a copy, marks it ``unknown`` so that answers of several
holders to the *same* challenge can be compared by :func:`majority_outcome`.

Wire messages are CBOR maps with ``v`` (version, 1) and ``t`` (type), built by ``to_wire``
and checked by ``from_wire``; :func:`decode_audit_message` size-checks bytes before
decoding. What is hashed or signed is canonical JSON (protocol/canonical.py), with a type tag
so that a challenge, an answer and an event can never be taken for one another:

* ``challenge_sha256 = SHA-256(canonical_json({"type": "pithnode_audit_challenge",
  "version", "challenge_id", "nonce", "object_ids", "issued_at", "challenger"}))``, byte
  strings as lower-case hex;
* the answer's signature is Ed25519 over the 32 raw bytes of ``SHA-256(canonical_json(
  {"type": "pithnode_audit_answer", "version", "challenge_id", "challenge_sha256",
  "holder", "digests"}))``, missing digests as ``null``.

The challenger's :class:`ChallengerSession` goes CREATED -> SENT -> ANSWERED or EXPIRED
through one transition table; time is the caller's ``now`` (integer seconds).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import cbor2

from .canonical import canonical_json, sha256_raw
from .errors import DecodeError, InputError, ProtocolError, TooLarge
from .identifiers import fingerprint_hex
from .keys import SigningKey, verify_digest
from .payloads import check_payload
from .wire import cbor_loads

__all__ = [
    "AUDIT_VERSION", "CHALLENGE_ID_BYTES", "DEFAULT_ANSWER_TIMEOUT", "MAX_AUDIT_MESSAGE_BYTES",
    "MAX_OBJECTS_PER_CHALLENGE", "NONCE_BYTES", "OUTCOMES",
    "Answer", "AnswerRejected", "AuditError", "AuditMessageTooLarge", "AuditResult",
    "AuditState", "AuditStateError", "Challenge", "ChallengerSession", "MalformedAuditMessage",
    "ObjectOutcome", "answer_challenge", "decode_audit_message", "encode_audit_message",
    "majority_outcome", "nonce_digest", "storage_audit_payload",
]

AUDIT_VERSION = 1
MAX_OBJECTS_PER_CHALLENGE = 256
#: One encoded message; 256 ids or digests of 32 bytes need about 9 KiB.
MAX_AUDIT_MESSAGE_BYTES = 64 << 10
CHALLENGE_ID_BYTES = 16
NONCE_BYTES = 32
DEFAULT_ANSWER_TIMEOUT = 300
MAX_ISSUED_AT = 1 << 40
OUTCOMES = ("verified", "failed", "missing", "unknown")
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")
_CHALLENGE_KEYS = frozenset({"v", "t", "challenge_id", "nonce", "object_ids", "issued_at",
                             "challenger"})
_ANSWER_KEYS = frozenset({"v", "t", "challenge_id", "challenge_sha256", "holder", "digests",
                          "signature"})


# -- errors --------------------------------------------------------------------------------
class AuditError(InputError):
    """An audit message or answer from a peer is unacceptable."""


class MalformedAuditMessage(AuditError, DecodeError):
    """Not a well-formed audit message of a known version."""


class AuditMessageTooLarge(AuditError, TooLarge):
    """An encoded message over :data:`MAX_AUDIT_MESSAGE_BYTES`, refused before decoding."""


class AnswerRejected(AuditError):
    """A well-formed answer that is not a valid answer to this session's challenge."""


class AuditStateError(ProtocolError):
    """The session got an input its state has no transition for (our bug, not the peer's)."""

    def __init__(self, state: AuditState, event: str) -> None:
        super().__init__(f"no transition from state {state.name} on input {event!r}")
        self.state = state
        self.input = event


def _bad(message: str, reason: str = "bad_audit_message") -> MalformedAuditMessage:
    return MalformedAuditMessage(reason, message)


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value < hi


def _check_bytes(value: Any, size: int, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise _bad(f"{name} must be {size} bytes")
    return value


def _check_fingerprint(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) != 32 or not _FINGERPRINT.fullmatch(value):
        raise _bad(f"{name} must be a key fingerprint (32 lower-case hex digits)")
    return value


def _check_version(value: Any) -> None:
    if not _is_int(value, 0, 1 << 32) or value != AUDIT_VERSION:
        shown = repr(value[:20]) if isinstance(value, str) else (
            str(value) if _is_int(value, 0, 1 << 32) else f"of type {type(value).__name__}")
        raise _bad(f"unsupported audit version {shown}", "bad_version")


def _wire_dict(obj: Any, kind: str, keys: frozenset[str]) -> dict[Any, Any]:
    if not isinstance(obj, dict):
        raise _bad("an audit message is a map")
    if "v" not in obj:
        raise _bad("audit message lacks its version", "bad_version")
    _check_version(obj["v"])
    if obj.get("t") != kind:
        raise _bad(f"not an {kind} message")
    if set(obj) != keys:
        raise _bad(f"{kind} must have exactly the fields {sorted(keys)}")
    return obj


def _bounded_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, (list, tuple)) or not 0 < len(value) <= MAX_OBJECTS_PER_CHALLENGE:
        raise _bad(f"{name} must list 1 to {MAX_OBJECTS_PER_CHALLENGE} items")
    return list(value)


# -- messages ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    challenge_id: bytes
    nonce: bytes
    object_ids: tuple[bytes, ...]
    issued_at: int
    challenger: str
    version: int = AUDIT_VERSION

    def __post_init__(self) -> None:
        _check_version(self.version)
        _check_bytes(self.challenge_id, CHALLENGE_ID_BYTES, "challenge_id")
        _check_bytes(self.nonce, NONCE_BYTES, "nonce")
        if not isinstance(self.object_ids, tuple):
            raise _bad("object_ids must be a tuple")
        for oid in _bounded_list(self.object_ids, "object_ids"):
            _check_bytes(oid, 32, "an object id")
        if len(set(self.object_ids)) != len(self.object_ids):
            raise _bad("object_ids must not repeat")
        if not _is_int(self.issued_at, 0, MAX_ISSUED_AT):
            raise _bad("issued_at must be whole seconds since the epoch")
        _check_fingerprint(self.challenger, "challenger")

    def to_wire(self) -> dict[str, Any]:
        return {"v": self.version, "t": "audit_challenge", "challenge_id": self.challenge_id,
                "nonce": self.nonce, "object_ids": list(self.object_ids),
                "issued_at": self.issued_at, "challenger": self.challenger}

    @classmethod
    def from_wire(cls, obj: Any) -> Challenge:
        d = _wire_dict(obj, "audit_challenge", _CHALLENGE_KEYS)
        return cls(challenge_id=d["challenge_id"], nonce=d["nonce"],
                   object_ids=tuple(_bounded_list(d["object_ids"], "object_ids")),
                   issued_at=d["issued_at"], challenger=d["challenger"], version=d["v"])

    def canonical_bytes(self) -> bytes:
        return canonical_json({
            "type": "pithnode_audit_challenge", "version": self.version,
            "challenge_id": self.challenge_id.hex(), "nonce": self.nonce.hex(),
            "object_ids": [o.hex() for o in self.object_ids], "issued_at": self.issued_at,
            "challenger": self.challenger})

    def challenge_sha256(self) -> str:
        """Hex SHA-256 of :meth:`canonical_bytes` (the ``storage_audit`` payload field)."""
        return sha256_raw(self.canonical_bytes()).hex()


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    challenge_id: bytes
    #: raw SHA-256 of the challenge answered: binds the nonce and the object list.
    challenge_sha256: bytes
    holder: str
    digests: tuple[bytes | None, ...]
    signature: bytes
    version: int = AUDIT_VERSION

    def __post_init__(self) -> None:
        _check_version(self.version)
        _check_bytes(self.challenge_id, CHALLENGE_ID_BYTES, "challenge_id")
        _check_bytes(self.challenge_sha256, 32, "challenge_sha256")
        _check_fingerprint(self.holder, "holder")
        if not isinstance(self.digests, tuple):
            raise _bad("digests must be a tuple")
        for d in _bounded_list(self.digests, "digests"):
            if d is not None:
                _check_bytes(d, 32, "a digest")
        _check_bytes(self.signature, 64, "signature")

    def signing_digest(self) -> bytes:
        return _answer_digest(self.version, self.challenge_id, self.challenge_sha256,
                              self.holder, self.digests)

    def to_wire(self) -> dict[str, Any]:
        return {"v": self.version, "t": "audit_answer", "challenge_id": self.challenge_id,
                "challenge_sha256": self.challenge_sha256, "holder": self.holder,
                "digests": list(self.digests), "signature": self.signature}

    @classmethod
    def from_wire(cls, obj: Any) -> Answer:
        d = _wire_dict(obj, "audit_answer", _ANSWER_KEYS)
        return cls(challenge_id=d["challenge_id"], challenge_sha256=d["challenge_sha256"],
                   holder=d["holder"], digests=tuple(_bounded_list(d["digests"], "digests")),
                   signature=d["signature"], version=d["v"])


def _answer_digest(version: int, challenge_id: bytes, challenge_sha256: bytes, holder: str,
                   digests: tuple[bytes | None, ...]) -> bytes:
    return sha256_raw(canonical_json({
        "type": "pithnode_audit_answer", "version": version, "challenge_id": challenge_id.hex(),
        "challenge_sha256": challenge_sha256.hex(), "holder": holder,
        "digests": [None if d is None else d.hex() for d in digests]}))


def encode_audit_message(msg: Challenge | Answer) -> bytes:
    data: bytes = cbor2.dumps(msg.to_wire())
    if len(data) > MAX_AUDIT_MESSAGE_BYTES:
        raise ProtocolError(f"audit message of {len(data)} bytes exceeds the limit")
    return data


def decode_audit_message(data: bytes) -> Challenge | Answer:
    """A challenge or an answer; raises :class:`AuditError` leaves for anything else."""
    if len(data) > MAX_AUDIT_MESSAGE_BYTES:
        raise AuditMessageTooLarge("audit_message_too_large",
                                   f"{len(data)} bytes exceeds {MAX_AUDIT_MESSAGE_BYTES}")
    try:
        obj = cbor_loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
            MemoryError) as exc:
        raise _bad(f"malformed CBOR: {type(exc).__name__}", "bad_cbor") from exc
    kind = obj.get("t") if isinstance(obj, dict) else None
    if kind == "audit_answer":
        return Answer.from_wire(obj)
    return Challenge.from_wire(obj)


# -- the holder ----------------------------------------------------------------------------
def nonce_digest(nonce: bytes, data: bytes) -> bytes:
    h = hashlib.sha256(nonce)
    h.update(data)
    return h.digest()


def answer_challenge(challenge: Challenge, read_object: Callable[[bytes], bytes | None],
                     key: SigningKey, *, check_own_copy: bool = True) -> Answer:
    """Re-read every challenged object and sign ``SHA-256(nonce || bytes)`` of each.

    ``read_object`` returns the stored bytes or None. With ``check_own_copy`` an object
    whose bytes no longer hash to its id is answered None (the holder knows it is lost).
    """
    digests: list[bytes | None] = []
    for oid in challenge.object_ids:
        data = read_object(oid)
        if data is None or (check_own_copy and hashlib.sha256(data).digest() != oid):
            digests.append(None)
        else:
            digests.append(nonce_digest(challenge.nonce, data))
    ch_sha = sha256_raw(challenge.canonical_bytes())
    digest = _answer_digest(AUDIT_VERSION, challenge.challenge_id, ch_sha, key.fingerprint,
                            tuple(digests))
    return Answer(challenge_id=challenge.challenge_id, challenge_sha256=ch_sha,
                  holder=key.fingerprint, digests=tuple(digests),
                  signature=key.sign_digest(digest))


# -- the challenger ------------------------------------------------------------------------
class AuditState(enum.Enum):
    CREATED = enum.auto()
    SENT = enum.auto()
    ANSWERED = enum.auto()
    EXPIRED = enum.auto()


#: (state, input) -> next state; anything else raises :class:`AuditStateError`.
_TRANSITIONS: Mapping[tuple[AuditState, str], AuditState] = {
    (AuditState.CREATED, "send"): AuditState.SENT,
    (AuditState.SENT, "answer"): AuditState.ANSWERED,
    (AuditState.SENT, "expire"): AuditState.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class ObjectOutcome:
    object_id: bytes
    outcome: str
    reason: str
    #: the holder's digest, when it answered one.
    digest: bytes | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ProtocolError(f"unknown outcome {self.outcome!r}")


@dataclass(frozen=True, slots=True)
class AuditResult:
    challenge: Challenge
    holder: str
    outcomes: tuple[ObjectOutcome, ...]

    def outcome_for(self, object_id: bytes) -> ObjectOutcome:
        for o in self.outcomes:
            if o.object_id == object_id:
                return o
        raise ProtocolError(f"object {object_id.hex()[:16]} was not challenged")


class ChallengerSession:
    """One challenge to one holder, from creation to an answer or expiry.

    ``read_own`` returns the challenger's own copy of an object, or None; copies that do
    not hash to their id count as absent. Only the expected digests are kept.
    """

    def __init__(self, challenge: Challenge, *, holder_public_key: bytes,
                 read_own: Callable[[bytes], bytes | None],
                 timeout: int = DEFAULT_ANSWER_TIMEOUT) -> None:
        if len(holder_public_key) != 32 or not _is_int(timeout, 1, MAX_ISSUED_AT):
            raise ProtocolError("a session needs a 32-byte holder key and a positive timeout")
        self.challenge = challenge
        self.holder_public_key = holder_public_key
        self.holder = fingerprint_hex(holder_public_key)
        self.timeout = timeout
        self.state = AuditState.CREATED
        self.deadline: int | None = None
        self.result: AuditResult | None = None
        self._challenge_sha = sha256_raw(challenge.canonical_bytes())
        self._expected: dict[bytes, bytes] = {}
        for oid in challenge.object_ids:
            own = read_own(oid)
            if own is not None and hashlib.sha256(own).digest() == oid:
                self._expected[oid] = nonce_digest(challenge.nonce, own)

    def _step(self, event: str) -> None:
        nxt = _TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise AuditStateError(self.state, event)
        self.state = nxt

    def _allowed(self, event: str) -> None:
        if (self.state, event) not in _TRANSITIONS:
            raise AuditStateError(self.state, event)

    def send(self, now: int) -> Challenge:
        """The challenge to send now; the answer is due ``timeout`` seconds later."""
        self._step("send")
        self.deadline = now + self.timeout
        return self.challenge

    def expire(self, now: int) -> AuditResult | None:
        """Past the deadline, end the session with every object missing; else None."""
        self._allowed("expire")
        if self.deadline is None or now < self.deadline:
            return None
        self._step("expire")
        self.result = AuditResult(self.challenge, self.holder, tuple(
            ObjectOutcome(oid, "missing", "no_answer_before_deadline")
            for oid in self.challenge.object_ids))
        return self.result

    def receive_answer(self, answer: Answer, now: int) -> AuditResult:
        """Check an answer and score each object.

        Raises :class:`AnswerRejected` (the session stays SENT) for an answer to another
        challenge, from another key or with a bad signature. An answer at or after the
        deadline expires the session instead.
        """
        self._allowed("answer")
        expired = self.expire(now)
        if expired is not None:
            return expired
        self._check(answer)
        outcomes = []
        for oid, digest in zip(self.challenge.object_ids, answer.digests, strict=True):
            expected = self._expected.get(oid)
            if digest is None:
                outcomes.append(ObjectOutcome(oid, "missing", "holder_lacks_object"))
            elif expected is None:
                outcomes.append(ObjectOutcome(oid, "unknown", "challenger_lacks_copy", digest))
            elif digest == expected:
                outcomes.append(ObjectOutcome(oid, "verified", "digest_matches", digest))
            else:
                outcomes.append(ObjectOutcome(oid, "failed", "digest_differs", digest))
        self._step("answer")
        self.result = AuditResult(self.challenge, self.holder, tuple(outcomes))
        return self.result

    def _check(self, answer: Answer) -> None:
        if answer.challenge_id != self.challenge.challenge_id:
            raise AnswerRejected("wrong_challenge", "answer is for another challenge")
        if answer.challenge_sha256 != self._challenge_sha:
            raise AnswerRejected("stale_answer",
                                 "answer is for another nonce or object list of this id")
        if answer.holder != self.holder:
            raise AnswerRejected("wrong_holder", f"answer is from {answer.holder}, expected "
                                 f"{self.holder}")
        if not verify_digest(self.holder_public_key, answer.signing_digest(), answer.signature):
            raise AnswerRejected("bad_signature", "answer signature does not verify")
        if len(answer.digests) != len(self.challenge.object_ids):
            raise AnswerRejected("wrong_digest_count", "one digest per challenged object")


def majority_outcome(answers_by_holder: Mapping[str, AuditResult], *,
                     quorum: int = 2) -> dict[str, AuditResult]:
    """Settle ``unknown`` outcomes by comparing holders' digests for the same challenge.

    All results must answer the same nonce and objects. For each object, a digest given by
    more than half of the holders and by at least ``quorum`` of them is taken as right:
    holders that gave it become ``verified``, holders that gave another ``failed``. Without
    such a majority ``unknown`` stays. Other outcomes are kept. Holders under one operator
    can agree on anything: count distinct operators, not keys, when choosing holders.
    """
    results = list(answers_by_holder.values())
    if not results:
        return {}
    first = results[0].challenge
    if any((r.challenge.nonce, r.challenge.object_ids) != (first.nonce, first.object_ids)
           for r in results):
        raise ProtocolError("majority_outcome compares answers to one nonce and object list")
    settled: dict[str, list[ObjectOutcome]] = {h: list(r.outcomes) for h, r in
                                               answers_by_holder.items()}
    for j in range(len(first.object_ids)):
        votes = Counter(r.outcomes[j].digest for r in results
                        if r.outcomes[j].outcome == "unknown")
        top = votes.most_common(1)
        winner = top[0][0] if top and top[0][1] >= quorum and 2 * top[0][1] > len(
            results) else None
        for outcomes in settled.values():
            o = outcomes[j]
            if o.outcome != "unknown":
                continue
            if winner is None:
                outcomes[j] = replace(o, reason="no_majority")
            elif o.digest == winner:
                outcomes[j] = replace(o, outcome="verified", reason="matches_majority")
            else:
                outcomes[j] = replace(o, outcome="failed", reason="differs_from_majority")
    return {h: replace(answers_by_holder[h], outcomes=tuple(o)) for h, o in settled.items()}


def storage_audit_payload(result: AuditResult, object_id: bytes,
                          attestation_event_id: str) -> dict[str, str]:
    """The ``storage_audit`` payload for one object (the node signs the event).

    ``verified`` stays ``verified``; ``failed`` and ``missing`` are ``failed``; an
    ``unknown`` outcome attests nothing and raises :class:`ProtocolError`.
    """
    o = result.outcome_for(object_id)
    if o.outcome == "unknown":
        raise ProtocolError("an unknown outcome cannot be attested")
    payload = {"attestation_event_id": attestation_event_id, "object_sha256": object_id.hex(),
               "holder_fingerprint": result.holder,
               "outcome": "verified" if o.outcome == "verified" else "failed",
               "challenge_sha256": result.challenge.challenge_sha256()}
    reason = check_payload("storage_audit", payload)
    if reason is not None:
        raise ProtocolError(f"storage_audit payload: {reason}")
    return payload
