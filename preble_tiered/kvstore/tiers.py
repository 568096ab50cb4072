"""The node's KV tiers in one import: the backend interface and the DRAM and disk tiers.

The code lives in `base` (interface), `lru` (the index both tiers share), `dram` and `disk`.
"""

from preble_tiered.kvstore.base import BlockKey, StoredBlock, TierBackend, parents_first
from preble_tiered.kvstore.disk import DiskTier
from preble_tiered.kvstore.dram import DramTier
from preble_tiered.kvstore.lru import LruTier

__all__ = ["BlockKey", "DiskTier", "DramTier", "LruTier", "StoredBlock", "TierBackend", "parents_first"]
