"""Baseline policies, faithful to their published rules and defaults.

- round_robin: the next alive node in turn (SGLang data parallelism).
- least_load: fewest outstanding tokens (prompt + output budget of in-flight requests).
- sglang_cache_aware: SGLang router's cache-aware policy. It does not see the engines' caches:
  it keeps an approximate per-node tree of what it routed there (LRU, bounded), and
    imbalanced = (max - min) > 64 and max > 1.5 * min   (loads = in-flight requests)
    imbalanced           -> the node with the fewest in-flight requests
    match_rate > 0.5     -> the node with the longest approximate match
    otherwise            -> the node with the smallest approximate tree (SGLang's code;
                            the design brief words it "least loaded")
- dynamo_kv: NVIDIA Dynamo's KV router with exact residency (KV events) and tier credits:
    cost_n = w * prefill_blocks_n + decode_blocks_n, temperature 0 (argmin), where
    prefill_blocks_n = request blocks - overlap credit (1.0 device / 0.75 host / 0.25 disk)
                       + blocks still to prefill on n, and
    decode_blocks_n  = blocks of n's active sequences + the request's blocks.
"""

from __future__ import annotations

from collections import OrderedDict

from preble_tiered.scheduler.cluster import ClusterState
from preble_tiered.scheduler.index import MatchResult
from preble_tiered.scheduler.planner import Planner
from preble_tiered.scheduler.policy import Policy, PolicyConfig, first_alive
from preble_tiered.scheduler.types import Branch, Decision, RouteRequest


class _PlannedPolicy(Policy):
    """A baseline that picks a node by its own rule; the plan follows the node's holdings."""

    def __init__(self, cluster: ClusterState, config: PolicyConfig) -> None:
        super().__init__(cluster, config)
        self.planner = Planner(cluster.cost, cluster.block_size, self.uses_tiers, self.uses_pulls)

    def _decide(self, req: RouteRequest, match: MatchResult, node: int) -> Decision:
        pc = self.planner.prepare(req, match)
        return Decision(req.request_id, node, self.planner.build(node, pc), Branch.BASELINE)


class RoundRobin(_PlannedPolicy):
    name = "round_robin"
    def __init__(self, cluster: ClusterState, config: PolicyConfig) -> None:
        super().__init__(cluster, config)
        self._next = 0

    def route(self, req: RouteRequest, match: MatchResult, now: float) -> Decision:
        nodes = self.cluster.nodes
        for _ in range(len(nodes)):
            n = self._next
            self._next = (n + 1) % len(nodes)
            if nodes[n].alive:
                return self._decide(req, match, n)
        raise RuntimeError("no node is alive")


class LeastLoad(_PlannedPolicy):
    name = "least_load"
    def route(self, req: RouteRequest, match: MatchResult, now: float) -> Decision:
        best, best_load = first_alive(self.cluster), None
        for ns in self.cluster.nodes:
            if ns.alive and (best_load is None or ns.inflight_tokens < best_load):
                best, best_load = ns.node, ns.inflight_tokens
        return self._decide(req, match, best)


class ApproxTree:
    """SGLang's approximate radix tree, as block hashes: which node was sent which prefix.

    One node bitmask per block hash (bitmask walk as in PrefixIndex), per-node LRU with a
    capacity in blocks standing in for SGLang's periodic `max_tree_size` eviction.
    """

    def __init__(self, n_nodes: int, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._mask: dict[int, int] = {}
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n_nodes)]

    def size(self, node: int) -> int:
        return len(self._lru[node])

    def match(self, hashes: list[int], alive_mask: int) -> tuple[int, int]:
        """(blocks matched, node mask) of the longest approximate match."""
        masks = self._mask
        alive, depth = alive_mask, 0
        for h in hashes:
            m = alive & masks.get(h, 0)
            if not m:
                break
            alive, depth = m, depth + 1
        return depth, (alive if depth else 0)

    def insert(self, node: int, hashes: list[int]) -> None:
        bit, lru, masks = 1 << node, self._lru[node], self._mask
        for h in hashes:
            masks[h] = masks.get(h, 0) | bit
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > self.capacity:
            h, _ = lru.popitem(last=False)
            m = masks.get(h, 0) & ~bit
            if m:
                masks[h] = m
            else:
                masks.pop(h, None)


class SGLangCacheAware(_PlannedPolicy):
    name = "sglang_cache_aware"
    def __init__(self, cluster: ClusterState, config: PolicyConfig) -> None:
        super().__init__(cluster, config)
        tokens = config.sglang_tree_tokens or cluster.nodes[0].hbm_capacity_tokens
        self.tree = ApproxTree(cluster.n_nodes, max(1, tokens // cluster.block_size))

    def route(self, req: RouteRequest, match: MatchResult, now: float) -> Decision:
        cfg, nodes = self.config, self.cluster.nodes
        alive = [ns for ns in nodes if ns.alive]
        if not alive:
            raise RuntimeError("no node is alive")
        loads = [ns.n_inflight for ns in alive]
        lo, hi = min(loads), max(loads)
        if hi - lo > cfg.sglang_balance_abs and hi > cfg.sglang_balance_rel * lo:
            node = alive[loads.index(lo)].node
        else:
            alive_mask = sum(1 << ns.node for ns in alive)
            depth, holders = self.tree.match(req.block_hashes, alive_mask)
            rate = depth * self.cluster.block_size / max(req.prompt_tokens, 1)
            if rate > cfg.sglang_cache_threshold:
                node = (holders & -holders).bit_length() - 1
            else:
                node = min(alive, key=lambda ns: self.tree.size(ns.node)).node
        self.tree.insert(node, req.block_hashes)
        return self._decide(req, match, node)


class DynamoKV(_PlannedPolicy):
    name = "dynamo_kv"
    uses_tiers = True  # Dynamo's KV block manager offloads to host and disk

    def route(self, req: RouteRequest, match: MatchResult, now: float) -> Decision:
        bs, cfg = self.cluster.block_size, self.config
        c_hbm, c_dram, c_disk = cfg.dynamo_tier_credit
        req_blocks = -(-req.prompt_tokens // bs)
        best, best_cost = -1, float("inf")
        for ns in self.cluster.nodes:
            if not ns.alive:
                continue
            nm = match.get(ns.node)
            credit = 0.0 if nm is None else c_hbm * nm.hbm + c_dram * nm.dram + c_disk * nm.disk
            prefill = req_blocks - credit + ns.pending_prefill_tokens / bs
            decode = ns.active_kv_tokens / bs + req_blocks
            cost = cfg.dynamo_overlap_weight * prefill + decode
            if cost < best_cost:
                best, best_cost = ns.node, cost
        if best < 0:
            raise RuntimeError("no node is alive")
        return self._decide(req, match, best)
