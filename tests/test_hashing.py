"""Block hashing: deterministic across processes, chained, full blocks only, namespaced."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xxhash

from preble_tiered import hashing
from preble_tiered.hashing import DEFAULT_SEED, BlockHasher, block_hashes, namespace_seed

TOKENS = list(range(1, 4 * 8 + 1))  # 4 full blocks of 8 tokens


def test_same_hashes_in_a_fresh_process():
    # A new interpreter has a different hash() salt; the block hashes must not change.
    code = (
        "import json; from preble_tiered.hashing import block_hashes, BlockHasher; "
        f"print(json.dumps([block_hashes({TOKENS!r}, 8), BlockHasher(8, 'llama')({TOKENS!r})]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    plain, namespaced = json.loads(out.stdout)
    assert plain == block_hashes(TOKENS, 8)
    assert namespaced == BlockHasher(8, "llama")(TOKENS)


def test_matches_the_documented_formula():
    # h_0 = xxh3_64(seed, 0 || tokens), h_1 = xxh3_64(seed, h_0 || tokens): LE u64 + LE u32.
    toks = np.arange(8, dtype="<u4")
    h0 = xxhash.xxh3_64_intdigest((0).to_bytes(8, "little") + toks[:4].tobytes(), seed=DEFAULT_SEED)
    h1 = xxhash.xxh3_64_intdigest(h0.to_bytes(8, "little") + toks[4:].tobytes(), seed=DEFAULT_SEED)
    assert block_hashes(list(range(8)), 4) == [h0, h1]


def test_input_type_does_not_matter():
    ref = block_hashes(TOKENS, 8)
    assert block_hashes(np.array(TOKENS, dtype=np.int64), 8) == ref
    assert block_hashes(np.array(TOKENS, dtype="<u4"), 8) == ref
    assert block_hashes(tuple(TOKENS), 8) == ref


def test_chaining_changing_block_0_changes_every_hash():
    ref = block_hashes(TOKENS, 8)
    changed = list(TOKENS)
    changed[3] += 1  # inside block 0
    new = block_hashes(changed, 8)
    assert len(new) == 4
    assert all(a != b for a, b in zip(ref, new))


def test_chaining_changing_block_2_keeps_blocks_0_and_1():
    ref = block_hashes(TOKENS, 8)
    changed = list(TOKENS)
    changed[2 * 8 + 5] += 1  # inside block 2
    new = block_hashes(changed, 8)
    assert new[:2] == ref[:2]
    assert new[2] != ref[2] and new[3] != ref[3]


def test_same_block_content_at_different_positions_hashes_differently():
    toks = [7] * 16
    h = block_hashes(toks, 8)
    assert h[0] != h[1]  # the parent is part of the hash


def test_only_full_blocks_are_hashed():
    assert block_hashes(TOKENS[:7], 8) == []
    assert block_hashes([], 8) == []
    ref = block_hashes(TOKENS, 8)
    assert block_hashes(TOKENS[:31], 8) == ref[:3]  # trailing partial block ignored
    assert block_hashes(TOKENS + [99, 98], 8) == ref


def test_namespace_changes_every_hash():
    plain = BlockHasher(8)(TOKENS)
    a = BlockHasher(8, "model-a")(TOKENS)
    b = BlockHasher(8, "model-b")(TOKENS)
    assert plain == block_hashes(TOKENS, 8)  # empty namespace: the plain seed
    assert not set(plain) & set(a)
    assert not set(a) & set(b)
    assert namespace_seed("") == DEFAULT_SEED
    assert namespace_seed("model-a") != DEFAULT_SEED
    assert BlockHasher(8, "model-a").effective_seed == namespace_seed("model-a")


def test_seed_changes_hashes():
    assert block_hashes(TOKENS, 8, seed=1) != block_hashes(TOKENS, 8, seed=2)


def test_parent_continuation_equals_hashing_the_concatenation():
    full = block_hashes(TOKENS, 8)
    head = block_hashes(TOKENS[:16], 8)
    tail = block_hashes(TOKENS[16:], 8, parent=head[-1])
    assert head + tail == full
    hasher = BlockHasher(8, "ns")
    assert hasher(TOKENS[:8]) + hasher(TOKENS[8:], parent=hasher(TOKENS[:8])[-1]) == hasher(TOKENS)


@pytest.mark.parametrize("bs", [0, -4])
def test_bad_block_size_raises(bs):
    with pytest.raises(ValueError, match="block_size"):
        block_hashes(TOKENS, bs)
    with pytest.raises(ValueError, match="block_size"):
        BlockHasher(bs)


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_out_of_range_tokens_raise(bad):
    toks = list(TOKENS)
    toks[5] = bad
    with pytest.raises(ValueError, match=r"2\*\*32"):
        block_hashes(toks, 8)
    with pytest.raises(ValueError, match=r"2\*\*32"):
        block_hashes(np.array(toks), 8)


def test_largest_uint32_token_is_accepted():
    toks = [2**32 - 1] * 8
    assert len(block_hashes(toks, 8)) == 1


@pytest.mark.skipif(hashing._hashing_native is None, reason="C extension not built here")
@pytest.mark.parametrize("bs", [1, 16, 32, 300])
def test_native_hashes_equal_the_python_reference(bs):
    rng = np.random.default_rng(bs)
    for n in (0, bs - 1, bs, 5 * bs + 3):
        toks = rng.integers(0, 2**32, n, dtype=np.uint64).tolist()
        for seed, parent in ((DEFAULT_SEED, None), (namespace_seed("llama"), 2**64 - 1), (0, 12345)):
            want = hashing._block_hashes_py(toks, bs, seed, parent)
            assert hashing._hashing_native.block_hashes(toks, bs, seed, parent) == want
            assert block_hashes(tuple(toks), bs, seed, parent) == want
    with pytest.raises(TypeError):
        hashing._hashing_native.block_hashes([1.5] * bs, bs, DEFAULT_SEED, None)


def test_numpy_ints_in_a_list_and_the_seed_range():
    toks = list(range(64))
    assert block_hashes([np.uint32(t) for t in toks], 8) == block_hashes(toks, 8)
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            block_hashes(toks, 8, seed=bad)
