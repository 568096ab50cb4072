"""What the prefix admin sees of the router: a read-only view of the nodes, the index and the
clock, the node clients, and two doors that change something: index pins and runs of the
router's own (warm-ups, through the same submit path as clients' requests)."""

from __future__ import annotations

from collections.abc import Iterable

from preble_tiered.api.messages import NodeDone
from preble_tiered.hashing import BlockHasher
from preble_tiered.router.dispatch import Dispatcher
from preble_tiered.router.node_client import NodeClient
from preble_tiered.router.nodes import NodeSet
from preble_tiered.scheduler.clock import Clock
from preble_tiered.scheduler.index import PrefixIndex
from preble_tiered.types import GenParams, NodeId


class RouterView:
    def __init__(self, nodes: NodeSet, dispatch: Dispatcher, clock: Clock, hasher: BlockHasher) -> None:
        self._nodes = nodes
        self._dispatch = dispatch
        self._clock = clock
        self._hasher = hasher

    # ------------------------------------------------------------------ read only
    @property
    def block_size(self) -> int:
        return self._hasher.block_size

    @property
    def index(self) -> PrefixIndex:
        """The scheduler's index: read it; change pins only through `pin_blocks`/`unpin_blocks`."""
        return self._nodes.scheduler.index

    def now(self) -> float:
        """The index's clock (not wall time)."""
        return self._clock.now()

    def hash(self, token_ids: list[int]) -> list[int]:
        return self._hasher(token_ids)

    def vocab_size(self) -> int:
        """The cluster model's vocabulary (0 before a node registers)."""
        model = self._nodes.model
        return model.vocab_size if model is not None else 0

    def nodes(self) -> list[NodeId]:
        """Every registered node, alive or not, by id."""
        return sorted(self._nodes.links)

    def alive(self) -> list[NodeId]:
        return self._nodes.alive()

    def is_known(self, node: NodeId) -> bool:
        return node in self._nodes.links

    def is_alive(self, node: NodeId) -> bool:
        link = self._nodes.links.get(node)
        return link is not None and link.alive

    def node_name(self, node: NodeId) -> str:
        return self._nodes.name(node)

    def inflight(self, node: NodeId) -> int:
        """Requests dispatched to `node` and not finished."""
        return self._nodes.scheduler.cluster.nodes[node].n_inflight

    def client(self, node: NodeId) -> NodeClient:
        return self._nodes.links[node].client

    # ------------------------------------------------------------------ changes
    def pin_blocks(self, hashes: Iterable[int]) -> None:
        """Count a pin on each block: the scheduler never plans their eviction."""
        self.index.pin(hashes, self.now())

    def unpin_blocks(self, hashes: Iterable[int]) -> None:
        self.index.unpin(hashes, self.now())

    async def run_on(self, node: NodeId, request_id: str, prompt: list[int], params: GenParams,
                     timeout_s: float) -> NodeDone:
        """Run a request of the router's own on `node` (see `Dispatcher.run_on`)."""
        return await self._dispatch.run_on(node, request_id, prompt, params, timeout_s)
