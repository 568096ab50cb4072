"""Prometheus metrics of the router process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from preble_tiered.api.metrics import RequestMetrics


class RouterMetrics(RequestMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("router", registry)
        r = self.registry
        self.branches = Counter("preble_router_routing_decisions", "Routing decisions by branch",
                                ["branch"], registry=r)
        self.decision = Histogram("preble_router_decision_seconds", "Time of one scheduling decision",
                                  buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1), registry=r)
        self.outstanding = Gauge("preble_router_outstanding_requests", "Requests accepted and not finished",
                                 registry=r)
        self.queue_depth = Gauge("preble_router_node_queue_depth", "Waiting requests reported by a node",
                                 ["node"], registry=r)
        self.inflight = Gauge("preble_router_node_inflight", "Requests dispatched to a node, not finished",
                              ["node"], registry=r)
        self.nodes_alive = Gauge("preble_router_nodes_alive", "Nodes alive", registry=r)
        self.reroutes = Counter("preble_router_reroutes", "Requests moved after a node failure", registry=r)
        self.resyncs = Counter("preble_router_resyncs", "Residency resynchronisations by snapshot",
                               ["node"], registry=r)
