"""The receiving side of a pull: fetch a chain of blocks from a peer's Transfer service.

`pull_blocks` opens the call with a window of credits, returns one credit per piece
consumed (in batches of half the window), reassembles and verifies each block, and hands it
to `sink` only once whole. Whatever ends the call (the peer dies, misbehaves, the deadline
passes, or the caller cancels the task), the blocks already handed on are whole and
verified and nothing partial is kept; the result says how far it got and why it stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from preble_tiered.api.pb import transfer_pb2
from preble_tiered.transfer.framing import DEFAULT_PIECE_BYTES, Assembler, Block, Piece, TransferError, decode_piece

PULL_METHOD = "/preble.v1.Transfer/Pull"


def _decode(buf: bytes) -> Piece | transfer_pb2.PullServerMessage:
    """A piece without copying its data (the hot path), anything else through protobuf."""
    return decode_piece(buf) or transfer_pb2.PullServerMessage.FromString(buf)


@dataclass
class PullResult:
    requested: int
    stored: list[int] = field(default_factory=list)
    """Hashes of the blocks handed to the sink, in chain order."""
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    """Why the pull stopped early: the peer's `missing` reason, an RPC error, a protocol
    error; None when every requested block arrived."""
    path: str = "grpc"
    """Which data path carried the blocks: "grpc" (the Pull stream) or "mooncake"."""

    @property
    def complete(self) -> bool:
        return self.error is None and len(self.stored) == self.requested


async def pull_blocks(channel: grpc.aio.Channel, namespace: str, hashes: Sequence[int],
                      sink: Callable[[Block], Awaitable[bool]], *, window: int = 8,
                      piece_bytes: int = DEFAULT_PIECE_BYTES, timeout_s: float = 30.0) -> PullResult:
    """Pull `hashes` (one chain, in order) from the peer behind `channel`.

    Args:
        sink: stores one verified block; returns False when it could not (the pull stops:
            later blocks are useless without it).
        window: pieces the peer may send ahead of our credits (bounds memory on both sides).
    """
    if not hashes:
        return PullResult(0)
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    res = PullResult(len(hashes))
    outbox: asyncio.Queue[transfer_pb2.PullClientMessage | None] = asyncio.Queue()
    outbox.put_nowait(transfer_pb2.PullClientMessage(open=transfer_pb2.PullOpen(
        namespace=namespace, hashes=list(hashes), max_piece_bytes=piece_bytes, window=window)))

    async def requests():
        while (msg := await outbox.get()) is not None:
            yield msg

    asm = Assembler(hashes)
    grant = max(1, window // 2)
    consumed = 0
    t0 = time.perf_counter()
    pull = channel.stream_stream(PULL_METHOD, request_serializer=transfer_pb2.PullClientMessage.SerializeToString,
                                 response_deserializer=_decode)
    call = pull(requests(), timeout=timeout_s)
    try:
        async for msg in call:
            if not isinstance(msg, Piece):
                if msg.WhichOneof("kind") == "piece":  # a piece protobuf wrote differently
                    p = msg.piece
                    msg = Piece(p.hash, p.parent if p.HasField("parent") else None, p.total_bytes, p.offset,
                                p.data, p.checksum)
                else:
                    if msg.end.missing:
                        res.error = f"peer stopped after {msg.end.blocks_sent} blocks: {msg.end.missing}"
                    break
            block = asm.feed(msg)
            consumed += 1
            if consumed >= grant:
                outbox.put_nowait(transfer_pb2.PullClientMessage(credit=transfer_pb2.Credit(pieces=consumed)))
                consumed = 0
            if block is not None:
                if not await sink(block):
                    res.error = f"could not store block {block.block_hash:016x} locally"
                    break
                res.stored.append(block.block_hash)
                res.bytes += len(block.data)
        else:
            res.error = "the peer ended the stream without PullEnd"
    except grpc.aio.AioRpcError as e:
        res.error = f"{e.code().name}: {e.details()}"
    except TransferError as e:
        res.error = f"protocol error: {e}"
    finally:
        outbox.put_nowait(None)
        call.cancel()
        res.seconds = time.perf_counter() - t0
    if res.error is None and len(res.stored) < res.requested:
        res.error = f"the peer sent {len(res.stored)} of {res.requested} blocks"
    return res
