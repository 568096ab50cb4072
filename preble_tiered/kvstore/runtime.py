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
from dataclasses import dataclass, field

from preble_tiered.hashing import BlockHasher
from preble_tiered.kvstore.store import TieredStore
from preble_tiered.scheduler.cost_model import CostModel
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

    def worth_loading(self, tiers: list[Tier], start_tokens: int) -> bool:
        """Loading these blocks beats recomputing them (after `start_tokens` already present)."""
        bs = self.hasher.block_size
        load_s = sum(self.cost.fetch_s(t, bs) for t in tiers)
        n = len(tiers) * bs
        return load_s < self.cost.prefill_s(n, start_tokens + n)

    def take_loaded(self, request_id: str) -> dict[str, int]:
        with self.lock:
            return dict(self.loaded.pop(request_id, Counter()))


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
