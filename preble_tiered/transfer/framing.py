"""Block framing for transfers: checksum, pieces out, verified blocks in (pure code, no I/O).

A block travels as pieces of at most `max_piece_bytes`, in order, each carrying the whole
block's xxh3 checksum. The `Assembler` accepts pieces only for the block it expects next
(the requested chain order, skipping none), keeps at most one partial block, and returns a
block only when it is whole and its checksum matches: a transfer cut anywhere leaves only
whole, verified blocks behind.

On the wire a piece is a `PullServerMessage{piece: BlockPiece}` (transfer.proto). The hot
path encodes and decodes that message by hand (`encode_piece`, `decode_piece`): the bytes
are exactly what protobuf would write, so any gRPC client of transfer.proto can still pull,
but a piece costs one copy of its data on each side instead of three (no message object
holds the data; the receiver's block is a view into the received buffer).
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
    data: bytes | memoryview
    checksum: int


# Tags of transfer.proto's PullServerMessage / BlockPiece fields: (field number << 3) | wire type.
_TAG_PIECE = 0x0A  # PullServerMessage.piece, length-delimited
_TAG_HASH, _TAG_PARENT, _TAG_TOTAL, _TAG_OFFSET, _TAG_DATA, _TAG_CHECKSUM = 0x09, 0x11, 0x18, 0x20, 0x2A, 0x31


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: memoryview, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise TransferError("truncated or oversized varint in a piece message")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def encode_piece(p: Piece) -> bytes:
    """`PullServerMessage(piece=BlockPiece(...)).SerializeToString()`, with one copy of the data."""
    head = bytearray()
    if p.block_hash:
        head.append(_TAG_HASH)
        head += p.block_hash.to_bytes(8, "little")
    if p.parent is not None:
        head.append(_TAG_PARENT)
        head += p.parent.to_bytes(8, "little")
    if p.total_bytes:
        head.append(_TAG_TOTAL)
        head += _varint(p.total_bytes)
    if p.offset:
        head.append(_TAG_OFFSET)
        head += _varint(p.offset)
    n = memoryview(p.data).nbytes
    tail = bytes((_TAG_CHECKSUM,)) + p.checksum.to_bytes(8, "little") if p.checksum else b""
    data_head = bytes((_TAG_DATA,)) + _varint(n) if n else b""
    inner = len(head) + len(data_head) + n + len(tail)
    return b"".join((bytes((_TAG_PIECE,)), _varint(inner), head, data_head, p.data if n else b"", tail))


def decode_piece(buf: bytes) -> Piece | None:
    """The piece in a serialized `PullServerMessage`; None if it holds something else (an
    end: parse it with protobuf). Unknown fields are skipped, as protobuf does; `data` is a
    view into `buf` (no copy).

    Raises:
        TransferError: the bytes are not a well-formed message.
    """
    view = memoryview(buf)
    if not view or view[0] != _TAG_PIECE:
        return None
    size, i = _read_varint(view, 1)
    if i + size != len(view):
        return None  # more than one top-level field: leave it to protobuf
    h = total = off = checksum = 0
    parent = None
    data: memoryview = view[0:0]
    end = i + size
    while i < end:
        tag, i = _read_varint(view, i)
        wire = tag & 7
        if wire == 1:  # fixed64
            if i + 8 > end:
                raise TransferError("truncated fixed64 field in a piece message")
            v = int.from_bytes(view[i:i + 8], "little")
            i += 8
            if tag == _TAG_HASH:
                h = v
            elif tag == _TAG_PARENT:
                parent = v
            elif tag == _TAG_CHECKSUM:
                checksum = v
        elif wire == 0:
            v, i = _read_varint(view, i)
            if tag == _TAG_TOTAL:
                total = v
            elif tag == _TAG_OFFSET:
                off = v
        elif wire == 2:
            n, i = _read_varint(view, i)
            if i + n > end:
                raise TransferError("truncated bytes field in a piece message")
            if tag == _TAG_DATA:
                data = view[i:i + n]
            i += n
        elif wire == 5:
            i += 4
            if i > end:
                raise TransferError("truncated fixed32 field in a piece message")
        else:
            raise TransferError(f"unsupported wire type {wire} in a piece message")
    if i != end:
        raise TransferError("a piece message's fields overrun it")
    return Piece(h, parent, total, off, data, checksum)


def split(block_hash: int, parent: int | None, data: bytes | memoryview, max_piece_bytes: int) -> Iterator[Piece]:
    """The pieces of one block, in order (one piece for an empty block)."""
    if max_piece_bytes <= 0:
        raise ValueError(f"max_piece_bytes must be positive, got {max_piece_bytes}")
    view = memoryview(data).cast("B")
    total = view.nbytes
    csum = block_checksum(view)
    if total <= max_piece_bytes:
        yield Piece(block_hash, parent, total, 0, view, csum)
        return
    for off in range(0, total, max_piece_bytes):
        yield Piece(block_hash, parent, total, off, view[off:off + max_piece_bytes], csum)


@dataclass(frozen=True, slots=True)
class Block:
    """A whole, verified block."""

    block_hash: int
    parent: int | None
    data: bytes | memoryview


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
        data = memoryview(self._buf).toreadonly()  # the block owns this buffer now: no copy
        self._buf, self._first, self._filled = None, None, 0
        return self._finish(first, data)

    def _finish(self, p: Piece, data: bytes | memoryview) -> Block:
        if block_checksum(data) != p.checksum:
            raise TransferError(f"block {p.block_hash:016x} failed its checksum ({len(data)} bytes)")
        self._next += 1
        return Block(p.block_hash, p.parent, data)
