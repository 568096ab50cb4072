"""A node's pulls of KV blocks from other nodes: over the bulk transfer engine (Mooncake)
where both nodes run one, else over the `Transfer.Pull` stream. Whatever did not arrive is
recomputed by the engine; a pull never fails a request."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
from preble_tiered.api.pb import node_pb2
from preble_tiered.node.kv_runtime import NodeKVRuntime
from preble_tiered.node.metrics import NodeMetrics
from preble_tiered.transfer.bulk import BulkEngine
from preble_tiered.transfer.bulk_puller import BulkUnavailable, pull_blocks_bulk
from preble_tiered.transfer.puller import PullResult, pull_blocks

logger = logging.getLogger(__name__)

STREAM_ONLY_S = 60.0
"""A peer that answered it runs no transfer engine is pulled from over the stream this long
before the bulk path is tried again (it may have restarted with one)."""


class Puller:
    """Args:
        address: this node's own address (a plan naming it pulls nothing).
        bulk: this node's transfer engine, or None for the stream only.
        window: pieces a peer may send ahead of our credits on the stream.
        timeout_s: a pull taking longer is cut off.
    """

    def __init__(self, kv: NodeKVRuntime | None, metrics: NodeMetrics, bulk: BulkEngine | None,
                 window: int, timeout_s: float) -> None:
        self.kv = kv
        self.metrics = metrics
        self.bulk = bulk
        self.address = ""
        self._window = window
        self._timeout_s = timeout_s
        self._peers: dict[str, grpc.aio.Channel] = {}
        self._stream_only: dict[str, float] = {}  # peer -> until when it is pulled from over the stream

    async def pull(self, rid: str, plan: node_pb2.PullPlan) -> None:
        """Pull the plan's blocks this node lacks into DRAM (pinned for `rid`)."""
        rt = self.kv
        want = rt.missing(list(plan.hashes))
        if not want or plan.source_address == self.address:
            return
        ch = self._peers.get(plan.source_address)
        if ch is None:
            ch = self._peers[plan.source_address] = grpc.aio.insecure_channel(plan.source_address,
                                                                             options=CHANNEL_OPTIONS)

        async def sink(block) -> bool:  # inline when the store is free, else off the loop
            done = rt.store_pulled(rid, block, blocking=False)
            return done if done is not None else await asyncio.to_thread(rt.store_pulled, rid, block)

        res = await self._pull_bulk(ch, plan.source_address, want, sink)
        if res is None:
            res = await pull_blocks(ch, rt.namespace, want, sink, window=self._window, timeout_s=self._timeout_s)
        elif not res.complete:  # what the bulk path did not bring (no free slot, a failed read): the stream
            logger.info("request %s: bulk pull from %s stopped after %d of %d blocks (%s); the rest over the "
                        "gRPC stream", rid, plan.source_address, len(res.stored), len(want), res.error)
            rest = await pull_blocks(ch, rt.namespace, want[len(res.stored):], sink, window=self._window,
                                     timeout_s=self._timeout_s)
            res = PullResult(len(want), res.stored + rest.stored, res.bytes + rest.bytes, res.seconds + rest.seconds,
                             rest.error, path="mooncake+grpc")
        rt.observe_pull(plan.source_address, res.bytes, res.seconds)
        self.metrics.pulled_bytes.inc(res.bytes)
        result = "complete" if res.complete else ("partial" if res.stored else "failed")
        self.metrics.pulls.labels(result, res.path).inc()
        if not res.complete:
            logger.warning("request %s: pulled %d of %d blocks from %s over %s (%s); recomputing the rest", rid,
                           len(res.stored), len(want), plan.source_name or plan.source_address, res.path, res.error)

    async def _pull_bulk(self, ch, source: str, want: list[int], sink) -> PullResult | None:
        """The bulk pull, or None where the stream must do it all."""
        pool = self.kv.pool
        if self.bulk is None or pool is None or self._stream_only.get(source, 0.0) > time.monotonic():
            return None
        t0 = time.perf_counter()
        stored: list[int] = []
        nbytes = 0

        async def counted(block) -> bool:  # what arrived, should the pull end in an exception
            nonlocal nbytes
            ok = await sink(block)
            if ok:
                stored.append(block.block_hash)
                nbytes += memoryview(block.data).nbytes
            return ok

        try:
            return await asyncio.wait_for(pull_blocks_bulk(ch, self.bulk, pool, self.kv.namespace, want, counted,
                                                           timeout_s=self._timeout_s), self._timeout_s)
        except BulkUnavailable as e:
            logger.info("peer %s: no bulk pulls (%s); using the gRPC stream for %.0f s", source, e, STREAM_ONLY_S)
            self._stream_only[source] = time.monotonic() + STREAM_ONLY_S
            return None
        except Exception as e:  # a timeout, or the transfer engine failing: what arrived stays, the rest streams
            logger.warning("bulk pull from %s failed (%s: %s)", source, type(e).__name__, e)
            return PullResult(len(want), stored, nbytes, time.perf_counter() - t0,
                              f"{type(e).__name__}: {e}", path="mooncake")

    async def close(self) -> None:
        for ch in self._peers.values():
            await ch.close()
        self._peers.clear()
