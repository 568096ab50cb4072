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
import logging
import time
import uuid
from contextlib import aclosing

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from preble_tiered.router.config import MAX_TEXT_CHARS
from preble_tiered.router.dispatch import Outcome, Prompt
from preble_tiered.router.errors import RequestError, invalid
from preble_tiered.router.openai_api.chat_template import ChatTemplate, TemplateError, load_chat_template
from preble_tiered.router.openai_api.chunks import ChatFormat, CompletionFormat, Format, encode
from preble_tiered.router.openai_api.schema import ChatRequest, CompletionRequest, SamplingFields, error_body
from preble_tiered.router.router import Router
from preble_tiered.types import GenParams

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 << 20
MAX_MESSAGES = 4096
SEND_TIMEOUT_S = 30.0
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
        self._template: ChatTemplate | str | None = None
        """The model's template; a str says why there is none (None: not loaded yet)."""

    # ------------------------------------------------------------------ the app
    def app(self) -> FastAPI:
        app = FastAPI(title="preble_tiered", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/metrics", self.metrics, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        app.add_exception_handler(ApiError, _api_error)
        app.add_exception_handler(RequestError, _request_error)
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(HTTPException, _http_error)
        app.add_exception_handler(Exception, _unexpected)
        app.add_middleware(Gate, max_bytes=MAX_BODY_BYTES, token=self.router.config.inference_token)
        return app

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
                                      "max_model_len": m.max_model_len, "vocab_size": m.vocab_size}]
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
        self._check_common(body)
        return await self._generate(body, prompt, body.max_tokens, CompletionFormat, request)

    def _check_common(self, body: SamplingFields) -> None:
        self._check_model(body.model)
        if body.n != 1:
            raise ApiError(400, f"n must be 1 (got {body.n}): send one request per choice", "invalid_request_error",
                           param="n")

    async def chat(self, body: ChatRequest, request: Request) -> Response:
        self._check_common(body)
        text = self._render(body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await self._generate(body, Prompt(text=text, add_special_tokens=False), max_tokens, ChatFormat,
                                    request)

    async def _generate(self, body: SamplingFields, prompt: Prompt, max_tokens: int | None, fmt: type[Format],
                        request: Request) -> Response:
        ids = self.dispatch.tokenize(prompt)
        model = self.router.nodes.model
        if max_tokens is None:  # as far as the model's length allows
            max_tokens = max(1, model.max_model_len - len(ids)) if model else 16
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = GenParams(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                           top_p=1.0 if body.top_p is None else body.top_p, stop=stop, seed=body.seed,
                           ignore_eos=body.ignore_eos)
        rid = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        run = self.dispatch.admit(rid, Prompt(token_ids=ids), params, body.priority)  # reserves the slot
        out = fmt(run.rid, self.served_name(), int(time.time()),
                  bool(body.stream_options and body.stream_options.include_usage))
        stream = self.dispatch.run(run)
        try:
            if body.stream:
                return await self._stream(stream, out, request)
            outcome = await _race(_last(stream), request)
        except _ClientGone:
            return Response(status_code=499)
        finally:
            self.dispatch.abandon(run)  # a run that never started gives its slot back
        return JSONResponse(out.whole(outcome))

    async def _stream(self, stream, out: Format, request: Request) -> Response:
        first = await _race(anext(stream), request)

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
            except Exception:  # noqa: BLE001 - a bug: the client still gets an error event
                logger.exception("stream failed")
                yield encode(error_body("internal error while streaming; see the router's log", "server_error"))
            finally:
                await stream.aclose()
            yield "[DONE]"

        # The background close covers a stream cancelled before `events` ever ran; a client that
        # stops reading for SEND_TIMEOUT_S is dropped (its request then stops on its node).
        return EventSourceResponse(events(), ping=15, send_timeout=SEND_TIMEOUT_S,
                                   background=BackgroundTask(stream.aclose))

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
        if len(body.messages) > MAX_MESSAGES:
            raise ApiError(400, f"{len(body.messages)} messages; the limit is {MAX_MESSAGES}",
                           "invalid_request_error", param="messages")
        messages = [_message(i, m) for i, m in enumerate(body.messages)]
        chars = sum(len(m["content"]) for m in messages)
        if chars > MAX_TEXT_CHARS:
            raise ApiError(400, f"the messages hold {chars} characters; the limit is {MAX_TEXT_CHARS}",
                           "invalid_request_error", param="messages")
        template = self._chat_template()
        try:
            return template.render(messages)
        except TemplateError as e:
            raise invalid(str(e)) from None

    def _chat_template(self) -> ChatTemplate:
        if self._template is None:
            m = self.router.nodes.model
            path = self.router.config.tokenizer or (m.model if m else None)
            if path is None:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "no node is serving yet; retry in a few seconds")
            try:
                self._template = load_chat_template(path) or \
                    "the model has no chat template: use /v1/completions with the prompt as text"
            except TemplateError as e:
                self._template = str(e)
        if isinstance(self._template, str):
            raise ApiError(400, self._template, "invalid_request_error", param="messages")
        return self._template


def _message(i: int, m) -> dict[str, str]:
    out = {"role": m.role}
    if m.name is not None:
        out["name"] = m.name
    if m.content is None or isinstance(m.content, str):
        out["content"] = m.content or ""
        return out
    parts = []
    for part in m.content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages[{i}]: only text content parts are supported, got {part.type!r}",
                           "invalid_request_error", param=f"messages[{i}].content")
        parts.append(part.text)
    out["content"] = "".join(parts)
    return out


async def _last(stream) -> Outcome:
    async with aclosing(stream):
        async for msg in stream:
            if isinstance(msg, Outcome):
                return msg
    raise RequestError(grpc.StatusCode.INTERNAL, "generation ended without a result")


async def _race(aw, request: Request):
    """`aw`'s result, unless the client disconnects first: then `aw` is cancelled (which stops
    the request on its node) and _ClientGone is raised. Cancelled itself, it cancels `aw`."""
    work = asyncio.ensure_future(aw)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        raise
    finally:
        gone.cancel()
    if work.done():
        return work.result()
    work.cancel()
    try:
        await work
    except asyncio.CancelledError:
        if not work.cancelled():  # the cancellation is ours (this task's), not the one we sent
            raise
    except (RequestError, StopAsyncIteration):
        pass
    raise _ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
    return ApiError.of(exc).response()


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected error on the OpenAI API", exc_info=exc)
    return JSONResponse(error_body("internal error; see the router's log", "server_error"), status_code=500)


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
    code = "request_too_large" if exc.status_code == 413 else None
    return JSONResponse(error_body(str(exc.detail), type_, code), status_code=exc.status_code)


class Gate:
    """Before a request's body is read: the bearer token on /v1/* (401) and the body's size
    (413: by Content-Length at once, else when the bytes received pass `max_bytes`)."""

    def __init__(self, app, max_bytes: int, token: str | None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self._token = token.encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> JSONResponse | None:
        if self._token is not None and path.startswith("/v1/"):
            scheme, _, got = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(got.strip(), self._token):
                why = "missing bearer token" if not got else "wrong bearer token"
                return ApiError(401, f"{why}: send `Authorization: Bearer <token>` with the router's inference "
                                     "token (PREBLE_INFERENCE_TOKEN or --inference-token-file)",
                                "authentication_error", "invalid_api_key").response()
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return JSONResponse(error_body(f"the request body has {int(length)} bytes; the limit is "
                                           f"{self.max_bytes}", "invalid_request_error", "request_too_large"),
                                status_code=413)
        return None

    def _counting(self, receive):
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"the request body passed {self.max_bytes} bytes; the limit is "
                                             f"{self.max_bytes}")
            return msg

        return counted
