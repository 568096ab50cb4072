"""Prometheus metrics of the router and the node agents (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _RequestMetrics:
    """What router and node both count per request, under `preble_<role>_...` names."""

    def __init__(self, role: str, registry: CollectorRegistry | None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(f"preble_{role}_requests", "Requests by outcome", ["status"], registry=r)
        self.ttft = Histogram(f"preble_{role}_ttft_seconds", f"Time to first token at the {role}",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(f"preble_{role}_latency_seconds", f"Request latency at the {role}",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"preble_{role}_prompt_tokens", "Prompt tokens served", registry=r)
        self.cached_tokens = Counter(f"preble_{role}_cached_tokens", "Prompt tokens served from cache",
                                     ["tier"], registry=r)


class RouterMetrics(_RequestMetrics):
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


class NodeMetrics(_RequestMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("node", registry)
        r = self.registry
        self.queue_depth = Gauge("preble_node_queue_depth", "Requests waiting for admission", registry=r)
        self.running = Gauge("preble_node_running", "Requests running in the engine", registry=r)
        self.kv_usage = Gauge("preble_node_kv_usage", "Share of the engine's KV cache in use", registry=r)
        self.event_batches = Counter("preble_node_event_batches", "Residency event batches published",
                                     registry=r)
        self.pulls = Counter("preble_node_pulls", "KV pulls from other nodes by result (complete/partial/failed)",
                             ["result"], registry=r)
        self.pulled_bytes = Counter("preble_node_pulled_bytes", "KV bytes pulled from other nodes", registry=r)


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> None:
    """Expose `registry` at http://addr:port/metrics (port 0: do nothing)."""
    if port:
        start_http_server(port, addr=addr, registry=registry)
