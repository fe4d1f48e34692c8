"""A synthetic corpus that looks like Pith's, for tests, benchmarks and demos.

Every key here is a *test* key derived from the seed: a test registry key signs receipts, a
test importer admits the registry events, test node and author keys sign native events of
every type. The network spec that trusts them is written beside the corpus. Deterministic
for a given seed (Ed25519 signatures are deterministic).
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pithnode.protocol.canonical import canonical_sha256
from pithnode.protocol.events import Event, event_from_json, make_native_event, utc_timestamp
from pithnode.protocol.identifiers import (
    abstract_canon_sha256,
    pith_number_for_record,
    title_canon_sha256,
)
from pithnode.protocol.ingest import make_registry_imports
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.spec import NetworkSpec, RegistryKey, TrustedKey

__all__ = ["SynthConfig", "SynthKeys", "SynthRecord", "generate", "synth_keys", "synth_record"]

REGISTRY_KEY_ID = "test-registry-v1"
REGISTRY_SIGNER_ID = "registry.test"
BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z
_WORDS = (
    "gradient", "descent", "subspace", "hessian", "spectrum", "training", "dynamics", "neural",
    "network", "optimization", "eigenvector", "curvature", "convergence", "stochastic",
    "learning", "model", "data", "bound", "theorem", "quantum", "field", "lattice", "protein",
    "graph", "causal", "inference",
)
CATS = ("cs.LG", "cs.AI", "stat.ML", "math.OC", "hep-th", "q-bio.BM", "cond-mat.stat-mech")


def _seeded_key(seed: int, label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(f"pithnode-synth:{seed}:{label}".encode()).digest())


@dataclass(frozen=True, slots=True)
class SynthKeys:
    registry: SigningKey
    importer: SigningKey
    nodes: tuple[SigningKey, ...]
    authors: tuple[SigningKey, ...]

    def spec(self, name: str = "pith-synth") -> NetworkSpec:
        return NetworkSpec(
            name=name,
            registry_keys=(RegistryKey(REGISTRY_KEY_ID, REGISTRY_SIGNER_ID,
                                       self.registry.public_key),),
            trusted_importers=(TrustedKey("synth-importer", self.importer.public_key),),
        )

    def spec_toml(self, name: str = "pith-synth") -> str:
        return (
            "# Network spec of a synthetic corpus: TEST keys only, never Pith's.\n"
            f'[network]\nname = "{name}"\n'
            'merge_version = "pith-open-graph-merge-v1"\nstate_version = "1.0"\n\n'
            f'[[registry_keys]]\nkey_id = "{REGISTRY_KEY_ID}"\n'
            f'signer_id = "{REGISTRY_SIGNER_ID}"\n'
            f'public_key_hex = "{self.registry.public_key.hex()}"\n\n'
            '[[trusted_importers]]\nname = "synth-importer"\n'
            f'public_key_hex = "{self.importer.public_key.hex()}"\n'
        )


def synth_keys(seed: int, *, nodes: int = 4, authors: int = 8) -> SynthKeys:
    return SynthKeys(
        registry=_seeded_key(seed, "registry"),
        importer=_seeded_key(seed, "importer"),
        nodes=tuple(_seeded_key(seed, f"node{i}") for i in range(nodes)),
        authors=tuple(_seeded_key(seed, f"author{i}") for i in range(authors)),
    )


@dataclass(frozen=True, slots=True)
class SynthConfig:
    seed: int = 1
    #: share of native events made invalid on purpose (unauthorised signer type)
    invalid_rate: float = 0.02
    #: share of records with an equivocating mirror hint
    equivocation_rate: float = 0.02
    #: extra native events per record, on average
    natives_per_record: int = 6


@dataclass(frozen=True, slots=True)
class SynthRecord:
    pith_number: str
    canonical_record: dict[str, Any]
    title: str
    events: tuple[Event, ...]


def _ts(t: int) -> str:
    return utc_timestamp(BASE_TIME + t)


def _title(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 9))).capitalize()


def _registry_signer(keys: SynthKeys) -> dict[str, str]:
    return {"key_id": REGISTRY_KEY_ID, "public_key_fingerprint": keys.registry.fingerprint,
            "signer_id": REGISTRY_SIGNER_ID, "signer_type": "pith_registry"}


def synth_record(keys: SynthKeys, index: int, cfg: SynthConfig) -> SynthRecord:
    """One record: registry events admitted by the test importer, plus native events."""
    rng = random.Random(f"{cfg.seed}:{index}")


    year = 2015 + index % 11
    arxiv = f"{year % 100:02d}{rng.randint(1, 12):02d}.{index % 100000:05d}"
    title = _title(rng)
    abstract = " ".join(rng.choice(_WORDS) for _ in range(40))
    cats = sorted(rng.sample(CATS, 3))
    submitted = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
    record = {
        "metadata": {
            "abstract_canon_sha256": abstract_canon_sha256(abstract),
            "cross_cats_sorted": cats[1:],
            "license": "http://arxiv.org/licenses/nonexclusive-distrib/1.0/",
            "primary_cat": cats[0],
            "submitted_at": submitted,
            "title_canon_sha256": title_canon_sha256(title),
        },
        "schema_version": "1.0",
        "source": {"id": arxiv, "kind": "arxiv", "version": 1},
    }
    subject = str(pith_number_for_record(record))
    digest = canonical_sha256(record)
    t0 = index * 60
    created = _ts(t0)


    receipt = {
        "algorithm": "ed25519", "builder_version": "synth-builder-v1",
        "canonical_sha256": digest, "first_computed_at": created, "key_id": REGISTRY_KEY_ID,
        "kind": "pith_receipt", "last_reissued_at": created,
        "public_key_fingerprint": keys.registry.fingerprint, "receipt_version": "0.3",
        "signature_b64": base64.b64encode(
            keys.registry.sign_digest(bytes.fromhex(digest))).decode(),
        "signature_status": "signed_v1", "signed_at": created,
        "signed_message": "canonical_sha256_bytes",
    }
    signer = _registry_signer(keys)

    def reg_id(kind: str) -> str:
        return "sha256:" + hashlib.sha256(f"{cfg.seed}:{index}:{kind}".encode()).hexdigest()

    registry = [
        event_from_json({
            "event_type": "record_created", "subject_pith_number": subject, "target": "record",
            "created_at": created, "signer": signer, "event_id": reg_id("record_created"),
            "payload": {"attestation_state": "computed", "canonical_record": record,
                        "canonical_sha256": digest, "receipt": receipt, "source_id": arxiv,
                        "source_kind": "arxiv", "source_version": 1}}),
        event_from_json({
            "event_type": "graph_snapshot", "subject_pith_number": subject, "target": "graph",
            "created_at": created, "signer": signer, "event_id": reg_id("graph_snapshot"),
            "payload": {"graph_snapshot": {
                "builder_version": "synth-builder-v1",
                "paper": {"title": title, "abstract_excerpt": abstract[:300],
                          "authors_text": ", ".join(f"Author {rng.randint(1, 999)}"
                                                    for _ in range(3)),
                          "primary_cat": cats[0], "submitted_at": submitted},
                "source": record["source"]}, "verdict_id": None}}),
    ]
    suffix = subject.split(":")[2]
    aliases = [{"alias_kind": k, "alias_value": v, "created_at": created} for k, v in (
        ("arxiv", arxiv), ("arxiv_version", f"{arxiv}v1"),
        ("doi", f"10.48550/arxiv.{arxiv}"), ("pith_short_12", suffix[:12]),
        ("pith_short_16", suffix[:16]), ("pith_short_8", suffix[:8]))]
    events: list[Event] = make_registry_imports(
        keys.importer, subject=subject, source="synth", document=digest.encode(),
        events=registry, source_aliases=aliases, created_at=created,
        signer_id="synth-importer")
    events.extend(_natives(keys, subject, digest, t0, rng, cfg))
    return SynthRecord(subject, record, title, tuple(events))


def _natives(keys: SynthKeys, subject: str, digest: str, t0: int, rng: random.Random,
             cfg: SynthConfig) -> Iterator[Event]:
    def ev(key: SigningKey, etype: str, stype: str, payload: dict[str, Any], t: int) -> Event:
        return make_native_event(key, event_type=etype, subject=subject, payload=payload,
                                 created_at=_ts(t), signer_id=f"{stype}-{key.fingerprint[:8]}",
                                 signer_type=stype)

    node = rng.choice(keys.nodes)
    author = rng.choice(keys.authors)
    makers: list[Callable[[int], Event]] = [
        lambda t: ev(node, "mirror_hint", "node", {
            "base_urls": [f"http://127.0.0.1:{8000 + keys.nodes.index(node)}"],
            "multiaddrs": [], "prefixes": [subject.split(":")[2][:2]]}, t),
        lambda t: ev(node, "storage_attestation", "node", {
            "object_sha256": hashlib.sha256(f"{subject}:{t}".encode()).hexdigest(),
            "size": rng.randint(500, 5000), "kind": "bundle", "held_since": _ts(t)}, t),
        lambda t: ev(node, "timestamp_anchor", "node", {
            "kind": "opentimestamps", "digest_sha256": digest,
            "proof_b64": "AE9wZW5UaW1lc3RhbXBz"}, t),
        lambda t: ev(author, "author_attestation", "author", {
            "orcid": f"0000-000{rng.randint(1, 9)}-{rng.randint(1000, 9999)}-"
                     f"{rng.randint(1000, 9999)}",
            "name": f"Author {rng.randint(1, 999)}", "claim": "author"}, t),
        lambda t: ev(author, "citation_signature", "author", {
            "cited": subject, "relation": rng.choice(["supports", "extends", "cites"]),
            "note": ""}, t),
        lambda t: ev(rng.choice(keys.nodes), "replication_record", "node", {
            "kind": "replication", "reference": f"https://example.org/rep/{t}",
            "outcome": "replicated", "note": ""}, t),
        lambda t: ev(author, "correction", "author", {
            "field": "title", "value": "corrected", "reason": "typo"}, t),
    ]
    count = max(1, int(rng.expovariate(1 / cfg.natives_per_record)))
    for j in range(count):
        t = t0 + 1 + j
        maker = makers[j % len(makers)]
        if rng.random() < cfg.invalid_rate:
            # a node key claiming an author's attestation: signer_not_authorised
            yield ev(node, "author_attestation", "node", {
                "orcid": "0000-0002-1825-0097", "name": "Forged", "claim": "author"}, t)
        else:
            yield maker(t)
    if rng.random() < cfg.equivocation_rate:
        t = t0 + 59
        for url in ("http://127.0.0.1:1/a", "http://127.0.0.1:1/b"):
            yield ev(node, "mirror_hint", "node",
                     {"base_urls": [url], "multiaddrs": [], "prefixes": []}, t)


def generate(keys: SynthKeys, records: int, cfg: SynthConfig) -> Iterator[SynthRecord]:
    for i in range(records):
        yield synth_record(keys, i, cfg)
