"""The LRU bookkeeping shared by the DRAM and disk tiers.

Both concrete tiers keep the same in-memory index, so eviction order, pin counts, events
and stats behave identically; only where the bytes live differs:

    index: OrderedDict[BlockKey, IndexEntry]   oldest (next victim) ... newest (last used)
    pins:  Counter[BlockKey]                   a block with a count > 0 is never evicted

`put` plans its evictions before touching anything, so a put that cannot make room (every
candidate pinned) changes nothing and returns None (running out of room is a return value,
not an exception). Residency events (node 0 placeholder; the node agent stamps its id) are
queued per tier and drained once per step with `take_events()`.

Backends are owned by one thread (the node agent's step loop); they take no locks.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter, OrderedDict
from dataclasses import dataclass

from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored, ResidencyEvent
from preble_tiered.kvstore.base import PLACEHOLDER_NODE, BlockKey, StoredBlock, TierBackend, parents_first
from preble_tiered.types import Tier


@dataclass(slots=True)
class IndexEntry:
    """What the index knows of a resident block."""

    size: int
    parent: int | None
    block: StoredBlock | None = None  # DRAM keeps the block itself; disk reads it back


class LruTier(TierBackend):
    """The shared index: LRU order, byte accounting, pins, events and counters.

    Subclasses say where bytes live through `_write`, `_read` and `_erase`.
    """

    def __init__(self, tier: Tier, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"{tier.name} capacity_bytes must be positive, got {capacity_bytes}")
        self.tier = tier
        self._capacity = int(capacity_bytes)
        self._used = 0
        self._index: OrderedDict[BlockKey, IndexEntry] = OrderedDict()
        self._pins: Counter[BlockKey] = Counter()
        # Queued events as (kind, hashes, parent); chains grow in place and become frozen
        # events only when drained, so a long chain costs O(n), not O(n^2) tuple copies.
        self._events: list[tuple[type, list[int], int | None]] = []
        self._counters: Counter[str] = Counter()

    # -- hooks --------------------------------------------------------------------------
    def _size_of(self, block: StoredBlock) -> int:
        """Bytes the block takes in this tier."""
        return block.nbytes

    @abstractmethod
    def _write(self, block: StoredBlock, size: int, victims: list[BlockKey]) -> IndexEntry | None:
        """Store `block` and erase `victims` (as one step where possible); None on failure."""

    @abstractmethod
    def _read(self, key: BlockKey, entry: IndexEntry) -> StoredBlock | None:
        """The block's bytes; None if they cannot be used (the hook drops a bad block)."""

    def _erase(self, key: BlockKey) -> None:
        """Delete the block's bytes (nothing to do where the index holds them)."""

    # -- interface ----------------------------------------------------------------------
    def contains(self, key: BlockKey) -> bool:
        return key in self._index

    def fits(self, block: StoredBlock) -> bool:
        return self._size_of(block) <= self._capacity

    def get(self, key: BlockKey) -> StoredBlock | None:
        entry = self._index.get(key)
        block = None if entry is None else self._read(key, entry)
        if block is None:
            self._counters["misses"] += 1
            return None
        self._index.move_to_end(key)
        self._counters["hits"] += 1
        return block

    def put(self, block: StoredBlock) -> list[StoredBlock] | None:
        size = self._size_of(block)
        if size > self._capacity:
            raise ValueError(
                f"block of {size} bytes exceeds the {self.tier.name} tier capacity of "
                f"{self._capacity} bytes; raise the capacity or use smaller blocks"
            )
        if block.key in self._index:
            self._index.move_to_end(block.key)
            return []
        victims = self._plan_eviction(size)
        if victims is None:
            self._counters["rejected"] += 1
            return None
        evicted = [self._victim_block(k) for k in victims]
        entry = self._write(block, size, victims)
        if entry is None:
            self._counters["rejected"] += 1
            return None
        for k in victims:
            self._forget(k)
        self._counters["evictions"] += len(victims)
        self._counters["puts"] += 1
        self._index[block.key] = entry
        self._used += size
        self._emit_stored(block.key.block_hash, block.parent)
        return evicted

    def remove(self, key: BlockKey) -> bool:
        if key not in self._index:
            return False
        if self._pins.get(key, 0) > 0:
            raise RuntimeError(f"cannot remove a pinned block ({self._pins[key]} pins held); unpin it first")
        self._erase(key)
        self._forget(key)
        return True

    def pin(self, key: BlockKey) -> bool:
        if key not in self._index:
            return False
        self._pins[key] += 1
        return True

    def unpin(self, key: BlockKey) -> None:
        if self._pins.get(key, 0) <= 0:
            raise RuntimeError(f"unpin of a block with no pins held in the {self.tier.name} tier")
        self._pins[key] -= 1
        if self._pins[key] == 0:
            del self._pins[key]

    def pin_count(self, key: BlockKey) -> int:
        return self._pins.get(key, 0)

    def keys(self) -> list[tuple[BlockKey, int | None]]:
        return parents_first((k, e.parent) for k, e in self._index.items())

    def lru_order(self) -> list[BlockKey]:
        """Keys from the next eviction victim to the most recently used."""
        return list(self._index)

    def take_events(self) -> list[ResidencyEvent]:
        queued, self._events = self._events, []
        out: list[ResidencyEvent] = []
        for kind, hashes, parent in queued:
            if kind is BlockStored:
                out.append(BlockStored(PLACEHOLDER_NODE, self.tier, tuple(hashes), parent))
            elif kind is BlockRemoved:
                out.append(BlockRemoved(PLACEHOLDER_NODE, self.tier, tuple(hashes)))
            else:
                out.append(AllBlocksCleared(PLACEHOLDER_NODE, self.tier))
        return out

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def stats(self) -> dict[str, int]:
        out = {name: self._counters[name] for name in ("hits", "misses", "evictions", "puts", "rejected")}
        out.update(bytes=self._used, capacity=self._capacity, blocks=len(self._index), pinned=len(self._pins))
        return out

    # -- internals ----------------------------------------------------------------------
    def _plan_eviction(self, size: int) -> list[BlockKey] | None:
        """LRU unpinned victims that free enough room for `size` bytes; None if impossible."""
        need = self._used + size - self._capacity
        victims: list[BlockKey] = []
        for key, entry in self._index.items():
            if need <= 0:
                break
            if self._pins.get(key, 0) == 0:
                victims.append(key)
                need -= entry.size
        return victims if need <= 0 else None

    def _victim_block(self, key: BlockKey) -> StoredBlock:
        entry = self._index[key]
        if entry.block is not None:
            return entry.block
        # The last tier has nowhere to demote to, so its victims are not read back.
        return StoredBlock(key, entry.parent, b"")

    def _forget(self, key: BlockKey) -> None:
        """Remove `key` from the index and queue BlockRemoved (pin counts are kept)."""
        entry = self._index.pop(key)
        self._used -= entry.size
        self._emit_removed(key.block_hash)

    def _emit_stored(self, block_hash: int, parent: int | None) -> None:
        last = self._events[-1] if self._events else None
        # Coalesce a chain stored block by block into one event, as vLLM batches do.
        if last is not None and last[0] is BlockStored and last[1][-1] == parent:
            last[1].append(block_hash)
        else:
            self._events.append((BlockStored, [block_hash], parent))

    def _emit_removed(self, block_hash: int) -> None:
        last = self._events[-1] if self._events else None
        if last is not None and last[0] is BlockRemoved:
            last[1].append(block_hash)
        else:
            self._events.append((BlockRemoved, [block_hash], None))

    def _emit_cleared(self) -> None:
        self._events.append((AllBlocksCleared, [], None))
