"""gRPC servicers of the router process (thin: they convert and delegate to the router's
parts) and `serve_router`, which runs them."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc

from preble_tiered.router.admin_service import AdminService
from preble_tiered.api.auth import TokenAuth, server_credentials
from preble_tiered.api.grpc_util import SERVER_OPTIONS, CheckedDecode, ServingHealth, bind, enable_reflection
from preble_tiered.api.metrics import serve_metrics
from preble_tiered.api.pb import (admin_pb2_grpc, inference_pb2, inference_pb2_grpc,
                                     node_pb2, node_pb2_grpc)
from preble_tiered.api import convert
from preble_tiered.router.config import RouterConfig
from preble_tiered.router.dispatch import Outcome, Prompt
from preble_tiered.router.errors import RequestError
from preble_tiered.router.router import Router

logger = logging.getLogger(__name__)

SERVICES = ["preble.v1.Inference", "preble.v1.Admin", "preble.v1.Registry"]


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router
        self.dispatch = router.dispatch

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        try:
            async for msg in self._generate(request):
                if isinstance(msg, Outcome):
                    yield inference_pb2.GenerateResponse(complete=_complete_pb(msg))
                else:
                    yield inference_pb2.GenerateResponse(chunk=inference_pb2.GenerateChunk(
                        token_ids=msg.token_ids, text=msg.text))
        except RequestError as e:
            await context.abort(e.code, e.message)

    async def GenerateOnce(self, request, context: grpc.aio.ServicerContext):
        try:
            async for msg in self._generate(request):
                if isinstance(msg, Outcome):
                    return _complete_pb(msg)
        except RequestError as e:
            await context.abort(e.code, e.message)
        await context.abort(grpc.StatusCode.INTERNAL, "generation ended without a result")

    def _generate(self, request: inference_pb2.GenerateRequest):
        kind = request.WhichOneof("prompt")
        prompt = Prompt(text=request.text if kind == "text" else None,
                        token_ids=list(request.token_ids.ids) if kind == "token_ids" else None)
        run = self.dispatch.admit(request.request_id, prompt, convert.params_from_pb(request.sampling),
                                  request.priority)
        return self.dispatch.run(run)

    async def GetModelInfo(self, request, context):
        m = self.router.nodes.model
        if m is None:
            return inference_pb2.ModelInfo(block_size=self.router.config.block_size)
        return inference_pb2.ModelInfo(model=m.model, vocab_size=m.vocab_size, max_model_len=m.max_model_len,
                                       block_size=m.block_size, nodes_alive=len(self.router.nodes.alive()))


def _complete_pb(o: Outcome) -> inference_pb2.GenerateComplete:
    run, cached = o.run, convert.cached_to_pb(o.cached)
    usage = inference_pb2.Usage(
        request_id=run.rid, prompt_tokens=len(run.ids), completion_tokens=len(run.generated), cached_tokens=cached,
        recomputed_tokens=o.recomputed_tokens, node=o.node, ttft_ms=o.ttft_s * 1e3, latency_ms=o.latency_s * 1e3,
        finish_reason=o.finish_reason, branch=o.decision.branch.value,
        predicted_cached_tokens=convert.cached_to_pb(run.record.predicted if run.record is not None
                                                     else o.decision.predicted_cached),
        reroutes=run.reroutes, node_ttft_ms=o.node_ttft_s * 1e3, engine_ttft_ms=o.engine_ttft_s * 1e3)
    return inference_pb2.GenerateComplete(text="".join(run.text), token_ids=run.generated, usage=usage)


class RegistryService(node_pb2_grpc.RegistryServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def Register(self, request, context):
        try:
            node = self.router.nodes.register(request.address, convert.node_info_from_pb(request.info))
        except RequestError as e:
            await context.abort(e.code, e.message)
        return node_pb2.RegisterResponse(node_id=node)


async def serve_router(config: RouterConfig, ready: asyncio.Event | None = None) -> None:
    """Run the router until SIGINT/SIGTERM."""
    router = Router(config)
    tokens = {}
    if config.admin_token:
        tokens["/preble.v1.Admin/"] = config.admin_token
    else:
        logger.warning("the Admin API has no token: anyone who reaches this port can pin and evict "
                       "(set PREBLE_ADMIN_TOKEN or --admin-token-file)")
    if config.inference_token:
        tokens["/preble.v1.Inference/"] = config.inference_token
    interceptors = [TokenAuth(tokens), CheckedDecode()] if tokens else [CheckedDecode()]  # auth first
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(router), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(router), server)
    node_pb2_grpc.add_RegistryServicer_to_server(RegistryService(router), server)
    health = ServingHealth(server, SERVICES)
    enable_reflection(server, SERVICES)
    creds = server_credentials(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    port = bind(server, config.host, config.port, creds)
    http = None
    if config.http_port is not None:
        from preble_tiered.router.openai_api.app import OpenAIFront
        from preble_tiered.router.openai_api.server import HttpServer

        http = HttpServer(OpenAIFront(router).app(), config.host, config.http_port, config.tls_cert, config.tls_key)
        http_port = await http.start()
    await server.start()
    router.start()
    await health.set(True)  # the router serves as soon as it listens; Generate says when no node is up
    serve_metrics(router.metrics.registry, config.metrics_port)
    logger.info("router listening on %s:%d (policy %s)", config.host, port, config.policy)
    print(f"router listening on {config.host}:{port} policy={config.policy}{' tls' if creds else ''}", flush=True)
    if http is not None:
        print(f"router http on {'https' if creds else 'http'}://{config.host}:{http_port}/v1", flush=True)
    if ready is not None:
        ready.set()
    await _until_signal()
    logger.info("router shutting down")
    await health.set(False)
    if http is not None:
        await http.stop()
    await server.stop(2.0)
    await router.close()


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


