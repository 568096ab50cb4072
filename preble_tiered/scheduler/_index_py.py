"""Python kernels of the PrefixIndex: the reference for `_index_native.c` and the fallback
where it is not built. Both modules offer the same names with the same arguments:

    BlockEntry                                  one block's residency, pins and demand
    EntryMap()                                  an empty hash -> BlockEntry map (here a dict)
    walk(entries, idle_append, hashes, now, bucket, node_match)
        -> (nodes, longest, holders, longest_hbm, hbm_holders, walked, source, shapes)
    store(entries, hashes, tier, node, parent) -> added
    remove(entries, idle_append, hashes, tier, node, now) -> removed
    clear_pending(entries, idle_append, hashes, node, now)
    add_pending(walked, node)
    expire(entries, idle, cutoff, batch, fresh_limit)
    shared_depth(entries, hashes, bucket, min_requests) -> blocks
    hbm_scan(entries, items, node, bucket, limit) -> (stale, seen)

`entries` is the index's map of hash -> BlockEntry (an `EntryMap`), `idle` its deque of
hashes that may be idle (see index.py for what the walk computes and why). Block hashes are
ints in [0, 2**64), the hasher's range. Pure: `now` is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from preble_tiered.types import Tier

EntryMap = dict  # the native kernel's is a C table with the same interface
_HASH_LIMIT = 1 << 64


def iter_bits(mask: int):
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

    def holds(self, tier: Tier, node: int) -> bool:
        """Whether `node` holds the block in `tier`."""
        return bool(self.mask(tier) >> node & 1)


def _touch(entries: dict, idle_append: Callable, e: BlockEntry | None, h: int, parent: int | None,
           now: float, bucket: int) -> BlockEntry:
    """Count a request for block `h` (entry `e`, created when None)."""
    if e is None:
        e = entries[h] = BlockEntry(parent)
        idle_append(h)  # a new entry is idle until something holds it
    count_demand(e, bucket, now)
    return e


def count_demand(e: BlockEntry, bucket: int, now: float) -> None:
    """Count one request for `e` in window bucket `bucket` (the previous bucket's count is
    kept, older ones dropped): the one place demand is counted, for every index path."""
    if e.bucket != bucket:
        e.demand_prev = e.demand_cur if e.bucket == bucket - 1 else 0
        e.demand_cur = 0
        e.bucket = bucket
    e.demand_cur += 1
    e.last_access = now


def windowed_requests(e: BlockEntry, bucket: int) -> int:
    """Requests `e` counted in window bucket `bucket` and the one before it."""
    if e.bucket == bucket:
        return e.demand_cur + e.demand_prev
    return e.demand_cur if e.bucket == bucket - 1 else 0


def _record_from(entries: dict, idle_append: Callable, hashes: Sequence[int], start: int, now: float,
                 bucket: int) -> list[BlockEntry]:
    get = entries.get
    return [_touch(entries, idle_append, get(hashes[i]), hashes[i], hashes[i - 1], now, bucket)
            for i in range(start, len(hashes))]


class Walk(NamedTuple):
    """What `walk` finds along a prompt's blocks (the native kernel returns the same fields as a
    plain tuple, in this order)."""

    nodes: dict  # node -> node_match(node, hbm, dram, disk, pending, hbm_prefix blocks)
    longest: int  # blocks of the longest prefix held anywhere
    holders: int  # bitmask of the nodes holding that prefix
    longest_hbm: int  # blocks of the longest prefix in some node's HBM (or pending)
    hbm_holders: int  # bitmask of the nodes holding that HBM prefix
    walked: list | None  # every block's entry (created as needed) when demand was recorded
    pull_source: Any  # the best node to pull from, or None
    shapes: dict  # match shape -> nodes that share it


def walk(entries: dict, idle_append: Callable, hashes: Sequence[int], now: float | None, bucket: int,
         node_match: type) -> Walk:
    record = now is not None
    hashes = checked_hashes(hashes)  # as the native kernel: bad hashes are refused, not stored
    if not hashes:
        return Walk({}, 0, 0, 0, 0, ([] if record else None), None, {})
    get = entries.get
    e = get(hashes[0])
    if record:
        e = _touch(entries, idle_append, e, hashes[0], None, now, bucket)
    alive = 0 if e is None else e.hbm | e.dram | e.disk | e.pending
    if not alive:
        walked = [e, *_record_from(entries, idle_append, hashes, 1, now, bucket)] if record else None
        return Walk({}, 0, 0, 0, 0, walked, None, {})
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
                append(_touch(entries, idle_append, None, hashes[i], hashes[i - 1], now, bucket))  # type: ignore[misc]
            break
        if record:
            count_demand(e, bucket, now)  # type: ignore[arg-type]
            append(e)  # type: ignore[misc]
            # An idle entry stays queued; the sweep re-checks last_access.
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
        walked.extend(_record_from(entries, idle_append, hashes, i + 1, now, bucket))  # type: ignore[union-attr]
    for t in range(4):
        _close(counts, since[t], t, cur[t], i)
    for n in bits(alive_hbm):
        hbm_prefix[n] = i
    nodes = {n: node_match(n, h, d, k, p, hbm_prefix[n]) for n, (h, p, d, k) in counts.items()}
    best = max(hbm_prefix.values())
    hbm_holders = sum(1 << n for n, v in hbm_prefix.items() if v == best) if best else 0
    shapes: dict[tuple[int, ...], list[int]] = {}
    for n in sorted(nodes):
        shapes.setdefault(nodes[n][1:], []).append(n)
    return Walk(nodes, i, alive, best, hbm_holders, walked, _pull_source(nodes), shapes)


def _pull_source(nodes: dict) -> Any:
    """The node to pull from: nothing pending (a pending block is not there yet), the most
    blocks held, then the most of them in HBM, then the lowest id."""
    best, best_key = None, (0, 0)
    for n in sorted(nodes):
        nm = nodes[n]
        if nm.pending:
            continue
        key = (nm.hbm + nm.dram + nm.disk, nm.hbm)
        if key[0] and key > best_key:
            best, best_key = nm, key
    return best


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


def _check_node(node: int) -> None:
    if node < 0:
        raise ValueError(f"node {node} out of range: node ids are >= 0")


def checked_hashes(hashes: Iterable[int]) -> Sequence[int]:
    """`hashes` as a sequence of ints, checked before anything changes (no call half done)."""
    hashes = hashes if isinstance(hashes, (list, tuple)) else list(hashes)
    for h in hashes:
        if type(h) is not int:
            raise TypeError(f"block hashes must be ints, not {type(h).__name__}")
        if not 0 <= h < _HASH_LIMIT:
            raise ValueError(f"block hashes must be in [0, 2**64) (64-bit unsigned), not {h}")
    return hashes


def store(entries: dict, hashes: Iterable[int], tier: Tier, node: int, parent: int | None) -> int:
    _check_node(node)
    hashes = checked_hashes(hashes)
    bit = 1 << node
    added = 0
    prev = parent
    for h in hashes:
        e = entries.get(h)
        if e is None:
            e = entries[h] = BlockEntry(prev)
        m = e.mask(tier)
        if not m & bit:
            set_mask(e, tier, m | bit)
            added += 1
        if tier is Tier.HBM and e.pending & bit:
            e.pending &= ~bit  # the promised block arrived
        prev = h
    return added


def remove(entries: dict, idle_append: Callable, hashes: Iterable[int], tier: Tier, node: int, now: float) -> int:
    _check_node(node)
    hashes = checked_hashes(hashes)
    bit = 1 << node
    removed = 0
    for h in hashes:
        e = entries.get(h)
        if e is None:
            continue
        m = e.mask(tier)
        if m & bit:
            set_mask(e, tier, m & ~bit)
            removed += 1
            if not e.kept:
                e.idle_at = now
                idle_append(h)
    return removed


def clear_pending(entries: dict, idle_append: Callable, hashes: Iterable[int], node: int, now: float) -> None:
    _check_node(node)
    hashes = checked_hashes(hashes)
    bit = 1 << node
    for h in hashes:
        e = entries.get(h)
        if e is not None and e.pending & bit:
            e.pending &= ~bit
            if not e.kept:
                e.idle_at = now
                idle_append(h)


def add_pending(walked: Sequence[BlockEntry], node: int) -> None:
    bit = 1 << node
    for e in walked:
        if not e.hbm & bit:
            e.pending |= bit


def expire(entries: dict, idle: deque, cutoff: float, batch: int, fresh_limit: int) -> None:
    fresh = 0
    for _ in range(min(batch, len(idle))):
        h = idle.popleft()
        e = entries.get(h)
        if e is None or e.hbm or e.dram or e.disk or e.pending or e.pins:  # `kept`, inlined
            continue  # already dropped (a duplicate), or held again: re-queued when idle
        if e.last_access <= cutoff and e.idle_at <= cutoff:
            del entries[h]
        else:
            idle.append(h)
            fresh += 1
            if fresh == fresh_limit:
                return  # the queue behind is newer still


def shared_depth(entries: dict, hashes: Sequence[int], bucket: int, min_requests: int) -> int:
    hashes = checked_hashes(hashes)
    get = entries.get
    lo, hi = 0, len(hashes)  # invariant: prefix of lo blocks qualifies
    while lo < hi:
        mid = (lo + hi + 1) // 2
        e = get(hashes[mid - 1])
        r = 0 if e is None else windowed_requests(e, bucket)
        if r >= min_requests:
            lo = mid
        else:
            hi = mid - 1
    return lo


def set_mask(e: BlockEntry, tier: Tier, value: int) -> None:
    if tier is Tier.HBM:
        e.hbm = value
    elif tier is Tier.DRAM:
        e.dram = value
    else:
        e.disk = value


def hbm_scan(entries: dict, items: Iterable[tuple[int, Any]], node: int, bucket: int,
             limit: int) -> tuple[list[int], list[tuple[Any, int]]]:
    """Walk `items` ((key, size), least recently used first) until `limit` keys held in HBM
    by `node` were seen: (keys passed over, [(size, requests in the window beyond the
    first)] of those held)."""
    _check_node(node)
    bit, stale, seen = 1 << node, [], []
    for key, size in items:
        if len(seen) >= limit:
            break
        e = entries.get(key)
        if e is None or not e.hbm & bit:
            stale.append(key)
            continue
        seen.append((size, windowed_requests(e, bucket) - 1))
    return stale, seen
