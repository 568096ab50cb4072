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
per-touch reordering, 8 bytes per queued entry. Demand is a two-bucket sliding window (requests in the last `window_s` seconds,
interpolated), O(1) per access.

The index is pure: callers pass `now`; it never reads a clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple
from dataclasses import dataclass, field
from functools import lru_cache

from preble_tiered.types import NodeId, Tier

_EXPIRE_BATCH = 32  # queued entries examined per mutating call: twice a request's ~16 new blocks
_EXPIRE_FRESH = 4  # ... stopping after this many not yet due


def iter_bits(mask: int) -> Iterator[int]:
    """Node ids set in `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@lru_cache(maxsize=1 << 16)
def bits(mask: int) -> tuple[int, ...]:
    """Node ids set in `mask` as a tuple, memoized: the same node sets recur constantly."""
    return tuple(iter_bits(mask))


@dataclass(slots=True)
class BlockEntry:
    """What the router knows of one block."""

    parent: int | None
    hbm: int = 0  # node bitmask per tier
    dram: int = 0
    disk: int = 0
    pending: int = 0  # nodes that will hold it in HBM once a dispatched request computes it
    pins: int = 0  # counted pins (admin); a pinned entry never expires
    idle_at: float = float("-inf")  # when it last lost its residency, pending mark or pin
    bucket: int = -1  # window bucket index that `demand_cur` counts
    demand_cur: int = 0
    demand_prev: int = 0
    last_access: float = float("-inf")

    @property
    def kept(self) -> bool:
        """Held, pending or pinned: never expired."""
        return bool(self.hbm or self.dram or self.disk or self.pending or self.pins)

    def mask(self, tier: Tier) -> int:
        return self.hbm if tier is Tier.HBM else self.dram if tier is Tier.DRAM else self.disk


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

    def get(self, node: NodeId) -> NodeMatch | None:
        return self.nodes.get(node)


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
        self._idle: deque[int] = deque()  # hashes that may be idle (see module docstring)
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
        """Longest usable prefix of `hashes` on every node, per tier (read only)."""
        return self._walk(hashes, None)

    def lookup(self, hashes: Sequence[int], now: float) -> MatchResult:
        """`record_access(hashes, now)` and `match(hashes)` in one walk over the blocks
        (one dict probe per block instead of two: the router's decision path)."""
        return self._walk(hashes, now)

    def _walk(self, hashes: Sequence[int], now: float | None) -> MatchResult:
        """Match, and count a request for every block when `now` is given.

        Where a block's masks equal the previous block's nothing is done. Where they
        change, only the nodes whose best tier flips are touched (each closes an interval
        of blocks credited to its old tier), so the cost is O(blocks + tier flips), i.e.
        O(blocks + nodes) for the layouts caches produce.
        """
        res = MatchResult(n_blocks=len(hashes))
        if not hashes:
            if now is not None:
                res.entries = []
            return res
        record = now is not None
        bucket = int(now // self.window_s) if record else 0
        get = self._entries.get
        e = get(hashes[0])
        if record:
            e = self._touch(e, hashes[0], None, now, bucket)
        alive = 0 if e is None else e.hbm | e.dram | e.disk | e.pending
        if not alive:
            if record:
                res.entries = [e, *self._record_from(hashes, 1, now, bucket)]
            return res
        counts = {n: [0, 0, 0, 0] for n in bits(alive)}  # hbm, pending, dram, disk
        hbm_prefix = dict.fromkeys(counts, 0)
        alive_hbm = (e.hbm | e.pending) & alive
        cur = _best_tiers(e.hbm, e.pending, e.dram, alive)
        since: list[dict[int, int]] = [dict.fromkeys(bits(m), 0) for m in cur]
        r_hbm, r_pend, r_dram, r_disk = e.hbm, e.pending, e.dram, e.disk
        walked = [e] if record else None
        append = walked.append if record else None
        i, n_hashes = 1, len(hashes)
        while i < n_hashes:
            e = get(hashes[i])
            if e is None:
                if record:
                    append(self._touch(None, hashes[i], hashes[i - 1], now, bucket))  # type: ignore[misc]
                break
            if record:
                # `_touch` inlined for an existing entry: the hottest loop of a decision.
                if e.bucket != bucket:
                    e.demand_prev = e.demand_cur if e.bucket == bucket - 1 else 0
                    e.demand_cur = 0
                    e.bucket = bucket
                e.demand_cur += 1
                e.last_access = now
                append(e)  # type: ignore[misc]
                # An idle entry stays queued in `_idle`; the sweep re-checks last_access.
            if e.hbm == r_hbm and e.pending == r_pend and e.dram == r_dram and e.disk == r_disk:
                i += 1  # same residency as the previous block: nothing flips
                continue
            r_hbm, r_pend, r_dram, r_disk = e.hbm, e.pending, e.dram, e.disk
            new_alive = alive & (r_hbm | r_dram | r_disk | r_pend)
            new_hbm = alive_hbm & (r_hbm | r_pend)
            for n in bits(alive_hbm & ~new_hbm):
                hbm_prefix[n] = i
            alive_hbm = new_hbm
            new = _best_tiers(r_hbm, r_pend, r_dram, new_alive)
            for t in range(4):
                flips = cur[t] ^ new[t]
                if flips:
                    _close(counts, since[t], t, cur[t] & flips, i)
                    for n in bits(new[t] & flips):
                        since[t][n] = i
            cur = new
            if not new_alive:
                break
            alive = new_alive
            i += 1
        if record:
            walked.extend(self._record_from(hashes, i + 1, now, bucket))  # type: ignore[union-attr]
            res.entries = walked
        for t in range(4):
            _close(counts, since[t], t, cur[t], i)
        for n in bits(alive_hbm):
            hbm_prefix[n] = i
        res.nodes = {n: NodeMatch(n, h, d, k, p, hbm_prefix[n]) for n, (h, p, d, k) in counts.items()}
        res.longest, res.holders = i, alive
        best = max(hbm_prefix.values())
        res.longest_hbm = best
        if best:
            res.hbm_holders = sum(1 << n for n, v in hbm_prefix.items() if v == best)
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
        if hashes:
            bucket = int(now // self.window_s)
            self._touch(self._entries.get(hashes[0]), hashes[0], parent, now, bucket)
            self._record_from(hashes, 1, now, bucket)

    def _record_from(self, hashes: Sequence[int], start: int, now: float, bucket: int) -> list[BlockEntry]:
        get, touch = self._entries.get, self._touch
        out = [touch(get(hashes[i]), hashes[i], hashes[i - 1], now, bucket) for i in range(start, len(hashes))]
        self._expire(now)
        return out

    def _touch(self, e: BlockEntry | None, h: int, parent: int | None, now: float, bucket: int) -> BlockEntry:
        """Count a request for block `h` (entry `e`, created when None)."""
        if e is None:
            e = self._entries[h] = BlockEntry(parent)
            self._idle.append(h)  # a new entry is idle until something holds it
        if e.bucket != bucket:
            e.demand_prev = e.demand_cur if e.bucket == bucket - 1 else 0
            e.demand_cur = 0
            e.bucket = bucket
        e.demand_cur += 1
        e.last_access = now
        return e

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
            if tier is Tier.HBM and e.pending & bit:
                e.pending &= ~bit  # the promised block arrived
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
                if not e.kept:
                    self._went_idle(h, e, now)
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
            was_kept = e.kept
            for t in tiers:
                m = e.mask(t)
                if m & bit:
                    _set_mask(e, t, m & ~bit)
                    removed += 1
            if tier is None:
                e.pending &= ~bit
            if was_kept and not e.kept:
                self._went_idle(h, e, now)
        for t in tiers:
            self._held.pop((node, t), None)
        return removed

    def add_pending(self, node: NodeId, hashes: Iterable[int], parent: int | None = None) -> None:
        """`node` will hold `hashes` in HBM once a request dispatched there computes (or
        loads) them. The router's own knowledge of work it dispatched, kept apart from
        residency: cleared by the node's BlockStored(HBM) or by `clear_pending`."""
        entries, walked, prev = self._entries, [], parent
        for h in hashes:
            e = entries.get(h)
            if e is None:
                e = entries[h] = BlockEntry(prev)
            walked.append(e)
            prev = h
        self.add_pending_entries(node, walked)

    def add_pending_entries(self, node: NodeId, entries: Sequence[BlockEntry]) -> None:
        """`add_pending` for the entries a `lookup` just walked (no dict probes). The
        entries must come from this index in the same call sequence (nothing expired)."""
        bit = 1 << node
        for e in entries:
            if not e.hbm & bit:
                e.pending |= bit

    def clear_pending(self, node: NodeId, hashes: Iterable[int], now: float) -> None:
        """The request that promised `hashes` on `node` finished or failed."""
        bit = 1 << node
        for h in hashes:
            e = self._entries.get(h)
            if e is not None and e.pending & bit:
                e.pending &= ~bit
                if not e.kept:
                    self._went_idle(h, e, now)

    def node_blocks(self, node: NodeId, tier: Tier) -> set[int]:
        """Every block hash `node` holds in `tier` (for snapshots and checks). O(entries)."""
        bit = 1 << node
        return {h for h, e in self._entries.items() if e.mask(tier) & bit}

    def pin(self, hashes: Iterable[int], now: float) -> None:
        """Count one pin per block of a chain (entries created as needed, with chain parents)."""
        parent = None
        for h in hashes:
            e = self._entries.get(h)
            if e is None:
                e = self._entries[h] = BlockEntry(parent)
            e.pins += 1
            parent = h

    def items(self) -> Iterator[tuple[int, BlockEntry]]:
        """Every (hash, entry) (admin listings; O(entries))."""
        return iter(self._entries.items())

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
        idle, entries = self._idle, self._entries
        cutoff = now - self.window_s
        fresh = 0
        for _ in range(min(_EXPIRE_BATCH, len(idle))):
            h = idle.popleft()
            e = entries.get(h)
            if e is None or e.hbm or e.dram or e.disk or e.pending or e.pins:  # `kept`, inlined
                continue  # already dropped (a duplicate), or held again: re-queued when idle
            if e.last_access <= cutoff and e.idle_at <= cutoff:
                del entries[h]
            else:
                idle.append(h)
                fresh += 1
                if fresh == _EXPIRE_FRESH:
                    return  # the queue behind is newer still

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


def _set_mask(e: BlockEntry, tier: Tier, value: int) -> None:
    if tier is Tier.HBM:
        e.hbm = value
    elif tier is Tier.DRAM:
        e.dram = value
    else:
        e.disk = value


def _best_tiers(hbm: int, pending: int, dram: int, alive: int) -> tuple[int, int, int, int]:
    """Masks of the `alive` nodes whose best copy of a block is HBM, pending, DRAM, disk."""
    hb = hbm & alive
    pe = pending & alive & ~hb
    dr = dram & alive & ~(hb | pe)
    return hb, pe, dr, alive & ~(hb | pe | dr)


def _close(counts: dict[int, list[int]], since: dict[int, int], tier: int, mask: int, at: int) -> None:
    """Nodes in `mask` leave `tier` at block `at`: credit the interval they spent in it."""
    while mask:
        low = mask & -mask
        n = low.bit_length() - 1
        counts[n][tier] += at - since.pop(n)
        mask ^= low
