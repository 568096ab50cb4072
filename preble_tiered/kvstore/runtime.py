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

    def missing(self, hashes: list[int]) -> list[int]:
        """The blocks of `hashes` no tier here holds (what a pull should fetch)."""
        with self.lock:
            return [h for h in hashes if not any(t.contains(self.store.key(h)) for t in self.store.tiers)]

    def store_pulled(self, request_id: str, block: Block) -> bool:
        """Keep a pulled block in DRAM, pinned until `release_pulled(request_id)`."""
        store = self.store
        key = store.key(block.block_hash)
        with self.lock:
            if not any(t.contains(key) for t in store.tiers):
                if not store.store_in_dram(StoredBlock(key, block.parent, block.data)):
                    return False
            if not store.pin(key):
                return False
            self.pulled.setdefault(request_id, set()).add(block.block_hash)
        return True

    def release_pulled(self, request_id: str) -> None:
        with self.lock:
            for h in self.pulled.pop(request_id, ()):
                self.store.unpin(self.store.key(h))

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
