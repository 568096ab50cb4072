"""The node's KV runtime: its DRAM/disk store with the pins, pulled blocks and load meter
around it, shared by the engine's KV connector, the node agent and the Transfer service.

It implements the engine's `KVRuntime` port (`engine/api.py`): the connector plans, reads
and saves blocks through its methods, the agent pulls blocks from other nodes into it and
pins or evicts for the router's admin, and `Transfer.Pull` reads blocks out of it for other
nodes. All of them run on different threads; `lock` guards the store, and only this class
takes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from preble_tiered.engine.api import LoadPlan, LoadRead
from preble_tiered.events import ResidencyEvent
from preble_tiered.hashing import BlockHasher
from preble_tiered.kvstore.base import StoredBlock
from preble_tiered.kvstore.config import KVStoreConfig, build_store
from preble_tiered.kvstore.disk_writer import DiskWriter
from preble_tiered.kvstore.pool import BlockPool
from preble_tiered.kvstore.store import TieredStore
from preble_tiered.scheduler.cost_model import CostModel, Link, engine_cost_model
from preble_tiered.transfer.framing import Block
from preble_tiered.transfer.meter import BandwidthMeter, Rate
from preble_tiered.types import Tier

logger = logging.getLogger(__name__)


def open_kv_runtime(config: KVStoreConfig, block_size: int, namespace: str) -> NodeKVRuntime:
    """The runtime over the store `config` describes, for blocks of `block_size` tokens hashed
    in `namespace` (opening, and rebuilding, the disk tier if any). Loads are priced with a
    placeholder KV geometry until the engine calls `set_kv_geometry`."""
    store = build_store(replace(config, namespace=namespace))
    rt = NodeKVRuntime(store, BlockHasher(block_size, namespace), engine_cost_model("engine", 8192, 1 << 16))
    if store.disk is not None:  # disk writes off the engine's step thread, where saves run
        store.disk_writer = DiskWriter(rt.write_to_disk)
    return rt


@dataclass
class NodeKVRuntime:
    store: TieredStore
    hasher: BlockHasher
    cost: CostModel
    """Prices a load against a recompute (links for DRAM/disk; prefill for the alternative)."""
    lock: threading.RLock = field(default_factory=threading.RLock)
    loaded: dict[str, Counter[str]] = field(default_factory=dict)
    """request id -> tokens loaded from each tier ("dram"/"disk"/"remote") and "planned" (what
    vLLM was told it would get); popped at finish."""
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

    def block_hashes(self, token_ids: Sequence[int]) -> list[int]:
        return self.hasher(token_ids)

    def missing(self, hashes: Sequence[int]) -> list[int]:
        """The blocks of `hashes` no tier here holds (what a pull should fetch)."""
        with self.lock:
            return [h for h in hashes if not self.store.holds(self.store.key(h))]

    # -- pricing ---------------------------------------------------------------------------
    def set_kv_geometry(self, kv_bytes_per_token: int, kv_capacity_tokens: int) -> None:
        self.cost = engine_cost_model("engine", kv_bytes_per_token, kv_capacity_tokens)

    def worth_loading(self, tiers: list[Tier], start_tokens: int) -> bool:
        """Loading these blocks beats recomputing them (after `start_tokens` already present)."""
        bs = self.hasher.block_size
        load_s = sum(self.cost.fetch_s(t, bs) for t in tiers)
        n = len(tiers) * bs
        return load_s < self.cost.prefill_s(n, start_tokens + n)

    def refresh_links(self) -> None:
        """Price loads with the measured tier bandwidths (latencies stay the presets')."""
        links = self.cost.links
        dram, disk = self.meter.rate("dram"), self.meter.rate("disk")
        if dram is not None:
            links = replace(links, dram=Link(dram, links.dram.latency_s))
        if disk is not None:
            links = replace(links, disk=Link(disk, links.disk.latency_s))
        self.cost = self.cost.with_links(links)

    # -- loads and saves (the engine's KV connector) ---------------------------------------
    def plan_load(self, request_id: str, hashes: Sequence[int], start_block: int,
                  computed_tokens: int) -> LoadPlan | None:
        bs = self.hasher.block_size
        wanted = hashes[start_block:]
        with self.lock:
            run: list[Tier] = []
            for t in self.store.lookup(wanted):
                if t is None:
                    break
                run.append(t)
            if not run or not self.worth_loading(run, computed_tokens):
                return None
            pulled = self.pulled.get(request_id, ())  # blocks the agent pulled from another node for it
            plan = LoadPlan([(start_block + i, h, "remote" if h in pulled else t.name.lower())
                             for i, (h, t) in enumerate(zip(wanted, run))])
            for _, h, _ in plan.loads:  # counted pins, held until the request finishes: no eviction before the load
                if self.store.pin(self.store.key(h)):
                    plan.pinned.append(h)
            c = self.loaded.setdefault(request_id, Counter())
            for _, _, source in plan.loads:
                c[source] += bs
            c["planned"] += len(run) * bs  # vLLM counts these as cached even if a load fails
        return plan

    def release_load(self, request_id: str, pinned: Sequence[int], *, forget_counts: bool) -> None:
        with self.lock:
            for h in pinned:
                self.store.unpin(self.store.key(h))
            if forget_counts:
                self.loaded.pop(request_id, None)

    def read_for_load(self, loads: Sequence[tuple[int, str, str]]) -> LoadRead:
        bs = self.hasher.block_size
        read = LoadRead([])
        failed: set[str] = set()  # requests with a failed block: vLLM recomputes from there on
        nbytes: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        for h, rid, planned in loads:
            t0 = time.perf_counter()
            got = None
            with self.lock:
                if rid not in failed:
                    got = self.store.get(self.store.key(h))
                if got is None:
                    failed.add(rid)
                    self.stats["load_failed"] += 1
                    c = self.loaded.get(rid)
                    if c is not None:  # report only what was really loaded
                        c[planned] -= bs
                else:
                    self.stats[f"loaded_{got[1].name.lower()}"] += 1
            if got is None:
                read.datas.append(None)
                continue
            source = got[1].name.lower()
            read.datas.append(got[0].data)
            nbytes[source] += got[0].nbytes
            seconds[source] += time.perf_counter() - t0
        read.nbytes, read.seconds = dict(nbytes), dict(seconds)
        return read

    def observe_load(self, read: LoadRead, copy_s: float) -> None:
        total = sum(read.nbytes.values())
        for source, n in read.nbytes.items():  # the copy's time shared by bytes
            self.meter.observe(source, n, read.seconds[source] + copy_s * n / total)
        if read.nbytes:
            self.refresh_links()

    def save_slots(self) -> Callable[[], tuple[int, memoryview] | None] | None:
        pool = self.store.pool
        return pool.take if pool is not None else None

    def save(self, blocks: Sequence[tuple[int, int | None, bytes | memoryview]]) -> None:
        with self.lock:
            for h, parent, data in blocks:
                stored = self.store.put(StoredBlock(self.store.key(h), parent, data))
                self.stats["saved" if stored else "save_refused"] += 1

    def attach_pool(self, block_bytes: int) -> None:
        # Made (and faulted in, ~0.6 s per GiB) before taking the lock the agent also uses.
        pool = BlockPool.for_tier(block_bytes, self.store.dram.capacity_bytes)
        with self.lock:
            self.store.pool = pool

    def take_loaded(self, request_id: str) -> dict[str, int]:
        with self.lock:
            return dict(self.loaded.pop(request_id, Counter()))

    # -- residency and lifetime (the engine) -----------------------------------------------
    def take_events(self) -> list[ResidencyEvent]:
        with self.lock:
            return self.store.take_events()

    def snapshot(self) -> list[tuple[Tier, int, int | None]]:
        with self.lock:
            return [(e.tier, e.block_hash, e.parent) for e in self.store.snapshot()]

    def write_to_disk(self, block: StoredBlock) -> None:
        """One queued disk write (the disk writer's thread)."""
        with self.lock:
            self.store.write_to_disk(block)

    def close(self) -> None:
        """Keep DRAM's blocks on disk (a clean stop restarts warm), then close the tiers."""
        writer, self.store.disk_writer = self.store.disk_writer, None
        if writer is not None:
            writer.close(5.0)  # writes what is queued; without the lock: the writer takes it per block
        with self.lock:  # 5 + 8 s: inside the launcher's 20 s grace before SIGKILL
            kept = self.store.flush_to_disk(budget_s=8.0)
            if kept:
                logger.info("kept %d DRAM blocks on disk for a warm restart", kept)
            self.store.close()

    # -- transfers (the Transfer service reads, the node agent stores pulled blocks) -------
    def read_block(self, block_hash: int) -> tuple[int | None, bytes | memoryview] | None:
        """(parent, data) of a block held in DRAM or on disk, for a peer's pull."""
        with self.lock:
            got = self.store.get(self.store.key(block_hash))
        return None if got is None else (got[0].parent, got[0].data)

    def lease_block(self, block_hash: int) -> tuple[int | None, memoryview, int] | None:
        """(parent, view, address) of a held block in a slot of the block pool, for a peer's
        one-sided read: a block elsewhere (on disk, or kept outside the pool) is copied into
        a free slot. Whoever holds the view keeps the slot's bytes. None when the block is
        not held, there is no pool yet, or no slot is free."""
        with self.lock:
            pool = self.store.pool
            key = self.store.key(block_hash)
            got = self.store.get(key)
            if got is not None and got[1] is Tier.DISK:  # promoted into a DRAM slot: lease that copy
                got = (self.store.dram.get(key) or got[0], Tier.DRAM)
        if pool is None or got is None:
            return None
        block = got[0]
        view = block.data if pool.owns(block.data) else pool.adopt(block.data)
        if view is None:
            return None
        return block.parent, view, pool.address_of(view)

    def pool_region(self) -> tuple[int, int] | None:
        pool = self.store.pool
        return None if pool is None else pool.region()

    @property
    def pool(self) -> BlockPool | None:
        """The DRAM tier's block pool (None until the engine's block size is known)."""
        return self.store.pool

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
            if not store.holds(key):
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

    def observe_pull(self, source: str, nbytes: int, seconds: float) -> None:
        """Meter a pull from the node at address `source` (link "net:<source>")."""
        self.meter.observe(f"net:{source}", nbytes, seconds)

    def link_rates(self) -> dict[str, Rate]:
        """Measured bandwidth per link ("dram", "disk", "net:<peer>")."""
        return self.meter.rates()

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
        writer = self.store.disk_writer
        if writer is not None and tier is not Tier.DRAM:
            writer.drain(5.0)  # a queued demotion written after this would bring a block back on disk
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
