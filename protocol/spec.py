"""The network spec: what every node of one network must share.

Trust roots (registry keys), trusted importers, which signer types may sign which event
types, the merge version and the gossip topic. Parsed by a pure function from TOML text into
a frozen dataclass; unknown keys are errors naming the section and key.
"""

from __future__ import annotations

import threading
import tomllib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .identifiers import fingerprint_hex

__all__ = [
    "DEFAULT_AUTHORISATION",
    "MERGE_VERSION",
    "STATE_VERSION",
    "NetworkSpec",
    "RegistryKey",
    "TrustedKey",
    "spec_from_toml",
]

MERGE_VERSION = "pith-open-graph-merge-v1"
STATE_VERSION = "1.0"
SIGNER_TYPES = ("pith_registry", "node", "author")

#: Which signer types may sign each event type, unless the spec says otherwise.
DEFAULT_AUTHORISATION: Mapping[str, tuple[str, ...]] = {
    "record_created": ("pith_registry",),
    "graph_snapshot": ("pith_registry",),
    "correction": ("pith_registry", "author"),
    "author_attestation": ("author",),
    "citation_signature": ("author", "node"),
    "timestamp_anchor": ("node", "author"),
    "replication_record": ("author", "node"),
    "storage_attestation": ("node",),
    "storage_audit": ("node",),
    "state_attestation": ("node",),
    "mirror_hint": ("node",),
    "registry_import": ("node",),
}


@dataclass(frozen=True, slots=True)
class RegistryKey:
    key_id: str
    signer_id: str
    public_key: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_hex(self.public_key)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    name: str
    public_key: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_hex(self.public_key)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    name: str
    registry_keys: tuple[RegistryKey, ...]
    trusted_importers: tuple[TrustedKey, ...] = ()
    authorisation: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: {k: frozenset(v) for k, v in DEFAULT_AUTHORISATION.items()}
    )
    #: signer types restricted to listed keys (fingerprints); absent types are open.
    allowed_signers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    merge_version: str = MERGE_VERSION
    state_version: str = STATE_VERSION
    #: memo of pure per-spec results (admissions, receipt checks), keyed by content ids,
    #: least recently used first (see ``protocol/merge.py``); a copy gets its own
    memo: OrderedDict[Any, Any] = field(default_factory=OrderedDict, init=False,
                                        compare=False, repr=False)
    memo_lock: threading.Lock = field(default_factory=threading.Lock, init=False,
                                      compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.merge_version != MERGE_VERSION:
            raise SpecError(f"unsupported merge_version {self.merge_version!r}")
        if self.state_version != STATE_VERSION:
            raise SpecError(f"unsupported state_version {self.state_version!r}")
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise SpecError(f"network name must be alphanumeric with - or _: {self.name!r}")

    @property
    def gossip_topic(self) -> str:
        return f"/pith/{self.name}/events/1"

    def registry_key(self, key_id: str) -> RegistryKey | None:
        for k in self.registry_keys:
            if k.key_id == key_id:
                return k
        return None

    def is_trusted_importer(self, public_key: bytes) -> bool:
        return any(k.public_key == public_key for k in self.trusted_importers)

    def with_importers(self, *keys: TrustedKey) -> NetworkSpec:
        """A copy that also trusts ``keys`` as importers (used for local dev networks)."""
        known = {k.public_key for k in self.trusted_importers}
        extra = tuple(k for k in keys if k.public_key not in known)
        return NetworkSpec(
            name=self.name,
            registry_keys=self.registry_keys,
            trusted_importers=self.trusted_importers + extra,
            authorisation=self.authorisation,
            allowed_signers=self.allowed_signers,
        )


def _hex32(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise SpecError(f"{where}: not hex") from exc
    if len(raw) != 32:
        raise SpecError(f"{where}: an Ed25519 public key is 32 bytes")
    return raw


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}")


def _str(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: {key} must be a non-empty string")
    return value


def spec_from_toml(text: str, *, source: str = "<network spec>") -> NetworkSpec:
    """Parse a network spec. Errors name ``source``, the section and the key."""
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise SpecError(f"{source}: TOML nested too deeply") from exc
    _check_keys(doc, {"network", "registry_keys", "trusted_importers", "authorisation",
                      "allowed_signers"}, source)
    net = doc.get("network")
    if not isinstance(net, dict):
        raise SpecError(f"{source}: missing [network] section")
    _check_keys(net, {"name", "merge_version", "state_version"}, f"{source} [network]")
    for name, kind in (("registry_keys", list), ("trusted_importers", list),
                       ("authorisation", dict), ("allowed_signers", dict)):
        if name in doc and not isinstance(doc[name], kind):
            what = "an array of tables" if kind is list else "a table"
            raise SpecError(f"{source}: {name} must be {what}")
    regs = []
    for i, r in enumerate(doc.get("registry_keys", [])):
        where = f"{source} [[registry_keys]] #{i + 1}"
        if not isinstance(r, dict):
            raise SpecError(f"{where}: expected a table")
        _check_keys(r, {"key_id", "signer_id", "public_key_hex", "fingerprint_hex"}, where)
        key = RegistryKey(_str(r, "key_id", where), _str(r, "signer_id", where),
                          _hex32(r.get("public_key_hex"), f"{where} public_key_hex"))
        if "fingerprint_hex" in r and r["fingerprint_hex"] != key.fingerprint:
            raise SpecError(f"{where}: fingerprint_hex does not match public_key_hex")
        regs.append(key)
    importers = []
    for i, r in enumerate(doc.get("trusted_importers", [])):
        where = f"{source} [[trusted_importers]] #{i + 1}"
        if not isinstance(r, dict):
            raise SpecError(f"{where}: expected a table")
        _check_keys(r, {"name", "public_key_hex"}, where)
        importers.append(TrustedKey(_str(r, "name", where),
                                    _hex32(r.get("public_key_hex"), f"{where} public_key_hex")))
    auth = {k: frozenset(v) for k, v in DEFAULT_AUTHORISATION.items()}
    for etype, signers in doc.get("authorisation", {}).items():
        where = f"{source} [authorisation] {etype}"
        if etype not in DEFAULT_AUTHORISATION:
            raise SpecError(f"{where}: unknown event type")
        if not isinstance(signers, list) or any(s not in SIGNER_TYPES for s in signers):
            raise SpecError(f"{where}: expected a list of signer types {SIGNER_TYPES}")
        auth[etype] = frozenset(signers)
    allowed: dict[str, frozenset[str]] = {}
    for stype, fps in doc.get("allowed_signers", {}).items():
        where = f"{source} [allowed_signers] {stype}"
        if stype not in ("node", "author"):
            raise SpecError(f"{where}: only node and author signers can be restricted")
        if not isinstance(fps, list) or not all(isinstance(f, str) for f in fps):
            raise SpecError(f"{where}: expected a list of key fingerprints (hex)")
        allowed[stype] = frozenset(fps)
    try:
        return NetworkSpec(
            name=_str(net, "name", f"{source} [network]"),
            registry_keys=tuple(regs),
            trusted_importers=tuple(importers),
            authorisation=auth,
            allowed_signers=allowed,
            merge_version=net.get("merge_version", MERGE_VERSION),
            state_version=net.get("state_version", STATE_VERSION),
        )
    except SpecError as exc:
        if str(exc).startswith(source):
            raise
        raise SpecError(f"{source} [network]: {exc}") from exc
