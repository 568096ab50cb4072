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

    @property
    def cost(self) -> CostModel:
        return self._cost

    @cost.setter
    def cost(self, cost: CostModel) -> None:
        """Swap the cost model; what every plan reads of it is taken once here (the decision
        path prices several plans per request: no attribute chains there)."""
        self._cost = cost
        self._prefill = cost.prefill.seconds  # cost.prefill_s
        self._kv_bytes = cost.kv_bytes_per_token
        self._dram, self._disk, self._net = cost.links.dram, cost.links.disk, cost.links.net

    def _prefill_after(self, pc: PlanContext, blocks: int) -> float:
        """Prefill time of `pc`'s prompt with `blocks` blocks cached, the last prompt token
        always computed (the engine needs its logits, as in vLLM). Memoised per request:
        the plans of different nodes often reuse the same cached length."""
        cached, last = blocks * self.block_size, pc.prompt_tokens - 1
        if cached > last:  # min(), without the call
            cached = last
        t = pc.prefill_memo.get(cached)
        if t is None:
            t = pc.prefill_memo[cached] = self._prefill(pc.prompt_tokens - cached, pc.prompt_tokens)
        return t

    def prepare(self, req: RouteRequest, match: MatchResult) -> PlanContext:
        L = max(req.prompt_tokens, 1)
        pc = PlanContext(req, match, L, self._prefill(L, L))
        pc.default_s = pc.recompute_all_s
        src = match.source if self.use_pulls else None  # chosen by the index's walk
        if src is not None:
            pc.src, pc.src_blocks = src.node, src.blocks
            pc.src_disk_frac = src.disk / src.blocks
            pull = 0.0 + self._pull_s(pc, 0) + self._prefill_after(pc, pc.src_blocks)  # _pull_choice's total_s
            if pull < pc.recompute_all_s:
                pc.default_s = pull
        return pc

    def choice(self, node: NodeId, pc: PlanContext) -> PlanChoice:
        """The cheapest plan for `node` (`plan_time` is its time, without the objects)."""
        nm = pc.match.nodes.get(node)
        if nm is None:
            recompute = PlanChoice("hbm", 0, 0, 0.0, 0.0, pc.recompute_all_s)
            if pc.src is not None and pc.src != node:
                pull = self._pull_choice(pc, 0, 0.0)
                return pull if pull.total_s < recompute.total_s else recompute
            return recompute
        best = PlanChoice("hbm", nm.hbm_prefix, 0, 0.0, 0.0, self._prefill_after(pc, nm.hbm_prefix))
        local_blocks, fetch_s = nm.hbm_prefix, 0.0
        blocks = nm.hbm + nm.pending + nm.dram + nm.disk  # nm.blocks
        if self.use_tiers and blocks > nm.hbm_prefix:
            fetch_s = self._fetch_s(nm)
            local = PlanChoice("local", blocks, 0, fetch_s, 0.0, self._prefill_after(pc, blocks))
            if local.total_s < best.total_s:
                best = local
                local_blocks = blocks
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
            n0 = nodes[0] if nodes[0] != src else (nodes[1] if len(nodes) > 1 else None)
            if n0 is None:  # the source alone in its shape: priced below
                continue
            t = plan_time(n0, pc)
            for n in nodes:
                times[n] = t
        if src is not None:
            times[src] = plan_time(src, pc)
        return times

    def _fetch_s(self, nm: NodeMatch) -> float:
        """`cost.fetch_s` of the DRAM and the disk blocks, summed (the links read once)."""
        per_block = self.block_size * self._kv_bytes
        return self._dram.seconds(nm.dram * per_block) + self._disk.seconds(nm.disk * per_block)

    def _pull_s(self, pc: PlanContext, local_blocks: int) -> float:
        """Time to pull the source's blocks past `local_blocks` (from its disk in part):
        `cost.pull_s`, plus `cost.fetch_s` from the source's disk."""
        tokens = (pc.src_blocks - local_blocks) * self.block_size
        pull_s = self._net.seconds(tokens * self._kv_bytes)
        if pc.src_disk_frac:
            pull_s += self._disk.seconds(int(tokens * pc.src_disk_frac) * self._kv_bytes)
        return pull_s

    def _pull_choice(self, pc: PlanContext, local_blocks: int, fetch_s: float) -> PlanChoice:
        return PlanChoice("pull", local_blocks, pc.src_blocks - local_blocks, fetch_s,
                          self._pull_s(pc, local_blocks), self._prefill_after(pc, pc.src_blocks))

    def build(self, node: NodeId, pc: PlanContext, choice: PlanChoice | None = None) -> Plan:
        """The named plan for `node` (the cheapest one unless `choice` is given)."""
        c = choice or self.choice(node, pc)
        L, bs = pc.prompt_tokens, self.block_size
        nm = pc.match.nodes.get(node)
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
        pull = c.kind == "pull"
        # Plan(node, segments, local_blocks, pull_blocks, pull_from, est_fetch_s, est_pull_s,
        # est_prefill_s): positional, a third cheaper than by keyword on every decision
        return Plan(node, tuple(segs), c.local_blocks, c.pull_blocks if pull else 0, pc.src if pull else None,
                    c.fetch_s, c.pull_s, c.prefill_s)
