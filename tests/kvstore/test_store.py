"""TieredStore: write policies, demotion, promotion, lookup and residency, pins, events; KVStoreConfig."""

from __future__ import annotations

import pytest

from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored
from preble_tiered.kvstore.config import KVStoreConfig, build_store
from preble_tiered.kvstore.disk import HEADER_SIZE, DiskTier
from preble_tiered.kvstore.store import WRITE_POLICIES, SnapshotEntry, TieredStore
from preble_tiered.kvstore.tiers import BlockKey, DramTier, StoredBlock
from preble_tiered.types import Tier

NS = "m"
SIZE = 10


def key(h: int) -> BlockKey:
    return BlockKey(NS, h)


def make_block(h: int, parent: int | None = None) -> StoredBlock:
    return StoredBlock(key(h), parent, bytes([h % 256]) * SIZE)


def make_store(tmp_path, policy: str, dram_blocks: int = 2, disk_blocks: int = 8) -> TieredStore:
    disk = DiskTier(tmp_path / "db", disk_blocks * (HEADER_SIZE + SIZE), NS)
    return TieredStore(DramTier(dram_blocks * SIZE), disk, policy)


def where(store: TieredStore, h: int) -> set[Tier]:
    return {t.tier for t in store.tiers if t.contains(key(h))}


def test_write_through_puts_every_block_in_both_tiers(tmp_path):
    s = make_store(tmp_path, "write_through")
    assert s.put(make_block(1)) == (Tier.DRAM, Tier.DISK)
    s.put(make_block(2, 1))
    s.put(make_block(3, 2))  # evicts 1 from DRAM; disk already has it
    assert where(s, 1) == {Tier.DISK} and where(s, 3) == {Tier.DRAM, Tier.DISK}
    st = s.stats()
    assert st["disk"]["puts"] == 3 and st["store"]["demoted"] == 0
    s.close()


def test_write_back_writes_disk_only_on_dram_eviction(tmp_path):
    s = make_store(tmp_path, "write_back")
    assert s.put(make_block(1)) == (Tier.DRAM,)
    s.put(make_block(2, 1))
    assert where(s, 1) == {Tier.DRAM} and s.disk.used_bytes == 0
    s.put(make_block(3, 2))  # DRAM evicts 1, which is demoted
    assert where(s, 1) == {Tier.DISK} and where(s, 2) == {Tier.DRAM} and where(s, 3) == {Tier.DRAM}
    assert s.stats()["store"]["demoted"] == 1
    assert s.take_events() == [
        BlockStored(0, Tier.DRAM, (1, 2), None),
        BlockRemoved(0, Tier.DRAM, (1,)),
        BlockStored(0, Tier.DRAM, (3,), 2),
        AllBlocksCleared(0, Tier.DISK),  # queued when the disk tier opened (a resync)
        BlockStored(0, Tier.DISK, (1,), None),
    ]
    assert s.take_events() == []  # drained once
    s.close()


def test_disk_hit_is_promoted_to_dram(tmp_path):
    s = make_store(tmp_path, "write_back")
    for h in (1, 2, 3):
        s.put(make_block(h))
    block, tier = s.get(key(1))
    assert tier is Tier.DISK and bytes(block.data) == make_block(1).data
    assert where(s, 1) == {Tier.DRAM, Tier.DISK}  # the disk copy stays
    assert where(s, 2) == {Tier.DISK}  # pushed out by the promotion, demoted
    assert s.get(key(1))[1] is Tier.DRAM
    assert s.stats()["store"]["promoted"] == 1
    assert s.get(key(99)) is None
    s.close()


def test_lookup_stops_at_the_first_miss(tmp_path):
    s = make_store(tmp_path, "write_back")
    for h in (1, 2, 3, 5):
        s.put(make_block(h))
    # DRAM holds 3 and 5; 1 and 2 were demoted; 4 is nowhere
    assert s.lookup([3, 1, 4, 5]) == [Tier.DRAM, Tier.DISK, None, None]
    assert s.lookup([]) == []
    assert [s.tier_of(key(h)) for h in (3, 1, 4)] == [Tier.DRAM, Tier.DISK, None]
    assert [s.holds(key(h)) for h in (3, 1, 4)] == [True, True, False]
    s.close()


def test_get_prefix_reads_in_order_and_leaves_the_root_most_recent(tmp_path):
    s = make_store(tmp_path, "write_through", dram_blocks=4)
    for h, p in ((1, None), (2, 1), (3, 2)):
        s.put(make_block(h, p))
    got = s.get_prefix([1, 2, 3, 4])
    assert [(b.key.block_hash, t) for b, t in got] == [(1, Tier.DRAM), (2, Tier.DRAM), (3, Tier.DRAM)]
    assert [k.block_hash for k in s.dram.lru_order()] == [3, 2, 1]
    s.close()


def test_pins_span_tiers_and_unpin_below_zero_raises(tmp_path):
    s = make_store(tmp_path, "write_through")
    s.put(make_block(1))
    assert s.pin(key(1)) == (Tier.DRAM, Tier.DISK)
    for h in (2, 3, 4):
        s.put(make_block(h))
    assert Tier.DRAM in where(s, 1)  # pinned: never evicted from DRAM
    assert s.pin(key(99)) == ()
    s.unpin(key(1))
    with pytest.raises(RuntimeError):
        s.unpin(key(1))
    assert s.dram.pin_count(key(1)) == 0 and s.disk.pin_count(key(1)) == 0
    s.close()


def test_write_back_falls_back_to_disk_when_dram_is_all_pinned(tmp_path):
    s = make_store(tmp_path, "write_back")
    for h in (1, 2):
        s.put(make_block(h))
        s.pin(key(h))
    assert s.put(make_block(3)) == (Tier.DISK,)
    s.close()


def test_degraded_disk_leaves_the_store_dram_only(tmp_path):
    s = make_store(tmp_path, "write_back")
    s.disk._degraded = True
    for h in (1, 2, 3):
        s.put(make_block(h))
    assert where(s, 1) == set() and s.stats()["store"]["demote_dropped"] == 1
    assert s.put(make_block(4)) == (Tier.DRAM,)
    s.close()


def test_snapshot_lists_each_tier_parents_first(tmp_path):
    s = make_store(tmp_path, "write_through")
    s.put(make_block(1))
    s.put(make_block(2, 1))
    assert s.snapshot() == [
        SnapshotEntry(Tier.DRAM, 1, None), SnapshotEntry(Tier.DRAM, 2, 1),
        SnapshotEntry(Tier.DISK, 1, None), SnapshotEntry(Tier.DISK, 2, 1),
    ]
    s.close()


def test_store_without_disk_and_bad_inputs():
    s = TieredStore(DramTier(2 * SIZE), None, "write_through", namespace=NS)
    assert s.put(make_block(1)) == (Tier.DRAM,)
    assert s.lookup([1]) == [Tier.DRAM]
    with pytest.raises(ValueError, match="namespace"):
        s.put(StoredBlock(BlockKey("other", 1), None, b"x"))
    with pytest.raises(ValueError, match="fits in no tier"):
        s.put(StoredBlock(key(5), None, b"x" * (3 * SIZE)))
    with pytest.raises(ValueError, match="write_policy"):
        TieredStore(DramTier(10), None, "write_sideways")
    assert set(WRITE_POLICIES) == {"write_back", "write_through"}


@pytest.mark.parametrize("kwargs, match", [
    ({"dram_bytes": 0}, "dram_bytes"),
    ({"disk_bytes": -1}, "disk_bytes"),
    ({"disk_path": "/tmp/x"}, "disk_bytes > 0"),
    ({"disk_bytes": 100}, "disk_path"),
    ({"write_policy": "lru"}, "write_policy"),
    ({"namespace": "a\x00b"}, "namespace"),
])
def test_config_rejects_bad_values_with_a_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KVStoreConfig(**kwargs)


def test_build_store_from_config(tmp_path):
    cfg = KVStoreConfig(dram_bytes=100, disk_bytes=1000, disk_path=str(tmp_path / "db"),
                        write_policy="write_through", namespace=NS)
    s = build_store(cfg)
    assert s.put(make_block(1)) == (Tier.DRAM, Tier.DISK)
    s.close()
    s = build_store(cfg)  # the disk tier comes back warm
    assert s.lookup([1]) == [Tier.DISK]
    s.close()
    assert build_store(KVStoreConfig(dram_bytes=100)).disk is None


def test_flush_to_disk_keeps_write_back_dram_blocks_for_a_warm_restart(tmp_path):
    store = make_store(tmp_path, "write_back", dram_blocks=3, disk_blocks=8)
    for h, p in ((1, None), (2, 1), (3, 2)):
        store.put(make_block(h, p))
    assert all(where(store, h) == {Tier.DRAM} for h in (1, 2, 3))
    assert store.flush_to_disk() == 3
    assert store.flush_to_disk() == 0  # already there: nothing written twice
    data = {h: bytes(store.get(key(h))[0].data) for h in (1, 2, 3)}
    store.close()

    reopened = DiskTier(tmp_path / "db", 8 * (HEADER_SIZE + SIZE), NS)
    assert {k.block_hash: p for k, p in reopened.keys()} == {1: None, 2: 1, 3: 2}
    assert {h: bytes(reopened.get(key(h)).data) for h in (1, 2, 3)} == data
    reopened.close()


def test_flush_to_disk_stops_at_its_time_budget_and_without_a_disk(tmp_path):
    store = make_store(tmp_path, "write_back", dram_blocks=4)
    for h in (1, 2, 3, 4):
        store.put(make_block(h))
    ticks = iter(range(100))
    assert store.flush_to_disk(budget_s=2, clock=lambda: next(ticks)) == 2  # ticks 1, 2 in budget; 3 is past
    assert [h for h in (1, 2, 3, 4) if Tier.DISK in where(store, h)] == [3, 4]  # most recently used first
    store.close()
    assert TieredStore(DramTier(4 * SIZE)).flush_to_disk() == 0
