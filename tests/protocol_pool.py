"""A pool of events about one record that exercises every rule of the merge.

Test keys only. Used by the merge-law property tests and the trust-rule tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pithnode.node.synth import SynthConfig, SynthKeys, synth_keys, synth_record
from pithnode.protocol.events import Event, event_from_json, make_native_event
from pithnode.protocol.ingest import make_registry_imports
from pithnode.protocol.keys import SigningKey
from pithnode.protocol.spec import NetworkSpec

OUTSIDER = SigningKey(b"\x42" * 32)


@dataclass(frozen=True)
class Pool:
    keys: SynthKeys
    spec: NetworkSpec
    subject: str
    events: tuple[Event, ...]
    forged: frozenset[str]  # ids that must never be applied


def native(key: SigningKey, subject: str, etype: str, stype: str, payload: dict[str, Any],
           t: str) -> Event:
    return make_native_event(key, event_type=etype, subject=subject, payload=payload,
                             created_at=t, signer_id=f"{stype}-x", signer_type=stype)


def build_pool(seed: int = 3) -> Pool:
    keys = synth_keys(seed)
    spec = keys.spec()
    rec = synth_record(keys, 0, SynthConfig(seed=seed, invalid_rate=0.3, equivocation_rate=1.0,
                                            natives_per_record=12))
    subject = rec.pith_number
    node, author = keys.nodes[0], keys.authors[0]
    events = list(rec.events)
    forged: set[str] = set()
    # every native type, valid
    events += [
        native(node, subject, "state_attestation", "node",
               {"state_sha256": "ab" * 32, "event_set_fingerprint": "cd" * 32,
                "event_count": 3}, "2026-02-01T00:00:00Z"),
        native(node, subject, "state_attestation", "node",  # supersedes the one above
               {"state_sha256": "ef" * 32, "event_set_fingerprint": "cd" * 32,
                "event_count": 4}, "2026-02-02T00:00:00Z"),
        native(keys.nodes[1], subject, "mirror_hint", "node",
               {"base_urls": ["http://127.0.0.1:9"], "multiaddrs": [], "prefixes": []},
               "2026-02-01T00:00:00Z"),
        native(node, subject, "storage_audit", "node",
               {"attestation_event_id": "sha256:" + "11" * 32, "object_sha256": "22" * 32,
                "holder_fingerprint": keys.nodes[1].fingerprint, "outcome": "verified",
                "challenge_sha256": "33" * 32}, "2026-02-01T00:00:00Z"),
        # equivocation: one author, one orcid slot, same second, two contents
        native(author, subject, "author_attestation", "author",
               {"orcid": "0000-0001-2345-6789", "name": "A", "claim": "author"},
               "2026-03-01T00:00:00Z"),
        native(author, subject, "author_attestation", "author",
               {"orcid": "0000-0001-2345-6789", "name": "A", "claim": "not_author"},
               "2026-03-01T00:00:00Z"),
        # invalid: bad payload, wrong signer type
        native(node, subject, "citation_signature", "node",
               {"cited": "not a pith number", "relation": "cites", "note": ""},
               "2026-02-03T00:00:00Z"),
        native(author, subject, "mirror_hint", "author",
               {"base_urls": [], "multiaddrs": [], "prefixes": []}, "2026-02-04T00:00:00Z"),
    ]
    # a forged "pith.science" event: signed by an outsider claiming the registry signer type
    fake = native(OUTSIDER, subject, "correction", "pith_registry",
                  {"field": "title", "value": "forged", "reason": "forged"},
                  "2026-02-05T00:00:00Z")
    events.append(fake)
    forged.add(fake.event_id)
    # registry events admitted by an importer the spec does not trust
    created = next(e for imp in rec.events if imp.event_type == "registry_import"
                   for e in (event_from_json(x) for x in imp.payload["events"])
                   if e.event_type == "record_created")
    bogus = event_from_json({**json.loads(created.canonical_bytes()),
                             "event_id": "sha256:" + "99" * 32,
                             "event_type": "graph_snapshot", "target": "graph",
                             "payload": {"graph_snapshot": {"forged": True}}})
    untrusted = make_registry_imports(OUTSIDER, subject=subject, source="x", document=b"x",
                                      events=[bogus], source_aliases=[],
                                      created_at="2026-02-06T00:00:00Z", signer_id="outsider")
    events += untrusted
    forged.add(bogus.event_id)
    # a trusted importer admitting a conflicting copy of an existing registry event id
    snapshot = next(e for imp in rec.events if imp.event_type == "registry_import"
                    for e in (event_from_json(x) for x in imp.payload["events"])
                    if e.event_type == "graph_snapshot")
    conflicting = event_from_json({**json.loads(snapshot.canonical_bytes()),
                                   "created_at": "2026-01-01T00:00:01Z"})
    events += make_registry_imports(keys.importer, subject=subject, source="y", document=b"y",
                                    events=[conflicting], source_aliases=[],
                                    created_at="2026-02-07T00:00:00Z", signer_id="importer")
    return Pool(keys, spec, subject, tuple(events), frozenset(forged))
