"""A node's KV store as the engine's connector sees it, shared inside the node process.

vLLM builds its KV connector itself (scheduler and worker roles, from a class path), so the
connector cannot be handed the node's store; it finds it here by the id the engine puts in
`kv_connector_extra_config`. The engine runs in-process (one step thread), so both connector
roles and the node agent share this object; `lock` guards the store because the agent also
reads it (snapshots) from another thread.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace

from preble_tiered.hashing import BlockHasher
from preble_tiered.kvstore.base import StoredBlock
from preble_tiered.kvstore.store import TieredStore
from preble_tiered.scheduler.cost_model import CostModel, Link
from preble_tiered.transfer.framing import Block
from preble_tiered.transfer.meter import BandwidthMeter
from preble_tiered.types import Tier


@dataclass
class NodeKVRuntime:
    store: TieredStore
    hasher: BlockHasher
    cost: CostModel
    """Prices a load against a recompute (links for DRAM/disk; prefill for the alternative)."""
    lock: threading.RLock = field(default_factory=threading.RLock)
    loaded: dict[str, Counter[str]] = field(default_factory=dict)
    """request id -> tokens loaded from each tier ("dram"/"disk") and "planned" (what vLLM was
    told it would get); popped at finish."""
    stats: Counter[str] = field(default_factory=Counter)
    meter: BandwidthMeter = field(default_factory=BandwidthMeter)
    """Measured "dram"/"disk" load bandwidth (connector) and "net:<peer>" pulls (agent)."""
    pulled: dict[str, set[int]] = field(default_factory=dict)
    """request id -> blocks pulled from another node for it, pinned until `release_pulled`."""
    owner_pins: dict[str, list[tuple[int, Tier]]] = field(default_factory=dict)
    """admin pin owner (a pinned prefix's name) -> the (block, tier) pins it holds here."""

    @property
    def namespace(self) -> str:
        return self.store.namespace

    def worth_loading(self, tiers: list[Tier], start_tokens: int) -> bool:
        """Loading these blocks beats recomputing them (after `start_tokens` already present)."""
        bs = self.hasher.block_size
        load_s = sum(self.cost.fetch_s(t, bs) for t in tiers)
        n = len(tiers) * bs
        return load_s < self.cost.prefill_s(n, start_tokens + n)

    def take_loaded(self, request_id: str) -> dict[str, int]:
        with self.lock:
            return dict(self.loaded.pop(request_id, Counter()))

    # -- transfers (the Transfer service reads, the node agent stores pulled blocks) -------
    def read_block(self, block_hash: int) -> tuple[int | None, bytes | memoryview] | None:
        """(parent, data) of a block held in DRAM or on disk, for a peer's pull."""
        with self.lock:
            got = self.store.get(self.store.key(block_hash))
        return None if got is None else (got[0].parent, got[0].data)

    def read_block_nowait(self, block_hash: int) -> tuple[int | None, bytes | memoryview] | None:
        """`read_block` for a DRAM-resident block when the store is free; else None (without
        waiting: the caller is an event loop, and falls back to `read_block` in a thread)."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            key = self.store.key(block_hash)
            got = self.store.dram.get(key) if self.store.dram.contains(key) else None
        finally:
            self.lock.release()
        return None if got is None else (got.parent, got.data)

    def missing(self, hashes: list[int]) -> list[int]:
        """The blocks of `hashes` no tier here holds (what a pull should fetch)."""
        with self.lock:
            return [h for h in hashes if not any(t.contains(self.store.key(h)) for t in self.store.tiers)]

    def store_pulled(self, request_id: str, block: Block, *, blocking: bool = True) -> bool | None:
        """Keep a pulled block in DRAM, pinned until `release_pulled(request_id)`.

        Returns whether it is stored; with `blocking=False`, None (nothing done) when the
        store is busy, so an event loop can retry in a thread instead of waiting.
        """
        store = self.store
        key = store.key(block.block_hash)
        if not self.lock.acquire(blocking=blocking):
            return None
        try:
            if not any(t.contains(key) for t in store.tiers):
                if not store.store_in_dram(StoredBlock(key, block.parent, block.data)):
                    return False
            if not store.pin(key):
                return False
            self.pulled.setdefault(request_id, set()).add(block.block_hash)
        finally:
            self.lock.release()
        return True

    def release_pulled(self, request_id: str) -> None:
        with self.lock:
            for h in self.pulled.pop(request_id, ()):
                self.store.unpin(self.store.key(h))

    # -- admin pins and eviction (the node agent's PinBlocks / EvictBlocks) ----------------
    def set_pins(self, owner: str, hashes: list[int], tier: Tier) -> tuple[int, list[int]]:
        """Make `owner` pin exactly `hashes` in `tier` (DRAM or DISK), replacing what it
        pinned before. A block held only in the other tier is copied into `tier` first.

        Returns:
            (blocks pinned, blocks this node does not hold or could not place in `tier`).

        Raises:
            ValueError: `tier` is DISK and this node has no disk tier, or `tier` is HBM.
        """
        store = self.store
        if tier is Tier.HBM:
            raise ValueError("the engine's own cache cannot be pinned; pin in dram or disk")
        if tier is Tier.DISK and store.disk is None:
            raise ValueError("this node has no disk tier (start it with --disk-path)")
        target = store.dram if tier is Tier.DRAM else store.disk
        other = store.disk if tier is Tier.DRAM else store.dram
        held: list[tuple[int, Tier]] = []
        missing: list[int] = []
        with self.lock:
            self._release_owner(owner)
            for h in hashes:
                key = store.key(h)
                if not target.contains(key):
                    block = other.get(key) if other is not None else None
                    placed = block is not None and (store.store_in_dram(block) if tier is Tier.DRAM
                                                     else store.store_in_disk(block))
                    if not placed:
                        missing.append(h)
                        continue
                if target.pin(key):
                    held.append((h, tier))
                else:
                    missing.append(h)
            if held:
                self.owner_pins[owner] = held
        return len(held), missing

    def _release_owner(self, owner: str) -> None:
        for h, tier in self.owner_pins.pop(owner, ()):
            backend = self.store.dram if tier is Tier.DRAM else self.store.disk
            if backend is not None:
                backend.unpin(self.store.key(h))

    def evict(self, hashes: list[int], tier: Tier | None) -> tuple[int, int]:
        """Drop copies of `hashes` from `tier` (None: DRAM and disk); pinned copies stay.

        Returns:
            (copies removed, copies kept because they are pinned).
        """
        if tier is Tier.HBM:
            raise ValueError("the engine's own cache evicts by itself; evict from dram or disk")
        removed = kept = 0
        with self.lock:
            for backend in self.store.tiers:
                if tier is not None and backend.tier is not tier:
                    continue
                for h in hashes:
                    key = self.store.key(h)
                    if not backend.contains(key):
                        continue
                    if backend.pin_count(key) > 0:
                        kept += 1
                    elif backend.remove(key):
                        removed += 1
        return removed, kept

    def tier_usage(self) -> list[tuple[Tier, int, int, int, int]]:
        """(tier, used bytes, capacity bytes, blocks, pinned blocks) per tier."""
        with self.lock:
            out = []
            for t in self.store.tiers:
                st = t.stats()
                out.append((t.tier, t.used_bytes, t.capacity_bytes, st.get("blocks", 0), st.get("pinned", 0)))
            return out

    def refresh_links(self) -> None:
        """Price loads with the measured tier bandwidths (latencies stay the presets')."""
        links = self.cost.links
        dram, disk = self.meter.rate("dram"), self.meter.rate("disk")
        if dram is not None:
            links = replace(links, dram=Link(dram, links.dram.latency_s))
        if disk is not None:
            links = replace(links, disk=Link(disk, links.disk.latency_s))
        self.cost = self.cost.with_links(links)


_RUNTIMES: dict[str, NodeKVRuntime] = {}
_REG_LOCK = threading.Lock()


def register(rt: NodeKVRuntime) -> str:
    store_id = uuid.uuid4().hex
    with _REG_LOCK:
        _RUNTIMES[store_id] = rt
    return store_id


def lookup(store_id: str) -> NodeKVRuntime:
    with _REG_LOCK:
        try:
            return _RUNTIMES[store_id]
        except KeyError:
            raise RuntimeError(f"no KV store registered as {store_id!r} in this process; the connector "
                               "only works with an in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0)") from None


def unregister(store_id: str) -> None:
    with _REG_LOCK:
        _RUNTIMES.pop(store_id, None)
