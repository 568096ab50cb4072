"""The Scheduler: one object the simulator and the router process both drive.

    schedule(request) -> Decision      the complete dispatch order (node, plan, fair-queue group,
                                       pull order): demand + exact match + policy + bookkeeping
    apply(event)                       residency events into the PrefixIndex
    on_first_token / on_finish         completion feedback (load, TPOT, autoscaling)

It reads time only from the injected Clock, so it is the same code under a simulated clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored, ResidencyEvent
from preble_tiered.hashing import DEFAULT_BLOCK_SIZE
from preble_tiered.scheduler.clock import Clock
from preble_tiered.scheduler.cluster import ClusterState, Inflight
from preble_tiered.scheduler.cost_model import CostModel
from preble_tiered.scheduler.index import PrefixIndex
from preble_tiered.scheduler.policy import Policy, PolicyConfig
from preble_tiered.scheduler.registry import make_policy
from preble_tiered.scheduler.fair_queue import GROUPS, hit_group
from preble_tiered.scheduler.types import Branch, Decision, Plan, PullOrder, RouteRequest


@dataclass(frozen=True)
class SchedulerConfig:
    """How the router schedules."""

    policy: str = "e2_tiered"
    """Policy name (see `preble_tiered.scheduler.policy.policy_names`)."""
    n_nodes: int = 2
    block_size: int = DEFAULT_BLOCK_SIZE
    """Tokens per KV block; the engines' block size (multiple of 32 for vLLM on CPU)."""
    hbm_tokens: int | None = None
    """KV capacity of one node's GPU memory in tokens (None: the cost model's)."""
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.n_nodes <= 0:
            raise ValueError(f"n_nodes must be positive, got {self.n_nodes}")
        if self.hbm_tokens is not None and self.hbm_tokens < self.block_size:
            raise ValueError(f"hbm_tokens must hold at least one block, got {self.hbm_tokens}")


class Scheduler:
    def __init__(self, config: SchedulerConfig, cost: CostModel, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.index = PrefixIndex(config.policy_config.window_s, n_nodes=config.n_nodes)
        self.cluster = ClusterState(config.n_nodes, cost, config.block_size, self.index,
                                    config.hbm_tokens, config.policy_config.window_s)
        self.policy: Policy = make_policy(config.policy, self.cluster, config.policy_config)
        self.branch_counts: Counter[str] = Counter()
        self._promised: dict[str, tuple[int, list[int]]] = {}  # request -> (node, blocks)

    def schedule(self, req: RouteRequest) -> Decision:
        """Choose a node and plan for `req` and record it as dispatched.

        Raises:
            ValueError: for an empty prompt or a duplicate request id.
            RuntimeError: when no node is alive.
        """
        if req.prompt_tokens <= 0:
            raise ValueError("prompt is empty: send at least one token")
        if req.request_id in self.cluster.inflight:
            raise ValueError(f"request id {req.request_id!r} is already in flight")
        now = self.clock.now()
        match = self.index.lookup(req.block_hashes, now)  # counts demand and matches
        decision = self.policy.route(req, match, now)
        plan = decision.plan
        cached = plan.cached_tokens
        self.cluster.on_dispatch(req.request_id, decision.node, req.prompt_tokens, cached,
                                 req.max_output_tokens, plan.est_prefill_s, now)
        self.policy.on_dispatched(req, decision, now)
        if self.policy.uses_pending and req.block_hashes:
            assert match.entries is not None and len(match.entries) == len(req.block_hashes)
            self.index.add_pending_entries(decision.node, match.entries)
            self._promised[req.request_id] = (decision.node, req.block_hashes)
        self.branch_counts[decision.branch._value_] += 1  # .value: a property, 5x the time
        decision.priority_group = min(GROUPS - 1, max(0, hit_group(min(1.0, cached / req.prompt_tokens))
                                                      + req.priority))
        decision.pull = self._pull_order(plan, req.block_hashes)
        return decision

    def order_on(self, node: int, req: RouteRequest) -> Decision:
        """The order for serving `req` on `node` with its cheapest plan (a pinned prefix's
        warm-up): read only, nothing counted as demand or dispatched. Background work, so
        the lowest fair-queue group."""
        planner = self.policy.planner
        plan = planner.build(node, planner.prepare(req, self.index.match(req.block_hashes)))
        return Decision(req.request_id, node, plan, Branch.REPLICATE, pull=self._pull_order(plan, req.block_hashes))

    def _pull_order(self, plan: Plan, hashes: list[int]) -> PullOrder | None:
        """The plan's "pull these blocks from node m", if it has one and m is alive (a dead
        source would only cost the node a failed call)."""
        src = plan.pull_from
        if src is None or plan.pull_blocks <= 0 or not self.cluster.nodes[src].alive:
            return None
        return PullOrder(src, hashes[plan.local_blocks:plan.local_blocks + plan.pull_blocks])

    def apply(self, event: ResidencyEvent) -> None:
        now = self.clock.now()
        if isinstance(event, BlockStored):
            self.index.store(event.node, event.tier, event.hashes, event.parent, now)
        elif isinstance(event, BlockRemoved):
            self.index.remove(event.node, event.tier, event.hashes, now)
        elif isinstance(event, AllBlocksCleared):
            self.index.clear_node(event.node, now, event.tier)
        else:
            raise TypeError(f"not a residency event: {event!r}")

    def on_first_token(self, request_id: str) -> None:
        self.cluster.on_first_token(request_id, self.clock.now())

    def on_finish(self, request_id: str, output_tokens: int) -> Inflight | None:
        now = self.clock.now()
        self._drop_promise(request_id, now)
        inf = self.cluster.on_finish(request_id, now, output_tokens)
        if inf is not None:
            ttft = None if inf.first_token_at is None else inf.first_token_at - inf.dispatched_at
            self.policy.on_finished(inf, now, ttft)
        return inf

    def mark_up(self, node: int, hbm_capacity_tokens: int | None = None) -> None:
        """Node (re)joined: alive again with no residency until its events/snapshot arrive."""
        now = self.clock.now()
        self.index.clear_node(node, now)
        self.cluster.set_alive(node, True)
        ns = self.cluster.nodes[node]
        if hbm_capacity_tokens is not None:
            if hbm_capacity_tokens < self.config.block_size:
                raise ValueError(f"node {node} reports {hbm_capacity_tokens} KV tokens: less than one block")
            ns.hbm_capacity_tokens = hbm_capacity_tokens

    def update_cost(self, cost: CostModel) -> None:
        """Swap in a recalibrated cost model (every reader sees it from the next decision)."""
        self.cluster.cost = cost
        planner = getattr(self.policy, "planner", None)
        if planner is not None:
            planner.cost = cost

    def mark_down(self, node: int) -> list[Inflight]:
        """Node lost: its residency is dropped; returns its in-flight requests to re-route."""
        lost = self.cluster.mark_down(node, self.clock.now())
        for inf in lost:
            self._promised.pop(inf.request_id, None)
        return lost

    def _drop_promise(self, request_id: str, now: float) -> None:
        promised = self._promised.pop(request_id, None)
        if promised is not None:
            self.index.clear_pending(promised[0], promised[1], now)

