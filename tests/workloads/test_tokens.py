"""segment_tokens / request_token_ids: deterministic everywhere, prefix-consistent, in range."""

import subprocess
import sys

import numpy as np
import pytest

from preble_tiered.hashing import block_hashes
from preble_tiered.types import Segment, WorkloadRequest
from preble_tiered.workloads.tokens import CHUNK_TOKENS, request_token_ids, segment_tokens


def make_request(*segments: tuple[str, int]) -> WorkloadRequest:
    return WorkloadRequest("r", 0.0, tuple(Segment(i, n) for i, n in segments), 1)


def test_same_id_same_tokens_in_another_process():
    here = segment_tokens("toolbench/s0/tool7", 5000)
    code = (
        "from preble_tiered.workloads.tokens import segment_tokens;"
        "print(','.join(map(str, segment_tokens('toolbench/s0/tool7', 5000).tolist())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there = np.array([int(x) for x in out.stdout.strip().split(",")], dtype=np.uint32)
    np.testing.assert_array_equal(here, there)


def test_chunk_zero_is_seeded_by_the_plain_id_hash():
    import xxhash

    expected = np.random.default_rng(xxhash.xxh3_64_intdigest(b"doc")).integers(0, 32000, 10, dtype=np.uint32)
    np.testing.assert_array_equal(segment_tokens("doc", 10), expected)


@pytest.mark.parametrize("k", [0, 1, 31, CHUNK_TOKENS - 1, CHUNK_TOKENS, CHUNK_TOKENS + 1, 2 * CHUNK_TOKENS, 9000])
def test_prefix_property(k):
    full = segment_tokens("loogle/s0/doc3", 3 * CHUNK_TOKENS + 17)
    np.testing.assert_array_equal(segment_tokens("loogle/s0/doc3", k), full[:k])


def test_lengths_dtype_and_read_only():
    for n in (0, 1, 100, CHUNK_TOKENS, 3 * CHUNK_TOKENS + 5):
        toks = segment_tokens("x", n)
        assert toks.shape == (n,) and toks.dtype == np.uint32
        assert not toks.flags.writeable


def test_tokens_stay_inside_the_vocabulary():
    toks = segment_tokens("small-vocab", 5000, vocab_size=7)
    assert toks.max() < 7
    assert set(toks.tolist()) == set(range(7))
    big = segment_tokens("big-vocab", 5000, vocab_size=2**32)
    assert big.dtype == np.uint32 and big.max() > 2**31  # the whole uint32 range is used


def test_different_ids_and_vocabularies_give_different_tokens():
    a = segment_tokens("videoqa/s0/video1", 256)
    assert not np.array_equal(a, segment_tokens("videoqa/s1/video1", 256))
    assert not np.array_equal(a, segment_tokens("videoqa/s0/video1", 256, vocab_size=50000))


@pytest.mark.parametrize("n, vocab", [(-1, 32000), (10, 0), (10, 2**32 + 1)])
def test_bad_arguments_raise(n, vocab):
    with pytest.raises(ValueError):
        segment_tokens("x", n, vocab)


def test_request_token_ids_concatenates_segments():
    req = make_request(("sys", 300), ("q1", 45))
    toks = request_token_ids(req)
    assert toks.shape == (345,) and toks.flags.writeable
    np.testing.assert_array_equal(toks[:300], segment_tokens("sys", 300))
    np.testing.assert_array_equal(toks[300:], segment_tokens("q1", 45))


def test_shared_prefix_segments_give_shared_block_hashes():
    a = block_hashes(request_token_ids(make_request(("sys", 320), ("qa", 64))), block_size=32)
    b = block_hashes(request_token_ids(make_request(("sys", 320), ("qb", 64))), block_size=32)
    assert a[:10] == b[:10]
    assert a[10] != b[10]
