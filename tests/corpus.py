"""A synthetic corpus for store tests: records, registry events and native events.

Records are signed by a TEST registry key (a generated key standing in for Pith's, listed
in a test network spec), in exactly the payload shape of the golden file's
``record_created``; native events of several types are signed by test node and author keys.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pithnode.protocol.bundle import build_bundle
from pithnode.protocol.canonical import canonical_json, canonical_sha256
from pithnode.protocol.events import Event, Signer, make_native_event
from pithnode.protocol.identifiers import (
    abstract_canon_sha256,
    pith_number_for_record,
    title_canon_sha256,
)
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.merge import Admission, merge
from pithnode.protocol.spec import NetworkSpec, RegistryKey, TrustedKey, spec_from_toml

ROOT = Path(__file__).resolve().parents[1]
NETWORK_TOML = ROOT / "configs" / "network.toml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "32UK2ZWI5AOEVO5BZHZCLHZWZL.state.json"
GOLDEN_PITH = "pith:2018:32UK2ZWI5AOEVO5BZHZCLHZWZL"

REGISTRY_KEY_ID = "test-registry"
REGISTRY_SIGNER_ID = "test.registry"
BUILDER = "pith-number-builder-2026-05-17-v1"


def key_from(label: str) -> SigningKey:
    """A deterministic test key (never Pith's)."""
    return SigningKey(hashlib.sha256(f"pithnode-test-key:{label}".encode()).digest())


@dataclass(frozen=True)
class Keys:
    registry: SigningKey
    node: SigningKey
    other_node: SigningKey
    authors: tuple[SigningKey, ...]

    @classmethod
    def make(cls, seed: str = "0") -> Keys:
        return cls(key_from(f"{seed}/registry"), key_from(f"{seed}/node"),
                   key_from(f"{seed}/other-node"),
                   tuple(key_from(f"{seed}/author/{i}") for i in range(4)))


def mainnet_spec(*importers: SigningKey) -> NetworkSpec:
    """configs/network.toml (Pith's real registry key, for verifying the golden file),
    trusting ``importers``."""
    spec = spec_from_toml(NETWORK_TOML.read_text("utf-8"), source=str(NETWORK_TOML))
    return spec.with_importers(*(TrustedKey(f"test-{i}", k.public_key)
                                 for i, k in enumerate(importers)))


def mainnet_toml(*importers: SigningKey) -> str:
    """TOML text of :func:`mainnet_spec` (for ``--network`` or the data dir)."""
    text = NETWORK_TOML.read_text("utf-8")
    for i, k in enumerate(importers):
        text += (f'\n[[trusted_importers]]\nname = "test-{i}"\n'
                 f'public_key_hex = "{k.public_key.hex()}"\n')
    return text


def net_spec(keys: Keys, *importers: SigningKey) -> NetworkSpec:
    """The test network: the test registry key as its only registry key."""
    base = mainnet_spec(*importers)
    reg = RegistryKey(REGISTRY_KEY_ID, REGISTRY_SIGNER_ID, keys.registry.public_key)
    return NetworkSpec(name="pith-test", registry_keys=(reg,),
                       trusted_importers=base.trusted_importers,
                       authorisation=base.authorisation)


def net_toml(keys: Keys, *importers: SigningKey) -> str:
    lines = ['[network]', 'name = "pith-test"', '', '[[registry_keys]]',
             f'key_id = "{REGISTRY_KEY_ID}"', f'signer_id = "{REGISTRY_SIGNER_ID}"',
             f'public_key_hex = "{keys.registry.public_key.hex()}"']
    for i, k in enumerate(importers):
        lines += ['', '[[trusted_importers]]', f'name = "test-{i}"',
                  f'public_key_hex = "{k.public_key.hex()}"']
    return "\n".join(lines) + "\n"


def _registry_signer(keys: Keys) -> Signer:
    return Signer(REGISTRY_KEY_ID, keys.registry.fingerprint, REGISTRY_SIGNER_ID,
                  "pith_registry")


def _registry_event(keys: Keys, event_type: str, subject: str, target: str, created_at: str,
                    payload: dict[str, Any]) -> Event:
    """A registry event; its id is opaque (Pith's rule is unknown), here a hash of it."""
    signer = _registry_signer(keys)
    core = [event_type, subject, target, created_at, signer.to_json(), payload]
    eid = "sha256:" + hashlib.sha256(b"test-registry-id" + canonical_json(core)).hexdigest()
    return Event(event_type, subject, target, created_at, signer, payload, eid, None)


@dataclass
class Record:
    pith: str
    arxiv: str
    version: int
    canonical_record: dict[str, Any]
    registry: list[Event]
    aliases: list[dict[str, str]]
    natives: list[Event] = field(default_factory=list)

    def state_bytes(self, spec: NetworkSpec) -> bytes:
        """The state Pith would serve: registry events and aliases only."""
        adm = Admission(tuple(self.registry), tuple(self.aliases))
        return merge(self.pith, [], spec, admissions=[adm]).served_bytes()

    def bundle_bytes(self, *, with_natives: bool = True) -> bytes:
        events = self.registry + (self.natives if with_natives else [])
        return build_bundle(self.pith, self.canonical_record, self.aliases, events)


def make_record(keys: Keys, n: int, *, version: int = 1) -> Record:
    """Record number ``n``: an arXiv paper with record_created and a graph snapshot."""
    arxiv = f"24{1 + n % 12:02d}.{10000 + n:05d}"
    title = f"Synthetic Paper {n}: On the Tiny Subspaces of Test Data"
    abstract = f"We study synthetic record {n} and find it well formed."
    submitted = f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}T12:{n % 60:02d}:07Z"
    record = {
        "metadata": {
            "abstract_canon_sha256": abstract_canon_sha256(abstract),
            "cross_cats_sorted": ["cs.AI", "stat.ML"],
            "license": "http://arxiv.org/licenses/nonexclusive-distrib/1.0/",
            "primary_cat": "cs.LG",
            "submitted_at": submitted,
            "title_canon_sha256": title_canon_sha256(title),
        },
        "schema_version": "1.0",
        "source": {"id": arxiv, "kind": "arxiv", "version": version},
    }
    digest = canonical_sha256(record)
    pith = str(pith_number_for_record(record))
    reg = keys.registry
    when = f"2026-05-{10 + n % 9:02d}T08:{n % 60:02d}:{(7 * n) % 60:02d}"
    receipt = {
        "algorithm": "ed25519",
        "builder_version": BUILDER,
        "canonical_sha256": digest,
        "first_computed_at": f"{when}.579846Z",
        "key_id": REGISTRY_KEY_ID,
        "kind": "pith_receipt",
        "last_reissued_at": f"{when}.579846Z",
        "public_key_fingerprint": reg.fingerprint,
        "receipt_version": "0.3",
        "signature_b64": base64.b64encode(reg.sign_digest(bytes.fromhex(digest))).decode(),
        "signature_status": "signed_v1",
        "signed_at": f"{when}.580571Z",
        "signed_message": "canonical_sha256_bytes",
    }
    created = _registry_event(keys, "record_created", pith, "record", f"{when}Z", {
        "attestation_state": "computed",
        "canonical_record": record,
        "canonical_sha256": digest,
        "receipt": receipt,
        "source_id": arxiv,
        "source_kind": "arxiv",
        "source_version": version,
    })
    snapshot = _registry_event(keys, "graph_snapshot", pith, "graph", f"{when}Z", {
        "graph_snapshot": {
            "builder_version": BUILDER,
            "claims": {"count": 0, "items": [], "snapshot_sha256": "0" * 64},
            "paper": {"abstract_excerpt": abstract, "authors_text": f"A. Author{n}",
                      "primary_cat": "cs.LG", "submitted_at": submitted, "title": title},
            "source": {"id": arxiv, "kind": "arxiv", "version": version},
        },
    })
    suffix = pith.rsplit(":", 1)[1]
    later = f"2026-05-18T12:{n % 60:02d}:02Z"
    aliases = [
        {"alias_kind": "arxiv", "alias_value": arxiv, "created_at": f"{when}Z"},
        {"alias_kind": "arxiv_version", "alias_value": f"{arxiv}v{version}",
         "created_at": f"{when}Z"},
        {"alias_kind": "doi", "alias_value": f"10.48550/arxiv.{arxiv}",
         "created_at": f"{when}Z"},
        {"alias_kind": "pith_short_12", "alias_value": suffix[:12], "created_at": later},
        {"alias_kind": "pith_short_16", "alias_value": suffix[:16], "created_at": later},
        {"alias_kind": "pith_short_8", "alias_value": suffix[:8], "created_at": later},
    ]
    return Record(pith, arxiv, version, record, [created, snapshot], aliases)


def _ts(i: int) -> str:
    return f"2026-06-{1 + (i // 86400) % 28:02d}T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:" \
           f"{i % 60:02d}Z"


def native_events(keys: Keys, rec: Record, others: list[Record], n: int) -> list[Event]:
    """Native events of every kind about ``rec``, including one invalid (wrong signer type)
    and one equivocation pair."""
    author = keys.authors[n % len(keys.authors)]
    node = keys.node
    subject = rec.pith
    base = 1000 * n

    def ev(key: SigningKey, etype: str, payload: dict[str, Any], stype: str, t: int,
           signer_id: str = "test") -> Event:
        return make_native_event(key, event_type=etype, subject=subject, payload=payload,
                                 created_at=_ts(base + t), signer_id=signer_id,
                                 signer_type=stype)

    orcid = f"0000-0002-{1000 + n % 9000:04d}-{100 + n % 900:03d}X"
    cited = others[n % len(others)].pith if others else subject
    out = [
        ev(author, "author_attestation", {"orcid": orcid, "name": f"A. Author{n}",
                                          "claim": "author"}, "author", 1),
        ev(author, "citation_signature", {"cited": cited, "relation": "supports",
                                          "note": f"builds on record {n}"}, "author", 2),
        ev(node, "timestamp_anchor", {"kind": "opentimestamps",
                                      "digest_sha256": hashlib.sha256(subject.encode())
                                      .hexdigest(),
                                      "proof_b64": base64.b64encode(b"ots" * 8).decode()},
           "node", 3),
        ev(node, "storage_attestation", {"object_sha256": hashlib.sha256(
            f"bundle {n}".encode()).hexdigest(), "size": 1234 + n, "kind": "bundle",
            "held_since": _ts(base)}, "node", 4),
        ev(author, "replication_record", {"kind": "replication",
                                          "reference": f"https://example.org/rep/{n}",
                                          "outcome": "replicated", "note": ""}, "author", 5),
        ev(node, "mirror_hint", {"base_urls": ["https://mirror.example.org"],
                                 "multiaddrs": [], "prefixes": [subject[10:12]]}, "node", 6),
        ev(author, "correction", {"field": "title", "value": f"Corrected title {n}",
                                  "reason": "typo"}, "author", 7),
        # invalid: an author attestation signed as a node
        ev(node, "author_attestation", {"orcid": orcid, "name": "Not Me", "claim": "author"},
           "node", 8),
        # an equivocation: the same slot, the same time, two different names
        ev(keys.authors[(n + 1) % len(keys.authors)], "author_attestation",
           {"orcid": orcid, "name": "Twin One", "claim": "author"}, "author", 9),
        ev(keys.authors[(n + 1) % len(keys.authors)], "author_attestation",
           {"orcid": orcid, "name": "Twin Two", "claim": "author"}, "author", 9),
    ]
    return out


def corpus(keys: Keys, n_records: int, *, natives: bool = True) -> list[Record]:
    recs = [make_record(keys, i) for i in range(n_records)]
    if natives:
        for i, rec in enumerate(recs):
            rec.natives = native_events(keys, rec, recs[:i] + recs[i + 1:], i)
    return recs


def bulk_events(keys: Keys, recs: list[Record], per_record: int, *, seed: int = 1
                ) -> list[Event]:
    """Many small native events (citations and anchors) spread over ``recs``."""
    rng = random.Random(seed)
    out = []
    for i in range(per_record * len(recs)):
        rec = recs[i % len(recs)]
        key = keys.authors[rng.randrange(len(keys.authors))]
        cited = recs[rng.randrange(len(recs))].pith
        out.append(make_native_event(
            key, event_type="citation_signature", subject=rec.pith,
            payload={"cited": cited, "relation": rng.choice(["supports", "cites", "extends"]),
                     "note": f"bulk note {i}"},
            created_at=_ts(rng.randrange(10_000_000)), signer_id="bulk", signer_type="author"))
    return out


def jsonl(events: list[Event]) -> bytes:
    return b"".join(e.canonical_bytes() + b"\n" for e in events)


def cli_main() -> Any:
    """``pithnode.node.cli.main`` (its COMMAND_MODULES list the store commands)."""
    from pithnode.node import cli

    return cli.main


@dataclass
class CliRun:
    code: int
    out: str
    err: str


def run_cli(*argv: str, stdin: bytes | None = None) -> CliRun:
    import io

    out, err = io.StringIO(), io.StringIO()
    code = cli_main()(list(argv), stdout=out, stderr=err,
                      stdin=io.BytesIO(stdin) if stdin is not None else None)
    return CliRun(code, out.getvalue(), err.getvalue())


#: A small driver that runs the store commands in a subprocess (``python -c DRIVER import
#: ...``): the handlers of ``node/cli_store.py`` behind a bare parser, without importing the
#: whole CLI (whose other commands pull in libp2p, ~2 s per start).
CLI_DRIVER = """\
import argparse, sys
from pithnode.node import cli_store
from pithnode.node.cli_context import Context
parser = argparse.ArgumentParser(prog="pithnode")
cli_store.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
ctx = Context(stdout=sys.stdout, stderr=sys.stderr, stdin=sys.stdin.buffer, network=None)
sys.exit(args.handler(args, ctx))
"""
