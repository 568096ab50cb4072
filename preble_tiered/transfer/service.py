"""The sending side of a pull: `preble.v1.Transfer` over a node's stored blocks.

Per call: validate the `PullOpen`, then for each requested block read it from the source
(inline when it is in DRAM and the store is free, else in a worker thread: a disk read or a
busy engine blocks), split it into pieces and send each piece only
while credits remain, waiting for the receiver's `Credit` messages otherwise. So at most
`window` pieces are ever in flight and one block is held in memory per call. A block the
source no longer holds ends the call early with `PullEnd.missing` (the receiver recomputes
the rest). Cancellation by the receiver stops the loop at its next await.

Pieces leave as bytes encoded by `framing.encode_piece` (the proto's own wire format, one
copy of the data); register the service with `add_transfer_service`, which passes them
through, not with the generated `add_TransferServicer_to_server`, which would re-serialize.

With a bulk engine (`transfer/bulk.py`), `Lease` pins blocks in the registered block pool
for a peer's one-sided read and `Release` lets them go (`transfer/leases.py`); without one
it answers FAILED_PRECONDITION and peers use `Pull`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

import grpc

from preble_tiered.api.pb import transfer_pb2, transfer_pb2_grpc
from preble_tiered.transfer.bulk import BulkEngine
from preble_tiered.transfer.framing import (DEFAULT_PIECE_BYTES, MAX_PIECE_BYTES, MIN_PIECE_BYTES, block_checksum,
                                            encode_piece, split)
from preble_tiered.transfer.leases import LeaseTable

logger = logging.getLogger(__name__)

MAX_PULL_BLOCKS = 65536
MAX_WINDOW = 64


class BlockSource(Protocol):
    namespace: str

    def read_block(self, block_hash: int) -> tuple[int | None, bytes | memoryview] | None:
        """(parent, data) of a held block, else None. May block (disk); called off the loop."""
        ...

    def read_block_nowait(self, block_hash: int) -> tuple[int | None, bytes | memoryview] | None:
        """The same, but only if that needs no waiting (in DRAM, store not busy); else None
        (then `read_block` gives the answer). Called on the event loop."""
        ...

    def lease_block(self, block_hash: int) -> tuple[int | None, memoryview, int] | None:
        """(parent, view, address) of a held block placed in the registered block pool (copied
        into a slot when it is elsewhere); holding the view keeps the slot's bytes. None when
        the block is not held or no slot is free. May block; called off the loop."""
        ...

    def pool_region(self) -> tuple[int, int] | None:
        """(address, length) of the block pool peers may read, None before it exists."""
        ...


class TransferService(transfer_pb2_grpc.TransferServicer):
    """Args:
        source: returns the node's block source, or None while it has none (no KV store yet).
        after_piece: test hook, awaited with the number of pieces sent so far (fault injection).
    """

    def __init__(self, source: Callable[[], BlockSource | None],
                 after_piece: Callable[[int], Awaitable[None]] | None = None,
                 bulk: BulkEngine | None = None, leases: LeaseTable | None = None) -> None:
        self._source = source
        self._after_piece = after_piece
        self.bulk = bulk
        self.leases = leases if leases is not None else LeaseTable()
        self.stats: Counter[str] = Counter()

    # -- bulk path ------------------------------------------------------------------------
    async def Lease(self, request: transfer_pb2.LeaseRequest, context: grpc.aio.ServicerContext):
        if self.bulk is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node runs no transfer engine; use Pull")
        src = await self._checked_source(request.namespace, len(request.hashes), context)
        region = src.pool_region()
        if region is None or not self.bulk.register(*region):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no registered block pool here yet; use Pull")
        self.sweep()
        hashes = list(request.hashes)
        room = max(0, self.leases.room())  # concurrent leases may overshoot the budget a little
        blocks, views, missing = await asyncio.to_thread(_lease_blocks, src, hashes[:room])
        if not missing and room < len(hashes):
            missing = f"this node's lease budget is spent ({self.leases.max_blocks} blocks held)"
        self.stats["leased_blocks"] += len(blocks)
        lease_id = self.leases.add(views, time.monotonic()) if views else 0
        return transfer_pb2.LeaseResponse(lease_id=lease_id, session=self.bulk.session, protocol=self.bulk.protocol,
                                          blocks=blocks, missing=missing, ttl_ms=int(self.leases.ttl_s * 1000))

    async def Release(self, request: transfer_pb2.ReleaseRequest, context: grpc.aio.ServicerContext):
        released = self.leases.release(request.lease_id)
        self.stats["released" if released else "release_unknown"] += 1
        self.sweep()
        return transfer_pb2.ReleaseResponse(released=released)

    async def _checked_source(self, namespace: str, n_hashes: int, context: grpc.aio.ServicerContext) -> BlockSource:
        """The block source a Pull or Lease reads from, after the checks both share."""
        src = self._source()
        if src is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node has no KV store to pull from")
        if namespace != src.namespace:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"namespace {namespace!r} is not this node's {src.namespace!r} (another model)")
        if not 0 < n_hashes <= MAX_PULL_BLOCKS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ask for 1 to {MAX_PULL_BLOCKS} blocks, not {n_hashes}")
        return src

    def sweep(self) -> int:
        """Release leases past their deadline (their pullers died); returns how many."""
        n = self.leases.sweep(time.monotonic())
        if n:
            logger.warning("released %d expired KV lease(s): a puller did not release them", n)
        return n

    async def Pull(self, request_iterator, context: grpc.aio.ServicerContext):
        it = request_iterator.__aiter__()
        first = await anext(it, None)
        if first is None or first.WhichOneof("kind") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Pull starts with a PullOpen message")
        op = first.open
        src = await self._checked_source(op.namespace, len(op.hashes), context)
        if not 0 < op.window <= MAX_WINDOW:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"window must be in [1, {MAX_WINDOW}], got {op.window}")
        piece_max = op.max_piece_bytes or DEFAULT_PIECE_BYTES
        if not MIN_PIECE_BYTES <= piece_max <= MAX_PIECE_BYTES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"max_piece_bytes must be in [{MIN_PIECE_BYTES}, {MAX_PIECE_BYTES}], got {piece_max}")
        self.stats["calls"] += 1
        credits, sent_pieces, sent_blocks = op.window, 0, 0
        ended = False  # set once the call reaches a PullEnd; anything else is a cancellation
        try:
            for h in op.hashes:
                got = src.read_block_nowait(h) or await asyncio.to_thread(src.read_block, h)
                if got is None:
                    self.stats["missing"] += 1
                    ended = True
                    yield transfer_pb2.PullServerMessage(end=transfer_pb2.PullEnd(
                        blocks_sent=sent_blocks, missing=f"block {h:016x} is not held here"))
                    return
                parent, data = got
                for p in split(h, parent, data, piece_max):
                    while credits <= 0:
                        msg = await anext(it, None)
                        if msg is None:  # cancelled, or half-closed with no credit left: it wants no more
                            return
                        if msg.WhichOneof("kind") == "credit":
                            credits += msg.credit.pieces
                    credits -= 1
                    if p.offset:  # the parent travels with a block's first piece only
                        p = replace(p, parent=None)
                    yield encode_piece(p)
                    sent_pieces += 1
                    self.stats["bytes"] += memoryview(p.data).nbytes
                    if self._after_piece is not None:
                        await self._after_piece(sent_pieces)
                sent_blocks += 1
            self.stats["blocks"] += sent_blocks
            ended = True
            yield transfer_pb2.PullServerMessage(end=transfer_pb2.PullEnd(blocks_sent=sent_blocks))
        finally:
            # The receiver went away: its stream ended, the task was cancelled, or grpc closed
            # this generator while it waited at a yield (GeneratorExit). All three land here.
            if not ended:
                self.stats["cancelled"] += 1


def _lease_blocks(src: BlockSource, hashes: list[int]) -> tuple[list, list, str]:
    blocks, views = [], []
    for h in hashes:
        got = src.lease_block(h)
        if got is None:
            return blocks, views, f"block {h:016x} is not held here, or no pool slot is free"
        parent, view, address = got
        views.append(view)
        blocks.append(transfer_pb2.LeasedBlock(hash=h, parent=parent, address=address, length=view.nbytes,
                                               checksum=block_checksum(view)))
    return blocks, views, ""


def _serialize(msg: transfer_pb2.PullServerMessage | bytes) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def add_transfer_service(service: TransferService, server: grpc.aio.Server) -> None:
    """Register `service` as `preble.v1.Transfer`, passing pre-encoded pieces through."""
    handlers = {
        "Pull": grpc.stream_stream_rpc_method_handler(
            service.Pull, request_deserializer=transfer_pb2.PullClientMessage.FromString,
            response_serializer=_serialize),
        "Lease": grpc.unary_unary_rpc_method_handler(
            service.Lease, request_deserializer=transfer_pb2.LeaseRequest.FromString,
            response_serializer=transfer_pb2.LeaseResponse.SerializeToString),
        "Release": grpc.unary_unary_rpc_method_handler(
            service.Release, request_deserializer=transfer_pb2.ReleaseRequest.FromString,
            response_serializer=transfer_pb2.ReleaseResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("preble.v1.Transfer", handlers),))
