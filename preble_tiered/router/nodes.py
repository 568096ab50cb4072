"""The router's nodes: registration, one `NodeLink` per node, and up/down.

A node is marked down (its residency dropped in the scheduler, its requests re-routed by
their handlers) when its event stream or a submit breaks, or its load polls fail for
`down_after_s`; it comes back up when a snapshot succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import grpc

from preble_tiered.api.messages import NodeInfo, NodeLoad
from preble_tiered.events import ResidencyEvent
from preble_tiered.router.config import RouterConfig
from preble_tiered.router.errors import RequestError
from preble_tiered.router.metrics import RouterMetrics
from preble_tiered.router.node_client import EventStream, GrpcNodeClient, NodeClient
from preble_tiered.scheduler.core import Scheduler
from preble_tiered.scheduler.cost_model import ChunkedPrefill, CostModel, engine_cost_model, kv_shape
from preble_tiered.scheduler.profile import ClusterProfile
from preble_tiered.types import NodeId

logger = logging.getLogger(__name__)


@dataclass
class NodeLink:
    """What the router knows of one node, and its client."""

    node_id: NodeId
    address: str
    info: NodeInfo
    client: NodeClient
    alive: bool = False
    event_seq: int = 0
    resyncs: int = 0
    load: NodeLoad = field(default_factory=NodeLoad)
    requests_total: int = 0
    last_load_ok: float = 0.0
    behind_seq: int = 0  # a load report's event_seq we had not reached (seen once)
    events: EventStream | None = None  # the live event stream (cancelled to force a resync)
    rates: dict[str, float] = field(default_factory=dict)  # measured link bandwidths (bytes/s)
    resync_requested: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.info.name or self.address


class NodeIds(Protocol):
    """Where node ids are remembered by node name (the router's admin state file)."""

    def preferred(self, name: str) -> int | None: ...

    def reserved(self) -> set[int]: ...

    def remember(self, name: str, node: int) -> None: ...


def starting_cost(profile: ClusterProfile | None, info: NodeInfo) -> tuple[CostModel, str]:
    """The cost model the router routes on once the first node registered, and where it comes
    from: `profile`'s, with the node's KV capacity, when the profile was measured on the same
    KV layout (bytes per token: the model); else the guess (`engine_cost_model`). Either is
    refitted from what the nodes measure (`LoadFeed`)."""
    if profile is not None:
        if profile.kv_bytes_per_token == info.kv_bytes_per_token:
            cost = profile.cost_model()  # its prefill fit is per engine step: chunked by the nodes' budget
            chunk = info.max_batch_tokens or profile.engine.max_batch_tokens
            return replace(cost, prefill=ChunkedPrefill(profile.prefill, chunk), hbm_tokens=info.kv_capacity_tokens,
                           shape=kv_shape(info.model or cost.shape.name, info.kv_bytes_per_token)), \
                f"profile {profile.name}"
        logger.warning("profile %s was measured with %d KV bytes per token (%s); node %s serves %s with %d: "
                       "routing on the guess until the nodes' measurements refit it",
                       profile.name, profile.kv_bytes_per_token, profile.model, info.name, info.model,
                       info.kv_bytes_per_token)
        return (engine_cost_model(info.model or "engine", info.kv_bytes_per_token, info.kv_capacity_tokens),
                f"preset (cpu tiny; profile {profile.name} is for another KV layout)")
    return engine_cost_model(info.model or "engine", info.kv_bytes_per_token, info.kv_capacity_tokens), \
        "preset (cpu tiny)"


class NodeSet:
    """Every node that registered, by id (a name gets back the id it had: `NodeIds`)."""

    def __init__(self, config: RouterConfig, scheduler: Scheduler, metrics: RouterMetrics,
                 client_factory: Callable[[NodeId, str], NodeClient] = GrpcNodeClient,
                 ids: NodeIds | None = None) -> None:
        self.config = config
        self._ids = ids
        self.scheduler = scheduler
        self.metrics = metrics
        self.links: dict[NodeId, NodeLink] = {}
        self.model: NodeInfo | None = None
        """The first node's model: every node must serve the same."""
        self.cost_source = f"profile {config.profile.name}" if config.profile else "preset (cpu tiny)"
        """Where the costs the router started on come from, as `preble admin stats` shows it
        (`starting_cost`; until a node registers, the profile it was given)."""
        self._by_address: dict[str, NodeId] = {}
        self._client_factory = client_factory
        self.on_register: list[Callable[[NodeLink], None]] = []
        self.on_down: list[Callable[[NodeId], None]] = []

    def any_alive(self) -> bool:
        return any(lk.alive for lk in self.links.values())

    def alive(self) -> list[NodeId]:
        return [n for n, lk in self.links.items() if lk.alive]

    def name(self, node: NodeId) -> str:
        link = self.links.get(node)
        return link.name if link is not None else f"node-{node}"

    def register(self, address: str, info: NodeInfo) -> NodeId:
        """Add (or re-find) the node at `address`. Raises RequestError on a mismatch."""
        if not address:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "address is required")
        if info.block_size != self.config.block_size:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node block size {info.block_size} != router block size {self.config.block_size}; "
                               "start both with the same --block-size")
        if self.model is not None and (info.vocab_size, info.hash_namespace) != (
                self.model.vocab_size, self.model.hash_namespace):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node serves another model ({info.model}, vocab {info.vocab_size}) than the "
                               f"cluster ({self.model.model}, vocab {self.model.vocab_size})")
        node = self._by_address.get(address)
        if node is not None:
            self.links[node].info = info
            return node
        if len(self.links) >= self.config.max_nodes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the router takes at most {self.config.max_nodes} nodes (--max-nodes)")
        node = self._pick_id(info.name)
        if self.model is None:
            self.model = info
            cost, self.cost_source = starting_cost(self.config.profile, info)
            self.scheduler.update_cost(cost)
        link = self.links[node] = NodeLink(node, address, info, self._client_factory(node, address))
        self._by_address[address] = node
        if self._ids is not None:
            self._ids.remember(info.name, node)
        for cb in self.on_register:
            cb(link)
        logger.info("node %d registered: %s at %s", node, info.name, address)
        return node

    def _pick_id(self, name: str) -> NodeId:
        """The id this name had (if free), else the lowest free id no other known name had, else
        the lowest free one."""
        free = [i for i in range(self.config.max_nodes) if i not in self.links]
        if self._ids is None:
            return free[0]
        want = self._ids.preferred(name) if name else None
        if want in free:
            return want
        reserved = self._ids.reserved()
        return next((i for i in free if i not in reserved), free[0])

    def mark_up(self, link: NodeLink, seq: int, events: list[ResidencyEvent]) -> None:
        """A snapshot arrived: the node is up with exactly this residency."""
        if not link.alive:
            self.scheduler.mark_up(link.node_id, link.info.kv_capacity_tokens or None)
            link.alive = True
            link.last_load_ok = time.monotonic()
            logger.info("node %d (%s) is up", link.node_id, link.name)
        for ev in events:
            self.scheduler.apply(ev)
        link.event_seq = seq
        self.metrics.nodes_alive.set(len(self.alive()))

    def mark_down(self, link: NodeLink, why: str) -> None:
        """Drop a node's residency; its requests' handlers re-route them."""
        if not link.alive:
            return
        link.alive = False
        lost = self.scheduler.mark_down(link.node_id)
        for cb in self.on_down:
            cb(link.node_id)
        self.metrics.nodes_alive.set(len(self.alive()))
        logger.warning("node %d (%s) is down (%s); %d requests will be re-routed", link.node_id, link.name,
                       why, len(lost))

    async def close(self) -> None:
        for link in self.links.values():
            for t in link.tasks:
                t.cancel()
            await link.client.close()
