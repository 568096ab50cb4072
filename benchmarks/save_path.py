#!/usr/bin/env python3
"""What a node's block saves cost the engine's step thread once its DRAM tier is full.

    python benchmarks/save_path.py [--prefills 40] [--json PATH]

A serving node's DRAM tier fills, and from then on every save evicts: under write-back the
evicted blocks are demoted to the disk tier. This times `NodeKVRuntime.save` of one 3k-token
prefill's blocks (94 blocks of 256 KiB, the tiny model's size) on the calling thread, as the
connector calls it from the engine's step thread, with a full 64 MiB DRAM tier over a disk
tier: demotions written inline (RocksDB on the step thread) against handed to the node's
disk writer thread. Same run, same bytes; medians over --prefills.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BLOCK = 256 << 10
PER_PREFILL = 94


def measure(tmp: Path, prefills: int, async_writes: bool) -> dict:
    from preble_tiered.kvstore.config import KVStoreConfig
    from preble_tiered.node.kv_runtime import open_kv_runtime

    rt = open_kv_runtime(KVStoreConfig(dram_bytes=64 << 20, disk_bytes=4 << 30, disk_path=str(tmp)), 32, "bench")
    if not async_writes:
        rt.store.disk_writer.close()
        rt.store.disk_writer = None
    rt.attach_pool(BLOCK)
    take = rt.save_slots()
    base = np.random.default_rng(0).integers(0, 255, BLOCK, dtype=np.uint8)
    h, times = 1, []
    for _ in range(prefills + 3):  # the first fill DRAM
        blocks = []
        for _ in range(PER_PREFILL):  # as the connector reads blocks out of the engine's cache
            slot = take()  # None when every slot is held: a fresh buffer, as BlockLayout.read does
            if slot is None:
                buf = np.empty(BLOCK, dtype=np.uint8)
                slot = buf.ctypes.data, memoryview(buf).toreadonly()
            addr, view = slot
            ctypes.memmove(addr, base.ctypes.data, BLOCK)
            ctypes.memmove(addr, h.to_bytes(8, "little"), 8)
            blocks.append((h, h - 1 if h > 1 else None, view))
            h += 1
        t = time.perf_counter()
        rt.save(blocks)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    if rt.store.disk_writer is not None:
        rt.store.disk_writer.drain(60)
    drain = time.perf_counter() - t
    stats = rt.store.stats()["store"]
    rt.close()
    return {"save_ms_median": round(statistics.median(times[3:]) * 1e3, 2),
            "save_ms_p90": round(float(np.percentile(times[3:], 90)) * 1e3, 2),
            "demoted": stats["demoted"], "demote_dropped": stats["demote_dropped"],
            "drain_after_s": round(drain, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefills", type=int, default=40)
    ap.add_argument("--json", metavar="PATH", default=str(ROOT / "benchmarks/results/save_path.json"))
    args = ap.parse_args()
    out = {}
    for mode, flag in (("inline", False), ("writer_thread", True)):
        with tempfile.TemporaryDirectory(prefix="preble-save-") as tmp:
            out[mode] = measure(Path(tmp), args.prefills, flag)
        r = out[mode]
        print(f"{mode:<14} save of a 3k-token prefill on the step thread: median {r['save_ms_median']:.2f} ms, "
              f"p90 {r['save_ms_p90']:.2f} ms; demoted {r['demoted']}, dropped {r['demote_dropped']}", flush=True)
    doc = {"command": "python " + shlex.join(sys.argv), "blocks_per_prefill": PER_PREFILL, "block_bytes": BLOCK,
           "dram_bytes": 64 << 20, **out}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
