"""Host-DRAM tier: blocks kept as the buffers they were handed in (no copies)."""

from __future__ import annotations

from preble_tiered.kvstore.base import BlockKey, StoredBlock
from preble_tiered.kvstore.lru import IndexEntry, LruTier
from preble_tiered.types import Tier


class DramTier(LruTier):
    """An LRU pool of blocks in host memory, bounded by `capacity_bytes` of block data.

    Zero-copy hand-off: `put` keeps the caller's `StoredBlock` (and so its buffer) as is and
    `get` returns that same object, so a DRAM hit costs no copy. Callers must not mutate a
    buffer after handing it in (pass `bytes` or a read-only memoryview to be safe).
    """

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(Tier.DRAM, capacity_bytes)

    def _write(self, block: StoredBlock, size: int, victims: list[BlockKey]) -> IndexEntry | None:
        return IndexEntry(size=size, parent=block.parent, block=block)

    def _read(self, key: BlockKey, entry: IndexEntry) -> StoredBlock | None:
        return entry.block

    def blocks(self) -> list[StoredBlock]:
        """Every block, from the next eviction victim to the most recently used."""
        return [e.block for e in self._index.values()]

    def close(self) -> None:
        """Drop every block (memory is released; no events: the node is going away)."""
        self._index.clear()
        self._pins.clear()
        self._used = 0
