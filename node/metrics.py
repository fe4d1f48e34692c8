"""The node's Prometheus metrics, in a registry of their own (never the global one).

One :class:`NodeMetrics` per node: the daemon updates it, ``NodeAPI.metrics_text()`` returns
:meth:`NodeMetrics.render`, and the HTTP mirror serves that text at ``/metrics``. Label values
must come from small fixed sets (outcomes, reason codes, route names, method names); never put
a peer id, a path or a Pith Number in a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["CONTENT_TYPE", "NodeMetrics"]

#: Content type of :meth:`NodeMetrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_PREFIX = "pithnode"


class NodeMetrics:
    """Counters and gauges of one node, owned by a private :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{_PREFIX}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"{_PREFIX}_{name}", doc, registry=r)

        # ingest
        self.events_ingested = counter(
            "events_ingested", "Events offered for ingest, by outcome (new, duplicate, rejected).",
            ("outcome",))
        self.events_rejected = counter(
            "events_rejected", "Events rejected at acceptance, by reason code.", ("reason",))
        # peers and gossip
        self.peers_connected = gauge("peers_connected", "Peers currently connected.")
        self.gossip_messages = counter(
            "gossip_messages", "Gossip messages, by direction (in, out).", ("direction",))
        self.gossip_events = counter(
            "gossip_events", "Events carried by gossip messages, by direction (in, out).",
            ("direction",))
        self.gossip_rejected = counter(
            "gossip_rejected", "Gossip messages rejected by validation, by reason code.",
            ("reason",))
        # sync
        self.sync_rounds = counter("sync_rounds", "Completed sync (reconciliation) rounds.")
        self.sync_errors = counter("sync_errors", "Sync sessions that failed, by reason code.",
                                   ("reason",))
        self.sync_events_fetched = counter("sync_events_fetched",
                                           "Events fetched from peers by sync.")
        self.sync_bytes = counter("sync_bytes", "Sync traffic in bytes, by direction (in, out).",
                                  ("direction",))
        # store
        self.store_size_bytes = gauge("store_size_bytes", "Size of the store on disk, in bytes.")
        self.records = gauge("records", "Records held by the store.")
        self.events = gauge("events", "Events held by the store.")
        # front ends
        self.http_requests = counter(
            "http_requests", "HTTP mirror requests, by route name and status code.",
            ("route", "status"))
        self.socket_requests = counter(
            "socket_requests", "Query socket requests, by method name.", ("method",))
        # the read cache (node/read_cache.py)
        self.read_cache_lookups = counter(
            "read_cache_lookups", "Document lookups of the read cache, by result (hit, miss).",
            ("result",))
        self.read_cache_bytes = gauge("read_cache_bytes",
                                      "Bytes of served documents the read cache holds.")
        self.read_cache_documents = gauge("read_cache_documents",
                                          "Served documents the read cache holds.")

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric above."""
        return generate_latest(self.registry)
