"""Node <-> node block pulls: framing, the bandwidth meter, and real gRPC pulls on loopback
between two in-process KV stores (flow control, cancellation, a dying or lying sender)."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from preble_tiered.hashing import BlockHasher
from preble_tiered.kvstore.base import StoredBlock
from preble_tiered.node.kv_runtime import NodeKVRuntime
from preble_tiered.kvstore.store import TieredStore
from preble_tiered.kvstore.dram import DramTier
from preble_tiered.scheduler.cost_model import engine_cost_model
from preble_tiered.api.pb import transfer_pb2, transfer_pb2_grpc
from preble_tiered.transfer.framing import (Assembler, Piece, TransferError, block_checksum, decode_piece, encode_piece,
                                            split)
from preble_tiered.transfer.meter import BandwidthMeter
from preble_tiered.transfer.puller import pull_blocks
from preble_tiered.transfer.service import TransferService, add_transfer_service
from preble_tiered.types import Tier

NS = "tiny"
BLOCK = 300_000  # bytes: 3 pieces at 128 KiB


def make_rt(blocks: int = 0, dram_bytes: int = 64 << 20) -> tuple[NodeKVRuntime, list[int]]:
    rt = NodeKVRuntime(TieredStore(DramTier(dram_bytes), namespace=NS), BlockHasher(32),
                       engine_cost_model("t", 8192, 1 << 16))
    hashes = [1000 + i for i in range(blocks)]
    for i, h in enumerate(hashes):
        rt.store.put(StoredBlock(rt.store.key(h), hashes[i - 1] if i else None, data_of(h)))
    return rt, hashes


def data_of(h: int) -> bytes:
    return bytes((h * 7 + i) % 251 for i in range(BLOCK))


class Peer:
    """A Transfer server over a runtime's store, on loopback."""

    def __init__(self, rt: NodeKVRuntime | None, after_piece=None, servicer=None) -> None:
        self.rt = rt
        self.service = servicer or TransferService(lambda: self.rt, after_piece)
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def __aenter__(self) -> "Peer":
        self.server = grpc.aio.server()
        add_transfer_service(self.service, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(self.address)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.server.stop(0)


async def wait_cancelled(service: TransferService, timeout_s: float = 10.0) -> None:
    """Give the sender's loop time to see a cancellation (it counts it in `stats`)."""
    for _ in range(int(timeout_s / 0.02)):
        if service.stats["cancelled"]:
            return
        await asyncio.sleep(0.02)


def sink_into(rt: NodeKVRuntime, rid: str = "req"):
    async def sink(block) -> bool:
        return rt.store_pulled(rid, block)
    return sink


# ---------------------------------------------------------------- framing
def test_split_and_assemble_round_trip_multi_and_single_piece():
    blocks = [(11, None, os.urandom(1000)), (12, 11, os.urandom(10)), (13, 12, b"")]
    asm = Assembler([11, 12, 13])
    got = []
    for h, parent, data in blocks:
        pieces = list(split(h, parent, data, 300))
        assert len(pieces) == max(1, -(-len(data) // 300))
        for p in pieces:
            b = asm.feed(p)
            if b is not None:
                got.append(b)
    assert [(b.block_hash, b.parent, b.data) for b in got] == blocks
    assert asm.complete_blocks == 3


def test_assembler_rejects_corruption_reordering_and_strangers():
    data = os.urandom(1000)
    pieces = list(split(5, None, data, 400))
    bad = Piece(5, None, 1000, 800, b"\0" * 200, pieces[2].checksum)
    asm = Assembler([5])
    assert asm.feed(pieces[0]) is None and asm.feed(pieces[1]) is None
    with pytest.raises(TransferError, match="checksum"):
        asm.feed(bad)
    with pytest.raises(TransferError, match="expected block"):
        Assembler([5]).feed(Piece(6, None, 3, 0, b"abc", block_checksum(b"abc")))
    with pytest.raises(TransferError, match="offset"):
        Assembler([5]).feed(pieces[1])
    asm = Assembler([5])
    asm.feed(pieces[0])
    with pytest.raises(TransferError, match="does not continue"):
        asm.feed(pieces[2])  # skips a piece
    with pytest.raises(TransferError, match="claims"):
        Assembler([5]).feed(Piece(5, None, 1 << 40, 0, b"x", 0))
    with pytest.raises(TransferError, match="after all"):
        a = Assembler([])
        a.feed(pieces[0])


def test_partial_block_is_never_returned():
    pieces = list(split(9, None, os.urandom(1000), 300))
    asm = Assembler([9])
    assert [asm.feed(p) for p in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert asm.complete_blocks == 0 and asm.partial_bytes == 900


@pytest.mark.parametrize("piece", [
    Piece(0xFEDCBA9876543210, 7, 300_000, 131072, os.urandom(1000), 0x0123456789ABCDEF),
    Piece(5, None, 3, 0, b"abc", 99),  # no parent, offset 0 (omitted on the wire)
    Piece(0, 0, 0, 0, b"", 0),  # every default: only the parent's presence is written
    Piece(1, None, 1 << 40, (1 << 40) - 1, b"\x00" * 200, 1 << 63),  # long varints
])
def test_piece_codec_writes_what_protobuf_writes_and_reads_it_back(piece):
    pb = transfer_pb2.BlockPiece(hash=piece.block_hash, total_bytes=piece.total_bytes, offset=piece.offset,
                                 data=bytes(piece.data), checksum=piece.checksum)
    if piece.parent is not None:
        pb.parent = piece.parent
    wire = transfer_pb2.PullServerMessage(piece=pb).SerializeToString()
    assert encode_piece(piece) == wire
    got = decode_piece(wire)
    assert got == piece and isinstance(got.data, memoryview)


def test_piece_decoder_skips_unknown_fields_and_refuses_broken_bytes():
    piece = Piece(5, 4, 3, 0, b"abc", 99)
    wire = encode_piece(piece)
    inner = wire[2:] + b"\x38\x96\x01" + b"\x45abcd" + b"\x52\x02zz"  # fields 7 (varint), 8 (fixed32), 10 (bytes)
    extended = b"\x0a" + bytes([len(inner)]) + inner
    assert transfer_pb2.PullServerMessage.FromString(extended).piece.data == b"abc"  # protobuf agrees it is valid
    assert decode_piece(extended) == piece
    end = transfer_pb2.PullServerMessage(end=transfer_pb2.PullEnd(blocks_sent=3)).SerializeToString()
    assert decode_piece(end) is None and decode_piece(b"") is None  # not a piece: protobuf's job
    # A length prefix that does not cover the message exactly: left to protobuf, which refuses it.
    assert decode_piece(wire[:-3]) is None
    with pytest.raises(Exception):
        transfer_pb2.PullServerMessage.FromString(wire[:-3])
    # A well-framed message whose fields are broken: refused here.
    for broken in (b"\x0a\x04\x2a\x05ab",  # bytes field longer than the message
                   b"\x0a\x05\x09abcd",  # truncated fixed64
                   b"\x0a\x02\x0b\x00",  # a group (wire type 3): never in this proto
                   b"\x0a\x0b\x18" + b"\xff" * 10):  # a varint that never ends
        with pytest.raises(TransferError):
            decode_piece(broken)


# ---------------------------------------------------------------- meter
def test_meter_ewma_and_small_transfers_ignored():
    m = BandwidthMeter(alpha=0.5, min_bytes=1000)
    assert m.rate("net:a") is None
    m.observe("net:a", 10_000, 1.0)
    m.observe("net:a", 500, 0.0001)  # too small: latency, not bandwidth
    assert m.rate("net:a") == 10_000
    m.observe("net:a", 30_000, 1.0)
    assert m.rate("net:a") == 20_000
    assert m.rates()["net:a"].samples == 2
    with pytest.raises(ValueError):
        BandwidthMeter(alpha=0)


# ---------------------------------------------------------------- pulls over gRPC
def test_pull_copies_a_chain_pinned_and_verified():
    src, hashes = make_rt(6)
    dst, _ = make_rt(0)

    async def go():
        async with Peer(src) as peer:
            return await pull_blocks(peer.channel, NS, hashes, sink_into(dst), window=2, piece_bytes=128 << 10)

    res = asyncio.run(go())
    assert res.complete and res.stored == hashes and res.bytes == 6 * BLOCK
    for i, h in enumerate(hashes):
        got = dst.store.get(dst.store.key(h))
        assert got is not None and bytes(got[0].data) == data_of(h)
        assert got[0].parent == (hashes[i - 1] if i else None)
        assert dst.store.dram.stats()["pinned"] >= 1
    assert dst.pulled["req"] == set(hashes)
    with pytest.raises(RuntimeError):  # pinned: cannot be removed until released
        dst.store.dram.remove(dst.store.key(hashes[0]))
    dst.release_pulled("req")
    assert dst.store.dram.remove(dst.store.key(hashes[0]))
    assert not dst.pulled


def test_sender_never_runs_ahead_of_credits_and_stops_when_cancelled():
    src, hashes = make_rt(4)

    async def go():
        async with Peer(src) as peer:
            q: asyncio.Queue = asyncio.Queue()
            q.put_nowait(transfer_pb2.PullClientMessage(open=transfer_pb2.PullOpen(
                namespace=NS, hashes=hashes, max_piece_bytes=128 << 10, window=2)))

            async def reqs():
                while (m := await q.get()) is not None:
                    yield m

            call = transfer_pb2_grpc.TransferStub(peer.channel).Pull(reqs())
            first = [await call.read(), await call.read()]
            pending = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({pending}, timeout=0.5)
            assert not done  # no credit granted: nothing more comes
            sent_before = peer.service.stats["bytes"]
            q.put_nowait(transfer_pb2.PullClientMessage(credit=transfer_pb2.Credit(pieces=1)))
            third = await asyncio.wait_for(pending, 5)
            call.cancel()
            await wait_cancelled(peer.service)
            return first, third, sent_before, dict(peer.service.stats)

    first, third, sent_before, stats = asyncio.run(go())
    assert [m.piece.offset for m in first] == [0, 128 << 10] and third.piece.offset == 256 << 10
    assert sent_before == 256 << 10  # exactly the window's two pieces
    assert stats["cancelled"] == 1 and stats.get("blocks", 0) == 0


def test_missing_block_stops_the_pull_after_the_blocks_before_it():
    src, hashes = make_rt(5)
    src.store.dram.remove(src.store.key(hashes[3]))
    dst, _ = make_rt(0)

    async def go():
        async with Peer(src) as peer:
            return await pull_blocks(peer.channel, NS, hashes, sink_into(dst))

    res = asyncio.run(go())
    assert res.stored == hashes[:3] and not res.complete and "not held" in res.error
    assert dst.missing(hashes) == hashes[3:]


def test_sender_dying_mid_block_leaves_only_whole_blocks():
    src, hashes = make_rt(4)
    dst, _ = make_rt(0)

    async def go():
        async with Peer(src) as peer:
            async def die(sent: int) -> None:
                if sent == 7:  # block 0,1: 6 pieces; then 1 piece into block 2
                    asyncio.get_running_loop().create_task(peer.server.stop(0))
                    await asyncio.sleep(5)
            peer.service._after_piece = die
            return await pull_blocks(peer.channel, NS, hashes, sink_into(dst), window=8, piece_bytes=128 << 10)

    res = asyncio.run(go())
    assert not res.complete and res.error
    assert res.stored == hashes[:2]
    assert dst.missing(hashes) == hashes[2:]  # the half-received block was never stored


class LyingSender(transfer_pb2_grpc.TransferServicer):
    """Sends block 0 intact and block 1 with one flipped byte."""

    async def Pull(self, request_iterator, context):
        op = (await anext(request_iterator.__aiter__())).open
        for i, h in enumerate(op.hashes[:2]):
            data = bytearray(data_of(h))
            csum = block_checksum(bytes(data))
            if i == 1:
                data[100] ^= 1
            yield transfer_pb2.PullServerMessage(piece=transfer_pb2.BlockPiece(
                hash=h, total_bytes=len(data), offset=0, data=bytes(data), checksum=csum))


def test_corrupted_block_is_rejected_and_not_stored():
    _, hashes = make_rt(3)
    dst, _ = make_rt(0)

    async def go():
        async with Peer(None, servicer=LyingSender()) as peer:
            return await pull_blocks(peer.channel, NS, hashes, sink_into(dst))

    res = asyncio.run(go())
    assert res.stored == hashes[:1] and "checksum" in res.error
    assert dst.missing(hashes) == hashes[1:]


def test_caller_cancelling_the_pull_stops_the_sender():
    src, hashes = make_rt(8)
    dst, _ = make_rt(0)

    async def go():
        async with Peer(src) as peer:
            started = asyncio.Event()

            async def slow_sink(block) -> bool:
                started.set()
                await asyncio.sleep(10)
                return True

            task = asyncio.create_task(pull_blocks(peer.channel, NS, hashes, slow_sink, window=2))
            await asyncio.wait_for(started.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_cancelled(peer.service)
            return dict(peer.service.stats)

    stats = asyncio.run(go())
    assert stats["cancelled"] == 1 and stats["bytes"] <= 3 * BLOCK  # window 2 (+ the one being read)


@pytest.mark.parametrize("open_msg, code, text", [
    (None, grpc.StatusCode.INVALID_ARGUMENT, "PullOpen"),
    (transfer_pb2.PullOpen(namespace="other", hashes=[1], window=1), grpc.StatusCode.FAILED_PRECONDITION, "namespace"),
    (transfer_pb2.PullOpen(namespace=NS, hashes=[], window=1), grpc.StatusCode.INVALID_ARGUMENT, "blocks"),
    (transfer_pb2.PullOpen(namespace=NS, hashes=[1], window=0), grpc.StatusCode.INVALID_ARGUMENT, "window"),
    (transfer_pb2.PullOpen(namespace=NS, hashes=[1], window=1, max_piece_bytes=10), grpc.StatusCode.INVALID_ARGUMENT,
     "max_piece_bytes"),
])
def test_bad_pull_requests_are_refused(open_msg, code, text):
    src, _ = make_rt(1)

    async def go():
        async with Peer(src) as peer:
            msgs = [transfer_pb2.PullClientMessage(credit=transfer_pb2.Credit(pieces=1))] if open_msg is None else \
                [transfer_pb2.PullClientMessage(open=open_msg)]
            call = transfer_pb2_grpc.TransferStub(peer.channel).Pull(iter(msgs))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                async for _ in call:
                    pass
            return ei.value

    err = asyncio.run(go())
    assert err.code() == code and text in err.details()


def test_node_without_a_store_refuses_pulls():
    async def go():
        async with Peer(None) as peer:
            res = await pull_blocks(peer.channel, NS, [1, 2], sink_into(make_rt(0)[0]))
            return res

    res = asyncio.run(go())
    assert res.stored == [] and "FAILED_PRECONDITION" in res.error


def test_measured_tier_rates_reprice_loads():
    rt, _ = make_rt(0)
    before = rt.cost.fetch_s(Tier.DRAM, 3200)
    rt.meter.observe("dram", 10 << 20, 1.0)  # 10 MiB/s: far slower than the 25 GB/s preset
    rt.refresh_links()
    after = rt.cost.fetch_s(Tier.DRAM, 3200)
    assert after > 100 * before
    assert not rt.worth_loading([Tier.DRAM] * 100, 0)  # now dearer than recomputing 3200 tokens
