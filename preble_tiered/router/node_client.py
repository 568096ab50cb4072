"""The router's one door to a node agent.

`NodeClient` is the port the router's jobs (dispatch, residency, load feed) and the prefix
admin use; `GrpcNodeClient` is the only router code that calls `preble.v1.Node`. Calls that
fail raise `NodeError` with the node's gRPC status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from preble_tiered.api import convert
from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
from preble_tiered.api.messages import DispatchOrder, NodeDone, NodeLoad, TokenChunk
from preble_tiered.api.pb import node_pb2, node_pb2_grpc
from preble_tiered.events import ResidencyEvent
from preble_tiered.types import NodeId, Tier


class NodeError(Exception):
    """A call to a node failed: its gRPC status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class EventStream(Protocol):
    """A node's residency batches after some sequence number: (seq, events), in order."""

    def __aiter__(self) -> AsyncIterator[tuple[int, list[ResidencyEvent]]]: ...

    def cancel(self) -> None:
        """End the stream (the iterating task sees asyncio.CancelledError)."""


class NodeClient(Protocol):
    address: str

    def submit(self, order: DispatchOrder, timeout_s: float | None = None) -> AsyncIterator[TokenChunk | NodeDone]:
        """Run `order` on the node: its token chunks, then one NodeDone. Closing the iterator
        early cancels the request on the node."""

    async def snapshot(self, timeout_s: float) -> tuple[int, list[ResidencyEvent]]:
        """(sequence number, events that rebuild the node's residency from empty)."""

    def events(self, after_seq: int) -> EventStream: ...

    async def load(self, timeout_s: float) -> NodeLoad: ...

    async def pin(self, owner: str, hashes: list[int], tier: Tier, timeout_s: float = 30.0) -> tuple[int, int]:
        """Make `owner` pin exactly `hashes` there: (blocks pinned, blocks missing)."""

    async def evict(self, hashes: list[int], tier: Tier | None, timeout_s: float = 30.0) -> tuple[int, int]:
        """Drop unpinned copies from DRAM/disk: (copies evicted, pinned copies kept)."""

    async def close(self) -> None: ...


class _GrpcEventStream:
    def __init__(self, call, node: NodeId) -> None:
        self._call = call
        self._node = node

    async def __aiter__(self):
        event_from_pb, node = convert.event_from_pb, self._node
        try:
            async for batch in self._call:
                yield batch.seq, [event_from_pb(ev, node) for ev in batch.events]
        except grpc.aio.AioRpcError as e:
            raise NodeError(e.code(), e.details() or "") from None

    def cancel(self) -> None:
        self._call.cancel()


class GrpcNodeClient:
    """`NodeClient` over one insecure gRPC channel (nodes sit on the cluster network)."""

    def __init__(self, node: NodeId, address: str) -> None:
        self.node = node
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = node_pb2_grpc.NodeStub(self._channel)

    async def submit(self, order: DispatchOrder, timeout_s: float | None = None):
        call = self._stub.Submit(convert.order_to_pb(order), timeout=timeout_s)
        try:
            async for resp in call:
                if resp.WhichOneof("kind") == "chunk":
                    yield TokenChunk(resp.chunk.token_ids, resp.chunk.text)
                else:
                    yield convert.done_from_pb(resp.done)
                    return
        except grpc.aio.AioRpcError as e:
            raise NodeError(e.code(), e.details() or "") from None
        finally:
            call.cancel()

    async def snapshot(self, timeout_s: float) -> tuple[int, list[ResidencyEvent]]:
        snap = await self._call(self._stub.Snapshot(node_pb2.SnapshotRequest(), timeout=timeout_s))
        return snap.seq, convert.snapshot_events(snap, self.node)

    def events(self, after_seq: int) -> EventStream:
        return _GrpcEventStream(self._stub.Events(node_pb2.EventsRequest(after_seq=after_seq)), self.node)

    async def load(self, timeout_s: float) -> NodeLoad:
        return convert.load_from_pb(await self._call(self._stub.Load(node_pb2.LoadRequest(), timeout=timeout_s)))

    async def pin(self, owner: str, hashes: list[int], tier: Tier, timeout_s: float = 30.0) -> tuple[int, int]:
        req = node_pb2.PinBlocksRequest(owner=owner, hashes=hashes, tier=convert.tier_to_pb(tier))
        resp = await self._call(self._stub.PinBlocks(req, timeout=timeout_s))
        return resp.pinned, len(resp.missing)

    async def evict(self, hashes: list[int], tier: Tier | None, timeout_s: float = 30.0) -> tuple[int, int]:
        req = node_pb2.EvictBlocksRequest(hashes=hashes, tier=convert.tier_to_pb(tier))
        resp = await self._call(self._stub.EvictBlocks(req, timeout=timeout_s))
        return resp.evicted, resp.pinned_kept

    async def close(self) -> None:
        await self._channel.close()

    @staticmethod
    async def _call(awaitable):
        try:
            return await awaitable
        except grpc.aio.AioRpcError as e:
            raise NodeError(e.code(), e.details() or "") from None
