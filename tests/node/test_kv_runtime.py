"""The node's KV runtime over real tiers: the engine's port (plan, load, save, events,
snapshot), the admin's pins and eviction, and pulled blocks."""

from __future__ import annotations

import pytest

from preble_tiered.engine.api import LoadRead
from preble_tiered.events import BlockStored
from preble_tiered.hashing import BlockHasher
from preble_tiered.kvstore.base import StoredBlock
from preble_tiered.kvstore.config import KVStoreConfig
from preble_tiered.kvstore.disk import DiskTier
from preble_tiered.kvstore.dram import DramTier
from preble_tiered.kvstore.store import TieredStore
from preble_tiered.node.kv_runtime import NodeKVRuntime, open_kv_runtime
from preble_tiered.scheduler.cost_model import engine_cost_model
from preble_tiered.transfer.framing import Block
from preble_tiered.types import Tier

BLOCK = 4096
NS = "ns"


def runtime(tmp_path, dram_blocks: int, disk: bool = True) -> NodeKVRuntime:
    d = DiskTier(tmp_path / "disk", 64 * (BLOCK + 64), NS) if disk else None
    return NodeKVRuntime(TieredStore(DramTier(dram_blocks * BLOCK), d, namespace=NS), BlockHasher(32),
                         engine_cost_model("t", 8192, 1 << 16))


def put(rt: NodeKVRuntime, hashes) -> None:
    for i, h in enumerate(hashes):
        rt.store.store_in_dram(StoredBlock(rt.store.key(h), hashes[i - 1] if i else None, bytes([h % 251]) * BLOCK))


def in_dram(rt, h) -> bool:
    return rt.store.dram.contains(rt.store.key(h))


def pins(rt, hashes) -> list[int]:
    return [rt.store.dram.pin_count(rt.store.key(h)) for h in hashes]


# ---------------------------------------------------------------- the engine's port
def test_open_builds_the_store_in_the_hashing_namespace(tmp_path):
    rt = open_kv_runtime(KVStoreConfig(dram_bytes=1 << 20, disk_bytes=1 << 20, disk_path=str(tmp_path / "db")),
                         64, "model-a")
    assert rt.namespace == "model-a" and rt.store.disk.namespace == "model-a"
    assert rt.block_hashes(list(range(130))) == BlockHasher(64, "model-a")(list(range(130)))
    rt.close()


def test_plan_load_pins_and_counts_the_leading_run_from_the_start_block(tmp_path):
    rt = runtime(tmp_path, 16, disk=False)
    hashes = [11, 12, 13, 14, 15]
    put(rt, hashes[:4])  # 15 is held nowhere: the run ends before it
    assert rt.missing(hashes) == [15]
    plan = rt.plan_load("r", hashes, 1, 32)
    assert plan.loads == [(1, 12, "dram"), (2, 13, "dram"), (3, 14, "dram")]
    assert plan.pinned == [12, 13, 14]
    assert pins(rt, hashes[:4]) == [0, 1, 1, 1]
    assert rt.loaded["r"] == {"dram": 96, "planned": 96}
    rt.release_load("r", plan.pinned, forget_counts=False)  # the request finished: counts stay
    assert pins(rt, hashes[:4]) == [0, 0, 0, 0]
    assert rt.take_loaded("r") == {"dram": 96, "planned": 96}
    assert rt.take_loaded("r") == {}
    plan = rt.plan_load("r", hashes, 0, 0)
    rt.release_load("r", plan.pinned, forget_counts=True)  # the plan will not run
    assert "r" not in rt.loaded and pins(rt, hashes[:4]) == [0, 0, 0, 0]
    assert rt.plan_load("r", hashes, 4, 128) is None  # nothing held from block 4 on


def test_plan_load_names_pulled_blocks_remote_and_skips_loads_dearer_than_recompute(tmp_path):
    rt = runtime(tmp_path, 16, disk=False)
    put(rt, [1])
    assert rt.store_pulled("r", Block(2, 1, b"\x02" * BLOCK))
    plan = rt.plan_load("r", [1, 2], 0, 0)
    assert plan.loads == [(0, 1, "dram"), (1, 2, "remote")]
    assert pins(rt, [1, 2]) == [1, 2]  # the pull's pin and the plan's
    rt.release_load("r", plan.pinned, forget_counts=True)
    rt.release_pulled("r")
    assert pins(rt, [1, 2]) == [0, 0]
    rt.meter.observe("dram", 10 << 20, 1.0)  # 10 MiB/s: loading is now dearer than recomputing
    rt.refresh_links()
    assert rt.plan_load("r", [1, 2], 0, 0) is None
    assert "r" not in rt.loaded


def test_read_for_load_stops_a_request_at_its_first_missing_block(tmp_path):
    rt = runtime(tmp_path, 16, disk=False)
    put(rt, [1, 2, 3, 7])
    a = rt.plan_load("a", [1, 2, 3], 0, 0)
    b = rt.plan_load("b", [7], 0, 0)
    rt.release_load("a", a.pinned, forget_counts=False)
    rt.store.dram.remove(rt.store.key(2))  # vanished between plan and load
    read = rt.read_for_load([(1, "a", "dram"), (2, "a", "dram"), (3, "a", "dram"), (7, "b", "dram")])
    assert [d is not None for d in read.datas] == [True, False, False, True]
    assert bytes(read.datas[0]) == b"\x01" * BLOCK
    assert read.nbytes == {"dram": 2 * BLOCK} and read.seconds["dram"] >= 0
    assert rt.take_loaded("a") == {"dram": 32, "planned": 96}  # only what was really loaded
    assert rt.stats["load_failed"] == 2 and rt.stats["loaded_dram"] == 2
    rt.release_load("b", b.pinned, forget_counts=True)


def test_observe_load_shares_the_copy_time_by_bytes_and_reprices_loads(tmp_path):
    rt = runtime(tmp_path, 4, disk=False)
    before = rt.cost.fetch_s(Tier.DRAM, 3200)
    rt.observe_load(LoadRead([], {"dram": 1 << 20, "disk": 3 << 20}, {"dram": 0.1, "disk": 0.5}), 0.4)
    assert rt.meter.rate("dram") == pytest.approx((1 << 20) / 0.2)  # 0.1 s read + a quarter of the copy
    assert rt.meter.rate("disk") == pytest.approx((3 << 20) / 0.8)
    assert rt.cost.fetch_s(Tier.DRAM, 3200) > before


def test_save_stores_blocks_and_reports_them_as_events_and_in_the_snapshot(tmp_path):
    rt = runtime(tmp_path, 16, disk=False)
    assert rt.save_slots() is None
    rt.attach_pool(BLOCK)
    take = rt.save_slots()
    assert take is not None and take() is not None
    rt.save([(5, None, b"\x05" * BLOCK), (6, 5, b"\x06" * BLOCK)])
    assert rt.stats["saved"] == 2 and rt.missing([5, 6, 9]) == [9]
    events = rt.take_events()
    assert [h for e in events if isinstance(e, BlockStored) and e.tier is Tier.DRAM for h in e.hashes] == [5, 6]
    assert rt.take_events() == []
    assert rt.snapshot() == [(Tier.DRAM, 5, None), (Tier.DRAM, 6, 5)]


def test_set_kv_geometry_prices_loads_for_the_engines_kv_size(tmp_path):
    rt = runtime(tmp_path, 4, disk=False)
    rt.set_kv_geometry(131072, 1 << 20)
    assert rt.cost.kv_bytes_per_token == 131072


# ---------------------------------------------------------------- admin pins
def test_pinned_blocks_survive_dram_pressure_unpinned_ones_do_not(tmp_path):
    rt = runtime(tmp_path, 8, disk=False)
    put(rt, [1, 2, 3, 4])
    assert rt.set_pins("sys", [1, 2], Tier.DRAM) == (2, [])
    put(rt, list(range(100, 112)))  # 12 more blocks through an 8-block tier
    assert in_dram(rt, 1) and in_dram(rt, 2)
    assert not in_dram(rt, 3) and not in_dram(rt, 4)
    rt.set_pins("sys", [], Tier.DRAM)  # released: evictable again
    put(rt, list(range(200, 212)))
    assert not in_dram(rt, 1) and not in_dram(rt, 2)


def test_pins_replace_the_owners_previous_set_and_report_missing(tmp_path):
    rt = runtime(tmp_path, 8)
    put(rt, [1, 2, 3])
    assert rt.set_pins("a", [1, 2, 9], Tier.DRAM) == (2, [9])
    assert rt.set_pins("a", [3], Tier.DRAM) == (1, [])
    assert rt.store.dram.pin_count(rt.store.key(1)) == 0 and rt.store.dram.pin_count(rt.store.key(3)) == 1
    assert rt.set_pins("b", [3], Tier.DRAM) == (1, [])  # owners count separately
    assert rt.store.dram.pin_count(rt.store.key(3)) == 2


def test_disk_pin_copies_a_dram_block_to_disk_first(tmp_path):
    rt = runtime(tmp_path, 8)
    put(rt, [1, 2])
    assert not rt.store.disk.contains(rt.store.key(1))
    assert rt.set_pins("d", [1, 2], Tier.DISK) == (2, [])
    assert rt.store.disk.contains(rt.store.key(1)) and rt.store.disk.pin_count(rt.store.key(1)) == 1
    with pytest.raises(ValueError, match="no disk tier"):
        runtime(tmp_path / "x", 4, disk=False).set_pins("d", [1], Tier.DISK)


def test_evict_drops_unpinned_copies_and_keeps_pinned_ones(tmp_path):
    rt = runtime(tmp_path, 8)
    put(rt, [1, 2, 3])
    rt.set_pins("p", [1], Tier.DRAM)
    assert rt.evict([1, 2, 3, 77], Tier.DRAM) == (2, 1)
    assert in_dram(rt, 1) and not in_dram(rt, 2)
    with pytest.raises(ValueError, match="evict from dram or disk"):
        rt.evict([1], Tier.HBM)


def test_evicting_from_disk_waits_for_queued_demotions_so_none_comes_back(tmp_path):
    import threading

    from preble_tiered.kvstore.disk_writer import DiskWriter

    rt = runtime(tmp_path, 2)
    gate = threading.Event()

    def slow_write(block):
        gate.wait(5)
        rt.write_to_disk(block)

    rt.store.disk_writer = DiskWriter(slow_write)
    put(rt, [1, 2, 3, 4])  # 1 and 2 leave DRAM: demotions queued, not yet written
    assert rt.store.disk_writer.pending == 2
    threading.Timer(0.2, gate.set).start()
    assert rt.evict([1, 2], Tier.DISK) == (2, 0)  # waited for the demotions, then removed them
    assert rt.store.disk_writer.drain(5)
    assert not any(rt.store.disk.contains(rt.store.key(h)) for h in (1, 2))
    rt.close()
