"""gRPC servicers of the router process (thin: they delegate to `Router`)."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc

from preble_tiered.server.grpc_util import SERVER_OPTIONS, ServingHealth, bind, enable_reflection
from preble_tiered.server.metrics import serve_metrics
from preble_tiered.server import convert
from preble_tiered.server.pb import (admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc,
                                     node_pb2, node_pb2_grpc)
from preble_tiered.server.router import RequestError, Router, RouterConfig
from preble_tiered.types import Tier

logger = logging.getLogger(__name__)

SERVICES = ["preble.v1.Inference", "preble.v1.Admin", "preble.v1.Registry"]


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        try:
            async for msg in self.router.generate(request):
                yield msg
        except RequestError as e:
            await context.abort(e.code, e.message)

    async def GenerateOnce(self, request, context: grpc.aio.ServicerContext):
        try:
            async for msg in self.router.generate(request):
                if msg.WhichOneof("kind") == "complete":
                    return msg.complete
        except RequestError as e:
            await context.abort(e.code, e.message)
        await context.abort(grpc.StatusCode.INTERNAL, "generation ended without a result")

    async def GetModelInfo(self, request, context):
        m = self.router.model
        alive = sum(lk.alive for lk in self.router.links.values())
        if m is None:
            return inference_pb2.ModelInfo(block_size=self.router.config.block_size)
        return inference_pb2.ModelInfo(model=m.model, vocab_size=m.vocab_size, max_model_len=m.max_model_len,
                                       block_size=m.block_size, nodes_alive=alive)


class RegistryService(node_pb2_grpc.RegistryServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def Register(self, request, context):
        try:
            node = await self.router.register(request)
        except RequestError as e:
            await context.abort(e.code, e.message)
        return node_pb2.RegisterResponse(node_id=node)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def ListNodes(self, request, context):
        r = self.router
        out = admin_pb2.ListNodesResponse()
        for link in r.links.values():
            ns = r.scheduler.cluster.nodes[link.node_id]
            out.nodes.add(node_id=link.node_id, name=link.name, address=link.address, alive=link.alive,
                          running=link.load.running, waiting=link.load.waiting, inflight=ns.n_inflight,
                          kv_usage=link.load.kv_usage, kv_capacity_tokens=link.info.kv_capacity_tokens,
                          hbm_blocks=r.scheduler.index.held_blocks(link.node_id, Tier.HBM),
                          tpot_ms=link.load.tpot_ms, requests_total=link.requests_total,
                          event_seq=link.event_seq, resyncs=link.resyncs)
        return out

    async def ClusterStats(self, request, context):
        r = self.router
        st = r.stats
        cal = r.calibrator
        return admin_pb2.ClusterStatsResponse(
            policy=r.config.policy, model=r.model.model if r.model else "",
            nodes_alive=sum(lk.alive for lk in r.links.values()), nodes_total=len(r.links),
            requests_total=st.requests_total, requests_failed=st.requests_failed,
            requests_rerouted=st.requests_rerouted, branch_counts=dict(r.scheduler.branch_counts),
            prompt_tokens_total=st.prompt_tokens, cached_tokens_total=convert.cached_to_pb(st.cached),
            recomputed_tokens_total=st.recomputed_tokens, index_entries=len(r.scheduler.index),
            cost_model=f"fitted ({len(cal)} samples, {cal.fits} fits)" if cal.fitted else "preset (cpu tiny)")

    async def GetNodeResidency(self, request, context):
        r = self.router
        link = r.links.get(request.node_id)
        if link is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no node {request.node_id}; known: {sorted(r.links)} (see ListNodes)")
        tier = convert.tier_from_pb(request.tier) or Tier.HBM
        hashes = sorted(r.scheduler.index.node_blocks(link.node_id, tier))
        return admin_pb2.NodeResidency(node_id=link.node_id, tier=convert.tier_to_pb(tier), hashes=hashes,
                                       event_seq=link.event_seq)


async def serve_router(config: RouterConfig, ready: asyncio.Event | None = None) -> None:
    """Run the router until SIGINT/SIGTERM."""
    router = Router(config)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(router), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(router), server)
    node_pb2_grpc.add_RegistryServicer_to_server(RegistryService(router), server)
    health = ServingHealth(server, SERVICES)
    enable_reflection(server, SERVICES)
    port = bind(server, config.host, config.port)
    await server.start()
    await health.set(True)  # the router serves as soon as it listens; Generate says when no node is up
    serve_metrics(router.metrics.registry, config.metrics_port)
    logger.info("router listening on %s:%d (policy %s)", config.host, port, config.policy)
    print(f"router listening on {config.host}:{port} policy={config.policy}", flush=True)
    if ready is not None:
        ready.set()
    await _until_signal()
    logger.info("router shutting down")
    await health.set(False)
    await server.stop(2.0)
    await router.close()


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


