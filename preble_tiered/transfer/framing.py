"""Block framing for transfers: checksum, pieces out, verified blocks in (pure code, no I/O).

A block travels as pieces of at most `max_piece_bytes`, in order, each carrying the whole
block's xxh3 checksum. The `Assembler` accepts pieces only for the block it expects next
(the requested chain order, skipping none), keeps at most one partial block, and returns a
block only when it is whole and its checksum matches: a transfer cut anywhere leaves only
whole, verified blocks behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import xxhash

DEFAULT_PIECE_BYTES = 1 << 20
MIN_PIECE_BYTES = 4 << 10
MAX_PIECE_BYTES = 8 << 20
MAX_BLOCK_BYTES = 256 << 20
"""A larger block is refused (a corrupt or hostile size field must not allocate gigabytes)."""


class TransferError(Exception):
    """The peer broke the transfer protocol (bad order, size or checksum)."""


def block_checksum(data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


@dataclass(frozen=True, slots=True)
class Piece:
    """One message's worth of a block (the fields of `BlockPiece`)."""

    block_hash: int
    parent: int | None
    total_bytes: int
    offset: int
    data: bytes
    checksum: int


def split(block_hash: int, parent: int | None, data: bytes | memoryview, max_piece_bytes: int) -> Iterator[Piece]:
    """The pieces of one block, in order (one piece for an empty block)."""
    if max_piece_bytes <= 0:
        raise ValueError(f"max_piece_bytes must be positive, got {max_piece_bytes}")
    view = memoryview(data).cast("B")
    total = view.nbytes
    csum = block_checksum(view)
    if total <= max_piece_bytes:
        yield Piece(block_hash, parent, total, 0, bytes(view) if not isinstance(data, bytes) else data, csum)
        return
    for off in range(0, total, max_piece_bytes):
        yield Piece(block_hash, parent, total, off, bytes(view[off:off + max_piece_bytes]), csum)


@dataclass(frozen=True, slots=True)
class Block:
    """A whole, verified block."""

    block_hash: int
    parent: int | None
    data: bytes


class Assembler:
    """Reassembles the blocks of one requested chain, in order, verifying each.

    Args:
        hashes: the blocks requested, in the order the sender must send them (it may stop
            early; it may not skip, reorder or add).
    """

    def __init__(self, hashes: Sequence[int]) -> None:
        self._hashes = list(hashes)
        self._next = 0  # index into _hashes of the block being received
        self._buf: bytearray | None = None
        self._filled = 0
        self._first: Piece | None = None

    @property
    def complete_blocks(self) -> int:
        return self._next

    @property
    def partial_bytes(self) -> int:
        """Bytes of a block still being received (dropped if the transfer ends now)."""
        return self._filled

    def feed(self, p: Piece) -> Block | None:
        """Take one piece; returns the block it completes, else None.

        Raises:
            TransferError: a piece out of order, of an unexpected block, inconsistent with
                its block's earlier pieces, oversized, or a block failing its checksum.
        """
        if self._next >= len(self._hashes):
            raise TransferError(f"piece of block {p.block_hash:016x} after all {len(self._hashes)} requested blocks")
        want = self._hashes[self._next]
        if p.block_hash != want:
            raise TransferError(f"expected block {want:016x} (#{self._next}), got {p.block_hash:016x}")
        if not 0 <= p.total_bytes <= MAX_BLOCK_BYTES:
            raise TransferError(f"block {want:016x} claims {p.total_bytes} bytes (limit {MAX_BLOCK_BYTES})")
        first = self._first
        if first is None:
            if p.offset != 0:
                raise TransferError(f"block {want:016x} starts at offset {p.offset}, not 0")
            if len(p.data) == p.total_bytes:  # the whole block in one piece: no copy
                return self._finish(p, p.data)
            self._first, self._buf, self._filled = p, bytearray(p.total_bytes), 0
            first = p
        elif (p.total_bytes, p.checksum) != (first.total_bytes, first.checksum):
            raise TransferError(f"block {want:016x}: piece size/checksum differ from its first piece")
        if p.offset != self._filled or p.offset + len(p.data) > p.total_bytes or not p.data:
            raise TransferError(f"block {want:016x}: piece at {p.offset}+{len(p.data)} does not continue "
                                f"the {self._filled} bytes received of {p.total_bytes}")
        assert self._buf is not None
        self._buf[p.offset:p.offset + len(p.data)] = p.data
        self._filled += len(p.data)
        if self._filled < p.total_bytes:
            return None
        data = bytes(self._buf)
        self._buf, self._first, self._filled = None, None, 0
        return self._finish(first, data)

    def _finish(self, p: Piece, data: bytes) -> Block:
        if block_checksum(data) != p.checksum:
            raise TransferError(f"block {p.block_hash:016x} failed its checksum ({len(data)} bytes)")
        self._next += 1
        return Block(p.block_hash, p.parent, data)
