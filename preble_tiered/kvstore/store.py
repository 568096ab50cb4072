"""TieredStore: a node's DRAM tier over an optional disk tier, with a named write policy.

    put ──policy──▶ DRAM ──evict (not yet on disk)──▶ DISK ──evict──▶ dropped
                     ▲                                  │
                     └────────── promote on a hit ──────┘   (the disk copy stays)

Write policies come from `WRITE_POLICIES` by name:
- "write_back": blocks go to DRAM; the disk sees only what DRAM evicts (saves disk
  bandwidth; a crash or restart keeps only what was demoted).
- "write_through": blocks go to DRAM and disk at once (every block survives a restart and
  DRAM evictions need no write, at the cost of disk bandwidth for every block).
In both, a DRAM eviction is demoted to disk unless the disk already holds the block.

Like the tiers it owns, the store has one owner and takes no locks.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

from preble_tiered.events import ResidencyEvent
from preble_tiered.kvstore.base import BlockKey, StoredBlock, TierBackend
from preble_tiered.kvstore.disk import DiskTier
from preble_tiered.kvstore.dram import DramTier
from preble_tiered.kvstore.disk_writer import DiskWriter
from preble_tiered.kvstore.pool import BlockPool
from preble_tiered.types import Tier


class SnapshotEntry(NamedTuple):
    """One resident block in a snapshot: which tier, its hash and its parent's."""

    tier: Tier
    block_hash: int
    parent: int | None


class WritePolicy(ABC):
    """Where a newly stored block goes."""

    name: ClassVar[str]

    @abstractmethod
    def put(self, store: TieredStore, block: StoredBlock) -> tuple[Tier, ...]:
        """Store `block` through `store`; returns the tiers that now hold it."""


class WriteBack(WritePolicy):
    name = "write_back"

    def put(self, store: TieredStore, block: StoredBlock) -> tuple[Tier, ...]:
        if store.store_in_dram(block):
            return (Tier.DRAM,)
        # DRAM cannot take it (all pinned, or too big): keep it on disk rather than drop it.
        return (Tier.DISK,) if store.store_in_disk(block) else ()


class WriteThrough(WritePolicy):
    name = "write_through"

    def put(self, store: TieredStore, block: StoredBlock) -> tuple[Tier, ...]:
        tiers = []
        if store.store_in_dram(block):
            tiers.append(Tier.DRAM)
        writer = store.disk_writer  # read once: a stopping node clears it from another thread
        if writer is not None and tiers:  # on disk shortly, off the caller's thread
            writer.submit(block)
        elif store.store_in_disk(block):
            tiers.append(Tier.DISK)
        return tuple(tiers)


WRITE_POLICIES: dict[str, type[WritePolicy]] = {cls.name: cls for cls in (WriteBack, WriteThrough)}


def make_write_policy(name: str) -> WritePolicy:
    """The write policy registered under `name`.

    Raises:
        ValueError: on an unknown name (the message lists the known ones).
    """
    try:
        return WRITE_POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown write_policy {name!r}; expected one of {sorted(WRITE_POLICIES)}") from None


class TieredStore:
    """A node's DRAM and disk tiers as one block store.

    Args:
        dram: the DRAM tier.
        disk: the disk tier, or None for DRAM only.
        write_policy: a name in `WRITE_POLICIES`.
        namespace: the model namespace of every block (default: the disk tier's, else "").

    Raises:
        ValueError: on an unknown policy or a namespace that differs from the disk tier's.
    """

    def __init__(self, dram: DramTier, disk: DiskTier | None = None, write_policy: str = "write_back",
                 *, namespace: str | None = None) -> None:
        if namespace is None:
            namespace = disk.namespace if disk is not None else ""
        if disk is not None and disk.namespace != namespace:
            raise ValueError(f"namespace {namespace!r} differs from the disk tier's {disk.namespace!r}")
        self.namespace = namespace
        self.dram = dram
        self.disk = disk
        self.write_policy = make_write_policy(write_policy)
        self.disk_writer: DiskWriter | None = None
        """Where disk writes of demotions and write-through copies go instead of happening on
        the caller's thread (a node's runtime sets one: saves run on the engine's step thread)."""
        self.pool: BlockPool | None = None
        """The DRAM tier's block buffers, once the engine's block size is known (the connector
        sets it at `register_kv_caches`): blocks entering DRAM from elsewhere are copied in."""
        self._pins: dict[BlockKey, list[tuple[Tier, ...]]] = {}
        self._counters: Counter[str] = Counter()

    @property
    def tiers(self) -> tuple[TierBackend, ...]:
        """The tiers, fastest first."""
        return (self.dram,) if self.disk is None else (self.dram, self.disk)

    def key(self, block_hash: int) -> BlockKey:
        return BlockKey(self.namespace, block_hash)

    # -- reads ----------------------------------------------------------------------------
    def lookup(self, hashes: Sequence[int]) -> list[Tier | None]:
        """The fastest tier holding each block of a chain, up to the first miss.

        Returns:
            One entry per hash: a Tier for each leading block held, None from the first
            miss on (later blocks are unusable without it). Nothing is marked as used.
        """
        out: list[Tier | None] = [None] * len(hashes)
        for i, h in enumerate(hashes):
            tier = self.tier_of(self.key(h))
            if tier is None:
                break
            out[i] = tier
        return out

    def tier_of(self, key: BlockKey) -> Tier | None:
        """The fastest tier holding `key`, or None (does not count as a use)."""
        for t in self.tiers:
            if t.contains(key):
                return t.tier
        return None

    def holds(self, key: BlockKey) -> bool:
        """Whether any tier holds `key` (does not count as a use)."""
        return self.tier_of(key) is not None

    def get(self, key: BlockKey) -> tuple[StoredBlock, Tier] | None:
        """The block and the tier it was read from; None if no tier has a usable copy.

        A disk hit is promoted into DRAM (zero-copy: DRAM keeps the buffer just read) and
        stays on disk.
        """
        block = self.dram.get(key)
        if block is not None:
            return block, Tier.DRAM
        block = self.disk.get(key) if self.disk is not None else None
        if block is None:
            return None
        if self.store_in_dram(block):
            self._counters["promoted"] += 1
        return block, Tier.DISK

    def get_prefix(self, hashes: Sequence[int]) -> list[tuple[StoredBlock, Tier]]:
        """The leading run of a chain's blocks that can be read, in chain order."""
        n = sum(1 for t in self.lookup(hashes) if t is not None)
        found: list[tuple[StoredBlock, Tier] | None] = [None] * n
        # Read the tail first so the chain's first block ends up most recently used: LRU then
        # evicts tails before the prefixes they extend (a block is useless without its parent).
        for i in reversed(range(n)):
            found[i] = self.get(self.key(hashes[i]))
        out: list[tuple[StoredBlock, Tier]] = []
        for item in found:  # a block may fail its checksum: keep the run before it
            if item is None:
                break
            out.append(item)
        return out

    # -- writes ---------------------------------------------------------------------------
    def put(self, block: StoredBlock) -> tuple[Tier, ...]:
        """Store a block as the write policy says.

        Returns:
            The tiers now holding it; empty when none could take it (all pinned, disk degraded).

        Raises:
            ValueError: if the block's namespace is not the store's, or it fits in no tier.
        """
        if block.key.namespace != self.namespace:
            raise ValueError(f"block namespace {block.key.namespace!r} is not the store's {self.namespace!r}")
        if not self.dram.fits(block) and (self.disk is None or not self.disk.fits(block)):
            raise ValueError(f"a block of {block.nbytes} bytes fits in no tier; raise dram_bytes or disk_bytes")
        return self.write_policy.put(self, block)

    def store_in_dram(self, block: StoredBlock) -> bool:
        """Put `block` in DRAM, demoting what it evicts. False if DRAM cannot take it.

        With a pool, a block not already in one of its slots (pulled, promoted from disk) is
        copied into one, so DRAM's resident memory stays the pool's; when every slot is
        held it is kept as it is.
        """
        pool = self.pool
        if pool is not None and not pool.owns(block.data) and not self.dram.contains(block.key):
            view = pool.adopt(block.data)
            if view is not None:
                block = StoredBlock(block.key, block.parent, view)
        evicted = self.dram.put(block) if self.dram.fits(block) else None
        if evicted is None:
            return False
        for victim in evicted:
            self._demote(victim)
        return True

    def store_in_disk(self, block: StoredBlock) -> bool:
        """Put `block` on disk (its own evictions are dropped). False if it cannot."""
        if self.disk is None or not self.disk.fits(block):
            return False
        return self.disk.put(block) is not None

    def _demote(self, block: StoredBlock) -> None:
        if self.disk is None or self.disk.contains(block.key):
            return
        writer = self.disk_writer  # read once: a stopping node clears it from another thread
        if writer is not None:
            if not writer.submit(block):
                self._counters["demote_dropped"] += 1
            return
        self.write_to_disk(block)

    def write_to_disk(self, block: StoredBlock) -> None:
        """Demote `block` to disk now, unless it is there already (what the disk writer runs)."""
        if self.disk is not None and not self.disk.contains(block.key):
            self._counters["demoted" if self.store_in_disk(block) else "demote_dropped"] += 1

    # -- pins -----------------------------------------------------------------------------
    def pin(self, key: BlockKey) -> tuple[Tier, ...]:
        """Pin `key` in every tier holding it now. Returns those tiers (empty: held nowhere)."""
        tiers = tuple(t.tier for t in self.tiers if t.pin(key))
        if tiers:
            self._pins.setdefault(key, []).append(tiers)
        return tiers

    def unpin(self, key: BlockKey) -> None:
        """Release the latest pin of `key` in the tiers it was taken in.

        Raises:
            RuntimeError: if `key` has no pin held through this store.
        """
        held = self._pins.get(key)
        if not held:
            raise RuntimeError("unpin of a block with no pins held in the store")
        tiers = held.pop()
        if not held:
            del self._pins[key]
        for backend in self.tiers:
            if backend.tier in tiers:
                backend.unpin(key)

    # -- reporting ------------------------------------------------------------------------
    def take_events(self) -> list[ResidencyEvent]:
        """Both tiers' residency events since the last call, DRAM's first."""
        return [ev for t in self.tiers for ev in t.take_events()]

    def snapshot(self) -> list[SnapshotEntry]:
        """Every resident block per tier, parents before children within a tier."""
        return [SnapshotEntry(t.tier, k.block_hash, parent) for t in self.tiers for k, parent in t.keys()]

    def stats(self) -> dict[str, dict[str, int]]:
        out = {t.tier.name.lower(): t.stats() for t in self.tiers}
        out["store"] = {name: self._counters[name] for name in ("promoted", "demoted", "demote_dropped")}
        if self.disk_writer is not None:
            out["store"]["disk_write_queue"] = self.disk_writer.pending
        return out

    def flush_to_disk(self, budget_s: float = 10.0, clock=None) -> int:
        """Copy DRAM's blocks that are not on disk to disk, most recently used first (what a
        cut-short flush keeps is what was hottest), for a warm restart after a clean stop under
        write-back. Stops after `budget_s`. Returns how many blocks were written. Writes
        still queued on the disk writer are not waited for: drain it first."""
        if self.disk is None or self.disk.degraded:
            return 0
        now = clock or time.monotonic
        deadline = now() + budget_s
        written = 0
        for block in reversed(self.dram.blocks()):  # most recently used first, should time run out
            if now() > deadline:
                break
            if not self.disk.contains(block.key) and self.store_in_disk(block):
                written += 1
        return written

    def close(self) -> None:
        if self.disk_writer is not None:
            self.disk_writer.close()
        for t in self.tiers:
            t.close()
