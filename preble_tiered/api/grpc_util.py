"""Shared gRPC server plumbing: health (NOT_SERVING until ready), reflection, options."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Notice a dead peer on an idle connection within seconds, not minutes.
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = CHANNEL_OPTIONS + [
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.so_reuseport", 0),
]


class ServingHealth:
    """grpc.health.v1 for a server: overall ("") and per-service status, NOT_SERVING at start."""

    def __init__(self, server: grpc.aio.Server, services: list[str]) -> None:
        self.servicer = health_aio.HealthServicer()
        self.services = ["", *services]
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.services:
            await self.servicer.set(name, status)


def enable_reflection(server: grpc.aio.Server, full_names: list[str]) -> None:
    reflection.enable_server_reflection([*full_names, "grpc.health.v1.Health", reflection.SERVICE_NAME], server)


def bind(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
    """Listen on host:port (port 0: any free port), with TLS when `credentials` are given;
    returns the port.

    Raises:
        OSError: when the address cannot be bound (in use, bad host).
    """
    addr = f"{host}:{port}"
    got = server.add_secure_port(addr, credentials) if credentials is not None else server.add_insecure_port(addr)
    if got == 0:
        raise OSError(f"cannot listen on {host}:{port} (in use?); pick another --port")
    return got


class _Malformed:
    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class CheckedDecode(grpc.aio.ServerInterceptor):
    """A request whose bytes do not parse as the method's message gets INVALID_ARGUMENT
    (gRPC's own answer is UNKNOWN, which tells the caller nothing). Unary-request methods only:
    every client-facing method here is one."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode, method = handler.request_deserializer, details.method

        def safe_decode(data: bytes):
            try:
                return decode(data)
            except Exception as e:  # noqa: BLE001 - any parse failure is the caller's malformed bytes
                return _Malformed(f"the request is not a valid message for {method}: {e}")

        kw = dict(request_deserializer=safe_decode, response_serializer=handler.response_serializer)
        if handler.response_streaming:
            inner = handler.unary_stream

            async def streaming(request, context):
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.why)
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for msg in result:
                        yield msg
                else:
                    await result

            return grpc.unary_stream_rpc_method_handler(streaming, **kw)
        inner = handler.unary_unary

        async def unary(request, context):
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.why)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **kw)
