"""The request path: admit a request, let the scheduler decide, send the decision to its node,
relay the tokens, re-route when the node fails, and account for the result.

    GenerateRequest -> admit (validate once) -> Run -> hash -> Scheduler.schedule -> Decision
        -> DispatchOrder -> NodeClient.submit -> TokenChunk... NodeDone -> Outcome

All state is touched from the asyncio loop only.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

import grpc

from preble_tiered.api.messages import DispatchOrder, NodeDone, PullSource, TokenChunk
from preble_tiered.api.validate import validate_prompt
from preble_tiered.hashing import BlockHasher
from preble_tiered.router.config import MAX_REQUEST_ID_CHARS, MAX_TEXT_CHARS, RouterConfig
from preble_tiered.router.decisions import DecisionRecord, DecisionRing
from preble_tiered.router.errors import RequestError, invalid
from preble_tiered.router.node_client import NodeError
from preble_tiered.router.nodes import NodeLink, NodeSet
from preble_tiered.router.tokenizer import Tokenizer, load_tokenizer
from preble_tiered.scheduler.profile_fit import ProfileSamples
from preble_tiered.scheduler.types import Decision, RouteRequest
from preble_tiered.types import GenParams, NodeId

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request's prompt as the client sent it: text or token ids."""

    text: str | None = None
    token_ids: list[int] | None = None
    add_special_tokens: bool = True
    """False for text a chat template rendered (it holds its own BOS, as vLLM encodes it)."""


@dataclass
class Run:
    """One admitted request, across re-routes."""

    rid: str
    ids: list[int]
    params: GenParams
    t0: float
    priority: int = 0
    generated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    reroutes: int = 0
    finished: bool = False
    hashes: list[int] = field(default_factory=list)
    record: DecisionRecord | None = None
    started: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished request, as the client's usage reports it."""

    run: Run
    node: str
    decision: Decision
    cached: dict[str, int]
    recomputed_tokens: int
    ttft_s: float
    latency_s: float
    finish_reason: str
    node_ttft_s: float = 0.0
    engine_ttft_s: float = 0.0


@dataclass
class RouterStats:
    requests_total: int = 0
    requests_failed: int = 0
    requests_rerouted: int = 0
    prompt_tokens: int = 0
    recomputed_tokens: int = 0
    cached: Counter[str] = field(default_factory=Counter)


class Dispatcher:
    def __init__(self, config: RouterConfig, nodes: NodeSet, hasher: BlockHasher, decisions: DecisionRing,
                 samples: ProfileSamples | None = None) -> None:
        self.config = config
        self.samples = samples or ProfileSamples()  # each request's time outside its node (`preble admin profile`)
        self.nodes = nodes
        self.scheduler = nodes.scheduler
        self.metrics = nodes.metrics
        self.hasher = hasher
        self.decisions = decisions
        self.stats = RouterStats()
        self.on_complete: list = []  # callbacks (hashes, node, cached tokens) of finished requests
        self._tokenizer: Tokenizer | None = None
        self._active: dict[str, Run] = {}
        """Admitted and not finished: a slot is taken at admission, so concurrent admissions
        cannot pass the limit or share a request id."""

    @property
    def outstanding(self) -> int:
        """Requests admitted and not finished."""
        return len(self._active)

    # ------------------------------------------------------------------ admission
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            model = self.nodes.model
            path = self.config.tokenizer or (model.model if model else None)
            if not path:
                raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                   "no tokenizer yet (no node has registered): retry, or send token_ids")
            self._tokenizer = load_tokenizer(path)
        return self._tokenizer

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if prompt.token_ids is not None:
            return prompt.token_ids
        if prompt.text is not None:
            if not prompt.text:
                raise invalid("prompt is empty: send text or token_ids")
            if len(prompt.text) > MAX_TEXT_CHARS:
                raise invalid(f"prompt text has {len(prompt.text)} characters; the limit is {MAX_TEXT_CHARS}")
            if not prompt.text.isascii():
                try:
                    prompt.text.encode()
                except UnicodeEncodeError as e:
                    raise invalid(f"prompt text is not valid Unicode at character {e.start} "
                                  "(a lone surrogate)") from None
            return self.tokenizer().encode(prompt.text, prompt.add_special_tokens)
        raise invalid("prompt is empty: set `text` or `token_ids`")

    def tokenize(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids, for a front that needs its length before it can fill in
        the parameters (`admit` then takes them as token ids). Failures count as admit's do.

        Raises:
            RequestError: as `admit` would for the prompt.
        """
        try:
            return self.prompt_ids(prompt)
        except RequestError as e:
            self.metrics.requests.labels(e.code.name.lower()).inc()
            raise

    def admit(self, request_id: str, prompt: Prompt, params: GenParams, priority: int) -> Run:
        """Validate a client's request (the one place it is validated on the router).

        Raises:
            RequestError: with the status and a message that says what to fix.
        """
        try:
            return self._admit(request_id, prompt, params, priority)
        except RequestError as e:
            self.metrics.requests.labels(e.code.name.lower()).inc()
            raise

    def _admit(self, request_id: str, prompt: Prompt, params: GenParams, priority: int) -> Run:
        rid = request_id or uuid.uuid4().hex
        if not -9 <= priority <= 9:
            raise invalid(f"priority must be in [-9, 9], got {priority}", "priority")
        if len(rid) > MAX_REQUEST_ID_CHARS:
            raise invalid(f"request_id has {len(rid)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
        model = self.nodes.model
        if model is None or not self.nodes.any_alive():
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "no node is serving yet; retry in a few seconds")
        ids = self.prompt_ids(prompt)
        try:
            validate_prompt(model.vocab_size, model.max_model_len, ids, params)
        except ValueError as e:
            raise invalid(str(e), getattr(e, "param", None)) from None
        if len(self._active) >= self.config.max_outstanding:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the router has {len(self._active)} requests in flight (limit "
                               f"{self.config.max_outstanding}); retry later")
        if rid in self._active:
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, f"request_id {rid!r} is already in flight")
        run = Run(rid, ids, params, time.monotonic(), priority)
        self._active[rid] = run
        self.metrics.outstanding.set(len(self._active))
        return run

    def abandon(self, run: Run) -> None:
        """Give back the slot of an admitted run that was never started (its client left
        first); a started run gives it back itself when it ends."""
        if not run.started and self._active.get(run.rid) is run:
            del self._active[run.rid]
            self.metrics.outstanding.set(len(self._active))

    # ------------------------------------------------------------------ running
    async def run(self, run: Run) -> AsyncIterator[TokenChunk | Outcome]:
        """Token chunks as they come, then the Outcome. Raises RequestError for the client.
        `run` comes from `admit`, which holds its slot."""
        run.started = True
        try:
            async for msg in self._drive(run):
                yield msg
        except RequestError as e:
            self.stats.requests_failed += 1
            self.metrics.requests.labels(e.code.name.lower()).inc()
            raise
        finally:
            if run.record is not None:
                self.decisions.finish(run.record, "done" if run.finished else "failed")
            if self._active.get(run.rid) is run:
                del self._active[run.rid]
            self.metrics.outstanding.set(len(self._active))
            if not run.finished:
                self.scheduler.on_finish(run.rid, len(run.generated))

    async def _drive(self, run: Run):
        while True:
            remaining = run.params.max_tokens - len(run.generated)
            prompt = run.ids + run.generated
            hashes = self.hasher(prompt)
            decision = self._schedule(RouteRequest(run.rid, hashes, len(prompt), remaining, run.priority))
            run.hashes = hashes
            run.record = self.decisions.record(run.rid, time.time(), decision, prompt, decision.predicted_cached)
            link = self.nodes.links[decision.node]
            order = self.order(decision, prompt, replace(run.params, max_tokens=remaining), run.record.predicted)
            try:
                async for msg in self._submit(run, link, decision, order):
                    yield msg
                return
            except NodeError as e:
                if e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              grpc.StatusCode.ALREADY_EXISTS):
                    raise RequestError(e.code, f"node {link.name}: {e.details}") from None
                self._reroute(run, link, e)

    def _reroute(self, run: Run, link: NodeLink, e: NodeError) -> None:
        self.nodes.mark_down(link, f"submit failed: {e.code.name} {e.details}")
        self.scheduler.on_finish(run.rid, 0)  # no-op when mark_down already closed it
        run.reroutes += 1
        self.stats.requests_rerouted += 1
        self.metrics.reroutes.inc()
        if run.reroutes > self.config.max_reroutes:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"request {run.rid} failed on {run.reroutes} nodes (last: {link.name}: "
                               f"{e.details}); {len(run.generated)} tokens had been streamed") from None
        logger.info("re-routing %s after node %s failed (%d tokens already streamed)", run.rid,
                    link.name, len(run.generated))

    def _schedule(self, req: RouteRequest) -> Decision:
        t = time.perf_counter()
        try:
            d = self.scheduler.schedule(req)
        except RuntimeError as e:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"no node can take the request: {e}") from None
        self.metrics.decision.observe(time.perf_counter() - t)
        self.metrics.branches.labels(d.branch.value).inc()
        return d

    def order(self, decision: Decision, prompt: list[int], params: GenParams,
              expected_cached: dict[str, int] | None = None) -> DispatchOrder:
        """The decision, addressed: the pull order's source node becomes its address."""
        pull = None
        if decision.pull is not None:
            src = self.nodes.links.get(decision.pull.source)
            if src is not None and src.alive:
                pull = PullSource(src.address, src.name, decision.pull.block_hashes)
        return DispatchOrder(decision.request_id, prompt, params, decision.priority_group, expected_cached, pull)

    async def _submit(self, run: Run, link: NodeLink, decision: Decision, order: DispatchOrder):
        link.requests_total += 1
        async with aclosing(link.client.submit(order)) as stream:
            async for msg in stream:
                if isinstance(msg, NodeDone):
                    yield self._complete(run, link, decision, msg)
                    return
                if run.first_token_at is None:
                    run.first_token_at = time.monotonic()
                    self.scheduler.on_first_token(run.rid)
                    if run.record is not None:
                        run.record.ttft_ms = (run.first_token_at - run.t0) * 1e3
                run.generated.extend(msg.token_ids)
                run.text.append(msg.text)
                yield msg
        raise RequestError(grpc.StatusCode.UNAVAILABLE, f"node {link.name} ended the stream without a result")

    def _complete(self, run: Run, link: NodeLink, decision: Decision, done: NodeDone) -> Outcome:
        now = time.monotonic()
        run.finished = True
        self.scheduler.on_finish(run.rid, len(run.generated))
        L = len(run.ids)
        total_cached = min(L, sum(done.cached.values()))
        first = run.first_token_at or now
        out = Outcome(run, link.name, decision, done.cached, L - total_cached, first - run.t0, now - run.t0,
                      done.finish_reason, done.ttft_s, done.engine_ttft_s)
        self._account(out, done)
        if run.record is not None:  # "done" now: GenerateOnce returns before run()'s `finally` runs
            run.record.state, run.record.actual = "done", done.cached
            run.record.ttft_ms = out.ttft_s * 1e3
        for cb in self.on_complete:
            cb(run.hashes, link.node_id, total_cached)
        return out

    def _account(self, out: Outcome, done: NodeDone) -> None:
        self.samples.add_request(out.ttft_s, done.engine_ttft_s, rerouted=out.run.reroutes > 0, pulled=out.decision.pull is not None)
        L = len(out.run.ids)
        st = self.stats
        st.requests_total += 1
        st.prompt_tokens += L
        st.recomputed_tokens += out.recomputed_tokens
        st.cached.update(out.cached)
        m = self.metrics
        m.requests.labels("ok").inc()
        m.ttft.observe(out.ttft_s)
        m.latency.observe(out.latency_s)
        m.prompt_tokens.inc(L)
        for k, v in out.cached.items():
            if v:
                m.cached_tokens.labels(k).inc(v)

    # ------------------------------------------------------------------ background work
    async def run_on(self, node: NodeId, request_id: str, prompt: list[int], params: GenParams,
                     timeout_s: float) -> NodeDone:
        """Run a request of the router's own on `node` with its cheapest plan (a prefix
        warm-up): the same order and submit path as a client's, nothing counted.

        Raises:
            NodeError: the node failed the call.
            RuntimeError: the node ended the stream without a result.
        """
        hashes = self.hasher(prompt)
        decision = self.scheduler.order_on(node, RouteRequest(request_id, hashes, len(prompt), params.max_tokens))
        link = self.nodes.links[node]
        async with aclosing(link.client.submit(self.order(decision, prompt, params), timeout_s)) as stream:
            async for msg in stream:
                if isinstance(msg, NodeDone):
                    return msg
        raise RuntimeError("the node ended the run without a result")
