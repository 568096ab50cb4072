"""Bearer-token checks and TLS for the router's gRPC API.

`preble.v1.Admin` needs the admin token when one is configured, `preble.v1.Inference` the
inference token when one is configured; the node Registry is not covered (nodes sit on the
cluster's private network). Tokens are compared in constant time (`hmac.compare_digest`) and
a refused call never reaches its handler, so it changes nothing.

Tokens come from an environment variable or a file (first line, surrounding whitespace
stripped); both `preble router`/`preble serve` and `preble admin` read the same ones.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

ADMIN_TOKEN_ENV = "PREBLE_ADMIN_TOKEN"
INFERENCE_TOKEN_ENV = "PREBLE_INFERENCE_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096


def read_token_file(file: str) -> str:
    """The first line of `file`, stripped ("" for an empty file); ValueError when it cannot be read."""
    try:
        text = Path(file).read_text()
    except OSError as e:
        raise ValueError(f"cannot read token file {file}: {e.strerror}") from None
    return (text.strip().splitlines() or [""])[0].strip()


def load_token(env: str, file: str | None) -> str | None:
    """The token from `file` if given, else from the environment variable `env`, else None.

    Raises:
        ValueError: the file is unreadable, or the token is too short or too long.
    """
    if file:
        token, where = read_token_file(file), file
    else:
        token, where = os.environ.get(env, "").strip(), f"${env}"
        if not token:
            return None
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(f"the token in {where} has {len(token)} characters; use {MIN_TOKEN_CHARS} to "
                         f"{MAX_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)")
    return token


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuse calls to services whose token is set unless they carry `authorization: Bearer <token>`.

    Args:
        tokens: service prefix ("/preble.v1.Admin/") -> required token.
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = {prefix: f"Bearer {tok}".encode() for prefix, tok in tokens.items()}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        want = next((tok for prefix, tok in self._tokens.items() if details.method.startswith(prefix)), None)
        if want is None:
            return await continuation(details)
        got = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(got, want):
            return await continuation(details)
        handler = await continuation(details)
        why = "missing bearer token" if not got else "wrong bearer token"
        service = details.method.split("/")[1]
        kind, env = ("admin", ADMIN_TOKEN_ENV) if service.endswith(".Admin") else ("inference", INFERENCE_TOKEN_ENV)
        return _refusing(handler, f"{why} for {service}: pass the router's {kind} token "
                                  f"(--{kind}-token-file FILE, or the {env} variable)")


def _refusing(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler | None:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""
    if handler is None:
        return None

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


def server_credentials(cert: str, key: str) -> grpc.ServerCredentials:
    try:
        return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
    except OSError as e:
        raise ValueError(f"cannot read TLS certificate/key: {e}") from None


def channel(addr: str, ca: str | None = None, options=None) -> grpc.Channel:
    """A (sync) client channel: TLS when `ca` (a PEM file of the CA or the server's certificate) is given."""
    if ca is None:
        return grpc.insecure_channel(addr, options=options)
    return grpc.secure_channel(addr, _ca_credentials(ca), options=options)


def aio_channel(addr: str, ca: str | None = None, options=None) -> grpc.aio.Channel:
    """`channel` for asyncio."""
    if ca is None:
        return grpc.aio.insecure_channel(addr, options=options)
    return grpc.aio.secure_channel(addr, _ca_credentials(ca), options=options)


def _ca_credentials(ca: str) -> grpc.ChannelCredentials:
    try:
        return grpc.ssl_channel_credentials(Path(ca).read_bytes())
    except OSError as e:
        raise ValueError(f"cannot read TLS CA file {ca}: {e.strerror}") from None
