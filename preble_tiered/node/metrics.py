"""Prometheus metrics of a node agent process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from preble_tiered.api.metrics import RequestMetrics


class NodeMetrics(RequestMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("node", registry)
        r = self.registry
        self.queue_depth = Gauge("preble_node_queue_depth", "Requests waiting for admission", registry=r)
        self.running = Gauge("preble_node_running", "Requests running in the engine", registry=r)
        self.kv_usage = Gauge("preble_node_kv_usage", "Share of the engine's KV cache in use", registry=r)
        self.event_batches = Counter("preble_node_event_batches", "Residency event batches published",
                                     registry=r)
        self.pulls = Counter("preble_node_pulls", "KV pulls from other nodes by result (complete/partial/failed) "
                             "and data path (mooncake/grpc)", ["result", "path"], registry=r)
        self.leased_blocks = Gauge("preble_node_leased_blocks", "blocks held for peers' bulk reads (leases)",
                                   registry=r)
        self.pulled_bytes = Counter("preble_node_pulled_bytes", "KV bytes pulled from other nodes", registry=r)
