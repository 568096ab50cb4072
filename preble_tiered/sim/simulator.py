"""Discrete-event simulator: the real Scheduler on a simulated clock, one SimEngine per node.

Events, in time order (ties in insertion order):
    ARRIVAL   a request reaches the router: Scheduler.schedule, then SimEngine.submit (at
              once, or after `request_overhead_s` as a SUBMIT event)
    SUBMIT    a scheduled request reaches its node
    STEP      a node's step ends: apply progress, report first tokens and finishes,
              drain residency events, start the next step
    WAKE      a node waiting on KV loads may run again
    DELIVER   residency events reach the router's index (after `event_delay_s`)

Every request is accounted for: the run fails loudly if one is left unfinished.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from preble_tiered.sim.engine import SimEngine
from preble_tiered.sim.engine_types import SimEngineConfig, SimRequest, State
from preble_tiered.hashing import BlockHasher
from preble_tiered.scheduler.clock import ManualClock
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig
from preble_tiered.scheduler.calibration import CostLearner
from preble_tiered.scheduler.cost_model import CPU_TINY_PREFILL, CostModel, FlatDecode
from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.profile import MAX_HOST_SLOWDOWN
from preble_tiered.scheduler.registry import policy_class
from preble_tiered.scheduler.types import RouteRequest
from preble_tiered.sim.metrics import RequestRecord, SimResult, ideal_records
from preble_tiered.types import WorkloadRequest
from preble_tiered.workloads import request_token_ids

_ARRIVAL, _STEP, _WAKE, _DELIVER, _SUBMIT = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SimConfig:
    """A simulated cluster."""

    nodes: int = 8
    policy: str = "e2_tiered"
    hbm_tokens: int | None = None
    """Per-node HBM KV capacity in tokens (None: the cost model's)."""
    dram_tokens: int | None = None
    """Per-node DRAM tier in tokens (None: 10x HBM). Used by policies with tiers."""
    disk_tokens: int | None = None
    """Per-node disk tier in tokens (None: 50x HBM). Used by policies with tiers."""
    block_size: int = 32
    max_batch_tokens: int = 4096
    """Token budget of one engine step (chunked prefill)."""
    max_running: int = 256
    """Most sequences one engine runs at once."""
    request_overhead_s: float = 0.0
    """Time from a request's arrival at the router to its node (router hop, tokenization,
    gRPC): it counts in TTFT and latency. A profile measures it."""
    event_delay_s: float = 0.0
    """Delay before residency events reach the router (staleness)."""
    engine_tiers: str = "policy"
    """'policy': tiers only for policies that use them (each runs on its own stack);
    'all': every policy's engines get DRAM/disk tiers; 'none': HBM only for all."""
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    host_nodes: int = 1
    """Nodes that share one host's cores (nodes 0..h-1 on the first host, and so on)."""
    host_prefill_slowdown: float = 0.0
    """A step holding prefill work takes (1 + this) times its price while another node of its
    host is mid-step (CPU nodes sharing cores; a profile measures it; 0: nodes apart)."""
    learn_costs: bool = False
    """The router prices with what it has measured, as a real router started without a profile
    does: it starts from that router's guess (`engine_cost_model`: a tiny-CPU prefill fit, a
    flat decode step) and refits from the nodes' clean prefills and decode-only steps (`CostLearner`), while the
    engines run at the cost model's prices throughout. False: the router knows those prices
    from the start (Preble's simulator; `preble sim --router-learns-costs` turns it on, and
    docs/decisions.md says what each predicts against the real cluster)."""
    prewarm_shared: bool = False
    """Every node starts with every block that two or more requests share held in its HBM
    for good, in room added to its capacity: no shared block is ever computed, fetched or
    evicted. With `least_load` this is the warm-cluster bound (`warm_bound`)."""

    def __post_init__(self) -> None:
        if self.nodes <= 0:
            raise ValueError(f"nodes must be positive, got {self.nodes}")
        if self.event_delay_s < 0 or self.request_overhead_s < 0:
            raise ValueError("event_delay_s and request_overhead_s cannot be negative")
        if self.max_running < 1 or self.max_batch_tokens < 1:
            raise ValueError("max_running and max_batch_tokens must be positive")
        if self.host_nodes < 1 or not 0.0 <= self.host_prefill_slowdown < MAX_HOST_SLOWDOWN:
            raise ValueError(f"host_nodes must be positive and host_prefill_slowdown in [0, {MAX_HOST_SLOWDOWN:g})")
        if self.engine_tiers not in ("policy", "all", "none"):
            raise ValueError("engine_tiers must be one of policy, all, none")
        policy_class(self.policy)  # raises ValueError for an unknown name


class Simulator:
    def __init__(self, requests: Sequence[WorkloadRequest], config: SimConfig, cost: CostModel,
                 hasher: BlockHasher | None = None) -> None:
        if not requests:
            raise ValueError("the workload has no requests")
        self.config = config
        self.cost = cost
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.hasher = hasher or BlockHasher(config.block_size)
        self.clock = ManualClock()
        hbm = config.hbm_tokens or cost.hbm_tokens
        self._hashes = self._hash_all()
        self._shared: list[int] = []
        if config.prewarm_shared:  # blocks in two or more requests (hashes chain: none repeats within one)
            counts = Counter(h for hs in self._hashes.values() for h in hs)
            self._shared = [h for h, c in counts.items() if c >= 2]
            hbm += len(self._shared) * config.block_size
        self.learner = CostLearner() if config.learn_costs else None
        self.scheduler = Scheduler(
            SchedulerConfig(config.policy, config.nodes, config.block_size, hbm, config.policy_config),
            replace(cost, prefill=CPU_TINY_PREFILL, decode=FlatDecode()) if self.learner else cost, self.clock)
        pol = self.scheduler.policy
        tiers = config.engine_tiers == "all" or (config.engine_tiers == "policy" and pol.uses_tiers)
        ecfg = SimEngineConfig(
            hbm_tokens=hbm,
            dram_tokens=(config.dram_tokens if config.dram_tokens is not None else 10 * hbm) if tiers else 0,
            disk_tokens=(config.disk_tokens if config.disk_tokens is not None else 50 * hbm) if tiers else 0,
            block_size=config.block_size, max_batch_tokens=config.max_batch_tokens,
            max_running=config.max_running, report_samples=self.learner is not None)
        self.engines = [SimEngine(n, ecfg, cost, self.engine) for n in range(config.nodes)]
        for eng in self.engines:
            eng.preload(self._shared)
        self._check_fits(hbm)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._busy = [False] * config.nodes
        self._records: dict[str, RequestRecord] = {}
        self._inflight: dict[str, SimRequest] = {}

    def engine(self, node: int) -> SimEngine:
        return self.engines[node]

    def _check_fits(self, hbm: int) -> None:
        worst = max(self.requests, key=lambda r: r.prompt_tokens + r.output_tokens)
        need = worst.prompt_tokens + worst.output_tokens + 2 * self.config.block_size
        if need > hbm:
            raise ValueError(f"request {worst.request_id} needs {need} tokens of KV but a node holds "
                             f"{hbm}: raise --hbm-tokens")

    def _push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def run(self, progress: Callable[[int, int], None] | None = None) -> SimResult:
        """Run to completion. `progress(done, total)` is called as requests finish."""
        hashes = self._hashes
        for node in range(self.config.nodes):
            self._drain(node)  # what `prewarm_shared` preloaded reaches the index
        for r in self.requests:
            self._push(r.arrival_s, _ARRIVAL, r)
        total, done = len(self.requests), 0
        wall0 = time.perf_counter()
        while self._heap:
            t, _, kind, payload = heapq.heappop(self._heap)
            self.clock.set(max(t, self.clock.now()))
            if kind == _ARRIVAL:
                self._arrive(payload, hashes[payload.request_id])  # type: ignore[union-attr]
            elif kind == _STEP:
                node, work, dur = payload  # type: ignore[misc]
                finished = self._end_step(node, work, dur)
                done += finished
                if progress and finished:
                    progress(done, total)
            elif kind == _WAKE:
                self._start_step(payload)  # type: ignore[arg-type]
            elif kind == _SUBMIT:
                self._submit(*payload)  # type: ignore[misc]
            else:
                for ev in payload:  # type: ignore[union-attr]
                    self.scheduler.apply(ev)
        if self._inflight:
            raise RuntimeError(f"{len(self._inflight)} requests never finished (simulator bug)")
        return SimResult(self.config.policy, list(self._records.values()),
                         ideal_records(self.requests, hashes, self.cost, self.config.block_size,
                                       self.config.max_batch_tokens),
                         dict(self.scheduler.branch_counts), time.perf_counter() - wall0,
                         [e.stats for e in self.engines])

    def _hash_all(self) -> dict[str, list[int]]:
        return {r.request_id: self.hasher(request_token_ids(r)) for r in self.requests}

    def _arrive(self, wr: WorkloadRequest, hashes: list[int]) -> None:
        now = self.clock.now()
        req = RouteRequest(wr.request_id, hashes, wr.prompt_tokens, wr.output_tokens)
        t0 = time.perf_counter()
        d = self.scheduler.schedule(req)
        decision_us = (time.perf_counter() - t0) * 1e6
        sr = SimRequest(wr.request_id, hashes, wr.prompt_tokens, wr.output_tokens, d.plan)
        self._records[wr.request_id] = RequestRecord(
            request_id=wr.request_id, node=d.node, branch=d.branch.value, arrival_s=now,
            prompt_tokens=wr.prompt_tokens, output_tokens=wr.output_tokens, decision_us=decision_us)
        self._inflight[wr.request_id] = sr
        if self.config.request_overhead_s > 0:
            self._push(now + self.config.request_overhead_s, _SUBMIT, (d.node, sr))
        else:
            self._submit(d.node, sr)

    def _submit(self, node: int, sr: SimRequest) -> None:
        self.engines[node].submit(sr)
        if not self._busy[node]:
            self._start_step(node)

    def _start_step(self, node: int) -> None:
        if self._busy[node]:
            return
        eng = self.engines[node]
        now = self.clock.now()
        dur, work = eng.plan_step(now)
        self._drain(node)
        if work:
            if self.config.host_prefill_slowdown and self._host_busy(node) and any(
                    r.state is State.PREFILL for r, _ in work):
                dur *= 1.0 + self.config.host_prefill_slowdown
            self._busy[node] = True
            self._push(now + dur, _STEP, (node, work, dur))
        else:
            wake = eng.next_ready()
            if wake is not None:
                self._push(wake, _WAKE, node)

    def _host_busy(self, node: int) -> bool:
        """Whether another node of `node`'s host is mid-step."""
        h = self.config.host_nodes
        first = node - node % h
        return any(self._busy[i] for i in range(first, min(first + h, len(self._busy))) if i != node)

    def _end_step(self, node: int, work: list, dur: float) -> int:
        eng = self.engines[node]
        now = self.clock.now()
        res = eng.finish_step(work, now, dur)
        for r in res.first_tokens:
            self.scheduler.on_first_token(r.request_id)
        for r in res.finished:
            self.scheduler.on_finish(r.request_id, r.generated)
            self._records[r.request_id].fill_from(r)
            del self._inflight[r.request_id]
        self._busy[node] = False
        if self.learner is not None:
            self._learn(eng)
        self._drain(node)
        self._start_step(node)
        return len(res.finished)

    def _learn(self, eng: SimEngine) -> None:
        """Hand the step's measurements to the router's cost model (a real router reads them
        with its next load poll, at most `load_interval_s` later)."""
        prefills, decodes = eng.take_samples()
        if not prefills and not decodes:
            return
        for sample in prefills:
            self.learner.add_prefill(*sample)
        for sample in decodes:
            self.learner.add_decode(*sample)
        cost = self.learner.refit(self.scheduler.cluster.cost, self.config.max_batch_tokens)
        if cost is not None:
            self.scheduler.update_cost(cost)

    def _drain(self, node: int) -> None:
        events = self.engines[node].take_events()
        if not events:
            return
        if self.config.event_delay_s > 0:
            self._push(self.clock.now() + self.config.event_delay_s, _DELIVER, events)
        else:
            for ev in events:
                self.scheduler.apply(ev)


def warm_bound(requests: Sequence[WorkloadRequest], nodes: int, cost: CostModel, **config) -> SimResult:
    """The warm-cluster bound: `least_load` on nodes that already hold, in HBM that never
    runs out, every block two or more requests share. It serves the same load as the
    policies (unlike the per-request ideal bound), with only each request's own tokens to
    compute and the load spread evenly: no router can beat it by more than noise, so
    `baseline / bound` is the largest ratio any policy can reach against that baseline."""
    return Simulator(requests, SimConfig(nodes=nodes, policy="least_load", prewarm_shared=True, **config),
                     cost).run()


@dataclass(frozen=True)
class ComputeFloor:
    """The least prefill any router must compute for a stream (`compute_floor`)."""

    prompt_tokens: int
    unshared_tokens: int  # tokens outside every shared block, over all requests
    shared_blocks: int  # distinct blocks that two or more requests hold
    floor_tokens: int  # unshared tokens + one computation of each shared block

    @property
    def share(self) -> float:
        return self.floor_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def compute_floor(requests: Sequence[WorkloadRequest], block_size: int = 32) -> ComputeFloor:
    """Tokens no placement, tier or copy can avoid computing: each token outside every
    shared block (a block two or more requests hold; a trailing partial block is never
    shared) wherever its request runs, and each shared block once somewhere. A lower bound
    on any policy's recomputed tokens; the warm-cluster bound computes only the first part."""
    hasher = BlockHasher(block_size)
    counts: Counter[int] = Counter()
    total = 0
    for r in requests:
        counts.update(hasher(request_token_ids(r)))
        total += r.prompt_tokens
    shared = [c for c in counts.values() if c >= 2]
    unshared = total - block_size * sum(shared)
    return ComputeFloor(total, unshared, len(shared), unshared + block_size * len(shared))


def simulate(requests: Sequence[WorkloadRequest], config: SimConfig, cost: CostModel,
             progress: Callable[[int, int], None] | None = None) -> SimResult:
    """Run one policy over `requests` (convenience wrapper)."""
    return Simulator(requests, config, cost).run(progress)
