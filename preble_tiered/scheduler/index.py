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

Memory stays bounded: an entry with no residency and no pin is queued on `_idle` (ordered by
when it became idle or was last requested) and dropped once it has had no demand for a whole
window. Demand is a two-bucket sliding window (requests in the last `window_s` seconds,
interpolated), O(1) per access.

The index is pure: callers pass `now`; it never reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from preble_tiered.types import NodeId, Tier

_EXPIRE_BATCH = 64  # idle entries examined per mutating call (amortized expiry)


def iter_bits(mask: int) -> Iterator[int]:
    """Node ids set in `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@dataclass(slots=True)
class BlockEntry:
    """What the router knows of one block."""

    parent: int | None
    hbm: int = 0  # node bitmask per tier
    dram: int = 0
    disk: int = 0
    pins: int = 0  # counted pins (admin); a pinned entry never expires
    bucket: int = -1  # window bucket index that `demand_cur` counts
    demand_cur: int = 0
    demand_prev: int = 0
    last_access: float = float("-inf")

    @property
    def resident(self) -> int:
        return self.hbm | self.dram | self.disk

    def mask(self, tier: Tier) -> int:
        return self.hbm if tier is Tier.HBM else self.dram if tier is Tier.DRAM else self.disk


@dataclass(slots=True)
class NodeMatch:
    """The longest prefix of a request usable on a group of nodes with identical holdings,
    split by the best tier per block. (Nodes often hold the same thing, e.g. a system
    prompt on every node, so `match` returns one entry per group, not per node.)

    Attributes:
        mask: the nodes of the group (bitmask).
        hbm, dram, disk: blocks of the usable prefix whose best copy is in that tier.
        hbm_prefix: leading blocks all in HBM (usable in place with no fetch).
    """

    mask: int
    hbm: int = 0
    dram: int = 0
    disk: int = 0
    hbm_prefix: int = -1  # -1 while still being matched

    @property
    def blocks(self) -> int:
        return self.hbm + self.dram + self.disk

    def split(self, mask: int) -> "NodeMatch":
        """Move the nodes of `mask` (a subset) into a copy of this group."""
        self.mask &= ~mask
        return NodeMatch(mask, self.hbm, self.dram, self.disk, self.hbm_prefix)


@dataclass(slots=True)
class MatchResult:
    """Result of `PrefixIndex.match`. Nodes in no group hold no usable prefix."""

    n_blocks: int
    groups: list[NodeMatch] = field(default_factory=list)
    longest: int = 0  # longest usable prefix on any single node, in blocks
    holders: int = 0  # bitmask of the nodes holding `longest` blocks
    longest_hbm: int = 0  # longest all-HBM prefix on any single node
    hbm_holders: int = 0

    def get(self, node: NodeId) -> NodeMatch | None:
        bit = 1 << node
        for g in self.groups:
            if g.mask & bit:
                return g
        return None

    @property
    def nodes(self) -> dict[NodeId, NodeMatch]:
        """Per-node view (builds a dict; for tests and inspection, not the hot path)."""
        return {n: g for g in self.groups for n in iter_bits(g.mask)}


class PrefixIndex:
    """Cluster-wide block residency per node and tier, with windowed demand.

    Args:
        window_s: the demand window H (Preble: 180 s).
    """

    def __init__(self, window_s: float = 180.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = float(window_s)
        self._entries: dict[int, BlockEntry] = {}
        self._idle: OrderedDict[int, float] = OrderedDict()  # hash -> time it became idle
        self._held: dict[tuple[NodeId, Tier], int] = {}  # blocks held per (node, tier)

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, h: int) -> bool:
        return h in self._entries

    def entry(self, h: int) -> BlockEntry | None:
        return self._entries.get(h)

    def held_blocks(self, node: NodeId, tier: Tier) -> int:
        return self._held.get((node, tier), 0)

    def match(self, hashes: Sequence[int]) -> MatchResult:
        """Longest usable prefix of `hashes` on every node, per tier (see module docstring)."""
        entries = self._entries
        res = MatchResult(n_blocks=len(hashes))
        if not hashes:
            return res
        e = entries.get(hashes[0])
        if e is None:
            return res
        alive = e.hbm | e.dram | e.disk
        if not alive:
            return res
        groups = [NodeMatch(alive)]
        alive_hbm = e.hbm
        _end_hbm_prefix(groups, alive & ~alive_hbm, 0)
        ph, pd, pk = e.hbm, e.dram, e.disk  # raw masks of the current run of blocks
        run_start, i, n_hashes = 0, 1, len(hashes)
        while i < n_hashes:
            e = entries.get(hashes[i])
            if e is None:
                break
            if e.hbm == ph and e.dram == pd and e.disk == pk:
                i += 1  # same residency as the run: nothing changes
                continue
            _credit(groups, ph, pd, alive, i - run_start)
            new_hbm = alive_hbm & e.hbm
            if new_hbm != alive_hbm:
                _end_hbm_prefix(groups, alive_hbm & ~new_hbm, i)
                alive_hbm = new_hbm
            new_alive = alive & (e.hbm | e.dram | e.disk)
            run_start = i
            if not new_alive:
                break
            alive, ph, pd, pk = new_alive, e.hbm, e.dram, e.disk
            i += 1
        _credit(groups, ph, pd, alive, i - run_start)
        _end_hbm_prefix(groups, alive_hbm, i)
        res.groups = groups
        res.longest, res.holders = i, alive
        for g in groups:
            if g.hbm_prefix > res.longest_hbm:
                res.longest_hbm, res.hbm_holders = g.hbm_prefix, g.mask
            elif g.hbm_prefix == res.longest_hbm and g.hbm_prefix:
                res.hbm_holders |= g.mask
        return res

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

    def requests_in_window(self, h: int, now: float) -> int:
        """Requests for `h` counted in the current and previous window buckets."""
        e = self._entries.get(h)
        if e is None:
            return 0
        b = int(now // self.window_s)
        if e.bucket == b:
            return e.demand_cur + e.demand_prev
        return e.demand_cur if e.bucket == b - 1 else 0

    def shared_depth(self, hashes: Sequence[int], now: float, min_requests: int = 2) -> int:
        """Blocks of the longest prefix of `hashes` requested at least `min_requests` times
        recently. Demand never grows along a chain (a request counts every ancestor too), so
        this is a binary search: O(log blocks)."""
        lo, hi = 0, len(hashes)  # invariant: prefix of lo blocks qualifies
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.requests_in_window(hashes[mid - 1], now) >= min_requests:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # ----------------------------------------------------------------- mutation
    def record_access(self, hashes: Sequence[int], now: float, parent: int | None = None) -> None:
        """Count one request for each block of `hashes` (creating entries as needed)."""
        entries = self._entries
        idle = self._idle
        b = int(now // self.window_s)
        prev = parent
        for h in hashes:
            e = entries.get(h)
            if e is None:
                e = entries[h] = BlockEntry(prev)
            if e.bucket != b:
                e.demand_prev = e.demand_cur if e.bucket == b - 1 else 0
                e.demand_cur = 0
                e.bucket = b
            e.demand_cur += 1
            e.last_access = now
            if not (e.hbm or e.dram or e.disk or e.pins):
                idle[h] = now
                idle.move_to_end(h)
            prev = h
        self._expire(now)

    def store(self, node: NodeId, tier: Tier, hashes: Iterable[int], parent: int | None, now: float) -> int:
        """`node` now holds `hashes` (a chain, first one's parent is `parent`) in `tier`.

        Returns:
            How many blocks were newly stored (already-held ones are not counted).
        """
        bit = 1 << node
        entries = self._entries
        added = 0
        prev = parent
        for h in hashes:
            e = entries.get(h)
            if e is None:
                e = entries[h] = BlockEntry(prev)
            m = e.mask(tier)
            if not m & bit:
                _set_mask(e, tier, m | bit)
                added += 1
            prev = h
        if added:
            key = (node, tier)
            self._held[key] = self._held.get(key, 0) + added
        self._expire(now)
        return added

    def remove(self, node: NodeId, tier: Tier, hashes: Iterable[int], now: float) -> int:
        """`node` no longer holds `hashes` in `tier`. Unknown hashes are ignored.

        Returns:
            How many blocks were actually removed.
        """
        bit = 1 << node
        entries = self._entries
        removed = 0
        for h in hashes:
            e = entries.get(h)
            if e is None:
                continue
            m = e.mask(tier)
            if m & bit:
                _set_mask(e, tier, m & ~bit)
                removed += 1
                if not (e.hbm or e.dram or e.disk or e.pins):
                    self._idle[h] = now
                    self._idle.move_to_end(h)
        if removed:
            key = (node, tier)
            self._held[key] -= removed
        self._expire(now)
        return removed

    def clear_node(self, node: NodeId, now: float, tier: Tier | None = None) -> int:
        """Drop everything `node` holds (in `tier`, or in every tier). O(entries); rare."""
        bit = 1 << node
        tiers = (tier,) if tier is not None else (Tier.HBM, Tier.DRAM, Tier.DISK)
        removed = 0
        for h, e in self._entries.items():
            for t in tiers:
                m = e.mask(t)
                if m & bit:
                    _set_mask(e, t, m & ~bit)
                    removed += 1
            if not (e.hbm or e.dram or e.disk or e.pins):
                self._idle[h] = now
        for t in tiers:
            self._held.pop((node, t), None)
        return removed

    def node_blocks(self, node: NodeId, tier: Tier) -> set[int]:
        """Every block hash `node` holds in `tier` (for snapshots and checks). O(entries)."""
        bit = 1 << node
        return {h for h, e in self._entries.items() if e.mask(tier) & bit}

    def pin(self, hashes: Iterable[int], now: float) -> None:
        for h in hashes:
            e = self._entries.get(h)
            if e is None:
                e = self._entries[h] = BlockEntry(None)
            e.pins += 1

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
            if not (e.pins or e.hbm or e.dram or e.disk):
                self._idle[h] = now
                self._idle.move_to_end(h)

    # ------------------------------------------------------------------ expiry
    def _expire(self, now: float) -> None:
        """Drop up to a batch of entries idle (no residency, no pin) for a whole window."""
        idle = self._idle
        if not idle:
            return
        cutoff = now - self.window_s
        entries = self._entries
        for _ in range(_EXPIRE_BATCH):
            if not idle:
                return
            h, since = next(iter(idle.items()))
            if since > cutoff:
                return
            del idle[h]
            e = entries.get(h)
            if e is None or e.hbm or e.dram or e.disk or e.pins:
                continue  # became resident again; re-queued when it goes idle
            if e.last_access > cutoff:
                idle[h] = e.last_access  # requested since it went idle
                continue
            del entries[h]

    def expire_all(self, now: float) -> None:
        """Run expiry to completion (tests and periodic housekeeping)."""
        cutoff = now - self.window_s
        while self._idle and next(iter(self._idle.values())) <= cutoff:
            self._expire(now)


def _set_mask(e: BlockEntry, tier: Tier, value: int) -> None:
    if tier is Tier.HBM:
        e.hbm = value
    elif tier is Tier.DRAM:
        e.dram = value
    else:
        e.disk = value


def _credit(groups: list[NodeMatch], hbm: int, dram: int, alive: int, run_len: int) -> None:
    """Credit a run of `run_len` blocks to the `alive` nodes under the best tier each holds
    it in, splitting groups whose members hold it in different tiers. O(groups)."""
    if run_len <= 0:
        return
    hb = hbm & alive
    dr = dram & alive & ~hb
    dk = alive & ~(hb | dr)
    for g in list(groups):
        m = g.mask & alive
        if not m:
            continue  # dropped out earlier: frozen
        if m != g.mask:
            groups.append(g.split(g.mask & ~m))  # members that dropped out keep their counts
        parts = [(g.mask & hb, 0), (g.mask & dr, 1), (g.mask & dk, 2)]
        parts = [(pm, t) for pm, t in parts if pm]
        for pm, t in parts[1:]:
            ng = g.split(pm)
            groups.append(ng)
            _add(ng, t, run_len)
        _add(g, parts[0][1], run_len)


def _add(g: NodeMatch, tier: int, n: int) -> None:
    if tier == 0:
        g.hbm += n
    elif tier == 1:
        g.dram += n
    else:
        g.disk += n


def _end_hbm_prefix(groups: list[NodeMatch], dropped: int, at: int) -> None:
    """Nodes in `dropped` stop having an all-HBM prefix at block `at`."""
    if not dropped:
        return
    for g in list(groups):
        m = g.mask & dropped
        if not m or g.hbm_prefix >= 0:
            continue
        if m != g.mask:
            g = g.split(m)
            groups.append(g)
        g.hbm_prefix = at
