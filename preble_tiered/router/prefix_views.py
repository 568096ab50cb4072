"""What the admin shows of cached prefixes: named prefixes and unnamed trees of the index,
with where each is held (node, tier, blocks), its demand, pins and last use."""

from __future__ import annotations

import time
from dataclasses import dataclass

from preble_tiered.router.errors import invalid
from preble_tiered.router.view import RouterView
from preble_tiered.scheduler.index import Forest
from preble_tiered.scheduler.pins import NamedPrefix, held_counts
from preble_tiered.types import NodeId, Tier

MAX_LIST = 10000


@dataclass(slots=True)
class Placement:
    node: NodeId
    tier: Tier
    blocks: int
    last_use: float = 0.0  # unix seconds
    hits: int = 0


@dataclass(slots=True)
class PrefixView:
    name: str
    hash: int
    tokens: int
    blocks: int
    where: list[Placement]
    demand: float
    pinned: bool
    last_use: float  # unix seconds; 0 unknown


@dataclass(slots=True)
class Usage:
    """Finished requests that started with a named prefix, on one node."""

    requests: int = 0
    hits: int = 0
    last_use: float = 0.0


class PrefixViews:
    def __init__(self, view: RouterView) -> None:
        self.r = view

    def _wall(self, t: float) -> float:
        """An index time as unix seconds (0: never)."""
        if t == float("-inf"):
            return 0.0
        return time.time() - (self.r.now() - t)

    def named(self, prefix: NamedPrefix, usage: dict[NodeId, Usage], pinned: bool) -> PrefixView:
        idx = self.r.index
        where: list[Placement] = []
        for node in self.r.nodes():
            hbm, dram, disk, _ = held_counts(idx, prefix.hashes, node)
            u = usage.get(node, Usage())
            for tier, n in ((Tier.HBM, hbm), (Tier.DRAM, dram), (Tier.DISK, disk)):
                if n:
                    where.append(Placement(node, tier, n, u.last_use, u.hits))
        e = idx.entry(prefix.last_hash)
        last = max((u.last_use for u in usage.values()), default=0.0)
        if e is not None:
            last = max(last, self._wall(e.last_access))
        return PrefixView(prefix.name, prefix.last_hash, len(prefix.hashes) * self.r.block_size, len(prefix.hashes),
                          where, idx.demand(prefix.last_hash, self.r.now()), pinned, last)

    def trees(self) -> list[PrefixView]:
        """Unnamed prefixes: one view per root block of the index, over its whole subtree
        (tokens: the deepest chain; placement: blocks of the subtree per node and tier)."""
        forest = self.r.index.forest()
        return [self.tree(r, forest) for r in forest.roots]

    def tree(self, root: int, forest: Forest | None = None) -> PrefixView:
        """The unnamed prefix tree under block `root` (a root or an inner block)."""
        s = self.r.index.subtree_summary(root, forest)
        where = [Placement(n, t, c) for (n, t), c in sorted(s.held.items(), key=lambda kv: (kv[0][0], kv[0][1].value))]
        return PrefixView("", root, s.depth * self.r.block_size, s.blocks, where,
                          self.r.index.demand(root, self.r.now()), s.pinned, self._wall(s.last_access))

    def listing(self, named: list[PrefixView], prefixes: list[NamedPrefix], node: NodeId | None, tier: Tier | None,
                min_tokens: int, named_only: bool, limit: int) -> tuple[list[PrefixView], int]:
        """Named views first, then unnamed trees (unless `named_only`), filtered; at most
        `limit` (0: 100) of (views, how many matched)."""
        if not 0 <= limit <= MAX_LIST:
            raise invalid(f"limit must be in [0, {MAX_LIST}]")
        views = list(named)
        if not named_only:
            # An unnamed tree that is no more than a named prefix is that prefix: list it once.
            named_roots: dict[int, int] = {}
            for p in prefixes:
                named_roots[p.hashes[0]] = max(named_roots.get(p.hashes[0], 0), len(p.hashes))
            views += [v for v in self.trees() if v.blocks > named_roots.get(v.hash, 0)]
        views = [v for v in views if v.tokens >= min_tokens
                 and (node is None or any(pl.node == node for pl in v.where))
                 and (tier is None or any(pl.tier is tier for pl in v.where))]
        # Named first, then by demand, then by size (what an operator looks for first).
        views.sort(key=lambda v: (not v.name, -v.demand, -v.tokens, v.name, v.hash))
        return views[:limit or 100], len(views)
