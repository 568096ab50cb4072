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
import logging
import time
import uuid
from contextlib import aclosing

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from preble_tiered.router.config import MAX_TEXT_CHARS
from preble_tiered.router.dispatch import Outcome, Prompt
from preble_tiered.router.errors import RequestError, invalid
from preble_tiered.router.openai_api.chat_template import ChatTemplate, TemplateError, load_chat_template
from preble_tiered.router.openai_api.chunks import ChatFormat, CompletionFormat, Format, encode
from preble_tiered.router.openai_api.errors import ApiError, Gate, install_handlers
from preble_tiered.router.openai_api.schema import ChatRequest, CompletionRequest, SamplingFields, error_body
from preble_tiered.router.router import Router
from preble_tiered.types import GenParams

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 << 20
MAX_MESSAGES = 4096
SEND_TIMEOUT_S = 30.0
REQUEST_ID_HEADER = "x-request-id"


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
        install_handlers(app)
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
        if body.stream_options is not None and not body.stream:
            raise ApiError(400, "stream_options is only allowed with \"stream\": true", "invalid_request_error",
                           param="stream_options")
        if not (body.logprobs is None or body.logprobs is False):  # `logprobs: 0` asks for them too
            raise _not_served("logprobs")
        if not (body.top_logprobs is None or (type(body.top_logprobs) is int and body.top_logprobs == 0)):
            raise _not_served("top_logprobs")

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


def _not_served(name: str) -> ApiError:
    return ApiError(400, f"{name} is not served by this router: leave it out (or null)", "invalid_request_error",
                    param=name)
