"""Dataclasses passed between the router front end, the policies and the engines."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from preble_tiered.types import NodeId, Tier


@dataclass(slots=True)
class RouteRequest:
    """What a policy sees of a request.

    Attributes:
        request_id: unique id.
        block_hashes: chained hashes of the prompt's full blocks (hashing module).
        prompt_tokens: prompt length in tokens (the trailing partial block included).
        max_output_tokens: the request's output budget; policies use it as the expected
            output length (the router cannot know when generation stops).
        priority: the client's priority in [-9, 9]; it shifts the node's fair-queue group.
    """

    request_id: str
    block_hashes: list[int]
    prompt_tokens: int
    max_output_tokens: int
    priority: int = 0


class Branch(enum.Enum):
    """Why a node was chosen (counted in metrics, shown by `explain`)."""

    EXPLOIT = "exploit"
    EXPLORE = "explore"
    REBALANCE = "rebalance"
    REPLICATE = "replicate"
    BASELINE = "baseline"  # a baseline policy's single rule


class Action(enum.Enum):
    """What the chosen node does with one part of the prompt."""

    IN_PLACE = "in_place"  # KV already in HBM
    FETCH = "fetch"  # KV in the node's DRAM or disk tier, copied up
    PULL = "pull"  # KV on another node, copied over the network
    RECOMPUTE = "recompute"


@dataclass(slots=True)
class PlanSegment:
    """One part of a plan. Not frozen: every decision builds two or three, and a frozen
    dataclass's __init__ costs about 3.6x a plain one's (1.6 against 0.4 us here); nothing
    changes a segment once its plan is built."""

    action: Action
    blocks: int  # KV blocks covered (0 for the RECOMPUTE tail's partial block)
    tokens: int
    tier: Tier | None = None  # IN_PLACE/FETCH: the local tier; PULL: the source's tier
    source: NodeId | None = None  # PULL only


@dataclass(slots=True)
class Plan:
    """How `node` serves the prompt: its first `local_blocks` from its own tiers, the next
    `pull_blocks` pulled from `pull_from`, the rest recomputed.

    The segments are in prompt order by group (local, pulled, recomputed); local blocks of
    different tiers may interleave along the prompt, so local segments carry counts.
    """

    node: NodeId
    segments: tuple[PlanSegment, ...]
    local_blocks: int = 0
    pull_blocks: int = 0
    pull_from: NodeId | None = None
    est_fetch_s: float = 0.0
    est_pull_s: float = 0.0
    est_prefill_s: float = 0.0

    def tokens(self, action: Action, tier: Tier | None = None) -> int:
        return sum(s.tokens for s in self.segments if s.action is action and (tier is None or s.tier is tier))

    @property
    def recompute_tokens(self) -> int:
        return self.tokens(Action.RECOMPUTE)

    @property
    def cached_tokens(self) -> int:
        n, recompute = 0, Action.RECOMPUTE
        for s in self.segments:  # a plain loop: read on every decision
            if s.action is not recompute:
                n += s.tokens
        return n

    @property
    def est_ttft_s(self) -> float:
        return self.est_fetch_s + self.est_pull_s + self.est_prefill_s

    def cached_by_source(self) -> dict[str, int]:
        """Cached tokens the plan expects, by source: "hbm", "dram", "disk" (this node's tiers)
        and "remote" (pulled from another node)."""
        out = {"hbm": 0, "dram": 0, "disk": 0, "remote": 0}
        pull, recompute = Action.PULL, Action.RECOMPUTE
        for s in self.segments:  # the router asks on every decision
            action = s.action
            if action is pull:
                out["remote"] += s.tokens
            elif action is not recompute and s.tier is not None:
                out[_SOURCE_OF_TIER[s.tier]] += s.tokens
        return out


_SOURCE_OF_TIER = tuple(t.name.lower() for t in Tier)  # by tier value: "hbm", "dram", "disk"


@dataclass(frozen=True, slots=True)
class PullOrder:
    """Blocks the chosen node pulls from another node before it runs the request."""

    source: NodeId
    block_hashes: list[int]


@dataclass(slots=True)
class CandidateCost:
    """One node's cost terms for a request (kept for `explain`).

    `evict_s` None: eviction was not priced there, because the node's cost without it (load
    + plan for explore; queued prefill + plan, + decode where e2_tiered's decode rule is in
    play, for a copy) already exceeded the chosen node's, so it could not have been chosen;
    `total_s` is then load + plan, a lower bound.
    `decode_s`: e2_tiered's decode term (the request's own decode steps at the node's batch
    and the slowdown it adds there), on the nodes where its decode rule weighed a move; None
    elsewhere. It is not part of `total_s` (Load already holds the node's decode backlog)."""

    node: NodeId
    load_s: float
    evict_s: float | None
    plan_s: float
    decode_s: float | None = None

    @property
    def total_s(self) -> float:
        return self.load_s + (self.evict_s or 0.0) + self.plan_s


class CostTerms(Protocol):
    """Every candidate's cost terms, as the policy computed them (parallel lists)."""

    def candidates(self) -> list[CandidateCost]: ...


@dataclass(slots=True)
class Decision:
    """The complete dispatch order: where the request runs, how (the plan), its place in the
    node's fair queue and what the node pulls first. The router only sends it.

    Attributes:
        priority_group: the node's fair-queue group (0..9): Preble's group of the plan's
            cache-hit ratio, shifted by the client's priority (`Scheduler.schedule` sets it).
        pull: blocks to pull from another (alive) node before running, if the plan has any.
        terms: the candidates' cost terms, kept as the policy's own parallel lists when
            `PolicyConfig.explain` is set (no per-candidate objects on the decision path);
            `candidates` builds the objects when asked (`explain`).
    """

    request_id: str
    node: NodeId
    plan: Plan
    branch: Branch
    terms: CostTerms | None = None
    priority_group: int = 0
    pull: PullOrder | None = None

    @property
    def predicted_cached(self) -> dict[str, int]:
        """Cached tokens the plan expects, by source (for usage, metrics and `explain`)."""
        return self.plan.cached_by_source()

    @property
    def candidates(self) -> list[CandidateCost]:
        return self.terms.candidates() if self.terms is not None else []
