"""Deterministic chained block hashing: the one place block hashes are made.

    h_0 = xxh3_64(seed, 0      || tokens of block 0)
    h_i = xxh3_64(seed, h_{i-1} || tokens of block i)

`h_{i-1}` is packed as 8 little-endian bytes and tokens as little-endian uint32, so every
process on every machine gets the same hashes (Python's `hash()` is salted per process and
is never used). Only full blocks are hashed: a trailing partial block has no hash. An
optional namespace (model id, LoRA name, salt) is folded into the seed, so two models never
share a block hash.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

try:  # the same hashes without the interpreter, where setup.py could build it (optional)
    from preble_tiered import _hashing_native
except ImportError:  # pragma: no cover - depends on the build machine
    _hashing_native = None

DEFAULT_SEED = 0x5052_4542_4C45  # "PREBLE"
DEFAULT_BLOCK_SIZE = 32

_PARENT_NONE = (0).to_bytes(8, "little")
_U32 = next(code for code in "IL" if array.array(code).itemsize == 4)


def namespace_seed(namespace: str = "", seed: int = DEFAULT_SEED) -> int:
    """The hashing seed for a namespace (empty namespace -> `seed` itself)."""
    if not namespace:
        return seed
    return xxhash.xxh3_64_intdigest(namespace.encode("utf-8"), seed=seed)


def _u32_bytes(token_ids: Sequence[int] | np.ndarray, n: int) -> bytes:
    """The first `n` token ids as little-endian uint32 bytes.

    A list (what the router holds) goes through `array.array`, about 4x faster than numpy's
    conversion of Python ints; an array is cast by numpy.
    """
    if not isinstance(token_ids, np.ndarray):
        try:
            arr = array.array(_U32, token_ids if len(token_ids) == n else token_ids[:n])
        except OverflowError:
            raise ValueError("token ids must be in [0, 2**32)") from None
        if sys.byteorder != "little":
            arr.byteswap()
        return arr.tobytes()
    arr = token_ids[:n]
    if arr.dtype != np.dtype("<u4"):
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF_FFFF):
            raise ValueError("token ids must be in [0, 2**32)")
        arr = arr.astype("<u4")
    return arr.tobytes()


def block_hashes(
    token_ids: Sequence[int] | np.ndarray,
    block_size: int = DEFAULT_BLOCK_SIZE,
    seed: int = DEFAULT_SEED,
    parent: int | None = None,
) -> list[int]:
    """Chained hashes of the full blocks of `token_ids`.

    Args:
        token_ids: the prompt's token ids (non-negative, < 2**32).
        block_size: tokens per block (> 0).
        seed: the hashing seed, from :func:`namespace_seed`.
        parent: hash of the block before `token_ids[0]` when hashing a continuation.

    Returns:
        One hash per full block; `len(token_ids) // block_size` of them.

    Raises:
        ValueError: on a non-positive block size or token ids outside uint32.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if _hashing_native is not None and type(token_ids) in (list, tuple):
        try:
            return _hashing_native.block_hashes(token_ids, block_size, seed, parent)
        except TypeError:  # items that are not ints (numpy scalars...): the reference decides
            pass
    return _block_hashes_py(token_ids, block_size, seed, parent)


def _block_hashes_py(token_ids: Sequence[int] | np.ndarray, block_size: int, seed: int,
                     parent: int | None) -> list[int]:
    """`block_hashes` in Python (numpy arrays, and lists where the native module is not
    built): the reference the native hashes are tested against."""
    n_blocks = len(token_ids) // block_size
    if n_blocks == 0:
        return []
    data = _u32_bytes(token_ids, n_blocks * block_size)
    step = block_size * 4
    digest = xxhash.xxh3_64_intdigest
    out = [0] * n_blocks
    prev = _PARENT_NONE if parent is None else parent.to_bytes(8, "little")
    lo = 0
    for i in range(n_blocks):  # the seed passed by position: keyword parsing is ~10% of a step
        hi = lo + step
        h = digest(prev + data[lo:hi], seed)
        out[i] = h
        prev = h.to_bytes(8, "little")
        lo = hi
    return out


@dataclass(frozen=True, slots=True)
class BlockHasher:
    """Block hashing bound to one block size and namespace (what a cluster agrees on)."""

    block_size: int = DEFAULT_BLOCK_SIZE
    namespace: str = ""
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")

    @property
    def effective_seed(self) -> int:
        return namespace_seed(self.namespace, self.seed)

    def __call__(self, token_ids: Sequence[int] | np.ndarray, parent: int | None = None) -> list[int]:
        return block_hashes(token_ids, self.block_size, self.effective_seed, parent)
