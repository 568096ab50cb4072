"""Our KV connector under a real vLLM engine (tiny model): a prefix evicted from the engine's
cache is loaded from the DRAM or disk tier instead of recomputed, with identical greedy
output; a corrupted disk block is detected and recomputed; the disk tier survives a restart.
One engine serves the module; the restart test starts a second one on the same disk."""

from __future__ import annotations

import threading

import pytest

from preble_tiered.hashing import BlockHasher
from preble_tiered.types import Tier

pytestmark = pytest.mark.slow

PROMPT = [(i * 37) % 250 + 4 for i in range(600)]  # 18 full blocks usable (599 // 32)
FULL = (len(PROMPT) - 1) // 32 * 32


class Runner:
    def __init__(self, disk_path: str) -> None:
        from preble_tiered.engine.tiny_model import ensure_tiny_model
        from preble_tiered.engine.vllm_engine import EngineConfig, VLLMEngine
        from preble_tiered.kvstore.config import KVStoreConfig
        from preble_tiered.node.kv_runtime import open_kv_runtime

        self.outs: dict[str, list] = {}
        self.done: dict[str, threading.Event] = {}
        self.events: list = []
        cfg = EngineConfig(model=str(ensure_tiny_model()), kv_cache_bytes=64 << 20, max_model_len=4096)
        self.kv = open_kv_runtime(KVStoreConfig(dram_bytes=64 << 20, disk_bytes=64 << 20, disk_path=disk_path,
                                                write_policy="write_through"), cfg.block_size, cfg.hash_namespace)
        self.engine = VLLMEngine(cfg, self._on_out, lambda seq, evs: self.events.extend(evs), kv=self.kv)
        self.engine.start()
        self.n = 0

    def _on_out(self, outs) -> None:
        for o in outs:
            self.outs.setdefault(o.request_id, []).append(o)
            if o.finished:
                self.done[o.request_id].set()

    def run(self, prompt=PROMPT):
        from preble_tiered.engine.vllm_engine import EngineRequest, GenParams

        self.n += 1
        rid = f"r{self.n}"
        self.done[rid] = threading.Event()
        self.engine.add(EngineRequest(rid, list(prompt), GenParams(max_tokens=12, temperature=0.0)))
        assert self.done[rid].wait(120)
        outs = self.outs[rid]
        assert outs[-1].error is None
        return [t for o in outs for t in o.new_token_ids], outs[-1].cached_by_tier

    def evict_hbm(self) -> None:
        assert self.engine.reset_prefix_cache()

    @property
    def store(self):
        return self.kv.store

    def drop_dram(self) -> None:
        with self.kv.lock:
            for key, _ in self.store.dram.keys():
                self.store.dram.remove(key)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(str(tmp_path_factory.mktemp("kv") / "db"))
    yield r
    r.engine.shutdown()


@pytest.fixture(scope="module")
def baseline(runner):
    tokens, cached = runner.run()  # recomputed: nothing cached anywhere
    assert cached == {"hbm": 0, "dram": 0, "disk": 0, "remote": 0}
    return tokens


def test_engine_cache_hit_gives_identical_output(runner, baseline):
    tokens, cached = runner.run()
    assert tokens == baseline and cached["hbm"] == FULL


def test_prefix_evicted_from_the_engine_is_loaded_from_dram(runner, baseline):
    runner.evict_hbm()
    tokens, cached = runner.run()
    assert tokens == baseline
    assert cached == {"hbm": 0, "dram": FULL, "disk": 0, "remote": 0}


def test_prefix_only_on_disk_is_loaded_from_disk(runner, baseline):
    runner.evict_hbm()
    runner.drop_dram()
    tokens, cached = runner.run()
    assert tokens == baseline
    assert cached == {"hbm": 0, "dram": 0, "disk": FULL, "remote": 0}


def test_tiers_report_residency_with_the_routers_hashes(runner, baseline):
    hashes = BlockHasher(32)(PROMPT)[: FULL // 32]
    stored = {(e.tier, h) for e in runner.events if type(e).__name__ == "BlockStored" for h in e.hashes}
    assert {(Tier.DISK, h) for h in hashes} <= stored
    assert {(Tier.DRAM, h) for h in hashes} <= stored
    seq, snap = runner.engine.tier_snapshot()
    assert {(Tier.DISK, h) for h in hashes} <= {(t, h) for t, h, _ in snap}


def test_prefix_pulled_from_another_node_is_loaded_as_remote(runner, baseline):
    """The fifth case: the prefix exists only on another node, is pulled over gRPC into this
    node's DRAM (pinned for the request) and loaded from there."""
    import asyncio

    import grpc

    from preble_tiered.kvstore.config import KVStoreConfig, build_store
    from preble_tiered.node.kv_runtime import NodeKVRuntime
    from preble_tiered.transfer.puller import pull_blocks
    from preble_tiered.transfer.service import TransferService, add_transfer_service

    rt = runner.kv
    hashes = BlockHasher(32)(PROMPT)[: FULL // 32]
    other = NodeKVRuntime(build_store(KVStoreConfig(dram_bytes=64 << 20, namespace=rt.namespace)), rt.hasher, rt.cost)
    with rt.lock:  # "another node" holds the prefix: a copy of this node's blocks
        for h in hashes:
            block, _ = rt.store.get(rt.store.key(h))
            other.store.put(block)
        for h in hashes:  # ... and this node forgets it everywhere
            for tier in rt.store.tiers:
                if tier.contains(rt.store.key(h)):
                    tier.remove(rt.store.key(h))
    runner.evict_hbm()
    rid = f"r{runner.n + 1}"  # the id runner.run() gives the next request

    async def pull():
        server = grpc.aio.server()
        add_transfer_service(TransferService(lambda: other), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                async def sink(block):
                    return rt.store_pulled(rid, block)
                return await pull_blocks(ch, rt.namespace, hashes, sink)
        finally:
            await server.stop(0)

    res = asyncio.run(pull())
    assert res.complete and res.stored == hashes
    try:
        tokens, cached = runner.run()
    finally:
        rt.release_pulled(rid)
    assert tokens == baseline
    assert cached == {"hbm": 0, "dram": 0, "disk": 0, "remote": FULL}
    assert rt.meter.rate("dram") is not None  # loads were metered
    with rt.lock:  # put the prefix back on disk for the tests after this one
        for h in hashes:
            rt.store.store_in_disk(other.store.get(other.store.key(h))[0])


def test_corrupted_disk_block_is_dropped_and_recomputed(runner, baseline):
    runner.evict_hbm()
    runner.drop_dram()
    victim = BlockHasher(32)(PROMPT)[5]
    disk = runner.store.disk
    with runner.kv.lock:
        key = runner.store.key(victim)
        db = disk._open_db()
        raw = bytearray(db[disk._data_key(key)])
        raw[-1] ^= 0xFF
        db[disk._data_key(key)] = bytes(raw)
    tokens, cached = runner.run()
    assert tokens == baseline  # never served the corrupted block
    assert runner.store.disk.stats()["corrupt"] == 1
    assert not disk.contains(key)
    # only the 5 blocks before the bad one count as loaded; the rest was recomputed
    assert cached == {"hbm": 0, "dram": 0, "disk": 5 * 32, "remote": 0}


def test_disk_tier_survives_a_restart(runner, baseline, tmp_path_factory):
    path = runner.store.disk.path
    runner.engine.shutdown()  # closes the KV runtime; the module fixture's shutdown is idempotent
    again = Runner(str(path))
    try:
        assert len(again.store.disk.keys()) >= FULL // 32 - 1
        tokens, cached = again.run()
        assert tokens == baseline
        assert cached["disk"] >= 5 * 32  # at least the blocks before the corrupted (dropped) one
    finally:
        again.engine.shutdown()


def test_a_really_full_disk_under_the_running_engine_degrades_to_dram_with_the_same_output(tmp_path, caplog):
    """RocksDB itself runs out of room while the engine saves blocks (a per-process file-size
    limit stands in for a full disk: its memtable flush fails with EFBIG), the disk tier turns
    degraded with one warning, and the node keeps serving from DRAM with identical output."""
    import logging
    import resource
    import signal

    r = Runner(str(tmp_path / "db"))
    prompts = [[(i * 31 + k * 7) % 250 + 4 for i in range(3000)] for k in range(6)]  # 93 blocks each
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
    try:
        first = r.run(prompts[0])[0]
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, old_limit[1]))  # no file may grow past 2 MiB
        with caplog.at_level(logging.WARNING, logger="preble_tiered.kvstore.disk"):
            outs = [r.run(p)[0] for p in prompts[1:]]  # ~150 MiB of blocks: the 64 MiB memtable must flush
            disk = r.store.disk.stats()
            assert r.store.disk.degraded and disk["write_errors"] >= 1
            assert caplog.text.count("disabling disk writes") == 1
            r.evict_hbm()
            tokens, cached = r.run(prompts[-1])  # the latest blocks are still in DRAM
            assert tokens == outs[-1] and cached["dram"] == (3000 - 1) // 32 * 32
            assert r.run(prompts[0])[0] == first  # long gone from DRAM, never on disk: recomputed
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
        r.engine.shutdown()  # close on the full disk logs and returns
