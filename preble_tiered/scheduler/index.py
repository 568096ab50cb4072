"""PrefixIndex: the router's exact view of which node holds which block in which tier.

One `BlockEntry` per block hash. Residency is a bitmask of nodes per tier, so a lookup walks
the request's blocks once, AND-ing masks, and never loops over nodes per block:

    block:      b0      b1      b2      b3
    hbm:       0b011   0b001   0b001   0b000
    dram:      0b100   0b100   0b000   0b001
    alive:     0b111 & 0b101 & 0b001 & 0b001      (nodes holding every block so far)
                           ^ node 1 drops out at b1: its usable prefix is 1 block

Per-tier counts are accumulated per run of blocks whose (hbm, dram, disk) masks restricted
to `alive` do not change, so the cost is O(blocks + set bits per run), which is
O(blocks + nodes) for the prefix shapes caches produce.

Memory stays bounded: an entry that may have become idle (created by a request, or its last
residency, pending mark or pin gone) is appended to `_idle`, a plain deque of hashes; a sweep
of a few entries per mutating call drops those idle (no residency, pending or pin) and
unrequested for a whole window, lets go of those held again, and re-queues the rest. Entries
are queued in time order, so an entry not yet due means those behind it are mostly not due
either: the sweep stops after a few of those instead of re-queueing its whole batch. No
per-touch reordering, 8 bytes per queued entry. Demand is a two-bucket sliding window
(requests in the last `window_s` seconds, interpolated), O(1) per access.

The per-block loops run in one of two kernels with the same interface and results:
`_index_native.c` (C; node masks as 256-bit words, so up to 256 nodes) where setup.py built
it, else `_index_py.py` (the reference). `PrefixIndex` keeps the state (the kernel's
`EntryMap` of entries: a C hash table keyed by the 64-bit block hash, or a dict; the idle
deque; held counts) and picks the kernel; tests run on both. Block hashes are ints in
[0, 2**64), the hasher's range.

The index is pure: callers pass `now`; it never reads a clock.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import NamedTuple

from preble_tiered.scheduler import _index_py
from preble_tiered.scheduler._index_py import BlockEntry, bits, iter_bits
from preble_tiered.types import NodeId, Tier

try:  # built by `pip install` where a C compiler is present (setup.py); optional
    from preble_tiered.scheduler import _index_native
except ImportError:  # pragma: no cover - depends on the build machine
    _index_native = None

__all__ = ["BlockEntry", "Forest", "MatchResult", "NodeMatch", "PrefixIndex", "SubtreeSummary", "bits", "iter_bits",
           "kernel_names"]

class Forest(NamedTuple):
    children: dict[int, list[int]]
    roots: list[int]


class SubtreeSummary(NamedTuple):
    blocks: int
    depth: int  # blocks of the deepest chain
    pinned: bool
    last_access: float  # -inf: never requested
    held: dict[tuple[NodeId, Tier], int]  # blocks of the subtree per (node, tier)


_EXPIRE_BATCH = 32  # queued entries examined per mutating call: twice a request's ~16 new blocks
_EXPIRE_FRESH = 4  # ... stopping after this many not yet due

KERNEL_ENV = "PREBLE_INDEX_KERNEL"
"""Environment variable forcing the index kernel: `native` or `python`."""


def kernel_names() -> list[str]:
    """Index kernels available here (`native` only where the C extension was built)."""
    return ["native", "python"] if _index_native is not None else ["python"]


def _pick_kernel(kernel: str | None, n_nodes: int | None) -> ModuleType:
    """`kernel` by name; None: the native one when it is built and holds `n_nodes`
    (256 nodes), unless $PREBLE_INDEX_KERNEL says otherwise."""
    kernel = kernel or os.environ.get(KERNEL_ENV) or None
    if kernel == "python":
        return _index_py
    fits = n_nodes is None or _index_native is None or n_nodes <= _index_native.MAX_NODES
    if kernel == "native":
        if _index_native is None:
            raise ValueError("the native index kernel is not built here (no C compiler at install?); "
                             f"use kernel='python' or unset {KERNEL_ENV}")
        if not fits:
            raise ValueError(f"the native index holds {_index_native.MAX_NODES} nodes, not {n_nodes}")
        return _index_native
    if kernel is not None:
        raise ValueError(f"unknown index kernel {kernel!r}; expected 'native' or 'python'")
    return _index_native if _index_native is not None and fits else _index_py


class NodeMatch(NamedTuple):
    """The longest prefix of a request usable on one node, split by the best tier per block.

    Attributes:
        hbm, dram, disk: blocks of the usable prefix whose best copy is in that tier.
        pending: blocks not yet held but being computed there by a dispatched request
            (usable in place once it finishes; never a pull source).
        hbm_prefix: leading blocks all in HBM or pending (usable in place, no fetch).
    """

    node: NodeId
    hbm: int = 0
    dram: int = 0
    disk: int = 0
    pending: int = 0
    hbm_prefix: int = 0

    @property
    def blocks(self) -> int:
        return self.hbm + self.pending + self.dram + self.disk

    @property
    def shape(self) -> tuple[int, ...]:
        """What a plan depends on: equal shapes cost the same on any node."""
        return self[1:]


@dataclass(slots=True)
class MatchResult:
    """Result of `PrefixIndex.match`. Nodes absent from `nodes` hold no usable prefix."""

    n_blocks: int
    nodes: dict[NodeId, NodeMatch] = field(default_factory=dict)
    longest: int = 0  # longest usable prefix on any single node, in blocks
    holders: int = 0  # bitmask of the nodes holding `longest` blocks
    longest_hbm: int = 0  # longest all-HBM (or pending) prefix on any single node
    hbm_holders: int = 0
    entries: list[BlockEntry] | None = None  # every block's entry, when `lookup` made it
    source: NodeMatch | None = None
    """The node to pull from: no pending block (not there yet), the most blocks held, then
    the most of them in HBM, then the lowest id; None when no node holds a block."""
    shapes: dict[tuple[int, ...], list[NodeId]] = field(default_factory=dict)
    """`nodes` grouped by `NodeMatch.shape`, ids ascending: nodes holding the same thing
    cost the same, so plans are costed once per shape."""

    def get(self, node: NodeId) -> NodeMatch | None:
        return self.nodes.get(node)


class PrefixIndex:
    """Cluster-wide block residency per node and tier, with windowed demand.

    Args:
        window_s: the demand window H (Preble: 180 s).
        kernel: "native" (C, `_index_native.c`, up to 256 nodes) or "python"
            (`_index_py.py`); None picks native where it is built and holds `n_nodes`.
        n_nodes: the cluster's node slots (only to pick the kernel).
    """

    def __init__(self, window_s: float = 180.0, kernel: str | None = None, n_nodes: int | None = None) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = float(window_s)
        self._k = _pick_kernel(kernel, n_nodes)
        self.kernel = "native" if self._k is _index_native else "python"
        self._new_entry = self._k.BlockEntry
        self._entries: MutableMapping[int, BlockEntry] = self._k.EntryMap()  # a dict in Python
        self._idle: deque[int] = deque()  # hashes that may be idle (see module docstring)
        self._held: dict[Tier, dict[NodeId, int]] = {t: {} for t in Tier}  # blocks held per tier, node
        # node -> blocks held in HBM; read only outside: the decision path reads it per candidate
        self.hbm_held = self._held[Tier.HBM]

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, h: int) -> bool:
        return h in self._entries

    def entry(self, h: int) -> BlockEntry | None:
        return self._entries.get(h)

    def held_blocks(self, node: NodeId, tier: Tier) -> int:
        return self._held[tier].get(node, 0)

    def match(self, hashes: Sequence[int]) -> MatchResult:
        """Longest usable prefix of `hashes` on every node, per tier (read only)."""
        nodes, longest, holders, longest_hbm, hbm_holders, _, source, shapes = self._k.walk(
            self._entries, self._idle.append, hashes, None, 0, NodeMatch)
        return MatchResult(len(hashes), nodes, longest, holders, longest_hbm, hbm_holders, None, source, shapes)

    def lookup(self, hashes: Sequence[int], now: float) -> MatchResult:
        """`record_access(hashes, now)` and `match(hashes)` in one walk over the blocks
        (one dict probe per block instead of two: the router's decision path).

        Where a block's masks equal the previous block's nothing is done. Where they
        change, only the nodes whose best tier flips are touched (each closes an interval
        of blocks credited to its old tier), so the cost is O(blocks + tier flips), i.e.
        O(blocks + nodes) for the layouts caches produce. `entries` of the result is every
        block's entry (created as needed), for `add_pending_entries`.
        """
        nodes, longest, holders, longest_hbm, hbm_holders, walked, source, shapes = self._k.walk(
            self._entries, self._idle.append, hashes, float(now), int(now // self.window_s), NodeMatch)
        self._expire(now)
        return MatchResult(len(hashes), nodes, longest, holders, longest_hbm, hbm_holders, walked, source, shapes)

    def demand(self, h: int, now: float) -> float:
        """Requests for block `h` in the last window (sliding two-bucket estimate)."""
        e = self._entries.get(h)
        return 0.0 if e is None else self._demand(e, now)

    def _demand(self, e: BlockEntry, now: float) -> float:
        b = int(now // self.window_s)
        if e.bucket == b:
            frac = now / self.window_s - b
            return e.demand_cur + e.demand_prev * (1.0 - frac)
        if e.bucket == b - 1:
            frac = now / self.window_s - b
            return e.demand_cur * (1.0 - frac)
        return 0.0

    def hbm_scan(self, items: Iterable[tuple[int, object]], node: NodeId, now: float,
                 limit: int) -> tuple[list[int], list[tuple[object, int]]]:
        """Walk `items` ((key, size) pairs, least recently used first: a node's LRU of
        prefixes) until `limit` keys `node` holds in HBM were seen. Returns the keys passed
        over (unknown, or not in that HBM) and, for those seen, (size, requests in the
        window beyond the first): what the eviction price is made of, in one native loop."""
        return self._k.hbm_scan(self._entries, items, node, int(now // self.window_s), limit)

    def requests_in_window(self, h: int, now: float) -> int:
        """Requests for `h` counted in the current and previous window buckets."""
        e = self._entries.get(h)
        if e is None:
            return 0
        return _index_py.windowed_requests(e, int(now // self.window_s))

    def shared_depth(self, hashes: Sequence[int], now: float, min_requests: int = 2) -> int:
        """Blocks of the longest prefix of `hashes` requested at least `min_requests` times
        recently (`requests_in_window`). Demand never grows along a chain (a request counts
        every ancestor too), so this is a binary search: O(log blocks)."""
        return self._k.shared_depth(self._entries, hashes, int(now // self.window_s), min_requests)

    # ----------------------------------------------------------------- mutation
    def record_access(self, hashes: Sequence[int], now: float, parent: int | None = None) -> None:
        """Count one request for each block of `hashes` (creating entries as needed; the
        first one's parent is `parent`). Plain per-entry code, independent of the kernels'
        `walk` (it shares only `count_demand`): the reference `lookup` is tested against."""
        hashes = _index_py.checked_hashes(hashes)  # all checked before anything changes
        bucket, prev = int(now // self.window_s), parent
        for h in hashes:
            e = self._entries.get(h)
            if e is None:
                e = self._entries[h] = self._new_entry(prev)
                self._idle.append(h)  # a new entry is idle until something holds it
            _index_py.count_demand(e, bucket, now)
            prev = h
        if hashes:
            self._expire(now)

    def store(self, node: NodeId, tier: Tier, hashes: Iterable[int], parent: int | None, now: float) -> int:
        """`node` now holds `hashes` (a chain, first one's parent is `parent`) in `tier`.

        Returns:
            How many blocks were newly stored (already-held ones are not counted).
        """
        added = self._k.store(self._entries, hashes, tier, node, parent)
        if added:
            held = self._held[tier]
            held[node] = held.get(node, 0) + added
        self._expire(now)
        return added

    def remove(self, node: NodeId, tier: Tier, hashes: Iterable[int], now: float) -> int:
        """`node` no longer holds `hashes` in `tier`. Unknown hashes are ignored.

        Returns:
            How many blocks were actually removed.
        """
        removed = self._k.remove(self._entries, self._idle.append, hashes, tier, node, float(now))
        if removed:
            held = self._held[tier]
            held[node] = held.get(node, 0) - removed
        self._expire(now)
        return removed

    def clear_node(self, node: NodeId, now: float, tier: Tier | None = None) -> int:
        """Drop everything `node` holds (in `tier`, or in every tier). O(entries); rare."""
        bit = 1 << node
        tiers = (tier,) if tier is not None else (Tier.HBM, Tier.DRAM, Tier.DISK)
        removed = 0
        for h, e in self._entries.items():
            was_kept = e.kept
            for t in tiers:
                m = e.mask(t)
                if m & bit:
                    _index_py.set_mask(e, t, m & ~bit)
                    removed += 1
            if tier is None and e.pending & bit:
                e.pending &= ~bit
            if was_kept and not e.kept:
                self._went_idle(h, e, now)
        for t in tiers:
            self._held[t].pop(node, None)
        return removed

    def add_pending(self, node: NodeId, hashes: Iterable[int], parent: int | None = None) -> None:
        """`node` will hold `hashes` in HBM once a request dispatched there computes (or
        loads) them. The router's own knowledge of work it dispatched, kept apart from
        residency: cleared by the node's BlockStored(HBM) or by `clear_pending`."""
        entries, walked, prev = self._entries, [], parent
        for h in _index_py.checked_hashes(hashes):  # all checked before anything changes
            e = entries.get(h)
            if e is None:
                e = entries[h] = self._new_entry(prev)
            walked.append(e)
            prev = h
        self.add_pending_entries(node, walked)

    def add_pending_entries(self, node: NodeId, entries: Sequence[BlockEntry]) -> None:
        """`add_pending` for the entries a `lookup` just walked (no dict probes). The
        entries must come from this index in the same call sequence (nothing expired)."""
        self._k.add_pending(entries, node)

    def clear_pending(self, node: NodeId, hashes: Iterable[int], now: float) -> None:
        """The request that promised `hashes` on `node` finished or failed."""
        self._k.clear_pending(self._entries, self._idle.append, hashes, node, float(now))

    def node_blocks(self, node: NodeId, tier: Tier) -> set[int]:
        """Every block hash `node` holds in `tier` (for snapshots and checks). O(entries)."""
        bit = 1 << node
        return {h for h, e in self._entries.items() if e.mask(tier) & bit}

    def pin(self, hashes: Iterable[int], now: float) -> None:
        """Count one pin per block of a chain (entries created as needed, with chain parents)."""
        parent = None
        for h in _index_py.checked_hashes(hashes):  # all checked before anything changes
            e = self._entries.get(h)
            if e is None:
                e = self._entries[h] = self._new_entry(parent)
            e.pins += 1
            parent = h

    def items(self) -> Iterator[tuple[int, BlockEntry]]:
        """Every (hash, entry) (admin listings; O(entries))."""
        return iter(self._entries.items())

    # ------------------------------------------------------------------ tree walks (admin)
    def forest(self) -> Forest:
        """The index as a forest of block chains: every block's children and the roots (blocks
        whose parent is unknown). O(entries): for admin listings, never on the decision path."""
        children: dict[int, list[int]] = {}
        roots: list[int] = []
        entries = self._entries
        for h, e in entries.items():
            if e.parent is None or e.parent not in entries:
                roots.append(h)
            else:
                children.setdefault(e.parent, []).append(h)
        return Forest(children, roots)

    def subtree(self, root: int, forest: Forest | None = None) -> list[int]:
        """`root` and its descendants, parents before children."""
        children = (forest or self.forest()).children
        out, stack = [], [root]
        while stack:
            h = stack.pop()
            out.append(h)
            stack.extend(children.get(h, ()))
        return out

    def subtree_summary(self, root: int, forest: Forest | None = None) -> SubtreeSummary:
        """What the tree under block `root` holds: its blocks, its deepest chain, whether a
        block is pinned, the last access and the blocks per (node, tier)."""
        children = (forest or self.forest()).children
        held: dict[tuple[NodeId, Tier], int] = {}
        depth_max, pinned, last, n_blocks = 0, False, float("-inf"), 0
        stack = [(root, 1)]
        while stack:
            h, d = stack.pop()
            e = self._entries[h]
            n_blocks += 1
            depth_max = max(depth_max, d)
            pinned = pinned or e.pins > 0
            last = max(last, e.last_access)
            for tier in (Tier.HBM, Tier.DRAM, Tier.DISK):
                for node in iter_bits(e.mask(tier)):
                    held[(node, tier)] = held.get((node, tier), 0) + 1
            stack.extend((c, d + 1) for c in children.get(h, ()))
        return SubtreeSummary(n_blocks, depth_max, pinned, last, held)

    def unpin(self, hashes: Iterable[int], now: float) -> None:
        """Release one pin per block. Raises ValueError if a block is not pinned."""
        hashes = list(hashes)
        for h in hashes:
            e = self._entries.get(h)
            if e is None or e.pins <= 0:
                raise ValueError(f"block {h:#x} is not pinned")
        for h in hashes:
            e = self._entries[h]
            e.pins -= 1
            if not e.kept:
                self._went_idle(h, e, now)

    # ------------------------------------------------------------------ expiry
    def _went_idle(self, h: int, e: BlockEntry, now: float) -> None:
        e.idle_at = now
        self._idle.append(h)

    def _expired(self, e: BlockEntry, cutoff: float) -> bool:
        return not e.kept and e.last_access <= cutoff and e.idle_at <= cutoff

    def _expire(self, now: float) -> None:
        """Look at up to a batch of queued entries: drop the expired, let go of the held,
        re-queue the rest. Amortized O(1) per mutating call."""
        self._k.expire(self._entries, self._idle, float(now - self.window_s), _EXPIRE_BATCH, _EXPIRE_FRESH)

    def expire_all(self, now: float) -> None:
        """Exact expiry of everything due (tests and periodic housekeeping). O(queue)."""
        cutoff = now - self.window_s
        keep: deque[int] = deque()
        seen: set[int] = set()
        for h in self._idle:
            e = self._entries.get(h)
            if e is None or e.kept or h in seen:
                continue
            if self._expired(e, cutoff):
                del self._entries[h]
            else:
                seen.add(h)
                keep.append(h)
        self._idle = keep
