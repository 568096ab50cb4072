"""Deterministic token ids for named prompt segments.

A workload describes prompts as `Segment(seg_id, n_tokens)`; this module turns an id into
token ids that are the same in every process and on every machine, so two requests naming
the same segment produce the same block hashes (:mod:`preble_tiered.hashing`).

Tokens are generated in fixed chunks of `CHUNK_TOKENS`; chunk `c` of segment `seg_id` comes
from `numpy.random.default_rng(xxh3_64(seg_id, seed=c))`. Chunk 0 therefore uses the plain
`xxh3_64(seg_id)` seed, and because chunks never depend on the requested length, the first
`k` tokens of `(seg_id, n)` equal the tokens of `(seg_id, k)` for every `k <= n` (the
*prefix property*: a shorter segment with the same id is a true prefix of a longer one).
"""

from __future__ import annotations

import functools

import numpy as np
import xxhash

from preble_tiered.types import WorkloadRequest

CHUNK_TOKENS = 4096
DEFAULT_VOCAB_SIZE = 32000
_MAX_VOCAB = 2**32
_CACHED_CHUNKS = 2048  # at 16 KiB per chunk: at most 32 MiB held


@functools.lru_cache(maxsize=_CACHED_CHUNKS)
def _chunk(seg_id: str, index: int, vocab_size: int) -> np.ndarray:
    """Tokens `[index*CHUNK_TOKENS, (index+1)*CHUNK_TOKENS)` of `seg_id`, read-only."""
    seed = xxhash.xxh3_64_intdigest(seg_id.encode("utf-8"), seed=index)
    rng = np.random.default_rng(seed)
    out = rng.integers(0, vocab_size, size=CHUNK_TOKENS, dtype=np.uint32)
    out.flags.writeable = False
    return out


def segment_tokens(seg_id: str, n_tokens: int, vocab_size: int = DEFAULT_VOCAB_SIZE) -> np.ndarray:
    """The first `n_tokens` token ids of segment `seg_id`.

    Args:
        seg_id: the segment's id; equal ids give equal tokens in every process.
        n_tokens: how many tokens (>= 0).
        vocab_size: token ids are drawn from `[0, vocab_size)`, 1 <= vocab_size <= 2**32.

    Returns:
        A read-only uint32 array of length `n_tokens` (copy it to modify).

    Raises:
        ValueError: on a negative length or a vocabulary size out of range.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens} for segment {seg_id!r}")
    if not 1 <= vocab_size <= _MAX_VOCAB:
        raise ValueError(f"vocab_size must be in [1, 2**32], got {vocab_size}")
    n_chunks = -(-n_tokens // CHUNK_TOKENS)
    if n_chunks <= 1:
        data = _chunk(seg_id, 0, vocab_size)
    else:
        data = np.concatenate([_chunk(seg_id, c, vocab_size) for c in range(n_chunks)])
        data.flags.writeable = False
    return data[:n_tokens]


def request_token_ids(req: WorkloadRequest, vocab_size: int = DEFAULT_VOCAB_SIZE) -> np.ndarray:
    """The prompt of `req` as one writable uint32 array (its segments' tokens, in order)."""
    parts = [segment_tokens(s.seg_id, s.n_tokens, vocab_size) for s in req.segments]
    if not parts:
        return np.empty(0, np.uint32)
    return np.concatenate(parts)
