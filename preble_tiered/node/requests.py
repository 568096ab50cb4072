"""The node's requests: accept a submit (validation, limits), run it (pull its plan, then the
engine), and turn the engine's outputs into what goes back on the wire.

Two doors lead in. `Submit` is one call per request with its tokens streamed back (tools,
tests). `Serve` is the router's: one stream per router carries many requests; the engine's
outputs of one step, handed to the loop once (`deliver`), leave as one `ServeBatch`, so the
node sends one message per engine step however many requests run, not one per token per
request. Both share acceptance, metrics and clean-up, and behave alike: a request Submit
would end with status X ends on Serve with a `ServeError` of code X.

All methods run on the agent's asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from preble_tiered.api import convert
from preble_tiered.api.pb import node_pb2
from preble_tiered.api.validate import validate_prompt
from preble_tiered.engine.api import EngineOutput, EngineRequest, ModelInfo
from preble_tiered.node.metrics import NodeMetrics
from preble_tiered.types import GenParams

logger = logging.getLogger(__name__)

PullFn = Callable[[str, node_pb2.PullPlan], Awaitable[None]]


class Reject(Exception):
    """A request refused or ended with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ServeConn:
    """One Serve stream: items of its requests, flushed as one batch when `wake` is set."""

    items: list[node_pb2.ServeItem] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    rids: set[str] = field(default_factory=set)
    """Its requests not yet ended (they are aborted if the stream goes away)."""

    def push(self, item: node_pb2.ServeItem) -> None:
        self.items.append(item)
        self.wake.set()


@dataclass(slots=True)
class Stream:
    """A request from acceptance to its last item."""

    received_at: float
    prompt_tokens: int
    queue: asyncio.Queue | None = None
    """Submit: the handler's outputs."""
    conn: ServeConn | None = None
    """Serve: the stream its items go out on."""
    first_token_at: float | None = None
    engine_ttft_s: float = 0.0
    """Admission into the engine -> first token, when the request met nothing else there from
    its arrival (0: it did)."""
    tokens: int = 0
    done: bool = False


class NodeRequests:
    """The requests a node runs, whichever door they came in by."""

    def __init__(self, name: str, engine, kv, metrics: NodeMetrics, max_queue: int, pull: PullFn) -> None:
        self.name = name
        self.engine = engine
        self.kv = kv
        self.metrics = metrics
        self.max_queue = max_queue
        self._pull = pull
        self._streams: dict[str, Stream] = {}
        self._queued = 0

    # ------------------------------------------------------------------ shared
    def accept(self, request: node_pb2.SubmitRequest, conn: ServeConn | None = None) -> tuple[Stream, list[int], GenParams]:
        """Check a submit and register it. Raises Reject with the status to end it with."""
        if not self.engine.ready:
            raise Reject(grpc.StatusCode.UNAVAILABLE, f"node {self.name} is not ready yet")
        info: ModelInfo = self.engine.info
        rid = request.request_id
        if not rid:
            raise Reject(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        ids = list(request.prompt_token_ids)
        params = convert.params_from_pb(request.sampling)
        try:
            validate_prompt(info.vocab_size, info.max_model_len, ids, params)
        except ValueError as e:
            self.metrics.requests.labels("invalid").inc()
            raise Reject(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if rid in self._streams:
            raise Reject(grpc.StatusCode.ALREADY_EXISTS, f"request {rid!r} is already running here")
        if self._queued >= self.max_queue:
            self.metrics.requests.labels("rejected").inc()
            raise Reject(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"node {self.name} has {self._queued} requests waiting (limit {self.max_queue}); "
                         "retry later or add nodes")
        st = self._streams[rid] = Stream(time.monotonic(), len(ids), None if conn else asyncio.Queue(), conn)
        self._queued += 1
        if conn is not None:
            conn.rids.add(rid)
        return st, ids, params

    def _needs_pull(self, request: node_pb2.SubmitRequest) -> bool:
        return request.HasField("pull") and bool(request.pull.hashes) and self.kv is not None

    async def start(self, request: node_pb2.SubmitRequest, ids: list[int], params: GenParams) -> None:
        """Pull the plan's blocks (if any), then hand the request to the engine."""
        rid = request.request_id
        if self._needs_pull(request):
            await self._pull(rid, request.pull)
            if rid not in self._streams:
                return  # cancelled during the pull
        self._add(request, ids, params)

    def _add(self, request: node_pb2.SubmitRequest, ids: list[int], params: GenParams) -> None:
        rid = request.request_id
        try:
            self.engine.add(EngineRequest(rid, ids, params, min(9, request.priority_group)))
        except (RuntimeError, ValueError) as e:
            self._streams[rid].done = True  # nothing to abort
            raise Reject(grpc.StatusCode.UNAVAILABLE, f"node {self.name}: {e}") from None

    def progress(self, st: Stream, out: EngineOutput) -> tuple[node_pb2.TokenChunk | None, node_pb2.SubmitDone | None]:
        """What `out` adds to the wire: new tokens, and the result when it is the last.
        Raises Reject (UNAVAILABLE) when the engine failed the request."""
        if out.error:
            st.done = True
            self.metrics.requests.labels("failed").inc()
            raise Reject(grpc.StatusCode.UNAVAILABLE, f"node {self.name}: engine failed: {out.error}")
        now = time.monotonic()
        if st.first_token_at is None and (out.new_token_ids or out.finished):
            st.first_token_at = now
            st.engine_ttft_s = out.alone_prefill_s or 0.0
            self._queued -= 1
            self.metrics.ttft.observe(now - st.received_at)
        st.tokens += len(out.new_token_ids)
        chunk = None
        if out.new_token_ids or out.new_text:
            chunk = node_pb2.TokenChunk(token_ids=out.new_token_ids, text=out.new_text)
        if not out.finished:
            return chunk, None
        st.done = True
        return chunk, self._done(out, st, now)

    def _done(self, out: EngineOutput, st: Stream, now: float) -> node_pb2.SubmitDone:
        m = self.metrics
        m.requests.labels(out.finish_reason or "stop").inc()
        m.latency.observe(now - st.received_at)
        m.prompt_tokens.inc(st.prompt_tokens)
        cached = out.cached_by_tier or {"hbm": out.num_cached_tokens}
        for tier, n in cached.items():
            if n:
                m.cached_tokens.labels(tier).inc(n)
        first = st.first_token_at or now
        return node_pb2.SubmitDone(finish_reason=out.finish_reason or "stop", prompt_tokens=st.prompt_tokens,
                                   completion_tokens=st.tokens, cached_tokens=convert.cached_to_pb(cached),
                                   ttft_ms=(first - st.received_at) * 1e3, engine_ttft_ms=st.engine_ttft_s * 1e3)

    def close(self, rid: str) -> None:
        """Forget a request; abort it in the engine when it had not finished (cancelled, or
        its caller went away)."""
        st = self._streams.pop(rid, None)
        if st is None:
            return
        if st.first_token_at is None:
            self._queued -= 1
        if st.conn is not None:
            st.conn.rids.discard(rid)
        if self.kv is not None:
            self.kv.release_pulled(rid)
        if not st.done:
            self.engine.abort(rid)
            self.metrics.requests.labels("cancelled").inc()

    def deliver(self, outs: list[EngineOutput]) -> None:
        """One engine step's outputs (on the loop): Serve items are built and queued here, in
        one pass; Submit outputs go to their handlers."""
        streams = self._streams
        for out in outs:
            st = streams.get(out.request_id)
            if st is None:
                continue
            if st.conn is None:
                st.queue.put_nowait(out)
                continue
            rid = out.request_id
            try:
                chunk, done = self.progress(st, out)
            except Reject as r:
                self._fail(rid, st.conn, r)
                continue
            if chunk is not None:
                st.conn.push(node_pb2.ServeItem(request_id=rid, chunk=chunk))
            if done is not None:
                st.conn.push(node_pb2.ServeItem(request_id=rid, done=done))
                self.close(rid)

    # ------------------------------------------------------------------ Submit
    async def submit(self, request: node_pb2.SubmitRequest, context: grpc.aio.ServicerContext):
        try:
            st, ids, params = self.accept(request)
        except Reject as r:
            await context.abort(r.code, r.message)
        rid = request.request_id
        try:
            await self.start(request, ids, params)
            while True:
                chunk, done = self.progress(st, await st.queue.get())
                if chunk is not None:
                    yield node_pb2.SubmitResponse(chunk=chunk)
                if done is not None:
                    yield node_pb2.SubmitResponse(done=done)
                    return
        except Reject as r:
            await context.abort(r.code, r.message)
        finally:
            self.close(rid)

    # ------------------------------------------------------------------ Serve
    async def serve(self, request_iterator, context: grpc.aio.ServicerContext):
        conn = ServeConn()
        reader = asyncio.create_task(self._read(request_iterator, conn))
        try:
            while True:
                await conn.wake.wait()
                conn.wake.clear()
                if conn.items:
                    items, conn.items = conn.items, []
                    yield node_pb2.ServeBatch(items=items)
                if reader.done():
                    reader.result()  # a broken request stream ends the call
                    if not conn.rids:
                        return
        finally:
            reader.cancel()
            for rid in list(conn.rids):
                self.close(rid)  # the router went away: its requests stop

    async def _read(self, request_iterator, conn: ServeConn) -> None:
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("kind")
                if kind == "submit":
                    self._serve_submit(req.submit, conn)
                elif kind == "cancel":
                    st = self._streams.get(req.cancel)
                    if st is not None and st.conn is conn:
                        self.close(req.cancel)
        finally:
            conn.wake.set()  # serve() ends once the router's side is closed and its requests are done

    def _serve_submit(self, request: node_pb2.SubmitRequest, conn: ServeConn) -> None:
        try:
            _st, ids, params = self.accept(request, conn)
        except Reject as r:
            conn.push(_error_item(request.request_id, r))
            return
        if self._needs_pull(request):
            asyncio.create_task(self._serve_start(request, ids, params, conn))
            return
        try:
            self._add(request, ids, params)  # no pull: straight in, no task
        except Reject as r:
            self._fail(request.request_id, conn, r)

    async def _serve_start(self, request, ids, params, conn: ServeConn) -> None:
        rid = request.request_id
        try:
            await self.start(request, ids, params)
        except Reject as r:
            self._fail(rid, conn, r)
        except Exception:
            logger.exception("request %s: start failed", rid)
            self._fail(rid, conn, Reject(grpc.StatusCode.INTERNAL, f"node {self.name}: start failed"))

    def _fail(self, rid: str, conn: ServeConn, r: Reject) -> None:
        conn.push(_error_item(rid, r))
        self.close(rid)


def _error_item(rid: str, r: Reject) -> node_pb2.ServeItem:
    return node_pb2.ServeItem(request_id=rid, error=node_pb2.ServeError(code=r.code.value[0], message=r.message))
