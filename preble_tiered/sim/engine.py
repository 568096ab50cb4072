"""SimEngine: a cost-model engine for the simulator, one per node.

It behaves like vLLM/SGLang at the level the scheduler can see:

- continuous batching with chunked prefill: each step runs one decode token for every
  decoding request and fills the rest of a token budget with prefill chunks (FCFS);
  step time = sum of the chunks' prefill times + one decode step (a roofline with a GPU
  preset, the fitted `LinearDecode` with a measured profile);
- admission through Preble's local fair queue (cache-hit priority groups) as the node agent
  does it: only while the engine has nobody waiting for its first step, up to the free
  sequence slots and about one step's token budget of prompts at a time; KV memory is
  reserved up front (prompt blocks it must create + the output budget), so nothing is
  preempted;
- an HBM prefix cache of fixed capacity, evicting unreferenced blocks in LRU order; with
  tiers on, evicted blocks are demoted to DRAM, DRAM's LRU to disk (write-back on
  eviction), and blocks found in DRAM/disk are copied up on use;
- loads (DRAM, disk, pulls from another node) run on per-link queues before the request's
  prefill starts, like vLLM's asynchronous KV connector loads;
- a request's prefix-cache hit is taken when the engine first schedules it, as vLLM does:
  vLLM caches a block when it schedules the step that fills it (`allocate_slots`), so a
  waiting request shares what was cached since its admission and what a request scheduled
  before it in the same step computes; one already running never looks again and computes
  a block it lacks even while another request computes it too;
- with `report_samples`, it measures what a real node reports for the router's cost model:
  clean prefills (nothing else in the engine from the request's admission to its first
  token: new tokens, context, seconds) and decode-only steps followed by another step (a
  node times a step to the start of the next; `take_samples`).

Every change of what the node holds is queued as a residency event; the simulator drains
them once per step (`take_events`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from preble_tiered.events import BlockRemoved, BlockStored, ResidencyEvent
from preble_tiered.scheduler.cost_model import CostModel
from preble_tiered.scheduler.fair_queue import FairQueue, hit_group
from preble_tiered.sim.engine_types import SimEngineConfig, SimRequest, State, StepResult
from preble_tiered.types import NodeId, Tier


class _Tier:
    """An LRU set of blocks with a capacity (DRAM or disk)."""

    __slots__ = ("cap", "blocks")

    def __init__(self, cap_blocks: int) -> None:
        self.cap = cap_blocks
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def __contains__(self, h: int) -> bool:
        return h in self.blocks

    def touch(self, h: int) -> None:
        self.blocks.move_to_end(h)


class SimEngine:
    """One node's engine under a cost model (see module docstring).

    Args:
        node: this node's id.
        config: capacities and batching limits.
        cost: the cost model for step, fetch and pull times.
        peer: looks up another node's engine (pull sources).
    """

    def __init__(self, node: NodeId, config: SimEngineConfig, cost: CostModel,
                 peer: Callable[[NodeId], "SimEngine"] | None = None) -> None:
        self.node = node
        self.config = config
        self.cost = cost
        self.peer = peer
        bs = config.block_size
        self.hbm_cap = config.hbm_tokens // bs
        self.hbm: dict[int, int] = {}  # block -> references by running requests
        self.lru: OrderedDict[int, None] = OrderedDict()  # unreferenced HBM blocks, LRU first
        self.dram = _Tier(config.dram_tokens // bs)
        self.disk = _Tier(config.disk_tokens // bs)
        self.reserved = 0  # blocks reserved by running requests
        self.queue: FairQueue[SimRequest] = FairQueue(config.fair_k)
        self.running: list[SimRequest] = []
        self.link_free = {"dram": 0.0, "disk": 0.0, "net": 0.0}
        self._events: list[ResidencyEvent] = []
        self._prefills: list[tuple[int, int, float]] = []  # report_samples: clean prefills
        self._decodes: list[tuple[int, float, float, int]] = []  # and decode-only steps
        self.stats = {"steps": 0, "busy_s": 0.0, "evicted_blocks": 0, "demoted_bytes": 0}

    # ------------------------------------------------------------ residency
    def tier_of(self, h: int) -> Tier | None:
        if h in self.hbm:
            return Tier.HBM
        if h in self.dram.blocks:
            return Tier.DRAM
        if h in self.disk.blocks:
            return Tier.DISK
        return None

    def holds(self, h: int) -> bool:
        return h in self.hbm or h in self.dram.blocks or h in self.disk.blocks

    def take_events(self) -> list[ResidencyEvent]:
        ev, self._events = self._events, []
        return ev

    def take_samples(self) -> tuple[list[tuple[int, int, float]], list[tuple[int, float, float, int]]]:
        """Clean prefills (new tokens, context tokens, seconds) and decode-only steps (batch,
        context tokens, seconds, 1) measured since the last call, as a node reports them."""
        out = self._prefills, self._decodes
        self._prefills, self._decodes = [], []
        return out

    def used_blocks(self) -> int:
        return len(self.hbm) + self.reserved

    def _store_hbm(self, hashes: list[int], parent: int | None) -> None:
        new = [h for h in hashes if h not in self.hbm]
        for h in hashes:
            if h in self.hbm:
                if self.hbm[h] == 0:
                    del self.lru[h]
                self.hbm[h] += 1
            else:
                self.hbm[h] = 1
        if new:
            self._events.append(BlockStored(self.node, Tier.HBM, tuple(new), parent))

    def preload(self, hashes: list[int]) -> None:
        """Hold `hashes` in HBM for good: one reference each that is never released, so
        they are never evicted (the warm-cluster bound's prewarm; the caller adds their
        room to the capacity)."""
        new = [h for h in hashes if h not in self.hbm]
        if len(self.hbm) + len(new) + self.reserved > self.hbm_cap:
            raise ValueError(f"node {self.node}: preloading {len(new)} blocks overflows HBM ({self.hbm_cap} blocks)")
        for h in new:
            self.hbm[h] = 1
        if new:
            self._events.append(BlockStored(self.node, Tier.HBM, tuple(new)))

    def _release(self, hashes: list[int]) -> None:
        # In reverse, as vLLM frees: a prefix's tail becomes least recent and is evicted
        # first, so what stays cached is always a usable prefix.
        for h in reversed(hashes):
            refs = self.hbm[h] - 1
            self.hbm[h] = refs
            if refs == 0:
                self.lru[h] = None

    def _make_room(self, blocks: int) -> bool:
        """Evict unreferenced HBM blocks (LRU) until `blocks` more fit."""
        excess = self.used_blocks() + blocks - self.hbm_cap
        if excess <= 0:
            return True
        if excess > len(self.lru):
            return False
        victims = [self.lru.popitem(last=False)[0] for _ in range(excess)]
        for h in victims:
            del self.hbm[h]
        self.stats["evicted_blocks"] += excess
        self._events.append(BlockRemoved(self.node, Tier.HBM, tuple(victims)))
        if self.dram.cap:
            self._demote(victims)
        return True

    def _demote(self, victims: list[int]) -> None:
        """Write-back on eviction: HBM -> DRAM, and what DRAM's LRU pushes out -> disk."""
        written = self._write_tier(Tier.DRAM, victims)
        self.stats["demoted_bytes"] += written * self.config.block_size * self.cost.kv_bytes_per_token

    def _write_tier(self, tier: Tier, blocks: list[int]) -> int:
        """Put `blocks` at the recent end of `tier`'s LRU, spilling its overflow to the next
        tier (DRAM -> disk -> gone). Returns how many blocks were new to `tier`."""
        store = self.dram if tier is Tier.DRAM else self.disk
        new = [h for h in blocks if h not in store.blocks]
        for h in blocks:
            store.blocks[h] = None
            store.blocks.move_to_end(h)
        if new:
            self._events.append(BlockStored(self.node, tier, tuple(new)))
        over = len(store.blocks) - store.cap
        if over > 0:
            out = [store.blocks.popitem(last=False)[0] for _ in range(over)]
            self._events.append(BlockRemoved(self.node, tier, tuple(out)))
            if tier is Tier.DRAM and self.disk.cap:
                self._write_tier(Tier.DISK, out)
        return len(new)

    # ------------------------------------------------------------ admission
    def submit(self, req: SimRequest) -> None:
        """Queue a dispatched request (priority by its cache-hit ratio here, now)."""
        hit = self._local_prefix(req.hashes, tiers=self.dram.cap > 0)
        req.hit_ratio = min(1.0, len(hit) * self.config.block_size / max(req.prompt_tokens, 1))
        self.queue.push(req, hit_group(req.hit_ratio, self.queue.groups))

    def has_work(self) -> bool:
        return bool(self.queue) or bool(self.running)

    def _local_prefix(self, hashes: list[int], tiers: bool) -> list[Tier]:
        out: list[Tier] = []
        for h in hashes:
            t = self.tier_of(h)
            if t is None or (t is not Tier.HBM and not tiers):
                break
            out.append(t)
        return out

    def _admit(self, now: float) -> None:
        """The node agent's rule (engine/vllm_engine.py `_admit`): nothing while a running
        request still waits for its first step (vLLM's waiting queue is not empty); else up
        to the free slots, and after the first only prompts that fit what is left of one
        step's token budget."""
        if any(not r.scheduled for r in self.running):
            return
        budget = self.config.max_batch_tokens
        taken = 0
        while self.queue and len(self.running) < self.config.max_running:
            req = self.queue.pop()
            if (taken and req.prompt_tokens > budget) or not self._start(req, now):
                self.queue.push_front(req, hit_group(req.hit_ratio, self.queue.groups))
                break
            budget -= req.prompt_tokens
            taken += 1

    def _start(self, req: SimRequest, now: float) -> bool:
        """Reserve memory and start loads for `req`; False if it does not fit yet."""
        bs = self.config.block_size
        limit = (req.prompt_tokens - 1) // bs  # the last prompt token is always computed
        tiers = self.dram.cap > 0
        local = self._local_prefix(req.hashes, tiers)[:limit]
        out_blocks = -(-(req.output_tokens + req.prompt_tokens % bs) // bs)
        # Protect this request's HBM blocks, then evict for the rest of it.
        in_place = [h for h, t in zip(req.hashes, local) if t is Tier.HBM]
        need = (len(req.hashes) - len(in_place)) + out_blocks
        for h in in_place:
            if self.hbm[h] == 0:
                del self.lru[h]
            self.hbm[h] += 1
        if not self._make_room(need):
            self._release(in_place)
            return False
        if tiers:
            # Making room demotes HBM -> DRAM -> disk and may have pushed this request's
            # own DRAM/disk blocks out: count only what is still there.
            local = self._local_prefix(req.hashes, tiers)[:limit]
        req.held = in_place
        req.reserved_blocks = need
        self.reserved += need
        if self.config.report_samples:  # the node's rule: a prefill is clean only if it was alone
            for other in self.running:
                if other.first_token_at is None:
                    other.clean = False
            req.clean, req.admitted_at = not self.running, now
        self._load(req, local, self._pullable(req, len(local), limit), now)
        self.running.append(req)
        return True

    def _pullable(self, req: SimRequest, start: int, limit: int) -> list[Tier]:
        """Source tiers of the blocks [start, ...) the plan pulls, as long as the source
        still holds them contiguously (it may have evicted some since the decision)."""
        plan = req.plan
        if plan.pull_from is None or self.peer is None or plan.pull_from == self.node:
            return []
        src = self.peer(plan.pull_from)
        end = min(plan.local_blocks + plan.pull_blocks, limit)
        out: list[Tier] = []
        for h in req.hashes[start:end]:
            t = src.tier_of(h)
            if t is None:
                break
            out.append(t)
        return out

    def _load(self, req: SimRequest, local: list[Tier], pulled: list[Tier], now: float) -> None:
        bs, kvb = self.config.block_size, self.cost.kv_bytes_per_token
        counts = {Tier.HBM: 0, Tier.DRAM: 0, Tier.DISK: 0}
        for t in local:
            counts[t] += 1
        ready = now
        for tier, link in ((Tier.DRAM, "dram"), (Tier.DISK, "disk")):
            if counts[tier]:
                ready = max(ready, self._queue_link(link, self.cost.fetch_s(tier, counts[tier] * bs), now))
                self._touch_tier(req.hashes[: len(local)], tier)
        if pulled:
            n_disk = sum(1 for t in pulled if t is Tier.DISK)
            dur = self.cost.pull_s(len(pulled) * bs) + self.cost.fetch_s(Tier.DISK, n_disk * bs)
            ready = max(ready, self._queue_link("net", dur, now))
        n_cached = len(local) + len(pulled)
        fetched = req.hashes[:n_cached]
        new = [h for t, h in zip(local + pulled, fetched) if t is not Tier.HBM or h not in req.held]
        # Loaded blocks enter the HBM cache now (their memory is reserved; a real connector
        # marks them ready when the copy completes, which `ready_at` models).
        if new:
            self._store_hbm(new, None)
            req.held.extend(new)
            req.reserved_blocks -= len(new)
            self.reserved -= len(new)
        req.cached["hbm"] = counts[Tier.HBM] * bs
        req.cached["dram"] = counts[Tier.DRAM] * bs
        req.cached["disk"] = counts[Tier.DISK] * bs
        req.cached["remote"] = len(pulled) * bs
        req.bytes_moved = (len(local) - counts[Tier.HBM] + len(pulled)) * bs * kvb
        req.computed = n_cached * bs
        req.recomputed = req.prompt_tokens - req.computed
        req.ready_at = ready
        req.state = State.LOADING if ready > now else State.PREFILL

    def _queue_link(self, link: str, dur: float, now: float) -> float:
        start = max(now, self.link_free[link])
        self.link_free[link] = start + dur
        return start + dur

    def _touch_tier(self, hashes: list[int], tier: Tier) -> None:
        store = self.dram if tier is Tier.DRAM else self.disk
        for h in hashes:
            if h in store.blocks:
                store.touch(h)

    # ----------------------------------------------------------------- step
    def next_ready(self) -> float | None:
        """Earliest time a loading request becomes runnable (None: none loading)."""
        t = [r.ready_at for r in self.running if r.state is State.LOADING]
        return min(t) if t else None

    def plan_step(self, now: float) -> tuple[float, list[tuple[SimRequest, int]]]:
        """Admit, then choose this step's work: (duration, [(request, tokens)]).

        Duration 0 and no work means nothing can run now (idle or waiting on loads)."""
        self._admit(now)
        budget = self.config.max_batch_tokens
        work: list[tuple[SimRequest, int]] = []
        decode_ctx = 0
        prefill_s = 0.0
        for r in self.running:
            if r.state is State.LOADING and r.ready_at <= now:
                r.state = State.PREFILL
            if r.state is State.DECODE:
                work.append((r, 1))
                decode_ctx += r.prompt_tokens + r.generated
                budget -= 1
        bs = self.config.block_size
        covered: set[int] = set()  # blocks this step's prefill chunks so far compute
        for r in self.running:
            if budget <= 0:
                break
            if r.state is State.PREFILL:
                if not r.scheduled:
                    self._hit_at_first_step(r, covered)
                chunk = min(r.prompt_tokens - r.computed, budget)
                r.scheduled = True
                work.append((r, chunk))
                budget -= chunk
                prefill_s += self.cost.prefill_s(chunk, r.computed + chunk)
                covered.update(r.hashes[r.computed // bs:(r.computed + chunk) // bs])
        n_decode = sum(1 for r, _ in work if r.state is State.DECODE)
        dur = prefill_s + self.cost.decode_step_s(decode_ctx, n_decode) if work else 0.0
        return dur, work

    def _hit_at_first_step(self, r: SimRequest, covered: set[int]) -> None:
        """vLLM looks a waiting request up in its prefix cache when it first schedules it, and
        caches a block as soon as a step is scheduled to fill it (`allocate_slots`), so the
        request shares the blocks cached since its admission and those that a request
        scheduled before it in this same step computes (`covered`), up to its last prompt
        token; a request already running never looks again, and computes what it lacks."""
        bs = self.config.block_size
        limit = (r.prompt_tokens - 1) // bs
        n = start = r.computed // bs
        hbm = self.hbm
        while n < limit:
            h = r.hashes[n]
            if h in hbm:  # cached since its admission: referenced now
                if hbm[h] == 0:
                    del self.lru[h]
                hbm[h] += 1
                r.held.append(h)
            elif h in covered:  # computed in this step: referenced once stored (finish_step)
                r.sharing.append(h)
            else:
                break
            n += 1
        if n > start:
            r.reserved_blocks -= n - start
            self.reserved -= n - start
            r.computed = n * bs
            r.recomputed = r.prompt_tokens - r.computed
            r.cached["hbm"] += (n - start) * bs

    def finish_step(self, work: list[tuple[SimRequest, int]], end: float, dur: float) -> StepResult:
        """Apply a step's progress at its end time."""
        self.stats["steps"] += 1
        self.stats["busy_s"] += dur
        decode_only = self.config.report_samples and len(work) == len(self.running) and all(
            r.state is State.DECODE for r, _ in work)  # everyone in the engine decoded
        if decode_only:
            sample = (len(work), float(sum(r.prompt_tokens + r.generated for r, _ in work)), dur, 1)
        bs = self.config.block_size
        first, done = [], []
        for r, tokens in work:
            if r.sharing:  # stored by the request before it in this step that computed them
                self._store_hbm(r.sharing, None)
                r.held.extend(r.sharing)
                r.sharing = []
            if r.state is State.PREFILL:
                before = r.computed // bs
                r.computed += tokens
                full = min(r.computed // bs, len(r.hashes))
                if full > before:
                    blocks = r.hashes[before:full]
                    self._store_hbm(blocks, r.hashes[before - 1] if before else None)
                    r.held.extend(blocks)
                    r.reserved_blocks -= len(blocks)
                    self.reserved -= len(blocks)
                if r.computed >= r.prompt_tokens:
                    r.generated, r.first_token_at = 1, end
                    r.state = State.DECODE
                    first.append(r)
                    if r.clean and self.config.report_samples:
                        self._prefills.append((r.recomputed, r.prompt_tokens, end - r.admitted_at))
            else:
                r.generated += 1
            if r.state is State.DECODE and r.generated >= r.output_tokens:
                self._complete(r, end)
                done.append(r)
        if done:
            self.running = [r for r in self.running if r.state is not State.DONE]
        if decode_only and (self.running or self.queue):  # a node times a step to the next one's start:
            self._decodes.append(sample)  # the last before the engine idles is not measured
        return StepResult(dur, first, done)

    def _complete(self, r: SimRequest, now: float) -> None:
        r.state = State.DONE
        r.finished_at = now
        self._release(r.held)
        self.reserved -= r.reserved_blocks
        r.reserved_blocks = 0
