"""The policy interface, its typed config, and the registry that picks one by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from preble_tiered.scheduler.cluster import ClusterState, Inflight
from preble_tiered.scheduler.index import MatchResult
from preble_tiered.scheduler.types import Decision, RouteRequest


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of every policy, with the published defaults."""

    window_s: float = 180.0
    """E2 history window H (Preble: 3 minutes)."""
    rebalance_ratio: float = 1.5
    """Post-assignment rebalancing triggers when max load > ratio x min load (Preble: 1.5)."""
    rebalance_interval_s: float = 1.0
    """At most one rebalancing check per this many seconds (keeps decisions O(1) amortized)."""
    decode_heavy_hit_ratio: float = 0.7
    """A node whose windowed cache-hit ratio is at least this is decode-heavy (Preble: 0.7)."""
    pd_slack: float = 1.25
    """Explore prefers a decode-heavy node whose cost is within this factor of the best."""
    autoscale_ttft_ratio: float = 2.0
    """preble_e2 replicates a prefix whose windowed mean TTFT grew by this factor (Preble: 2);
    e2_tiered copies a hot prefix when another node would serve it this many times sooner."""
    decode_move_ratio: float = 1.5
    """e2_tiered moves a request off its prefix's holders when another node would decode it
    this many times sooner, its whole delay included (swept 1.2-2 on the twin and the GPU
    grid in docs/decisions.md)."""
    autoscale_window_s: float = 10.0
    """preble_e2 compares a prefix's mean TTFT between consecutive windows of this length
    (this project's choice, see docs/decisions.md; with H = 180 s a hot prefix swamps its node for minutes
    before the first comparison can happen)."""
    replicate_hot_share: float = 0.5
    """e2_tiered: a prefix is hot (worth one more node) while its requests in the window per
    node holding it reach this share of an average node's requests (swept 0.25 / 0.5 / 1 in
    docs/decisions.md)."""
    sglang_cache_threshold: float = 0.5
    sglang_balance_abs: int = 64
    sglang_balance_rel: float = 1.5
    sglang_tree_tokens: int | None = None
    """Capacity of sglang_cache_aware's approximate per-node tree (None: the node's HBM)."""
    dynamo_overlap_weight: float = 1.0
    dynamo_tier_credit: tuple[float, float, float] = (1.0, 0.75, 0.25)
    """Dynamo KV router's overlap credit for device / host / disk blocks."""
    explain: bool = False
    """Keep every candidate's cost terms on the Decision (for `explain`; slower)."""

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"window_s must be positive, got {self.window_s}")
        if self.rebalance_ratio <= 1.0:
            raise ValueError(f"rebalance_ratio must exceed 1, got {self.rebalance_ratio}")
        if not 0.0 <= self.decode_heavy_hit_ratio <= 1.0:
            raise ValueError("decode_heavy_hit_ratio must be within [0, 1]")
        if not 0.0 <= self.sglang_cache_threshold <= 1.0:
            raise ValueError("sglang_cache_threshold must be within [0, 1]")
        if self.autoscale_window_s <= 0:
            raise ValueError("autoscale_window_s must be positive")
        if self.replicate_hot_share <= 0:
            raise ValueError("replicate_hot_share must be positive")
        if self.pd_slack < 1.0 or self.autoscale_ttft_ratio <= 1.0:
            raise ValueError("pd_slack must be >= 1 and autoscale_ttft_ratio > 1")
        if self.decode_move_ratio <= 1.0:
            raise ValueError(f"decode_move_ratio must exceed 1, got {self.decode_move_ratio}")
        if len(self.dynamo_tier_credit) != 3 or not all(0 <= c <= 1 for c in self.dynamo_tier_credit):
            raise ValueError("dynamo_tier_credit needs three credits in [0, 1] (device, host, disk)")


class Policy(ABC):
    """Chooses a node and a plan for each request.

    Class attributes say which engine stack the policy models, so the simulator runs each
    policy on the system it was published with:
        uses_tiers: the chosen node loads KV from its own DRAM/disk tiers.
        uses_pulls: the chosen node may pull KV from another node.
        uses_pending: see below.
    """

    name: ClassVar[str]
    uses_tiers: ClassVar[bool] = False
    uses_pulls: ClassVar[bool] = False
    uses_pending: ClassVar[bool] = False
    """The router records where dispatched requests will leave their prefix (Preble's tree
    takes a prompt at assignment), so the next request for it finds it while it computes."""

    def __init__(self, cluster: ClusterState, config: PolicyConfig) -> None:
        self.cluster = cluster
        self.config = config

    @abstractmethod
    def route(self, req: RouteRequest, match: MatchResult, now: float) -> Decision:
        """Choose a node and plan for `req`.

        Args:
            req: the request (its block hashes are already counted in the index demand).
            match: the exact residency of `req`'s prefix per node (PrefixIndex.match).
            now: the scheduler's clock.

        Returns:
            The decision; the caller dispatches it and then calls `on_dispatched`.

        Raises:
            RuntimeError: when no node is alive (the caller maps it to UNAVAILABLE).
        """

    def on_dispatched(self, req: RouteRequest, decision: Decision, now: float) -> None:
        """Bookkeeping after `decision` was dispatched (default: nothing)."""

    def on_finished(self, inflight: Inflight, now: float, ttft_s: float | None) -> None:
        """A dispatched request finished (default: nothing)."""


def first_alive(cluster: ClusterState) -> int:
    for ns in cluster.nodes:
        if ns.alive:
            return ns.node
    raise RuntimeError("no node is alive")
