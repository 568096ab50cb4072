"""Configuration of a node's DRAM and disk KV tiers (HBM is the engine's own cache)."""

from __future__ import annotations

from dataclasses import dataclass

from preble_tiered.kvstore.disk import DiskTier
from preble_tiered.kvstore.dram import DramTier
from preble_tiered.kvstore.store import WRITE_POLICIES, TieredStore


@dataclass(frozen=True)
class KVStoreConfig:
    """The node's KV store below HBM."""

    dram_bytes: int = 4 << 30
    """Host memory for KV block data, in bytes (> 0)."""

    disk_bytes: int = 0
    """Disk budget for KV blocks (32-byte header + data each), in bytes; > 0 iff disk_path is set."""

    disk_path: str | None = None
    """RocksDB directory of the disk tier (created if missing); None: no disk tier."""

    write_policy: str = "write_back"
    """"write_back": blocks go to DRAM and DRAM evictions are demoted to disk;
    "write_through": blocks go to DRAM and disk at once (warm restarts, more disk writes)."""

    namespace: str = ""
    """Model namespace, the same string block hashing folds into its seed."""

    disk_disable_wal: bool = True
    """Skip RocksDB's write-ahead log: a crash loses only the latest blocks of a cache."""

    fingerprint: str = ""
    """What the disk tier's blocks are valid for (model files, KV layout); a disk tier written
    under another one is emptied on open (see DiskTier). Empty: no check."""

    disk_mmap_reads: bool = False
    """Map the disk tier's SST files for reads: faster loads (one copy out of the page cache),
    but a truncated file or a disk read error kills the node (SIGBUS) instead of costing a miss."""

    def __post_init__(self) -> None:
        if not isinstance(self.dram_bytes, int) or self.dram_bytes <= 0:
            raise ValueError(f"dram_bytes must be a positive int, got {self.dram_bytes!r}")
        if not isinstance(self.disk_bytes, int) or self.disk_bytes < 0:
            raise ValueError(f"disk_bytes must be a non-negative int, got {self.disk_bytes!r}")
        if self.disk_path is not None and self.disk_bytes == 0:
            raise ValueError("disk_path is set but disk_bytes is 0; set disk_bytes > 0 or drop disk_path")
        if self.disk_path is None and self.disk_bytes > 0:
            raise ValueError("disk_bytes > 0 needs a disk_path (a directory for the RocksDB files)")
        if self.disk_path is not None and not self.disk_path.strip():
            raise ValueError("disk_path is empty; give a directory or None for no disk tier")
        if self.write_policy not in WRITE_POLICIES:
            raise ValueError(f"unknown write_policy {self.write_policy!r}; expected one of {sorted(WRITE_POLICIES)}")
        if "\x00" in self.namespace or "\x01" in self.namespace:
            raise ValueError(f"namespace {self.namespace!r} must not contain \\x00 or \\x01")


def build_store(config: KVStoreConfig) -> TieredStore:
    """The TieredStore `config` describes (opening, and rebuilding, the disk tier if any)."""
    disk = None
    if config.disk_path is not None:
        disk = DiskTier(config.disk_path, config.disk_bytes, config.namespace, disable_wal=config.disk_disable_wal,
                        mmap_reads=config.disk_mmap_reads, fingerprint=config.fingerprint)
    return TieredStore(DramTier(config.dram_bytes), disk, config.write_policy, namespace=config.namespace)
