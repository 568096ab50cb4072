"""The receiving side of a bulk pull: lease the blocks on gRPC, read them with the transfer
engine straight into free slots of this node's registered block pool, verify each, release.

The same guarantees as the stream (`puller.py`): blocks reach the sink in chain order, whole
and verified; a failed read, a checksum mismatch or a dead holder stops the pull there and
the rest is recomputed; and the lease is released whatever happened (the holder also drops
it at its deadline if this node dies first). The holder must answer exactly the chain asked
for, in order. Slots a failed read may still write into late are not reused for minutes
(`BulkEngine.quarantine`). `BulkUnavailable` means the holder has no
transfer engine (or no pool yet): pull over the stream instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import grpc

from preble_tiered.api.pb import transfer_pb2
from preble_tiered.transfer.bulk import BulkEngine
from preble_tiered.transfer.framing import Block, block_checksum
from preble_tiered.transfer.puller import PullResult

LEASE_METHOD = "/preble.v1.Transfer/Lease"
RELEASE_METHOD = "/preble.v1.Transfer/Release"


class BulkUnavailable(Exception):
    """The holder cannot serve this pull over the transfer engine; use the stream."""


class SlotPool(Protocol):
    slot_bytes: int

    def take(self) -> tuple[int, memoryview] | None:
        """A free slot: (address, read-only view), or None when every slot is held."""
        ...

    def region(self) -> tuple[int, int]:
        """(address, length) of all the slots."""
        ...


CHUNK_BYTES = 16 << 20
"""Bytes per lease and read (64 of the tiny model's 256 KiB blocks): chunk k+1 is leased and
read while chunk k is verified and stored. Two chunks in flight stay well inside the block
pool's headroom of free slots (16-256 slots beyond the DRAM tier's blocks), so a pull into a
full DRAM tier still finds slots. On 2 cores, 64-256 blocks per chunk measured within noise
of each other and one lease for the whole chain 8% slower (`benchmarks/tiers_bandwidth.py`'s
pull, 512 MiB)."""
MAX_CHUNK_BLOCKS = 64

_releasing: set[asyncio.Task] = set()  # releases in flight (kept referenced until done)


async def pull_blocks_bulk(channel: grpc.aio.Channel, bulk: BulkEngine, pool: SlotPool, namespace: str,
                           hashes: Sequence[int], sink: Callable[[Block], Awaitable[bool]], *,
                           timeout_s: float = 30.0, chunk_blocks: int | None = None) -> PullResult:
    """Pull `hashes` (one chain, in order) from the holder behind `channel`.

    Raises:
        BulkUnavailable: the holder answered that it has no transfer engine or pool, or this
            node's pool cannot be registered; nothing was pulled.
    """
    res = PullResult(len(hashes), path="mooncake")
    if not hashes:
        return res
    if not bulk.register(*pool.region()):
        raise BulkUnavailable("this node's block pool could not be registered")
    chunk_blocks = chunk_blocks or max(1, min(MAX_CHUNK_BLOCKS, CHUNK_BYTES // pool.slot_bytes))
    t0 = time.perf_counter()
    lease = channel.unary_unary(LEASE_METHOD, request_serializer=transfer_pb2.LeaseRequest.SerializeToString,
                                response_deserializer=transfer_pb2.LeaseResponse.FromString)

    def ask(chunk: Sequence[int]):
        return asyncio.ensure_future(lease(transfer_pb2.LeaseRequest(namespace=namespace, hashes=list(chunk)),
                                           timeout=timeout_s))

    chunks = [hashes[i:i + chunk_blocks] for i in range(0, len(hashes), chunk_blocks)]
    leased: list[int] = []
    asked = ask(chunks[0])
    reading: _Read | None = None  # the chunk whose read is in flight
    broken = False
    try:
        for k in range(len(chunks)):
            try:
                resp = await asyncio.shield(asked)  # cancelled here, the lease is still released
            except grpc.aio.AioRpcError as e:
                asked = None
                if k == 0 and e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                    raise BulkUnavailable(e.details()) from None
                res.error = f"{e.code().name}: {e.details()}"
                break
            asked = None
            if resp.lease_id:
                leased.append(resp.lease_id)
            nxt = _Read.start(bulk, pool, resp, chunks[k], res)
            short = len(nxt.blocks) < len(chunks[k])
            if short and res.error is None:
                res.error = resp.missing or f"the holder leased {len(resp.blocks)} of {len(chunks[k])} blocks"
            if k + 1 < len(chunks) and not short:
                asked = ask(chunks[k + 1])  # leased while this chunk is read and the last one stored
            done, reading = reading, nxt
            if done is not None and not await done.finish(bulk, sink, res):
                broken = True  # nothing after a broken link of the chain may be used
                break
            if short:
                break
        if reading is not None and not broken:
            done, reading = reading, None
            await done.finish(bulk, sink, res)
    finally:
        if asked is not None:  # a lease asked for and not used: release it once granted
            asked.add_done_callback(lambda f: _release_later(channel, f))
        if reading is not None:
            reading.abandon(bulk)
        await asyncio.gather(*(_release(channel, i) for i in leased))
        res.seconds = time.perf_counter() - t0
    if res.error is None and len(res.stored) < res.requested:
        res.error = f"the holder sent {len(res.stored)} of {res.requested} blocks"
    return res


def _release_later(channel: grpc.aio.Channel, granted: asyncio.Future) -> None:
    if granted.cancelled() or granted.exception() is not None or not granted.result().lease_id:
        return
    task = asyncio.ensure_future(_release(channel, granted.result().lease_id))
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


class _Read:
    """One leased chunk: its slots, the read in its thread, then verify and hand on."""

    def __init__(self, blocks, slots, future) -> None:
        self.blocks = blocks
        self.slots = slots
        self.future = future

    @classmethod
    def start(cls, bulk: BulkEngine, pool: SlotPool, resp: transfer_pb2.LeaseResponse, asked: Sequence[int],
              res: PullResult) -> "_Read":
        slots: list[tuple[int, memoryview]] = []
        for i, b in enumerate(resp.blocks):
            if i >= len(asked) or b.hash != asked[i]:  # the chain as asked, in order, nothing else
                res.error = res.error or f"the holder answered block {b.hash:016x} where another was asked"
                break
            slot = pool.take()
            if slot is None:
                res.error = res.error or "every slot of this node's block pool is held"
                break
            if slot[1].nbytes != b.length:
                res.error = res.error or f"block {b.hash:016x} has {b.length} bytes, this node's {slot[1].nbytes}"
                break
            slots.append(slot)
        blocks = resp.blocks[:len(slots)]
        future = None
        if blocks:
            future = asyncio.get_running_loop().run_in_executor(
                None, bulk.read, resp.session, [a for a, _ in slots], [b.address for b in blocks],
                [b.length for b in blocks])
        return cls(blocks, slots, future)

    async def finish(self, bulk: BulkEngine, sink: Callable[[Block], Awaitable[bool]], res: PullResult) -> bool:
        """Wait for the read, then verify and hand on its blocks in order; False once the
        chain is broken (nothing after it may be used)."""
        if self.future is None:  # nothing was read (no block, or no slot for the first)
            return True
        try:
            arrived = await asyncio.shield(self.future)
        except asyncio.CancelledError:
            self.abandon(bulk)
            raise
        except Exception:
            bulk.quarantine(self.slots)
            raise
        if arrived < len(self.blocks):  # blocks after a stop may still land: keep their slots out of use
            bulk.quarantine(self.slots[arrived:])
        for (_, view), b in zip(self.slots[:arrived], self.blocks[:arrived]):
            if block_checksum(view) != b.checksum:
                res.error = f"block {b.hash:016x} failed its checksum"
                return False
            if not await sink(Block(b.hash, b.parent if b.HasField("parent") else None, view)):
                res.error = f"could not store block {b.hash:016x} locally"
                return False
            res.stored.append(b.hash)
            res.bytes += b.length
        if arrived < len(self.blocks):
            res.error = res.error or f"transfer-engine read failed after {len(res.stored)} blocks"
            return False
        return True

    def abandon(self, bulk: BulkEngine) -> None:
        """The read may still be writing into the slots: hold them until it ends, and longer
        if it failed."""
        if self.future is None or self.future.done():
            return
        slots = self.slots

        def ended(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None or f.result() < len(slots):
                bulk.quarantine(slots)
        self.future.add_done_callback(ended)


async def _release(channel: grpc.aio.Channel, lease_id: int) -> None:
    release = channel.unary_unary(RELEASE_METHOD, request_serializer=transfer_pb2.ReleaseRequest.SerializeToString,
                                  response_deserializer=transfer_pb2.ReleaseResponse.FromString)
    try:
        await release(transfer_pb2.ReleaseRequest(lease_id=lease_id), timeout=5.0)
    except grpc.aio.AioRpcError:
        pass  # the holder is gone, or drops the lease at its deadline
