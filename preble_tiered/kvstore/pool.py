"""BlockPool: the DRAM tier's block buffers, carved out of one arena and reused.

A block saved from the engine is copied straight into a free slot of one anonymous mapping,
instead of into a fresh heap buffer per block. On a serving node the
DRAM tier is full, so every save evicts a block: without a pool each save pays for a new
allocation (and, whenever the allocator hands memory back, its page faults); with it the
same slots, faulted in once when the pool is made, are copied into again and again.

Ownership is Python's own reference count. A slot is handed out only as a read-only
memoryview; every view derived from it (slices, `toreadonly`, `np.frombuffer`) keeps the
one buffer export alive, and that export holds the slot. So a slot is free exactly when
nothing but the pool refers to it: when the DRAM tier has dropped the block, the disk
demotion has finished with it and no pull is still sending it. `take` checks that count
before reusing a slot, so a block still referenced anywhere is never overwritten. There is
no explicit free, so no path can forget one.

When every slot is held (a burst of saves beyond the headroom, pinned blocks), `take`
returns None and the caller falls back to a fresh buffer: slower, never wrong.

Memory: the arena is faulted in when the pool is made (the DRAM tier's memory is committed
up front, as a pinned host buffer would be), so no save stalls on first-touch faults.
Blocks that enter DRAM from elsewhere (pulled from a peer, promoted from disk) are copied
into a slot by `adopt`, so DRAM's resident memory is the arena, plus only the blocks that
arrived while every slot was held.

Thread-safe: the engine's step thread saves while the node's event loop stores pulled
blocks, and the check of a slot's count and the view that claims it must not interleave.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

import numpy as np

_getrefcount = sys.getrefcount
_PAGE = 4096
_SKEW = _PAGE // 2  # where a slot starts within its first page


class BlockPool:
    """`n_slots` buffers of `slot_bytes` each, in one arena.

    Args:
        slot_bytes: bytes of one block (the engine layout's `block_bytes`).
        n_slots: how many blocks the pool can back at once.

    Raises:
        ValueError: for a non-positive size or count.
    """

    def __init__(self, slot_bytes: int, n_slots: int) -> None:
        if slot_bytes <= 0 or n_slots <= 0:
            raise ValueError(f"slot_bytes and n_slots must be positive, got {slot_bytes} and {n_slots}")
        self.slot_bytes = slot_bytes
        self.n_slots = n_slots
        # Slots start half a page past a page boundary: the engine's cache blocks are page
        # aligned, and a copy between two addresses equal modulo 4 KiB runs into the CPU's
        # 4K-aliasing stalls (loads into the cache measured 5.3 GB/s from page-aligned slots,
        # ~7 GB/s from these).
        pitch = -(-slot_bytes // _PAGE) * _PAGE
        # Private and anonymous (a plain mmap(-1) is shared memory). No huge-page advice: with
        # it, faults may stop to compact memory (93 fresh blocks once took 68 ms against 12
        # touched, and faulting 1 GiB in 1.2-1.7 s against 0.6-0.7), and saves and loads
        # measured no faster on huge pages.
        self._arena = mmap.mmap(-1, pitch * n_slots + _PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        flat = np.frombuffer(self._arena, dtype=np.uint8)
        # Fault the whole arena in now: the DRAM tier's memory is committed when the engine
        # starts (~0.6 s per GiB, once), and no save or load later pays first-touch faults
        # (~150 us per fresh 256 KiB block against ~25 us for a touched one).
        self._base = flat.ctypes.data
        ctypes.memset(self._base, 0, len(self._arena))
        self._slots = [flat[_SKEW + i * pitch:_SKEW + i * pitch + slot_bytes] for i in range(n_slots)]
        self._addrs = [s.ctypes.data for s in self._slots]
        self._free_refs = _getrefcount(self._slots[0])  # the pool's own reference only
        self._slot_ids = {id(s) for s in self._slots}
        self._cursor = 0
        self._lock = threading.Lock()
        self.fallbacks = 0  # `take` calls that found every slot held

    @classmethod
    def for_tier(cls, slot_bytes: int, capacity_bytes: int) -> "BlockPool":
        """A pool for a DRAM tier of `capacity_bytes`: every block it can hold, plus headroom
        for the blocks a step saves before its puts evict old ones (256 slots, at most
        256 MiB of them, at least 16)."""
        headroom = max(16, min(256, (256 << 20) // slot_bytes))
        return cls(slot_bytes, max(1, capacity_bytes // slot_bytes) + headroom)

    def take(self) -> tuple[int, memoryview] | None:
        """A free slot as (address to write `slot_bytes` into, read-only view of it), or None
        when every slot is still referenced. Write the block before handing the view on."""
        slots, n, free = self._slots, self.n_slots, self._free_refs
        with self._lock:
            i = self._cursor
            for _ in range(n):
                if _getrefcount(slots[i]) == free:
                    self._cursor = i + 1 if i + 1 < n else 0
                    return self._addrs[i], memoryview(slots[i]).toreadonly()
                i = i + 1 if i + 1 < n else 0
            self.fallbacks += 1
        return None

    def owns(self, data: object) -> bool:
        """Whether `data` is a view of one of this pool's slots."""
        return type(data) is memoryview and id(data.obj) in self._slot_ids

    def adopt(self, data: bytes | memoryview) -> memoryview | None:
        """`data` copied into a free slot (its read-only view), or None when it is not one
        block's size or every slot is held."""
        src = memoryview(data)
        if src.nbytes != self.slot_bytes or not src.c_contiguous:
            return None
        slot = self.take()
        if slot is None:
            return None
        addr, view = slot
        ctypes.memmove(addr, np.frombuffer(src, dtype=np.uint8).ctypes.data, self.slot_bytes)
        return view

    def region(self) -> tuple[int, int]:
        """(address, length) of the arena: what a transfer engine registers for peers to read
        and to read into."""
        return self._base, len(self._arena)

    @staticmethod
    def address_of(view: memoryview) -> int:
        """The address of a slot's view (`owns(view)` must hold)."""
        return np.frombuffer(view, dtype=np.uint8).ctypes.data

    def in_use(self) -> int:
        """Slots referenced outside the pool (O(n): for stats and tests)."""
        slots, free = self._slots, self._free_refs
        return sum(1 for i in range(self.n_slots) if _getrefcount(slots[i]) != free)
