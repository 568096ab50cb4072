"""The router: the scheduler on a real clock, in front of the node agents.

    client --Generate--> Router.generate: tokenize -> hash -> Scheduler.schedule -> Node.Submit
                                          ^ residency: per node, Snapshot then Events(after_seq)
                                          ^ load: per node, Load every `load_interval_s`

The scheduler is the same object the simulator drives (`preble_tiered.scheduler.core`); only
this module feeds it wall-clock time, events and completions. All state is touched from the
asyncio loop only. A node is marked down (residency dropped, its requests re-routed by their
handlers) when its event stream or a submit breaks, or its load polls fail for
`down_after_s`; it comes back when a snapshot succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from preble_tiered.api.validate import validate_prompt
from preble_tiered.types import GenParams
from preble_tiered.hashing import BlockHasher
from preble_tiered.scheduler.calibration import PrefillCalibrator
from preble_tiered.scheduler.clock import Clock, MonotonicClock
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig, predicted_cached
from preble_tiered.scheduler.cost_model import Link, engine_cost_model
from preble_tiered.scheduler.fair_queue import hit_group
from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.types import Decision, RouteRequest
from preble_tiered.api import convert
from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
from preble_tiered.router.admin_state import AdminState
from preble_tiered.router.decisions import DecisionRecord, DecisionRing
from preble_tiered.router.metrics import RouterMetrics
from preble_tiered.router.prefix_admin import PrefixAdmin
from preble_tiered.api.pb import inference_pb2, node_pb2, node_pb2_grpc
from preble_tiered.types import NodeId

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS = 128
MAX_TEXT_CHARS = 4 << 20


@dataclass(frozen=True)
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    policy: str = "e2_tiered"
    block_size: int = 32
    """Tokens per KV block; nodes with another block size are refused."""
    max_nodes: int = 64
    max_outstanding: int = 1024
    """Requests accepted and unfinished; beyond it Generate answers RESOURCE_EXHAUSTED."""
    tokenizer: str | None = None
    """Tokenizer directory (None: the first node's model directory)."""
    load_interval_s: float = 0.5
    down_after_s: float = 1.0
    """A node whose load polls fail this long is marked down."""
    max_reroutes: int = 3
    metrics_port: int = 0
    policy_config: PolicyConfig = field(default_factory=lambda: PolicyConfig(explain=True))
    state_path: str | None = None
    """JSON file of named prefixes and pins (None: kept in memory, lost at exit)."""
    pin_interval_s: float = 1.0
    """Seconds between pin reconcile rounds."""
    admin_token: str | None = field(default=None, repr=False)
    """Bearer token the Admin service requires (None: Admin is open; say so in the log)."""
    inference_token: str | None = field(default=None, repr=False)
    """Bearer token the Inference service requires (None: open)."""
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_nodes <= 4096:
            raise ValueError(f"max_nodes must be in [1, 4096], got {self.max_nodes}")
        if self.max_outstanding <= 0:
            raise ValueError(f"max_outstanding must be positive, got {self.max_outstanding}")
        if self.load_interval_s <= 0 or self.down_after_s <= 0:
            raise ValueError("load_interval_s and down_after_s must be positive")
        if self.pin_interval_s <= 0:
            raise ValueError(f"pin_interval_s must be positive, got {self.pin_interval_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")


class RequestError(Exception):
    """A request failed in a way the client must be told about (a gRPC status + message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class NodeLink:
    node_id: NodeId
    address: str
    info: node_pb2.NodeInfo
    channel: grpc.aio.Channel
    stub: node_pb2_grpc.NodeStub
    alive: bool = False
    event_seq: int = 0
    resyncs: int = 0
    load: node_pb2.LoadReport = field(default_factory=node_pb2.LoadReport)
    requests_total: int = 0
    last_load_ok: float = 0.0
    behind_seq: int = 0  # a load report's event_seq we had not reached (seen once)
    events_call: object | None = None  # the live Events call (cancelled to force a resync)
    rates: dict[str, float] = field(default_factory=dict)  # measured link bandwidths (bytes/s)
    resync_requested: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.info.name or self.address


@dataclass
class RouterStats:
    requests_total: int = 0
    requests_failed: int = 0
    requests_rerouted: int = 0
    prompt_tokens: int = 0
    recomputed_tokens: int = 0
    cached: Counter[str] = field(default_factory=Counter)


class EventGap(Exception):
    pass


class ResidencyFollower:
    """Sequence bookkeeping of one node's event stream (pure; the router feeds it)."""

    def __init__(self) -> None:
        self.seq = 0

    def reset(self, snapshot_seq: int) -> None:
        self.seq = snapshot_seq

    def accept(self, seq: int) -> None:
        """Raises EventGap unless `seq` directly follows the last one."""
        if seq != self.seq + 1:
            raise EventGap(f"expected event batch {self.seq + 1}, got {seq}")
        self.seq = seq


class Router:
    def __init__(self, config: RouterConfig, clock: Clock | None = None, metrics: RouterMetrics | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.metrics = metrics or RouterMetrics()
        self.hasher = BlockHasher(config.block_size)
        sc = SchedulerConfig(policy=config.policy, n_nodes=config.max_nodes, block_size=config.block_size,
                             policy_config=config.policy_config)
        self.scheduler = Scheduler(sc, engine_cost_model("engine", 8192, 1 << 16), self.clock)
        for n in range(config.max_nodes):
            self.scheduler.mark_down(n)  # slots come alive as nodes register and resync
        self.calibrator = PrefillCalibrator()
        self.links: dict[NodeId, NodeLink] = {}
        self._by_address: dict[str, NodeId] = {}
        self.model: node_pb2.NodeInfo | None = None
        self._tokenizer = None
        self._active: set[str] = set()
        self.stats = RouterStats()
        self._closing = False
        self.decisions = DecisionRing()
        self.admin = PrefixAdmin(self, AdminState(Path(config.state_path) if config.state_path else None),
                                 interval_s=config.pin_interval_s)

    def start(self) -> None:
        """Start the background work that is not per node (pin reconciliation)."""
        kernel = self.scheduler.index.kernel
        logger.info("prefix index: %s kernel, %d node slots, policy %s%s", kernel, self.config.max_nodes,
                    self.config.policy, "" if kernel == "native" else
                    " (the C kernel is not in use: not built here, > 256 slots, or PREBLE_INDEX_KERNEL; "
                    "same decisions, ~2x slower)")
        self.admin.start()

    # ------------------------------------------------------------------ registry
    async def register(self, req: node_pb2.RegisterRequest) -> NodeId:
        """Add (or re-find) the node at `req.address`. Raises RequestError on a mismatch."""
        info = req.info
        if not req.address:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "address is required")
        if info.block_size != self.config.block_size:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node block size {info.block_size} != router block size {self.config.block_size}; "
                               "start both with the same --block-size")
        if self.model is not None and (info.vocab_size, info.hash_namespace) != (
                self.model.vocab_size, self.model.hash_namespace):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node serves another model ({info.model}, vocab {info.vocab_size}) than the "
                               f"cluster ({self.model.model}, vocab {self.model.vocab_size})")
        node = self._by_address.get(req.address)
        if node is not None:
            self.links[node].info = info
            return node
        if len(self.links) >= self.config.max_nodes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the router takes at most {self.config.max_nodes} nodes (--max-nodes)")
        node = len(self.links)
        if self.model is None:
            self.model = info
            cost = engine_cost_model(info.model or "engine", info.kv_bytes_per_token, info.kv_capacity_tokens)
            self.scheduler.update_cost(cost)
        channel = grpc.aio.insecure_channel(req.address, options=CHANNEL_OPTIONS)
        link = NodeLink(node, req.address, info, channel, node_pb2_grpc.NodeStub(channel))
        self.links[node] = link
        self._by_address[req.address] = node
        link.tasks = [asyncio.create_task(self._follow(link)), asyncio.create_task(self._poll(link))]
        logger.info("node %d registered: %s at %s", node, info.name, req.address)
        return node

    # ------------------------------------------------------------------ residency
    async def _follow(self, link: NodeLink) -> None:
        """Snapshot, then apply the event stream; resync on any gap; mark down on failure."""
        follower = ResidencyFollower()
        backoff = 0.2
        while not self._closing:
            call = None
            try:
                snap = await link.stub.Snapshot(node_pb2.SnapshotRequest(), timeout=10.0)
                self._apply_snapshot(link, snap)
                follower.reset(snap.seq)
                backoff = 0.2
                call = link.events_call = link.stub.Events(node_pb2.EventsRequest(after_seq=snap.seq))
                async for batch in call:
                    if not link.alive:  # marked down by a failed submit or poll: batches still
                        raise _StreamEnded()  # buffered must not resurrect its residency
                    follower.accept(batch.seq)
                    apply = self.scheduler.apply
                    for ev in batch.events:
                        apply(convert.event_from_pb(ev, link.node_id))
                    link.event_seq = batch.seq
                raise _StreamEnded()
            except EventGap as e:
                self._count_resync(link, str(e))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE or link.resync_requested:
                    link.resync_requested = False
                    self._count_resync(link, e.details() or "")
                    continue
                self.node_failed(link, f"event stream: {e.code().name} {e.details()}")
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
            except _StreamEnded:
                self.node_failed(link, "event stream ended")
                await asyncio.sleep(backoff)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if link.resync_requested and task is not None and not task.cancelling():
                    link.resync_requested = False  # we cancelled the call ourselves (_check_behind)
                    self._count_resync(link, "the load report is ahead of the stream")
                    continue
                raise
            except Exception:  # a malformed event: resync rather than die
                logger.exception("node %s: bad residency event; resynchronising", link.name)
                self._count_resync(link, "bad event")
                await asyncio.sleep(backoff)
            finally:
                if call is not None:
                    call.cancel()

    def _apply_snapshot(self, link: NodeLink, snap: node_pb2.SnapshotResponse) -> None:
        if not link.alive:
            self.scheduler.mark_up(link.node_id, link.info.kv_capacity_tokens or None)
            link.alive = True
            link.last_load_ok = time.monotonic()
            logger.info("node %d (%s) is up", link.node_id, link.name)
        for ev in convert.snapshot_events(snap, link.node_id):
            self.scheduler.apply(ev)
        link.event_seq = snap.seq
        self.metrics.nodes_alive.set(sum(lk.alive for lk in self.links.values()))

    def _count_resync(self, link: NodeLink, why: str) -> None:
        link.resyncs += 1
        self.metrics.resyncs.labels(link.name).inc()
        logger.warning("node %s: residency stream gap (%s); resynchronising by snapshot", link.name, why)

    def node_failed(self, link: NodeLink, why: str) -> None:
        """Mark a node down: drop its residency; its requests' handlers re-route them."""
        if not link.alive:
            return
        link.alive = False
        lost = self.scheduler.mark_down(link.node_id)
        self.admin.on_node_down(link.node_id)
        self.metrics.nodes_alive.set(sum(lk.alive for lk in self.links.values()))
        logger.warning("node %d (%s) is down (%s); %d requests will be re-routed", link.node_id, link.name,
                       why, len(lost))

    # ------------------------------------------------------------------ load reports
    async def _poll(self, link: NodeLink) -> None:
        interval = self.config.load_interval_s
        while not self._closing:
            try:
                rep = await link.stub.Load(node_pb2.LoadRequest(), timeout=max(interval, 0.5))
                if not rep.ready:
                    raise _NotReady()
                link.load = rep
                link.last_load_ok = time.monotonic()
                ns = self.scheduler.cluster.nodes[link.node_id]
                ns.reported_running, ns.reported_waiting = rep.running, rep.waiting
                self.metrics.queue_depth.labels(link.name).set(rep.waiting)
                self.metrics.inflight.labels(link.name).set(ns.n_inflight)
                self._check_behind(link, rep.event_seq)
                self._calibrate(rep)
                self._update_links(link, rep)
            except (grpc.aio.AioRpcError, _NotReady) as e:
                if link.alive and time.monotonic() - link.last_load_ok >= self.config.down_after_s:
                    why = "engine not ready" if isinstance(e, _NotReady) else f"load polls failing ({e.code().name})"
                    self.node_failed(link, why)
            await asyncio.sleep(interval)

    def _check_behind(self, link: NodeLink, node_seq: int) -> None:
        """A batch lost at the tail of the stream shows no gap until the next one: catch it by
        the load report's sequence number, when two polls in a row say we are behind it."""
        if node_seq <= link.event_seq:
            link.behind_seq = 0
        elif link.behind_seq and link.behind_seq <= node_seq and link.event_seq < link.behind_seq:
            link.behind_seq = 0
            if link.events_call is not None and not link.resync_requested:
                link.resync_requested = True
                link.events_call.cancel()
        else:
            link.behind_seq = node_seq

    def _update_links(self, link: NodeLink, rep: node_pb2.LoadReport) -> None:
        """Feed the nodes' measured bandwidths into the cost model: per kind ("dram", "disk",
        "net"), the median over every node's (and, for net, every peer link's) EWMA. The
        scheduler prices one link per kind, so per-link rates only shape that median."""
        if not rep.link_rates:
            return
        link.rates = {r.link: r.bytes_per_s for r in rep.link_rates if r.bytes_per_s > 0}
        by_kind: dict[str, list[float]] = {}
        for lk in self.links.values():
            for name, bps in lk.rates.items():
                by_kind.setdefault(name.split(":", 1)[0], []).append(bps)
        cost = self.scheduler.cluster.cost
        links = cost.links
        for kind, vals in by_kind.items():
            old = getattr(links, kind, None)
            if old is None:
                continue
            new = statistics.median(vals)
            if abs(new - old.bandwidth) > 0.1 * old.bandwidth:  # skip noise-level updates
                links = replace(links, **{kind: Link(new, old.latency_s)})
        if links != cost.links:
            self.scheduler.update_cost(cost.with_links(links))
            logger.info("link bandwidths now dram %.2f GB/s, disk %.2f GB/s, net %.2f GB/s",
                        links.dram.bandwidth / 1e9, links.disk.bandwidth / 1e9, links.net.bandwidth / 1e9)

    def _calibrate(self, rep: node_pb2.LoadReport) -> None:
        for s in rep.prefill_samples:
            self.calibrator.add(s.new_tokens, s.context_tokens, s.seconds)
        fitted = self.calibrator.maybe_refit()
        if fitted is not None:
            self.scheduler.update_cost(replace(self.scheduler.cluster.cost, prefill=fitted))
            logger.info("prefill model refitted from %d samples: %s", len(self.calibrator), fitted)

    # ------------------------------------------------------------------ requests
    def prompt_ids(self, req: inference_pb2.GenerateRequest) -> list[int]:
        kind = req.WhichOneof("prompt")
        if kind == "token_ids":
            return list(req.token_ids.ids)
        if kind == "text":
            if not req.text:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty: send text or token_ids")
            if len(req.text) > MAX_TEXT_CHARS:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"prompt text has {len(req.text)} characters; the limit is {MAX_TEXT_CHARS}")
            return self.tokenizer().encode(req.text)
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty: set `text` or `token_ids`")

    def tokenizer(self):
        if self._tokenizer is None:
            path = self.config.tokenizer or (self.model.model if self.model else None)
            if not path:
                raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                   "no tokenizer yet (no node has registered): retry, or send token_ids")
            self._tokenizer = load_tokenizer(path)
        return self._tokenizer

    def _admit(self, req: inference_pb2.GenerateRequest) -> tuple[str, list[int], GenParams]:
        rid = req.request_id or uuid.uuid4().hex
        if not -9 <= req.priority <= 9:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"priority must be in [-9, 9], got {req.priority}")
        if len(rid) > MAX_REQUEST_ID_CHARS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"request_id has {len(rid)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
        if self.model is None or not any(lk.alive for lk in self.links.values()):
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "no node is serving yet; retry in a few seconds")
        ids = self.prompt_ids(req)
        params = convert.params_from_pb(req.sampling)
        try:
            validate_prompt(self.model.vocab_size, self.model.max_model_len, ids, params)
        except ValueError as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if len(self._active) >= self.config.max_outstanding:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the router has {len(self._active)} requests in flight (limit "
                               f"{self.config.max_outstanding}); retry later")
        if rid in self._active:
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, f"request_id {rid!r} is already in flight")
        return rid, ids, params

    def _schedule(self, rid: str, prompt: list[int], hashes: list[int], max_tokens: int) -> Decision:
        t = time.perf_counter()
        try:
            d = self.scheduler.schedule(RouteRequest(rid, hashes, len(prompt), max_tokens))
        except RuntimeError as e:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"no node can take the request: {e}") from None
        self.metrics.decision.observe(time.perf_counter() - t)
        self.metrics.branches.labels(d.branch.value).inc()
        return d

    async def generate(self, req: inference_pb2.GenerateRequest):
        """Yields GenerateResponse messages. Raises RequestError for the client."""
        t0 = time.monotonic()
        try:
            rid, ids, params = self._admit(req)
        except RequestError as e:
            self.metrics.requests.labels(e.code.name.lower()).inc()
            raise
        self._active.add(rid)
        self.metrics.outstanding.set(len(self._active))
        run = _Run(rid, ids, params, t0, priority=req.priority)
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
            self._active.discard(rid)
            self.metrics.outstanding.set(len(self._active))
            if not run.finished:
                self.scheduler.on_finish(rid, len(run.generated))

    async def _drive(self, run: _Run):
        while True:
            remaining = run.params.max_tokens - len(run.generated)
            prompt = run.ids + run.generated
            hashes = self.hasher(prompt)
            decision = self._schedule(run.rid, prompt, hashes, remaining)
            run.hashes = hashes
            run.record = self.decisions.record(run.rid, time.time(), decision, prompt, predicted_cached(decision))
            link = self.links[decision.node]
            try:
                async for msg in self._submit(run, link, decision, prompt, hashes, remaining):
                    yield msg
                return
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise RequestError(code, f"node {link.name}: {e.details()}") from None
                self.node_failed(link, f"submit failed: {code.name} {e.details()}")
                self.scheduler.on_finish(run.rid, 0)  # no-op when mark_down already closed it
                run.reroutes += 1
                self.stats.requests_rerouted += 1
                self.metrics.reroutes.inc()
                if run.reroutes > self.config.max_reroutes:
                    raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                       f"request {run.rid} failed on {run.reroutes} nodes (last: {link.name}: "
                                       f"{e.details()}); {len(run.generated)} tokens had been streamed") from None
                logger.info("re-routing %s after node %s failed (%d tokens already streamed)", run.rid,
                            link.name, len(run.generated))

    def pull_plan(self, decision: Decision, hashes: list[int]) -> node_pb2.PullPlan | None:
        """The plan's "pull these blocks from node m" for the chosen node, if it has one and m
        is alive (a dead source would only cost the node a failed call)."""
        plan = decision.plan
        if plan.pull_from is None or plan.pull_blocks <= 0:
            return None
        src = self.links.get(plan.pull_from)
        if src is None or not src.alive:
            return None
        blocks = hashes[plan.local_blocks:plan.local_blocks + plan.pull_blocks]
        return node_pb2.PullPlan(source_address=src.address, source_name=src.name, hashes=blocks)

    async def _submit(self, run: _Run, link: NodeLink, decision: Decision, prompt: list[int], hashes: list[int],
                      remaining: int):
        plan = decision.plan
        predicted = run.record.predicted if run.record is not None else predicted_cached(decision)
        # Preble's group by the plan's hit ratio, shifted by the client's priority.
        group = min(9, max(0, hit_group(min(1.0, plan.cached_tokens / len(prompt))) + run.priority))
        sub = node_pb2.SubmitRequest(request_id=run.rid, prompt_token_ids=prompt,
                                     sampling=convert.params_to_pb(replace(run.params, max_tokens=remaining)),
                                     priority_group=group, expected_cached_tokens=convert.cached_to_pb(predicted),
                                     pull=self.pull_plan(decision, hashes))
        link.requests_total += 1
        call = link.stub.Submit(sub)
        try:
            async for resp in call:
                if resp.WhichOneof("kind") == "chunk":
                    if run.first_token_at is None:
                        run.first_token_at = time.monotonic()
                        self.scheduler.on_first_token(run.rid)
                        if run.record is not None:
                            run.record.ttft_ms = (run.first_token_at - run.t0) * 1e3
                    run.generated.extend(resp.chunk.token_ids)
                    run.text.append(resp.chunk.text)
                    yield inference_pb2.GenerateResponse(chunk=inference_pb2.GenerateChunk(
                        token_ids=resp.chunk.token_ids, text=resp.chunk.text))
                else:
                    yield inference_pb2.GenerateResponse(complete=self._complete(run, link, decision, predicted,
                                                                                 resp.done))
                    return
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"node {link.name} ended the stream without a result")
        finally:
            call.cancel()

    def _complete(self, run: _Run, link: NodeLink, decision: Decision, predicted: dict[str, int],
                  done: node_pb2.SubmitDone) -> inference_pb2.GenerateComplete:
        now = time.monotonic()
        run.finished = True
        self.scheduler.on_finish(run.rid, len(run.generated))
        L = len(run.ids)
        cached = convert.cached_from_pb(done.cached_tokens)
        total_cached = min(L, sum(cached.values()))
        first = run.first_token_at or now
        usage = inference_pb2.Usage(
            request_id=run.rid, prompt_tokens=L, completion_tokens=len(run.generated),
            cached_tokens=convert.cached_to_pb(cached), recomputed_tokens=L - total_cached, node=link.name,
            ttft_ms=(first - run.t0) * 1e3, latency_ms=(now - run.t0) * 1e3, finish_reason=done.finish_reason,
            branch=decision.branch.value, predicted_cached_tokens=convert.cached_to_pb(predicted),
            reroutes=run.reroutes)
        st = self.stats
        st.requests_total += 1
        st.prompt_tokens += L
        st.recomputed_tokens += L - total_cached
        st.cached.update(cached)
        m = self.metrics
        m.requests.labels("ok").inc()
        m.ttft.observe(first - run.t0)
        m.latency.observe(now - run.t0)
        m.prompt_tokens.inc(L)
        for k, v in cached.items():
            if v:
                m.cached_tokens.labels(k).inc(v)
        if run.record is not None:  # "done" now: GenerateOnce returns before generate's `finally` runs
            run.record.state, run.record.actual = "done", cached
            run.record.ttft_ms = (first - run.t0) * 1e3
        self.admin.on_complete(run.hashes, link.node_id, total_cached)
        return inference_pb2.GenerateComplete(text="".join(run.text), token_ids=run.generated, usage=usage)

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        self._closing = True
        await self.admin.close()
        for link in self.links.values():
            for t in link.tasks:
                t.cancel()
            await link.channel.close()


@dataclass
class _Run:
    rid: str
    ids: list[int]
    params: GenParams
    t0: float
    generated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    priority: int = 0
    reroutes: int = 0
    finished: bool = False
    hashes: list[int] = field(default_factory=list)
    record: DecisionRecord | None = None


class _StreamEnded(Exception):
    pass


class _NotReady(Exception):
    pass


class _Tokenizer:
    """`encode(text) -> list[int]` over a `tokenizers` file or a transformers tokenizer."""

    def __init__(self, encode) -> None:
        self.encode = encode


def load_tokenizer(path: str) -> _Tokenizer:
    """The model's tokenizer: tokenizer.json through `tokenizers` (fast, light), else transformers."""
    p = Path(path)
    if (p / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(p / "tokenizer.json"))
        return _Tokenizer(lambda text: tok.encode(text).ids)
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loader failure means the same thing to the client
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot load a tokenizer from {path}: {e}") from None
    return _Tokenizer(lambda text: hf.encode(text))
