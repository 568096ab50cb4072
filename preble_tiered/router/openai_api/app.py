"""The OpenAI HTTP API of the router (FastAPI), beside gRPC on the same event loop.

    POST /v1/completions, /v1/chat/completions -> Prompt + GenParams -> Dispatcher.admit/run
         (the same validation, limits and messages as gRPC Generate) -> JSON or SSE chunks
    GET  /v1/models, /health (503 until a node serves), /metrics (Prometheus)

A request's status comes from its first result: the stream's headers go out with the first
token, so a refusal on the way (no node, a full queue) is still a 4xx/5xx and not an SSE
error. A client that goes away stops its request on its node.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from contextlib import suppress

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from preble_tiered.router.dispatch import Outcome, Prompt, Run
from preble_tiered.router.errors import RequestError, invalid
from preble_tiered.router.openai_api.chat_template import ChatTemplate, TemplateError, load_chat_template
from preble_tiered.router.openai_api.chunks import ChatFormat, CompletionFormat, Format, encode
from preble_tiered.router.openai_api.schema import ChatRequest, CompletionRequest, SamplingFields, error_body
from preble_tiered.router.router import Router
from preble_tiered.types import GenParams

MAX_BODY_BYTES = 32 << 20
REQUEST_ID_HEADER = "x-request-id"

# gRPC status -> (HTTP status, OpenAI error type)
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    @classmethod
    def of(cls, e: RequestError) -> "ApiError":
        status, type_ = _HTTP.get(e.code, (500, "server_error"))
        return cls(status, e.message, type_, e.code.name.lower())

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.code, self.param), status_code=self.status)


class _ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


class OpenAIFront:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.dispatch = router.dispatch
        self._want = f"Bearer {router.config.inference_token}".encode() if router.config.inference_token else None
        self._template: ChatTemplate | None | bool = False  # False: not loaded yet

    # ------------------------------------------------------------------ the app
    def app(self) -> FastAPI:
        app = FastAPI(title="preble_tiered", docs_url=None, redoc_url=None, openapi_url=None)
        auth = [Depends(self._auth)]
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/metrics", self.metrics, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"], dependencies=auth)
        app.add_api_route("/v1/completions", self.completions, methods=["POST"], dependencies=auth)
        app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"], dependencies=auth)
        app.add_exception_handler(ApiError, lambda _r, e: e.response())
        app.add_exception_handler(RequestError, lambda _r, e: ApiError.of(e).response())
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(HTTPException, _http_error)
        app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
        return app

    def _auth(self, request: Request) -> None:
        if self._want is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, self._want):
            why = "missing bearer token" if not got else "wrong bearer token"
            raise ApiError(401, f"{why}: send `Authorization: Bearer <token>` with the router's inference "
                                "token (PREBLE_INFERENCE_TOKEN or --inference-token-file)",
                           "authentication_error", "invalid_api_key")

    # ------------------------------------------------------------------ simple routes
    async def health(self) -> Response:
        if self.router.nodes.any_alive():
            return JSONResponse({"status": "ok", "nodes_alive": len(self.router.nodes.alive())})
        return JSONResponse({"status": "unavailable", "nodes_alive": 0}, status_code=503)

    async def metrics(self) -> Response:
        return Response(generate_latest(self.router.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self) -> Response:
        m = self.router.nodes.model
        data = [] if m is None else [{"id": self.served_name(), "object": "model", "created": 0,
                                      "owned_by": "preble_tiered", "root": m.model,
                                      "max_model_len": m.max_model_len}]
        return JSONResponse({"object": "list", "data": data})

    def served_name(self) -> str:
        m = self.router.nodes.model
        return self.router.config.served_model_name or (m.model.rstrip("/").rsplit("/", 1)[-1] if m else "")

    # ------------------------------------------------------------------ generation
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        p = body.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise ApiError(400, f"prompt holds {len(p)} prompts; send one prompt per request",
                               "invalid_request_error", param="prompt")
            p = p[0]
        prompt = Prompt(text=p) if isinstance(p, str) else Prompt(token_ids=list(p))
        return await self._generate(body, prompt, body.max_tokens, CompletionFormat, request)

    async def chat(self, body: ChatRequest, request: Request) -> Response:
        text = self._render(body)
        return await self._generate(body, Prompt(text=text, add_special_tokens=False),
                                    body.max_completion_tokens or body.max_tokens, ChatFormat, request)

    async def _generate(self, body: SamplingFields, prompt: Prompt, max_tokens: int | None, fmt: type[Format],
                        request: Request) -> Response:
        self._check_model(body.model)
        if body.n != 1:
            raise ApiError(400, f"n must be 1 (got {body.n}): send one request per choice", "invalid_request_error",
                           param="n")
        ids = self.dispatch.tokenize(prompt)
        model = self.router.nodes.model
        if max_tokens is None:  # as far as the model's length allows
            max_tokens = max(1, model.max_model_len - len(ids)) if model else 16
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = GenParams(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                           top_p=1.0 if body.top_p is None else body.top_p, stop=stop, seed=body.seed,
                           ignore_eos=body.ignore_eos)
        rid = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        run = self.dispatch.admit(rid, Prompt(token_ids=ids), params, body.priority)
        out = fmt(run.rid, self.served_name(), int(time.time()),
                  bool(body.stream_options and body.stream_options.include_usage))
        if body.stream:
            return await self._stream(run, out, request)
        try:
            outcome = await _race(_last(self.dispatch.run(run)), request)
        except _ClientGone:
            return Response(status_code=499)
        return JSONResponse(out.whole(outcome))

    async def _stream(self, run: Run, out: Format, request: Request) -> Response:
        stream = self.dispatch.run(run)
        try:
            first = await _race(anext(stream), request)
        except _ClientGone:
            return Response(status_code=499)

        async def events():
            msg = first
            try:
                for data in out.begin():
                    yield data
                while True:
                    if isinstance(msg, Outcome):
                        for data in out.end(msg):
                            yield data
                        break
                    yield out.chunk(msg.text)
                    msg = await anext(stream)
            except RequestError as e:  # after the headers went out: an error event, as vLLM sends
                e = ApiError.of(e)
                yield encode(error_body(e.message, e.type, e.code))
            finally:
                await stream.aclose()
            yield "[DONE]"

        return EventSourceResponse(events(), ping=15)

    # ------------------------------------------------------------------ helpers
    def _check_model(self, name: str | None) -> None:
        m = self.router.nodes.model
        if name and m is not None and name not in (self.served_name(), m.model):
            raise ApiError(404, f"model {name!r} is not served here; this router serves {self.served_name()!r} "
                                "(GET /v1/models)", "not_found_error", "model_not_found", "model")

    def _render(self, body: ChatRequest) -> str:
        if not body.messages:
            raise ApiError(400, "messages is empty: send at least one message", "invalid_request_error",
                           param="messages")
        if self._template is False:
            m = self.router.nodes.model
            path = self.router.config.tokenizer or (m.model if m else None)
            if path is None:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "no node is serving yet; retry in a few seconds")
            self._template = load_chat_template(path)
        if self._template is None:
            raise ApiError(400, "the model has no chat template: use /v1/completions with the prompt as text",
                           "invalid_request_error", param="messages")
        try:
            return self._template.render([_message(i, m) for i, m in enumerate(body.messages)])
        except TemplateError as e:
            raise invalid(str(e)) from None


def _message(i: int, m) -> dict[str, str]:
    if m.content is None or isinstance(m.content, str):
        return {"role": m.role, "content": m.content or ""}
    parts = []
    for part in m.content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages[{i}]: only text content parts are supported, got {part.type!r}",
                           "invalid_request_error", param=f"messages[{i}].content")
        parts.append(part.text)
    return {"role": m.role, "content": "".join(parts)}


async def _last(stream) -> Outcome:
    async for msg in stream:
        if isinstance(msg, Outcome):
            return msg
    raise RequestError(grpc.StatusCode.INTERNAL, "generation ended without a result")


async def _race(aw, request: Request):
    """`aw`'s result, unless the client disconnects first (then `aw` is cancelled, which stops
    the request on its node, and _ClientGone is raised)."""
    work = asyncio.ensure_future(aw)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not gone.done():
            gone.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with suppress(asyncio.CancelledError, RequestError, StopAsyncIteration):
        await work
    raise _ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request body")
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    text = f"{param}: {msg}{more}" if param else f"{msg}{more}"
    return JSONResponse(error_body(text, "invalid_request_error", "invalid_body", param), status_code=400)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code)


class BodyLimit:
    """Refuse a request body over `max_bytes` by its Content-Length with 413, before reading it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            for k, v in scope["headers"]:
                if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                    resp = JSONResponse(error_body(f"the request body has {int(v)} bytes; the limit is "
                                                   f"{self.max_bytes}", "invalid_request_error",
                                                   "request_too_large"), status_code=413)
                    await resp(scope, receive, send)
                    return
        await self.app(scope, receive, send)
