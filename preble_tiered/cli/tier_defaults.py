"""The KV tiers `preble serve` gives every node unless told otherwise, sized from the machine.

Each node gets a DRAM tier of a share of the host's available memory and a disk tier of a
share of the free space under the cache directory, split over the nodes and capped:

    DRAM per node = min(20% of MemAvailable / nodes, 4 GiB)
    disk per node = min(10% of free disk / nodes, 16 GiB)

The DRAM tier's memory is committed when the node starts (its block pool is faulted in,
about 0.6 s per GiB), so the share is kept modest; the disk tier only grows as blocks arrive.
A share below 64 MiB is not worth a tier: that tier is left off. Sizes on the command line
take binary suffixes (`512M`, `2G`); 0 turns a tier off.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

DRAM_SHARE = 0.20
DRAM_CAP = 4 << 30
DISK_SHARE = 0.10
DISK_CAP = 16 << 30
MIN_TIER = 64 << 20

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    """argparse type: a byte count, `0` or more, with an optional K/M/G/T suffix (binary; a
    trailing `i`/`B` is accepted: `2G`, `2GiB`, `512MB`)."""
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1] if s and s[-1] in "KMGT" else ""
    number = s[: len(s) - len(unit)]
    try:
        value = float(number) * _UNITS[unit]
        if value == float("inf"):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 268435456, 256M or 2G, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected a size >= 0, got {text!r}")
    return int(value)


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def mem_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (total physical memory where it is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class TierPlan:
    """Per-node tier sizes for a local cluster; 0 means the tier is off."""

    dram_bytes: int
    disk_bytes: int
    disk_dir: Path | None
    """Parent of the nodes' disk tiers (node i uses DIR/node{i}); None when the disk tier is off."""

    def describe(self) -> str:
        dram = format_bytes(self.dram_bytes) if self.dram_bytes else "off"
        disk = f"{format_bytes(self.disk_bytes)} under {self.disk_dir}" if self.disk_bytes else "off"
        return f"KV tiers per node: DRAM {dram}, disk {disk}"


def plan_tiers(nodes: int, dram_bytes: int | None, disk_bytes: int | None, disk_dir: Path,
               *, available_memory: int | None = None, free_disk: int | None = None) -> TierPlan:
    """Each node's tiers: explicit sizes win (0 = off), None is sized from the machine.

    Raises:
        ValueError: a disk tier without a DRAM tier (the disk tier is written from DRAM).
    """
    if dram_bytes is None:
        avail = mem_available() if available_memory is None else available_memory
        dram_bytes = _share(avail, DRAM_SHARE, nodes, DRAM_CAP)
    if disk_bytes is None:
        if free_disk is None:
            probe = disk_dir
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            free_disk = shutil.disk_usage(probe).free
        disk_bytes = _share(free_disk, DISK_SHARE, nodes, DISK_CAP) if dram_bytes else 0
    if disk_bytes and not dram_bytes:
        raise ValueError("a disk tier needs a DRAM tier above it (blocks reach disk through DRAM): "
                         "give --dram-bytes > 0, or --disk-bytes 0 as well")
    return TierPlan(dram_bytes, disk_bytes, disk_dir if disk_bytes else None)


def _share(total: int, share: float, nodes: int, cap: int) -> int:
    size = min(int(total * share / max(1, nodes)), cap) >> 20 << 20  # whole MiB
    return size if size >= MIN_TIER else 0
