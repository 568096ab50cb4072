"""BlockPool: slots are reused only when nothing outside the pool refers to them."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from preble_tiered.kvstore.base import BlockKey, StoredBlock
from preble_tiered.kvstore.block_copy import BlockLayout
from preble_tiered.kvstore.dram import DramTier
from preble_tiered.kvstore.pool import BlockPool


def test_take_hands_out_distinct_read_only_slots_until_every_one_is_held():
    pool = BlockPool(100, 3)
    got = [pool.take() for _ in range(3)]
    assert len({addr for addr, _ in got}) == 3
    assert all(v.readonly and v.nbytes == 100 for _, v in got)
    assert pool.take() is None and pool.fallbacks == 1
    assert pool.in_use() == 3


@pytest.mark.filterwarnings("ignore:The given buffer is not writable")
@pytest.mark.parametrize("derive", ["as_is", "slice", "numpy", "torch"])
def test_a_slot_is_reused_only_after_every_view_derived_from_it_is_gone(derive):
    pool = BlockPool(64, 2)
    addr, view = pool.take()
    held = {"as_is": lambda v: v, "slice": lambda v: v[8:16], "numpy": lambda v: np.frombuffer(v, np.uint8),
            "torch": lambda v: torch.frombuffer(v, dtype=torch.uint8)}[derive](view)
    del view
    other = pool.take()
    assert other is not None and other[0] != addr  # the held slot is skipped
    assert pool.take() is None
    del other
    gc.collect()
    again = pool.take()
    assert again is not None and again[0] != addr  # still held through `held`
    del again, held
    gc.collect()
    assert {pool.take()[0] for _ in range(2)} >= {addr}  # now free again


def test_slots_are_skewed_off_page_boundaries():
    pool = BlockPool(8192, 4)
    addrs = [pool.take()[0] for _ in range(4)]
    assert all(a % 4096 == 2048 for a in addrs)
    assert len({a for a in addrs}) == 4 and min(b - a for a, b in zip(sorted(addrs), sorted(addrs)[1:])) >= 8192


def test_saves_into_the_pool_never_overwrite_a_block_the_dram_tier_still_holds():
    """The steady state of a serving node: a full DRAM tier, every save evicting one block.
    The blocks kept must keep their bytes while later saves recycle the evicted ones' slots."""
    n_blocks, per_step = 32, 4
    cache = torch.arange(n_blocks * 2 * 8 * 4, dtype=torch.float32).view(2, n_blocks, 8, 4)
    layout = BlockLayout([("l0", cache, 1)])
    size = layout.block_bytes
    tier = DramTier(8 * size)  # holds 8 blocks
    pool = BlockPool(size, 8 + per_step + 2)  # the tier, one step's saves, the pin and the send
    expect = {}
    sending = None  # an evicted block a pull is still sending: its slot must not be reused
    for step in range(12):
        ids = [(step * per_step + j) % n_blocks for j in range(per_step)]
        for b, data in zip(ids, layout.read(ids, pool.take)):
            key = BlockKey("", step * per_step + b + 1)
            evicted = tier.put(StoredBlock(key, None, data))
            expect[key] = bytes(layout.read([b])[0])
            if step == 0 and b == 0:
                tier.pin(key)  # pinned: held for the whole run, across many slot recycles
            if evicted and sending is None:
                sending = (evicted[0].data, expect[evicted[0].key])
        for key, _ in tier.keys():
            assert bytes(tier.get(key).data) == expect[key]
        cache.add_(1.0)  # the engine's cache moves on: a reused slot would show new bytes
    assert tier.contains(BlockKey("", 1)) and bytes(sending[0]) == sending[1]
    del data, evicted  # the loop's own last references
    assert pool.fallbacks == 0  # evicted blocks' slots were recycled
    assert pool.in_use() == 9  # what the tier holds plus the one being sent: nothing leaked
    assert 12 * per_step > pool.n_slots  # more saves than slots: slots really were reused


def test_layout_read_with_a_pool_gives_the_same_bytes_and_the_numpy_path_ignores_it():
    base = torch.randn(6, 2, 3, 4)
    fast = BlockLayout([("l0", base.transpose(2, 3).contiguous(), 0)])
    slow = BlockLayout([("l0", base.transpose(2, 3), 0)])
    pool = BlockPool(fast.block_bytes, 4)
    pooled = fast.read([5, 2], pool.take)
    assert pool.in_use() == 2
    assert [bytes(b) for b in pooled] == [bytes(b) for b in fast.read([5, 2])]
    assert [bytes(b) for b in slow.read([5, 2], pool.take)] == [bytes(b) for b in pooled]
    assert pool.in_use() == 2  # the numpy path took no slot


def test_a_pool_for_a_tier_backs_every_block_it_holds_plus_bounded_headroom():
    assert BlockPool.for_tier(1 << 18, 64 << 20).n_slots == 256 + 256
    assert BlockPool.for_tier(8 << 20, 64 << 20).n_slots == 8 + 32  # headroom capped at 256 MiB
    assert BlockPool.for_tier(64 << 20, 64 << 20).n_slots == 1 + 16


def test_a_batch_stops_asking_an_exhausted_pool_after_the_first_refusal():
    """A refused take scans every slot; a step saving more blocks than are free pays it once."""
    cache = torch.randn(2, 8, 4, 4)
    layout = BlockLayout([("l0", cache, 1)])
    pool = BlockPool(layout.block_bytes, 2)
    calls = []

    def take():
        calls.append(1)
        return pool.take()

    out = layout.read(list(range(8)), take)
    assert len(calls) == 3 and pool.fallbacks == 1  # two slots, one refusal, then fresh buffers
    assert [bytes(b) for b in out] == [bytes(b) for b in layout.read(list(range(8)))]


def test_blocks_entering_dram_from_elsewhere_are_copied_into_the_pool():
    """Pulled or promoted blocks would otherwise sit in DRAM beside the pool's resident slots."""
    from preble_tiered.kvstore.store import TieredStore

    size = 256
    store = TieredStore(DramTier(4 * size), namespace="")
    store.pool = pool = BlockPool(size, 5)
    pulled = bytes(range(256))
    assert store.store_in_dram(StoredBlock(BlockKey("", 1), None, pulled))
    held = store.dram.get(BlockKey("", 1)).data
    assert pool.owns(held) and bytes(held) == pulled and pool.in_use() == 1
    odd = StoredBlock(BlockKey("", 2), None, b"x" * 100)  # not one block's size: kept as it is
    assert store.store_in_dram(odd) and store.dram.get(BlockKey("", 2)).data is odd.data
    del held
    for h in range(3, 8):  # fill the pool: later arrivals are kept as they are
        store.store_in_dram(StoredBlock(BlockKey("", h), None, bytes([h]) * size))
    assert all(bytes(store.dram.get(k).data) == bytes([k.block_hash]) * size for k, _ in store.dram.keys()
               if k.block_hash >= 3)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="positive"):
        BlockPool(0, 4)
    with pytest.raises(ValueError, match="positive"):
        BlockPool(16, 0)
