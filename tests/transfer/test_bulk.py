"""Bulk pulls over the Mooncake Transfer Engine between two in-process KV stores on loopback:
leases, one-sided reads into the puller's block pool, verification, release on success and
on failure, and the fall back to the stream where the holder runs no transfer engine."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from preble_tiered.api.pb import transfer_pb2
from preble_tiered.transfer.bulk import BulkConfig, BulkEngine
from preble_tiered.transfer.bulk_puller import BulkUnavailable, pull_blocks_bulk
from preble_tiered.transfer.leases import LeaseTable
from preble_tiered.transfer.service import TransferService, add_transfer_service

from test_transfer import BLOCK, NS, data_of, make_rt, sink_into

pytest.importorskip("mooncake.engine", reason="the Mooncake Transfer Engine is not installed")


@pytest.fixture(scope="module")
def engines():
    a = BulkEngine.open("127.0.0.1", BulkConfig())
    b = BulkEngine.open("127.0.0.1", BulkConfig())
    assert a is not None and b is not None, "Mooncake is installed but did not start"
    yield a, b


def pooled_rt(blocks: int):
    rt, hashes = make_rt(blocks)
    rt.attach_pool(BLOCK)
    return rt, hashes


class Holder:
    """A Transfer server with a bulk engine over a runtime's store, on loopback."""

    def __init__(self, rt, bulk, service: TransferService | None = None) -> None:
        self.rt = rt
        self.service = service or TransferService(lambda: self.rt, bulk=bulk)

    async def __aenter__(self) -> "Holder":
        self.server = grpc.aio.server()
        add_transfer_service(self.service, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.server.stop(0)


def pull(holder_rt, dst, hashes, src_bulk, dst_bulk, service=None):
    async def go():
        async with Holder(holder_rt, src_bulk, service) as h:
            res = await pull_blocks_bulk(h.channel, dst_bulk, dst.pool, NS, hashes, sink_into(dst))
            return res, h.service
    return asyncio.run(go())


def test_bulk_pull_reads_a_chain_into_the_pool_verified_pinned_and_releases_the_lease(engines):
    src, hashes = pooled_rt(6)
    dst, _ = pooled_rt(0)
    res, service = pull(src, dst, hashes, *engines)
    assert res.complete and res.path == "mooncake" and res.stored == hashes and res.bytes == 6 * BLOCK
    for i, h in enumerate(hashes):
        block, _ = dst.store.get(dst.store.key(h))
        assert bytes(block.data) == data_of(h) and block.parent == (hashes[i - 1] if i else None)
        assert dst.pool.owns(block.data)  # read straight into a slot of the puller's pool
    assert dst.pulled["req"] == set(hashes)
    assert service.stats["released"] == 1 and service.leases.held_blocks == 0 and len(service.leases) == 0


def test_a_block_the_holder_lacks_ends_the_chain_there_and_the_lease_is_released(engines):
    src, hashes = pooled_rt(4)
    res, service = pull(src, pooled_rt(0)[0], hashes[:2] + [999] + hashes[2:], *engines)
    assert res.stored == hashes[:2] and "00000000000003e7 is not held" in res.error
    assert service.leases.held_blocks == 0 and service.stats["released"] == 1


class LyingHolder(TransferService):
    """Announces a wrong checksum for the third block."""

    async def Lease(self, request, context):
        resp = await super().Lease(request, context)
        resp.blocks[2].checksum ^= 1
        return resp


class DyingHolder(TransferService):
    """Its transfer engine goes away between the lease and the read (as when the process dies)."""

    async def Lease(self, request, context):
        resp = await super().Lease(request, context)
        self.bulk.close()
        return resp


def test_a_block_failing_its_checksum_is_not_stored_nor_anything_after_it(engines):
    src, hashes = pooled_rt(5)
    dst, _ = pooled_rt(0)
    service = LyingHolder(lambda: src, bulk=engines[0])
    res, _ = pull(src, dst, hashes, *engines, service=service)
    assert res.stored == hashes[:2] and "checksum" in res.error
    assert all(dst.store.get(dst.store.key(h)) is None for h in hashes[2:])
    assert service.leases.held_blocks == 0


def test_a_holder_gone_mid_pull_stores_nothing_and_its_lease_is_still_released(engines):
    src, hashes = pooled_rt(4)
    dst, _ = pooled_rt(0)
    dying = BulkEngine.open("127.0.0.1", BulkConfig())
    service = DyingHolder(lambda: src, bulk=dying)
    res, _ = pull(src, dst, hashes, dying, engines[1], service=service)
    assert res.stored == [] and "read" in res.error and not res.complete
    assert all(dst.store.get(dst.store.key(h)) is None for h in hashes)
    assert service.stats["released"] == 1 and service.leases.held_blocks == 0
    # the failed read's slots are kept out of use: a late write must not land in a reused slot
    assert dst.pool.in_use() == 4


class SwappingHolder(TransferService):
    """Answers the second and third blocks of the chain the other way round."""

    async def Lease(self, request, context):
        resp = await super().Lease(request, context)
        b1, b2 = transfer_pb2.LeasedBlock(), transfer_pb2.LeasedBlock()
        b1.CopyFrom(resp.blocks[1])
        b2.CopyFrom(resp.blocks[2])
        resp.blocks[1].CopyFrom(b2)
        resp.blocks[2].CopyFrom(b1)
        return resp


def test_a_holder_answering_other_blocks_than_asked_breaks_the_chain_there(engines):
    src, hashes = pooled_rt(4)
    dst, _ = pooled_rt(0)
    res, service = pull(src, dst, hashes, *engines, service=SwappingHolder(lambda: src, bulk=engines[0]))
    assert res.stored == hashes[:1] and "where another was asked" in res.error
    assert service.leases.held_blocks == 0


def test_the_puller_brings_what_the_bulk_path_did_not_over_the_stream(engines):
    from preble_tiered.api.pb import node_pb2
    from preble_tiered.node.metrics import NodeMetrics
    from preble_tiered.node.pulls import Puller

    src, hashes = pooled_rt(5)
    dst, _ = pooled_rt(0)
    metrics = NodeMetrics()

    async def go():
        async with Holder(src, engines[0], LyingHolder(lambda: src, bulk=engines[0])) as h:
            puller = Puller(dst, metrics, engines[1], window=4, timeout_s=10)
            await puller.pull("r", node_pb2.PullPlan(source_address=h.address, hashes=hashes))
            await puller.close()

    asyncio.run(go())
    assert dst.pulled["r"] == set(hashes)  # 2 over Mooncake, then 3 over the stream
    assert [bytes(dst.store.get(dst.store.key(h))[0].data) for h in hashes] == [data_of(h) for h in hashes]
    assert metrics.pulls.labels("complete", "mooncake+grpc")._value.get() == 1


def test_a_block_leased_from_disk_is_leased_from_its_promoted_dram_slot(tmp_path):
    from preble_tiered.kvstore.config import KVStoreConfig
    from preble_tiered.kvstore.base import StoredBlock
    from preble_tiered.node.kv_runtime import open_kv_runtime

    rt = open_kv_runtime(KVStoreConfig(dram_bytes=4 * BLOCK, disk_bytes=64 * BLOCK, disk_path=str(tmp_path)), 32, NS)
    rt.attach_pool(BLOCK)
    key = rt.store.key(7)
    assert rt.store.store_in_disk(StoredBlock(key, None, data_of(7)))
    parent, view, address = rt.lease_block(7)
    assert rt.pool.owns(view) and bytes(view) == data_of(7) and address == rt.pool.address_of(view)
    assert rt.store.dram.get(key).data.obj is view.obj  # the DRAM copy itself, not a second slot
    del view
    assert rt.pool.in_use() == 1  # only the DRAM tier's block
    rt.close()


def test_a_holder_without_a_transfer_engine_sends_the_puller_to_the_stream(engines):
    src, hashes = pooled_rt(2)
    with pytest.raises(BulkUnavailable, match="no transfer engine"):
        pull(src, pooled_rt(0)[0], hashes, None, engines[1])


def test_lease_requests_are_checked():
    src, hashes = pooled_rt(1)

    async def go(req):
        bulk = BulkEngine.open("127.0.0.1", BulkConfig())
        async with Holder(src, bulk) as h:
            call = h.channel.unary_unary("/preble.v1.Transfer/Lease",
                                         request_serializer=transfer_pb2.LeaseRequest.SerializeToString,
                                         response_deserializer=transfer_pb2.LeaseResponse.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(req)
            return e.value

    err = asyncio.run(go(transfer_pb2.LeaseRequest(namespace="other", hashes=hashes)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "another model" in err.details()
    err = asyncio.run(go(transfer_pb2.LeaseRequest(namespace=NS)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to" in err.details()


def test_leases_hold_their_slots_until_released_or_expired():
    src, hashes = pooled_rt(3)
    table = LeaseTable(ttl_s=10, max_blocks=4)
    leased = [src.lease_block(h) for h in hashes]
    assert all(src.pool.owns(view) for _, view, _ in leased)
    a = table.add([view for _, view, _ in leased[:2]], now=0)
    b = table.add([leased[2][1]], now=5)
    del leased
    assert table.held_blocks == 3 and table.room() == 1
    for h in hashes:  # evicted from DRAM, the leased bytes stay put
        src.store.dram.remove(src.store.key(h))
    assert src.pool.in_use() == 3
    assert table.release(a) and not table.release(a)
    assert src.pool.in_use() == 1
    assert table.sweep(now=14) == 0 and table.sweep(now=15) == 1 and table.expired == 1
    assert src.pool.in_use() == 0 and table.held_blocks == 0 and not table.release(b)


def test_a_chain_longer_than_a_chunk_arrives_whole_in_order_over_several_leases(engines):
    src, hashes = pooled_rt(7)
    dst, _ = pooled_rt(0)

    async def go():
        async with Holder(src, engines[0]) as h:
            res = await pull_blocks_bulk(h.channel, engines[1], dst.pool, NS, hashes, sink_into(dst), chunk_blocks=3)
            return res, h.service

    res, service = asyncio.run(go())
    assert res.complete and res.stored == hashes
    assert [bytes(dst.store.get(dst.store.key(h))[0].data) for h in hashes] == [data_of(h) for h in hashes]
    assert service.stats["released"] == 3 and service.leases.held_blocks == 0


def test_a_missing_block_in_a_later_chunk_keeps_the_chunks_before_it(engines):
    src, hashes = pooled_rt(7)
    dst, _ = pooled_rt(0)
    want = hashes[:5] + [999] + hashes[5:]

    async def go():
        async with Holder(src, engines[0]) as h:
            res = await pull_blocks_bulk(h.channel, engines[1], dst.pool, NS, want, sink_into(dst), chunk_blocks=2)
            return res, h.service

    res, service = asyncio.run(go())
    assert res.stored == hashes[:5] and "is not held" in res.error
    assert service.leases.held_blocks == 0 and service.stats["released"] == 3  # 2 + 2 + the short third


def test_a_read_larger_than_the_in_flight_window_arrives_whole(engines, monkeypatch):
    """One chunk of 7 blocks read through a window of 2 blocks in flight at a time."""
    import preble_tiered.transfer.bulk as bulk_mod

    monkeypatch.setattr(bulk_mod, "MAX_INFLIGHT_BYTES", 2 * BLOCK)
    src, hashes = pooled_rt(7)
    dst, _ = pooled_rt(0)
    res, service = pull(src, dst, hashes, *engines)
    assert res.complete and res.stored == hashes
    assert [bytes(dst.store.get(dst.store.key(h))[0].data) for h in hashes] == [data_of(h) for h in hashes]
    assert service.leases.held_blocks == 0
