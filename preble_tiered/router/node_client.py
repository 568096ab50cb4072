"""The router's one door to a node agent.

`NodeClient` is the port the router's jobs (dispatch, residency, load feed) and the prefix
admin use; `GrpcNodeClient` is the only router code that calls `preble.v1.Node`. Calls that
fail raise `NodeError` with the node's gRPC status.

Requests share one `Serve` stream per node (`ServeStream`): submits and cancels go out on
it, and the node answers with one batch per engine step, which the stream's reader hands
item by item to each request's queue. A broken stream fails every request on it with the
stream's status (the dispatcher re-routes them); the next submit opens a new one.
"""

from __future__ import annotations

import asyncio
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


_STATUS = {c.value[0]: c for c in grpc.StatusCode}


class ServeStream:
    """One `Node.Serve` call: requests out through a queue (one writer), batches in."""

    def __init__(self, stub: node_pb2_grpc.NodeStub) -> None:
        self._out: asyncio.Queue[node_pb2.ServeRequest | None] = asyncio.Queue()
        self._queues: dict[str, asyncio.Queue] = {}
        self.error: NodeError | None = None
        self._call = stub.Serve(self._requests())
        self._reader = asyncio.create_task(self._read())

    async def _requests(self):
        while (req := await self._out.get()) is not None:
            yield req

    async def _read(self) -> None:
        queues = self._queues
        try:
            async for batch in self._call:
                for item in batch.items:
                    q = queues.get(item.request_id)
                    if q is not None:
                        q.put_nowait(item)
            err = NodeError(grpc.StatusCode.UNAVAILABLE, "the node ended the request stream")
        except grpc.aio.AioRpcError as e:
            err = NodeError(e.code(), e.details() or "")
        except asyncio.CancelledError:
            err = NodeError(grpc.StatusCode.CANCELLED, "the router closed the request stream")
        self.error = err
        for q in queues.values():
            q.put_nowait(err)

    def open(self, order: DispatchOrder) -> asyncio.Queue:
        """Send `order`; its items (or the stream's NodeError) arrive on the returned queue."""
        rid = order.request_id
        if rid in self._queues:
            raise NodeError(grpc.StatusCode.ALREADY_EXISTS, f"request {rid!r} is already running on this node")
        msg = node_pb2.ServeRequest(submit=convert.order_to_pb(order))  # a bad order fails unregistered
        q = self._queues[rid] = asyncio.Queue()
        self._out.put_nowait(msg)
        return q

    def close_request(self, rid: str, cancel: bool) -> None:
        self._queues.pop(rid, None)
        if cancel and self.error is None:
            self._out.put_nowait(node_pb2.ServeRequest(cancel=rid))

    async def close(self) -> None:
        self._out.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()


class GrpcNodeClient:
    """`NodeClient` over one insecure gRPC channel (nodes sit on the cluster network)."""

    def __init__(self, node: NodeId, address: str) -> None:
        self.node = node
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = node_pb2_grpc.NodeStub(self._channel)
        self._serve: ServeStream | None = None

    def _stream(self) -> ServeStream:
        if self._serve is None or self._serve.error is not None:
            self._serve = ServeStream(self._stub)
        return self._serve

    async def submit(self, order: DispatchOrder, timeout_s: float | None = None):
        stream = self._stream()
        q = stream.open(order)
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        ended = False
        try:
            while True:
                if deadline is None:
                    item = await q.get()
                else:
                    try:
                        item = await asyncio.wait_for(q.get(), deadline - asyncio.get_running_loop().time())
                    except TimeoutError:
                        raise NodeError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"no result within {timeout_s:g} s") from None
                if isinstance(item, NodeError):
                    ended = True
                    raise item
                kind = item.WhichOneof("kind")
                if kind == "chunk":
                    yield TokenChunk(item.chunk.token_ids, item.chunk.text)
                    continue
                ended = True
                if kind == "done":
                    yield convert.done_from_pb(item.done)
                    return
                raise NodeError(_STATUS.get(item.error.code, grpc.StatusCode.UNKNOWN), item.error.message)
        finally:
            stream.close_request(order.request_id, cancel=not ended)

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
        if self._serve is not None:
            await self._serve.close()
        await self._channel.close()

    @staticmethod
    async def _call(awaitable):
        try:
            return await awaitable
        except grpc.aio.AioRpcError as e:
            raise NodeError(e.code(), e.details() or "") from None
