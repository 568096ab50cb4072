"""The node agent: one vLLM engine behind the `preble.v1.Node` gRPC service.

    router --Serve---> agent --EngineRequest--> VLLMEngine (own thread; admits from the
                                                 node's FairAdmissionQueue)
    router <-batch---- agent <--[EngineOutput]-- (engine thread, once per step, via
             (one per step)                        call_soon_threadsafe; requests.py)
    router <-Events--- agent <--(seq, events)-- (KV-event thread: vLLM ZMQ -> router hashes)
    peer   <-Pull----- agent (Transfer service: this node's DRAM/disk blocks for other nodes)
    agent  --Pull----> peer  (a Submit carrying a PullPlan: pull first, then run)

The agent builds the node's KV runtime (`kv_runtime.py`: DRAM/disk tiers, pins, pulled
blocks, meter) and hands it to the engine, whose KV connector loads and saves through it;
the agent itself uses it for pulls, pins, eviction and load reports.

Everything the engine calls back with is handed to the asyncio loop, which alone touches
the agent's state. Residency batches are kept in a bounded ring so a reconnecting router can
resume after a sequence number; when that number has left the ring it gets OUT_OF_RANGE and
resynchronises with `Snapshot`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass, field, replace

import grpc

from preble_tiered.engine.api import EngineOutput, ModelInfo
from preble_tiered.events import ResidencyEvent
from preble_tiered.api import convert
from preble_tiered.api.messages import NodeInfo
from preble_tiered.api.grpc_util import CHANNEL_OPTIONS, SERVER_OPTIONS, ServingHealth, bind, enable_reflection
from preble_tiered.api.metrics import serve_metrics
from preble_tiered.node.admission import FairAdmissionQueue
from preble_tiered.node.kv_runtime import NodeKVRuntime, open_kv_runtime
from preble_tiered.node.metrics import NodeMetrics
from preble_tiered.node.requests import NodeRequests
from preble_tiered.api.pb import node_pb2, node_pb2_grpc
from preble_tiered.kvstore.config import KVStoreConfig
from preble_tiered.node.pulls import Puller
from preble_tiered.transfer.bulk import BulkConfig, BulkEngine
from preble_tiered.transfer.service import TransferService, add_transfer_service
from preble_tiered.types import Tier

logger = logging.getLogger(__name__)

MAX_PIN_BLOCKS = 65536

FAULT_DROP_EVENT_SEQ = "PREBLE_FAULT_DROP_EVENT_SEQ"
"""Test-only fault injection: the agent never publishes the event batch with this sequence
number, as if it were lost on the wire (the router must detect the gap and resynchronise)."""
FAULT_DIE_AFTER_PIECES = "PREBLE_FAULT_DIE_AFTER_PIECES"
"""Test-only fault injection: the process exits abruptly (exit code 3, no cleanup) after
sending this many pieces of a pull to another node: a node dying mid-transfer."""


@dataclass(frozen=True)
class NodeConfig:
    """How a node agent runs (the engine's own settings are in EngineConfig)."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    """Port of the Node service (0: any free port)."""
    router: str | None = None
    """host:port of the router's Registry; None: do not register (tests)."""
    max_queue: int = 256
    """Requests accepted and not yet started; beyond it Submit answers RESOURCE_EXHAUSTED."""
    event_ring: int = 65536
    """Residency batches kept for resuming routers."""
    register_interval_s: float = 2.0
    metrics_port: int = 0
    pull_timeout_s: float = 10.0
    """A pull from another node taking longer is cut off; the rest is recomputed."""
    pull_window: int = 8
    """Pieces a peer may send ahead of our credits (each at most 1 MiB)."""
    bulk: BulkConfig = field(default_factory=BulkConfig)
    """The bulk data path of pulls (Mooncake, or the gRPC stream)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a node needs a name")
        if self.max_queue <= 0 or self.event_ring <= 0:
            raise ValueError("max_queue and event_ring must be positive")


@dataclass
class _Ring:
    batches: deque[node_pb2.EventBatch] = field(default_factory=deque)
    last_seq: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class NodeAgent(node_pb2_grpc.NodeServicer):
    def __init__(self, config: NodeConfig, engine_factory, metrics: NodeMetrics | None = None,
                 kv: NodeKVRuntime | None = None) -> None:
        """`engine_factory(on_outputs, on_events)` returns an unstarted engine (VLLMEngine);
        `kv` is the node's KV runtime that engine was given (None: no DRAM/disk tiers)."""
        self.config = config
        self.kv = kv
        self.metrics = metrics or NodeMetrics()
        self.engine = engine_factory(self._on_outputs_threadsafe, self._on_events_threadsafe)
        self.bulk = BulkEngine.open(config.host, config.bulk) if kv is not None else None
        self.puller = Puller(kv, self.metrics, self.bulk, config.pull_window, config.pull_timeout_s)
        self.requests = NodeRequests(config.name, self.engine, kv, self.metrics, config.max_queue, self.puller.pull)
        self.info: ModelInfo | None = None
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ring = _Ring()
        self._drop_seq = int(os.environ.get(FAULT_DROP_EVENT_SEQ, "0") or 0)
        self._server: grpc.aio.Server | None = None
        self._health: ServingHealth | None = None
        self._tasks: list[asyncio.Task] = []
        die_after = int(os.environ.get(FAULT_DIE_AFTER_PIECES, "0") or 0)
        self.transfer = TransferService(self._kv_if_ready, _die_after(die_after) if die_after > 0 else None,
                                        bulk=self.bulk)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        """Listen (NOT_SERVING), start the engine, then serve and register. Returns the port."""
        self._loop = asyncio.get_running_loop()
        self._ring.changed = asyncio.Event()
        server = self._server = grpc.aio.server(options=SERVER_OPTIONS)
        node_pb2_grpc.add_NodeServicer_to_server(self, server)
        add_transfer_service(self.transfer, server)
        self._health = ServingHealth(server, ["preble.v1.Node", "preble.v1.Transfer"])
        enable_reflection(server, ["preble.v1.Node", "preble.v1.Transfer"])
        port = bind(server, self.config.host, self.config.port)
        self.address = self.puller.address = f"{self.config.host}:{port}"
        await server.start()
        await self._health.set(False)
        serve_metrics(self.metrics.registry, self.config.metrics_port)
        logger.info("node %s listening on %s; starting the engine", self.config.name, self.address)
        self.info = await asyncio.to_thread(self.engine.start)
        await self._health.set(True)
        logger.info("node %s ready: %s, %d KV tokens", self.config.name, self.info.model,
                    self.info.kv_capacity_tokens)
        self._tasks.append(asyncio.create_task(self._stats_loop()))
        if self.config.router:
            self._tasks.append(asyncio.create_task(self._register_loop()))
        return port

    async def stop(self, grace_s: float = 2.0) -> None:
        for t in self._tasks:
            t.cancel()
        if self._health is not None:
            await self._health.set(False)
        if self._server is not None:
            await self._server.stop(grace_s)
        await self.puller.close()
        await asyncio.to_thread(self.engine.shutdown)
        if self.bulk is not None:
            self.bulk.close()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    # ------------------------------------------------------------------ engine callbacks (other threads)
    def _on_outputs_threadsafe(self, outs: list[EngineOutput]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.requests.deliver, outs)  # one hand-off per engine step

    def _on_events_threadsafe(self, seq: int, events: list[ResidencyEvent]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._publish, seq, events)

    def _publish(self, seq: int, events: list[ResidencyEvent]) -> None:
        ring = self._ring
        ring.last_seq = max(ring.last_seq, seq)
        if seq != self._drop_seq:
            ring.batches.append(convert.batch_to_pb(seq, events))
            if len(ring.batches) > self.config.event_ring:
                ring.batches.popleft()
        self.metrics.event_batches.inc()
        ring.changed.set()
        ring.changed = asyncio.Event()

    # ------------------------------------------------------------------ Node service
    async def Submit(self, request: node_pb2.SubmitRequest, context: grpc.aio.ServicerContext):
        async with aclosing(self.requests.submit(request, context)) as stream:
            async for msg in stream:
                yield msg

    async def Serve(self, request_iterator, context: grpc.aio.ServicerContext):
        async with aclosing(self.requests.serve(request_iterator, context)) as stream:
            async for batch in stream:
                yield batch

    async def Events(self, request: node_pb2.EventsRequest, context: grpc.aio.ServicerContext):
        after = request.after_seq
        ring = self._ring
        if after > ring.last_seq:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"after_seq {after} is ahead of this node's last batch {ring.last_seq}; take a Snapshot")
        if ring.batches and after + 1 < ring.batches[0].seq and after < ring.last_seq:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"batches after {after} are no longer held (oldest {ring.batches[0].seq}); "
                                "take a Snapshot")
        while True:
            changed = ring.changed
            new = []
            for b in reversed(ring.batches):  # only the batches after `after`: O(new)
                if b.seq <= after:
                    break
                new.append(b)
            for b in reversed(new):
                yield b
                after = b.seq
            await changed.wait()

    async def Snapshot(self, request, context):
        if not self.engine.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"node {self.config.name} is not ready yet")
        seq, blocks = await asyncio.to_thread(self.engine.tier_snapshot)
        return convert.snapshot_to_pb(seq, blocks)

    async def Load(self, request, context):
        if not self.engine.ready:
            return node_pb2.LoadReport(ready=False)
        s = self.engine.stats()
        rep = node_pb2.LoadReport(ready=True, running=s.running, waiting=s.waiting, kv_usage=s.kv_usage,
                                  kv_used_tokens=s.kv_used_tokens, tpot_ms=(s.tpot_s or 0.0) * 1e3,
                                  event_seq=self._ring.last_seq)
        for e, c, t in self.engine.take_prefill_samples():
            rep.prefill_samples.add(new_tokens=e, context_tokens=c, seconds=t)
        for b, c, t, n in self.engine.take_decode_steps():
            rep.decode_steps.add(batch=b, context_tokens=c, seconds=t, steps=n)
        rt = self.kv
        if rt is not None:
            for link, r in sorted(rt.link_rates().items()):
                rep.link_rates.add(link=link, bytes_per_s=r.bytes_per_s, samples=r.samples)
            for tier, used, cap, blocks, pinned in rt.tier_usage():
                rep.tiers.add(tier=convert.tier_to_pb(tier), used_bytes=used, capacity_bytes=cap, blocks=blocks,
                              pinned_blocks=pinned)
        return rep

    async def PinBlocks(self, request: node_pb2.PinBlocksRequest, context: grpc.aio.ServicerContext):
        rt = self._kv_if_ready()
        if rt is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"node {self.config.name} has no DRAM/disk tier to pin in (start it with --dram-bytes)")
        if not request.owner or len(request.owner) > 128:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "owner must be 1-128 characters")
        if len(request.hashes) > MAX_PIN_BLOCKS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {MAX_PIN_BLOCKS} blocks per pin, got {len(request.hashes)}")
        try:
            tier = convert.tier_from_pb(request.tier) or Tier.DRAM
            if tier is Tier.HBM:
                tier = Tier.DRAM  # the engine cache cannot pin: keep its DRAM copy (the router re-warms HBM)
            pinned, missing = await asyncio.to_thread(rt.set_pins, request.owner, list(request.hashes), tier)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return node_pb2.PinBlocksResponse(pinned=pinned, missing=missing)

    async def EvictBlocks(self, request: node_pb2.EvictBlocksRequest, context: grpc.aio.ServicerContext):
        rt = self._kv_if_ready()
        if rt is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"node {self.config.name} has no DRAM/disk tier (the engine's cache evicts by itself)")
        try:
            evicted, kept = await asyncio.to_thread(rt.evict, list(request.hashes),
                                                    convert.tier_from_pb(request.tier))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return node_pb2.EvictBlocksResponse(evicted=evicted, pinned_kept=kept)

    def _kv_if_ready(self) -> NodeKVRuntime | None:
        return self.kv if self.engine.ready else None

    async def Info(self, request, context):
        if self.info is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"node {self.config.name} is not ready yet")
        return self.node_info()

    def node_info(self) -> node_pb2.NodeInfo:
        i = self.info
        assert i is not None
        ec = self.engine.config
        return convert.node_info_to_pb(NodeInfo(self.config.name, i.model, i.vocab_size, i.max_model_len, i.block_size,
                                                i.kv_capacity_tokens, i.kv_bytes_per_token,
                                                getattr(ec, "hash_namespace", ""), ec.max_num_seqs,
                                                ec.max_num_batched_tokens))

    # ------------------------------------------------------------------ background
    async def _register_loop(self) -> None:
        """Register with the router now and every few seconds (a restarted router relearns us)."""
        warned = False
        async with grpc.aio.insecure_channel(self.config.router, options=CHANNEL_OPTIONS) as ch:
            stub = node_pb2_grpc.RegistryStub(ch)
            while True:
                try:
                    await stub.Register(node_pb2.RegisterRequest(address=self.address, info=self.node_info()),
                                        timeout=2.0)
                    warned = False
                except grpc.aio.AioRpcError as e:
                    if not warned:
                        logger.warning("cannot register with router %s: %s", self.config.router, e.details())
                        warned = True
                await asyncio.sleep(self.config.register_interval_s)

    async def _stats_loop(self) -> None:
        while True:
            s = self.engine.stats()
            self.metrics.queue_depth.set(s.waiting)
            self.metrics.running.set(s.running)
            self.metrics.kv_usage.set(s.kv_usage)
            self.transfer.sweep()
            self.metrics.leased_blocks.set(self.transfer.leases.held_blocks)
            await asyncio.sleep(1.0)


def _die_after(pieces: int):
    async def hook(sent: int) -> None:
        if sent >= pieces:
            logger.error("fault injection: dying after sending %d pieces of a pull", sent)
            os._exit(3)
    return hook


async def serve_node(config: NodeConfig, engine_config, kv_config: KVStoreConfig | None = None) -> None:
    """Run a node agent with a vLLM engine until SIGINT/SIGTERM (also during engine start).

    With `kv_config`, the node's DRAM/disk tiers are opened first and handed to the engine.
    """
    import signal

    from preble_tiered.engine.vllm_engine import VLLMEngine

    kv = None
    if kv_config is not None:
        from preble_tiered.engine.vllm_setup import model_fingerprint

        if kv_config.disk_path is not None and not kv_config.fingerprint:
            kv_config = replace(kv_config, fingerprint=model_fingerprint(engine_config))
        kv = open_kv_runtime(kv_config, engine_config.block_size, engine_config.hash_namespace)

    def engine_factory(on_out, on_ev):
        return VLLMEngine(engine_config, on_out, on_ev, queue=FairAdmissionQueue(), kv=kv)

    agent = NodeAgent(config, engine_factory, kv=kv)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(agent.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()  # raise a start failure
            print(f"node {config.name} serving on {agent.address}", flush=True)
            await stopping
        else:
            logger.info("node %s: stop requested during engine start", config.name)
            starting.cancel()
    finally:  # a failed start too: the server and threads it began stop here, not at interpreter exit
        stopping.cancel()
        await agent.stop()
