"""Block copies for KV caches that are not in host memory (CUDA), through torch.

The same interface and the same block bytes as `BlockLayout` (a block is every layer's slab,
in layer order, each in the cache's element order with the block dimension removed), so a
block saved from a GPU node loads on a CPU node and the other way round, and the DRAM and
disk tiers and pulls do not care where the cache lives. Nothing here takes a device
pointer for a host pointer: device memory is only touched by torch copies.

Saves (device -> host) copy a batch of blocks (in runs of at most `STAGING_BYTES`) into one
pinned host staging buffer with
non-blocking copies on a side stream, wait for that stream once, then copy each block into
its own buffer (a pool slot when `take` gives one). Loads (host -> device) copy the blocks
into pinned staging and from there into the cache with non-blocking copies on the side
stream, and wait for it before returning: the engine reads the cache only after `write`
returns. On CPU tensors (tests here) the same code runs with pageable staging and no
stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from preble_tiered.kvstore.block_copy import block_bytes, check_block_ids

STAGING_BYTES = 64 << 20
"""Most pinned staging memory per mover: larger batches are copied in runs of this size."""


class TorchBlockLayout:
    """Copies between paged KV caches on any torch device and flat host block buffers.

    Args:
        caches: (layer name, cache tensor, block dimension), in the order a block's bytes are
            laid out. All on one device.

    Raises:
        ValueError: if the caches disagree on the number of blocks or on the device.
    """

    def __init__(self, caches: Sequence[tuple[str, torch.Tensor, int]]) -> None:
        self.caches = list(caches)
        counts = {c.shape[d] for _, c, d in self.caches}
        if len(counts) > 1:
            raise ValueError(f"layers disagree on the number of blocks: {sorted(counts)}")
        devices = {c.device for _, c, _ in self.caches}
        if len(devices) > 1:
            raise ValueError(f"the caches are on several devices: {sorted(map(str, devices))}")
        self.device = devices.pop() if devices else torch.device("cpu")
        self.num_blocks = counts.pop() if counts else 0
        self.block_bytes = block_bytes(self.caches)
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        self._staging = torch.empty(0, dtype=torch.uint8)
        # Per layer, planned once: (cache, block dim, slab shape, slab's offset and bytes in a block)
        self._slabs: list[tuple[torch.Tensor, int, tuple[int, ...], int, int]] = []
        off = 0
        for _, c, d in self.caches:
            shape = tuple(c.shape[:d]) + tuple(c.shape[d + 1:])
            n = c.element_size() * math.prod(shape)
            self._slabs.append((c, d, shape, off, n))
            off += n

    def _staging_for(self, n: int) -> torch.Tensor:
        need = n * self.block_bytes
        if self._staging.numel() < need:
            self._staging = torch.empty(need, dtype=torch.uint8, pin_memory=self._cuda)
        return self._staging[:need]

    def _on_stream(self):
        return torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()

    def _slab_views(self, staging: torch.Tensor, i: int):
        """(cache, block dim, staging view of block i's slab), per layer."""
        base = i * self.block_bytes
        for c, d, shape, off, n in self._slabs:
            yield c, d, staging[base + off:base + off + n].view(c.dtype).view(shape)

    def read(self, block_ids: Sequence[int],
             take: Callable[[], tuple[int, memoryview] | None] | None = None) -> list[memoryview]:
        """The blocks' bytes, each in its own host buffer, as read-only views (see
        `BlockLayout.read`; `take` gives pool slots to copy into)."""
        check_block_ids(block_ids, self.num_blocks)
        out: list[memoryview] = []
        for group in self._groups(block_ids):
            staging = self._staging_for(len(group))
            if self._stream is not None:
                self._stream.wait_stream(torch.cuda.current_stream(self.device))  # after the step that wrote them
            with self._on_stream():
                for i, b in enumerate(group):
                    for c, d, dst in self._slab_views(staging, i):
                        dst.copy_(c.select(d, b), non_blocking=self._cuda)
            if self._stream is not None:
                self._stream.synchronize()
            src = staging.numpy()
            for i in range(len(group)):
                chunk = src[i * self.block_bytes:(i + 1) * self.block_bytes]
                slot = take() if take is not None else None
                if slot is None:
                    take = None
                    out.append(memoryview(chunk.copy()).toreadonly())
                else:
                    ctypes.memmove(slot[0], chunk.ctypes.data, self.block_bytes)
                    out.append(slot[1])
        return out

    def write(self, block_ids: Sequence[int], datas: Sequence[bytes | memoryview]) -> None:
        """Copy stored blocks into the caches; returns when the engine may read them.

        Raises:
            RuntimeError: a stored block's size is not this layout's.
            IndexError: a block id outside the cache.
        """
        if len(block_ids) != len(datas):
            raise ValueError(f"{len(block_ids)} block ids for {len(datas)} blocks")
        check_block_ids(block_ids, self.num_blocks)
        srcs = [np.frombuffer(d, dtype=np.uint8) for d in datas]
        for s in srcs:
            if s.nbytes != self.block_bytes:
                raise RuntimeError(f"stored block has {s.nbytes} bytes, the engine's layout needs {self.block_bytes}")
        done = 0
        for group in self._groups(block_ids):
            staging = self._staging_for(len(group))
            host = staging.numpy()
            for i, s in enumerate(srcs[done:done + len(group)]):
                host[i * self.block_bytes:(i + 1) * self.block_bytes] = s
            if self._stream is not None:
                self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with self._on_stream():
                for i, b in enumerate(group):
                    for c, d, src in self._slab_views(staging, i):
                        c.select(d, b).copy_(src, non_blocking=self._cuda)
            if self._stream is not None:
                self._stream.synchronize()  # before the staging is refilled, and before the engine reads
            done += len(group)

    def _groups(self, block_ids: Sequence[int]):
        """`block_ids` in runs that fit the staging buffer's bound."""
        per = max(1, STAGING_BYTES // max(1, self.block_bytes))
        return [block_ids[i:i + per] for i in range(0, len(block_ids), per)]


def block_mover(caches: Sequence[tuple[str, torch.Tensor, int]]):
    """The copier for these caches: `BlockLayout` (C/ctypes copies) for host memory,
    `TorchBlockLayout` for any other device. Both give the same block bytes."""
    from preble_tiered.kvstore.block_copy import BlockLayout

    if all(c.device.type == "cpu" for _, c, _ in caches):
        return BlockLayout(caches)
    return TorchBlockLayout(caches)
