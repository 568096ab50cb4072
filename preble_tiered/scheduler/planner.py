"""Plans: how a node would serve a prompt, and what that costs.

For node n the usable prefix may sit in n's HBM (used in place), n's DRAM/disk (fetched),
or on another node m (pulled); the rest is recomputed. A plan's time is

    fetch(local DRAM/disk blocks) + pull(blocks from m) + T_pf(new tokens, prompt length)

`PlanContext` holds what is the same for every node (computed once per request), so costing
a node is a few float operations; the `Plan` object is built only for the chosen node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from preble_tiered.scheduler.cost_model import CostModel
from preble_tiered.scheduler.index import MatchResult, NodeMatch
from preble_tiered.scheduler.types import Action, Plan, PlanSegment, RouteRequest
from preble_tiered.types import NodeId, Tier


@dataclass(slots=True)
class PlanContext:
    """Per-request constants for costing plans on any node."""

    req: RouteRequest
    match: MatchResult
    prompt_tokens: int
    recompute_all_s: float
    src: NodeId | None = None  # best pull source (pulls enabled), longest prefix anywhere
    src_blocks: int = 0
    src_disk_frac: float = 0.0
    default_s: float = 0.0  # plan time on a node holding nothing
    prefill_memo: dict[int, float] = field(default_factory=dict)  # cached tokens -> prefill s


@dataclass(slots=True)
class PlanChoice:
    kind: str  # "hbm" | "local" | "pull"
    local_blocks: int
    pull_blocks: int
    fetch_s: float
    pull_s: float
    prefill_s: float

    @property
    def total_s(self) -> float:
        return self.fetch_s + self.pull_s + self.prefill_s


class Planner:
    """Costs and builds plans under one cost model and capability set.

    Args:
        cost: the cost model.
        block_size: tokens per block.
        use_tiers: plans may fetch from the node's DRAM/disk tiers.
        use_pulls: plans may pull KV from another node.
    """

    def __init__(self, cost: CostModel, block_size: int, use_tiers: bool, use_pulls: bool) -> None:
        self.cost = cost
        self.block_size = block_size
        self.use_tiers = use_tiers
        self.use_pulls = use_pulls

    def _prefill_after(self, pc: PlanContext, blocks: int) -> float:
        """Prefill time of `pc`'s prompt with `blocks` blocks cached, the last prompt token
        always computed (the engine needs its logits, as in vLLM). Memoised per request:
        the plans of different nodes often reuse the same cached length."""
        cached = min(blocks * self.block_size, pc.prompt_tokens - 1)
        t = pc.prefill_memo.get(cached)
        if t is None:
            t = pc.prefill_memo[cached] = self.cost.prefill_s(pc.prompt_tokens - cached, pc.prompt_tokens)
        return t

    def prepare(self, req: RouteRequest, match: MatchResult) -> PlanContext:
        L = max(req.prompt_tokens, 1)
        pc = PlanContext(req, match, L, self.cost.prefill_s(L, L))
        pc.default_s = pc.recompute_all_s
        src = match.source if self.use_pulls else None  # chosen by the index's walk
        if src is not None:
            pc.src, pc.src_blocks = src.node, src.blocks
            pc.src_disk_frac = src.disk / src.blocks
            pc.default_s = min(pc.recompute_all_s, self._pull_choice(pc, 0, 0.0).total_s)
        return pc

    def choice(self, node: NodeId, pc: PlanContext) -> PlanChoice:
        """The cheapest plan for `node` (`plan_time` is its time, without the objects)."""
        nm = pc.match.get(node)
        if nm is None:
            recompute = PlanChoice("hbm", 0, 0, 0.0, 0.0, pc.recompute_all_s)
            if pc.src is not None and pc.src != node:
                pull = self._pull_choice(pc, 0, 0.0)
                return pull if pull.total_s < recompute.total_s else recompute
            return recompute
        best = PlanChoice("hbm", nm.hbm_prefix, 0, 0.0, 0.0, self._prefill_after(pc, nm.hbm_prefix))
        local_blocks, fetch_s = nm.hbm_prefix, 0.0
        if self.use_tiers and nm.blocks > nm.hbm_prefix:
            fetch_s = self._fetch_s(nm)
            local = PlanChoice("local", nm.blocks, 0, fetch_s, 0.0, self._prefill_after(pc, nm.blocks))
            if local.total_s < best.total_s:
                best = local
                local_blocks = nm.blocks
        if pc.src is not None and pc.src != node and pc.src_blocks > local_blocks:
            pull = self._pull_choice(pc, local_blocks, fetch_s if local_blocks > nm.hbm_prefix else 0.0)
            if pull.total_s < best.total_s:
                best = pull
        return best

    def plan_time(self, node: NodeId, pc: PlanContext) -> float:
        """`choice(node, pc).total_s`, the same sums in the same order, with no PlanChoice
        built: `plan_times` runs it once per holding shape on every decision."""
        nm = pc.match.nodes.get(node)
        if nm is None:
            return pc.default_s  # recompute, or a pull when there is a source
        best = self._prefill_after(pc, nm.hbm_prefix)
        hbm_prefix = local_blocks = nm.hbm_prefix
        fetch_s = 0.0
        blocks = nm.hbm + nm.pending + nm.dram + nm.disk
        if self.use_tiers and blocks > hbm_prefix:
            fetch_s = self._fetch_s(nm)
            local = fetch_s + 0.0 + self._prefill_after(pc, blocks)
            if local < best:
                best, local_blocks = local, blocks
        src = pc.src
        if src is not None and src != node and pc.src_blocks > local_blocks:
            pull = ((fetch_s if local_blocks > hbm_prefix else 0.0) + self._pull_s(pc, local_blocks)
                    + self._prefill_after(pc, pc.src_blocks))
            if pull < best:
                best = pull
        return best

    def plan_times(self, pc: PlanContext, n_nodes: int) -> list[float]:
        """Cheapest plan time for every node id: one `plan_time` per distinct holding shape
        (`MatchResult.shapes`: nodes often hold the same thing), the pull source apart (it
        cannot pull from itself); nodes holding nothing share `pc.default_s`."""
        times = [pc.default_s] * n_nodes
        src, plan_time = pc.src, self.plan_time
        for nodes in pc.match.shapes.values():
            n0 = nodes[0] if nodes[0] != src else (nodes[1] if len(nodes) > 1 else src)
            t = plan_time(n0, pc)
            for n in nodes:
                times[n] = t
        if src is not None:
            times[src] = plan_time(src, pc)
        return times

    def _fetch_s(self, nm: NodeMatch) -> float:
        bs = self.block_size
        return self.cost.fetch_s(Tier.DRAM, nm.dram * bs) + self.cost.fetch_s(Tier.DISK, nm.disk * bs)

    def _pull_s(self, pc: PlanContext, local_blocks: int) -> float:
        """Time to pull the source's blocks past `local_blocks` (from its disk in part)."""
        tokens = (pc.src_blocks - local_blocks) * self.block_size
        pull_s = self.cost.pull_s(tokens)
        if pc.src_disk_frac:
            pull_s += self.cost.fetch_s(Tier.DISK, int(tokens * pc.src_disk_frac))
        return pull_s

    def _pull_choice(self, pc: PlanContext, local_blocks: int, fetch_s: float) -> PlanChoice:
        return PlanChoice("pull", local_blocks, pc.src_blocks - local_blocks, fetch_s,
                          self._pull_s(pc, local_blocks), self._prefill_after(pc, pc.src_blocks))

    def build(self, node: NodeId, pc: PlanContext, choice: PlanChoice | None = None) -> Plan:
        """The named plan for `node` (the cheapest one unless `choice` is given)."""
        c = choice or self.choice(node, pc)
        L, bs = pc.prompt_tokens, self.block_size
        nm = pc.match.get(node)
        # (action, blocks, tier, source) of the cached parts in prompt order, then each given
        # tokens from what may come from cache (all but the last token, which is computed)
        parts: list[tuple[Action, int, Tier, NodeId | None]] = []
        if nm is not None and c.local_blocks:
            if c.local_blocks > nm.hbm_prefix:  # the whole usable prefix, fetching lower tiers
                parts += ((Action.IN_PLACE, nm.hbm + nm.pending, Tier.HBM, None),
                          (Action.FETCH, nm.dram, Tier.DRAM, None), (Action.FETCH, nm.disk, Tier.DISK, None))
            else:
                parts.append((Action.IN_PLACE, c.local_blocks, Tier.HBM, None))
        if c.kind == "pull":
            parts.append((Action.PULL, c.pull_blocks, Tier.DISK if pc.src_disk_frac >= 0.5 else Tier.HBM, pc.src))
        segs: list[PlanSegment] = []
        budget = L - 1
        for action, blocks, tier, source in parts:
            if blocks <= 0 or budget <= 0:
                continue
            tok = min(blocks * bs, budget)
            budget -= tok
            segs.append(PlanSegment(action, blocks, tok, tier, source))
        cached = (L - 1) - budget
        segs.append(PlanSegment(Action.RECOMPUTE, 0, L - cached))
        return Plan(node, tuple(segs), local_blocks=c.local_blocks,
                    pull_blocks=c.pull_blocks if c.kind == "pull" else 0,
                    pull_from=pc.src if c.kind == "pull" else None,
                    est_fetch_s=c.fetch_s, est_pull_s=c.pull_s, est_prefill_s=c.prefill_s)
