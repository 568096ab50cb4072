"""The connector's scheduler-side bookkeeping with a real store and a stand-in request
(no engine): pins and load counts stay exact when vLLM asks about a request again."""

from types import SimpleNamespace

import pytest

from preble_tiered.hashing import BlockHasher
from preble_tiered.kvstore.base import BlockKey, StoredBlock
from preble_tiered.kvstore.dram import DramTier
from preble_tiered.kvstore.store import TieredStore
from preble_tiered.node.kv_runtime import NodeKVRuntime
from preble_tiered.scheduler.cost_model import engine_cost_model

pytestmark = pytest.mark.slow  # imports vLLM


def make_connector(rt):
    from preble_tiered.engine.kv_connector import PrebleTieredConnector

    c = object.__new__(PrebleTieredConnector)  # the scheduler-side state only; no VllmConfig
    c.rt, c.block_size, c._reqs, c._caches, c._load_errors = rt, 32, {}, [], set()
    return c


def test_asking_again_does_not_double_pin_or_double_count():
    hasher = BlockHasher(32)
    rt = NodeKVRuntime(TieredStore(DramTier(1 << 20)), hasher, engine_cost_model("t", 64, 4096))
    prompt = list(range(4, 4 + 200))
    hashes = hasher(prompt)
    for i, h in enumerate(hashes):
        rt.store.put(StoredBlock(BlockKey("", h), hashes[i - 1] if i else None, b"x" * 64))
    conn = make_connector(rt)
    req = SimpleNamespace(request_id="q-abcdefgh", prompt_token_ids=prompt)
    assert conn.get_num_new_matched_tokens(req, 0) == (6 * 32, False)
    assert conn.get_num_new_matched_tokens(req, 0) == (6 * 32, False)  # not allocated: asked again
    assert [rt.store.dram.pin_count(BlockKey("", h)) for h in hashes] == [1] * 6
    assert rt.loaded["q"]["planned"] == 6 * 32 and rt.loaded["q"]["dram"] == 6 * 32
    conn.request_finished(req, [])
    assert [rt.store.dram.pin_count(BlockKey("", h)) for h in hashes] == [0] * 6


@pytest.mark.parametrize("native", [True, False], ids=["native-copy", "ctypes-copy"])
@pytest.mark.parametrize("dim", [0, 1])
def test_blocks_round_trip_through_bytes_in_any_block_dimension(dim, native, monkeypatch):
    import torch

    from preble_tiered.kvstore import block_copy
    from preble_tiered.kvstore.block_copy import BlockLayout, block_bytes, read_blocks, write_blocks

    if native and block_copy._copy_native is None:
        pytest.skip("C extension not built here")
    if not native:
        monkeypatch.setattr(block_copy, "_copy_native", None)

    shape = [2, 6, 4, 3] if dim == 1 else [6, 2, 4, 3]
    caches = [(f"l{i}", torch.randn(*shape, dtype=torch.float32 if i else torch.bfloat16), dim) for i in range(3)]
    datas = read_blocks(caches, [4, 1])
    assert [len(d) for d in datas] == [block_bytes(caches)] * 2
    assert datas[0] != datas[1]
    # The layout: layer by layer, each the block's slab in the cache's element order.
    expect = b"".join(c.select(d, 4).contiguous().view(torch.uint8).numpy().tobytes() for _, c, d in caches)
    assert bytes(datas[0]) == expect
    fresh = [(n, torch.zeros_like(c), d) for n, c, d in caches]
    write_blocks(fresh, [0, 5], datas)
    for (_, c, d), (_, f, _) in zip(caches, fresh):
        assert torch.equal(f.select(d, 0), c.select(d, 4)) and torch.equal(f.select(d, 5), c.select(d, 1))
        assert not f.select(d, 2).any()  # nothing else written
    with pytest.raises(RuntimeError, match="layout needs"):
        write_blocks(fresh, [0], [datas[0][:-4]])
    layout = BlockLayout(fresh)
    assert (layout._plan is not None) == native
    with pytest.raises(IndexError, match="outside the cache"):
        layout.read([6])
    with pytest.raises(IndexError, match="outside the cache"):
        layout.write([-1], [datas[0]])
    assert not fresh[0][1].select(fresh[0][2], 3).any()  # a refused write copied nothing


def test_non_contiguous_caches_take_the_numpy_path_with_the_same_bytes():
    import torch

    from preble_tiered.kvstore.block_copy import BlockLayout

    base = torch.randn(6, 2, 3, 4)
    strided = [("l0", base.transpose(2, 3), 0)]  # inner dims not contiguous: no raw plan
    contiguous = [("l0", base.transpose(2, 3).contiguous(), 0)]
    slow, fast = BlockLayout(strided), BlockLayout(contiguous)
    assert slow._pieces is None and fast._pieces is not None
    assert [bytes(b) for b in slow.read([5, 2])] == [bytes(b) for b in fast.read([5, 2])]
    target = torch.zeros_like(base).transpose(2, 3)
    BlockLayout([("l0", target, 0)]).write([1], fast.read([5]))
    assert torch.equal(target[1], base.transpose(2, 3)[5])


def test_native_copy_refuses_a_plan_whose_sizes_overflow():
    import struct

    from preble_tiered.kvstore import block_copy

    if block_copy._copy_native is None:
        pytest.skip("C extension not built here")
    plan = struct.pack("=QQQ", 0, 0, 2**64 - 8) + struct.pack("=QQQ", 0, 0, 24)
    with pytest.raises(ValueError, match="overflow"):
        block_copy._copy_native.scatter(plan, 0, b"x" * 16)
