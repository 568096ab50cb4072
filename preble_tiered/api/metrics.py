"""Prometheus plumbing shared by the router and the node agents: the per-request metrics both
count (one registry per process) and the /metrics endpoint."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RequestMetrics:
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


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> None:
    """Expose `registry` at http://addr:port/metrics (port 0: do nothing)."""
    if port:
        start_http_server(port, addr=addr, registry=registry)
