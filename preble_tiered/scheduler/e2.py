"""E2 scheduling (Preble, ICLR 2025) and our tier- and transfer-aware extension.

Per request with prompt length L, `matched` = the longest prefix held anywhere:

    matched > L - matched  -> EXPLOIT: among the nodes holding it, the cheapest
    otherwise              -> EXPLORE: argmin_n Load_n + Evict_n + Prefill_n

    Load_n    windowed prefill work routed to n (H = 180 s) + in-flight output tokens x TPOT_n
    Evict_n   recompute cost of the prefixes the request would push out of n's HBM, LRU
              order, weighted by their windowed hits
    Prefill_n time to compute what n does not hold (here: the cheapest plan on n)

plus post-assignment rebalancing (max load > 1.5 x min -> the heavy node's cheapest hot
prefix is redirected to the light node), prefix autoscaling, and prefill/decode balance
(explore prefers a decode-heavy node, windowed hit ratio >= 0.7, when nearly as cheap).

`preble_e2` is the published algorithm on HBM only: replicas recompute. Known faults of the
original code are not copied: the argmin returns a node (not a list position), miss rates
are kept per node, and the prefix index forgets what nobody holds or asks for.

`e2_tiered` (ours) costs every node with its cheapest plan over its own HBM/DRAM/disk and
pulls from another node; "held" means held in any tier. Its load term adds three times the
node's queued prefill to Preble's windowed work, so it reacts to bursts within the window.
A request leaves its prefix's holders (the prefix copied, or recomputed where that is
cheaper) when a non-holder would serve it at least twice as soon as the best holder, by
one of two rules (see `_exploit`): for hot prefixes only (their windowed requests per
holder reach half an average node's), queued prefill + pull/plan + eviction harm; for any
prefix, its decode there (its own steps at the node's batch + the slowdown it adds to the
requests decoding beside it), priced with the cost model's decode step.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from operator import add

from preble_tiered.scheduler.cluster import ClusterState, Inflight
from preble_tiered.scheduler.index import MatchResult, bits
from preble_tiered.scheduler.planner import PlanContext, Planner
from preble_tiered.scheduler.prefix_windows import KeyWindows
from preble_tiered.scheduler.policy import Policy, PolicyConfig
from preble_tiered.scheduler.types import Branch, CandidateCost, Decision, RouteRequest

_EVICT_SCAN = 32  # LRU entries examined per eviction estimate
_INF = float("inf")


class PrebleE2(Policy):
    name = "preble_e2"
    """Preble's E2 on HBM only (see module docstring)."""

    uses_pending = True

    def __init__(self, cluster: ClusterState, config: PolicyConfig) -> None:
        super().__init__(cluster, config)
        n = cluster.n_nodes
        self.planner = Planner(cluster.cost, cluster.block_size, self.uses_tiers, self.uses_pulls)
        # Prefill work routed to each node in the window: one log for the cluster, trimmed
        # once per decision, instead of a deque per node.
        self.prefill_work = [0.0] * n
        self._work_log: deque[tuple[float, int, float]] = deque()
        # Per node: prefix key -> footprint tokens, least recently routed first (Evict_n).
        self.lru: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(n)]
        # Per node: prefix key -> windowed work routed there (rebalancing picks from it).
        self.key_work = [KeyWindows() for _ in range(n)]
        self.redirects: dict[int, int] = {}  # prefix key -> node its next request moves to
        self._next_rebalance = float("-inf")
        self._req_key: dict[str, int | None] = {}  # in-flight request -> prefix key
        self._ttft = KeyWindows()  # prefix key -> windowed TTFT (autoscaling)
        self._autoscale: set[int] = set()
        self._price = [0.0] * n  # eviction price per token, per node (see _evict_price)
        self._price_at = [-1] * n  # the second it was computed in
        self._key_cache: tuple[str, int | None] = ("", None)  # (request id, prefix key)
        self._pf_cost, self._pf_memo = None, {}  # prefill(size, size) by size, for _evict_price

    # ------------------------------------------------------------------ terms
    queue_weight: float = 0.0
    """Weight of the node's outstanding prefill queue in Load_n (0: Preble's window only)."""

    def load_s(self, node: int, now: float) -> float:
        return self.loads([node], now)[0]

    def loads(self, nodes: list[int], now: float) -> list[float]:
        """Load_n for each of `nodes` (one tight loop: this is the decision path)."""
        self._trim_work(now)
        terms, work, qw = self.cluster.terms, self.prefill_work, self.queue_weight
        dec, pend = terms.decode_s, terms.pending_s  # decode_tokens x TPOT; queued prefill
        return [work[n] + dec[n] + qw * pend[n] for n in nodes]

    def add_work(self, node: int, now: float, seconds: float) -> None:
        """Record `seconds` of prefill work routed to `node` now (enters Load_n for H)."""
        self._work_log.append((now, node, seconds))
        self.prefill_work[node] += seconds

    def _trim_work(self, now: float) -> None:
        log, work, cutoff = self._work_log, self.prefill_work, now - self.config.window_s
        while log and log[0][0] <= cutoff:
            _, n, v = log.popleft()
            work[n] -= v
        if not log:
            for i in range(len(work)):
                work[i] = 0.0  # no float drift once the window is empty

    def evict_s(self, node: int, need_tokens: int, now: float) -> float:
        """Recompute cost of what `need_tokens` more tokens would push out of `node`'s HBM:
        the least recently routed prefixes still resident there, each weighted by its hits
        in the window (requests beyond the first), priced per token of the LRU front."""
        overflow = need_tokens - self.cluster.hbm_free_tokens(node)
        return overflow * self._evict_price(node, now) if overflow > 0 else 0.0

    def _evict_price(self, node: int, now: float) -> float:
        """Recompute cost per evicted token on `node`, from the first `_EVICT_SCAN` resident
        prefixes of its LRU. Refreshed once a second: routing to a node moves a prefix to
        the LRU's far end, so the price of its front moves with time (demand), not with
        each decision, and every decision prices most candidates."""
        sec = int(now)
        if self._price_at[node] == sec:
            return self._price[node]
        index, cost_model = self.cluster.index, self.cluster.cost
        if self._pf_cost is not cost_model:  # prefill(size, size) per prefix size, per cost model
            self._pf_cost, self._pf_memo = cost_model, {}
        memo, lru = self._pf_memo, self.lru[node]
        stale, seen = index.hbm_scan(lru.items(), node, now, _EVICT_SCAN)
        freed, cost = 0, 0.0
        for size, hits in seen:  # hits: requests in the window beyond the first
            if hits > 0:
                pf = memo.get(size)
                if pf is None:
                    pf = memo[size] = cost_model.prefill_s(size, size)
                cost += hits * pf
            freed += size
        for key in stale:
            del lru[key]
        price = cost / freed if freed else 0.0
        self._price[node], self._price_at[node] = price, sec
        return price

    def matched_blocks(self, match: MatchResult) -> tuple[int, int]:
        """(blocks, holder mask) of the prefix E2 counts as held: HBM only here."""
        return match.longest_hbm, match.hbm_holders

    # ------------------------------------------------------------------ route
    def route(self, req: RouteRequest, match: MatchResult, now: float) -> Decision:
        cluster = self.cluster
        pc = self.planner.prepare(req, match)
        key = self._prefix_key(req, now)
        alive = cluster.alive_nodes()
        if not alive:
            raise RuntimeError("no node is alive")
        # A redirect moves a prefix once: this request seeds it on the light node, later
        # ones exploit among its holders (now including that node) by load. A standing
        # redirect would pile every rebalanced prefix onto whichever node was once light.
        target = self.redirects.pop(key, None) if key is not None else None
        if target is not None and cluster.nodes[target].alive:
            return self._decision(req, pc, 0, Branch.REBALANCE, self._costs([target], pc, now))
        blocks, holders = self.matched_blocks(match)
        matched = min(blocks * cluster.block_size, pc.prompt_tokens)
        holder_nodes = bits(holders & cluster.alive_mask())
        if key is not None and key in self._autoscale:
            self._autoscale.discard(key)
            best, costs = self._explore(pc, alive, now)
            branch = Branch.EXPLOIT if costs.nodes[best] in holder_nodes else Branch.REPLICATE
            return self._decision(req, pc, best, branch, costs)
        if matched > pc.prompt_tokens - matched and holder_nodes:
            best, costs, branch = self._exploit(pc, holder_nodes, alive, now)
        else:
            best, costs = self._explore(pc, alive, now)
            branch = Branch.EXPLORE
        return self._decision(req, pc, best, branch, costs)

    def _exploit(self, pc: PlanContext, holders: Sequence[int], alive: tuple[int, ...],
                 now: float) -> tuple[int, "_Costs", Branch]:
        # Preble: the least loaded of the nodes holding the prefix.
        costs = self._costs(holders, pc, now, with_evict=False)
        return costs.argmin(), costs, Branch.EXPLOIT

    def _explore(self, pc: PlanContext, nodes: Sequence[int], now: float) -> tuple[int, "_Costs"]:
        cfg = self.config
        costs = self._costs(nodes, pc, now, slack=cfg.pd_slack)
        best = costs.argmin()
        bound = cfg.pd_slack * costs.totals[best]
        heavy = [i for i, t in enumerate(costs.totals) if t <= bound
                 and self.cluster.hit_ratio(nodes[i], now) >= cfg.decode_heavy_hit_ratio]
        if heavy:
            best = min(heavy, key=costs.totals.__getitem__)
        return best, costs

    def _costs(self, nodes: Sequence[int], pc: PlanContext, now: float, with_evict: bool = True,
               all_plans: list[float] | None = None, slack: float = 1.0,
               base: list[float] | None = None) -> "_Costs":
        """Load, Evict and plan time per candidate node (parallel lists, no objects).

        The caller ranks candidates by `base` + Evict (default base: Load + plan, the total)
        and only looks at those within `slack` x the best; see `_evicts`."""
        if all_plans is None:
            all_plans = self.planner.plan_times(pc, self.cluster.n_nodes)
        plans = list(map(all_plans.__getitem__, nodes))
        loads = self.loads(nodes, now)
        if with_evict:
            if base is None:
                base = list(map(add, loads, plans))
            evicts = self._evicts(nodes, pc, now, base, slack)
            totals = [ld + ev + p for ld, ev, p in zip(loads, evicts, plans)]
        else:  # exploit: ld + 0.0 + p == ld + p, summed in C
            evicts = [0.0] * len(nodes)
            totals = list(map(add, loads, plans))
        return _Costs(nodes, loads, evicts, plans, totals)

    def _evicts(self, nodes: Sequence[int], pc: PlanContext, now: float, base: list[float],
                slack: float) -> list[float]:
        """Evict_n per candidate, priced only where it can change the choice.

        The caller ranks candidates by base + Evict and considers those within `slack` x the
        best. Evict >= 0, so base is a lower bound: candidates are priced in ascending base
        until base exceeds `slack` x the best ranked cost seen, and the rest (which could not
        be chosen) get inf (`explain` shows them as not priced). Same choice as pricing every
        node, without a walk down each full node's LRU (at 128 full nodes, 35-60 us each once
        a second: 4-10 us per decision on average)."""
        cl = self.cluster
        bs, grow = cl.block_size, pc.prompt_tokens + pc.req.max_output_tokens
        get, held, price, states = pc.match.nodes.get, cl.index.hbm_held.get, self._evict_price, cl.nodes
        dtok = cl.terms.decode_tokens
        evicts, stop = [_INF] * len(nodes), _INF
        for i in sorted(range(len(nodes)), key=base.__getitem__):
            lb = base[i]
            if lb > stop:
                break
            n = nodes[i]  # `evict_s` and `hbm_free_tokens` inlined: need = prompt - in-place HBM
            nm = get(n)  # + output budget; free = capacity - held - decode reservations
            over = grow - (nm.hbm_prefix * bs if nm is not None else 0) \
                - (states[n].hbm_capacity_tokens - held(n, 0) * bs - dtok[n])
            ev = evicts[i] = over * price(n, now) if over > 0 else 0.0
            if (lb + ev) * slack < stop:
                stop = (lb + ev) * slack
        return evicts

    def _decision(self, req: RouteRequest, pc: PlanContext, best: int, branch: Branch,
                  costs: "_Costs") -> Decision:
        node = costs.nodes[best]
        plan = self.planner.build(node, pc)
        return Decision(req.request_id, node, plan, branch, costs if self.config.explain else None)

    def _prefix_key(self, req: RouteRequest, now: float) -> int | None:
        """The request's shared prefix: its deepest block requested at least twice in the
        window (computed once per request; route and on_dispatched both need it)."""
        if self._key_cache[0] == req.request_id:
            return self._key_cache[1]
        depth = self.cluster.index.shared_depth(req.block_hashes, now)
        key = req.block_hashes[depth - 1] if depth else None
        self._key_cache = (req.request_id, key)
        return key

    # ------------------------------------------------------------- bookkeeping
    def on_dispatched(self, req: RouteRequest, decision: Decision, now: float) -> None:
        node, plan = decision.node, decision.plan
        self.add_work(node, now, plan.est_prefill_s)
        key = self._prefix_key(req, now)
        self._req_key[req.request_id] = key
        foot = key if key is not None else (req.block_hashes[-1] if req.block_hashes else None)
        if foot is not None:
            lru = self.lru[node]
            lru[foot] = req.prompt_tokens
            lru.move_to_end(foot)
        if key is not None:
            self.key_work[node].add(key, int(now // self.config.window_s), plan.est_prefill_s)
        if now >= self._next_rebalance:
            self._next_rebalance = now + self.config.rebalance_interval_s
            self._rebalance(now)

    def _rebalance(self, now: float) -> None:
        """Preble's post-assignment rebalancing: redirect the heavy node's cheapest hot
        prefix to the light node while max load > ratio x min load."""
        alive = self.cluster.alive_nodes()
        if len(alive) < 2:
            return
        loads = dict(zip(alive, self.loads(alive, now)))
        heavy = max(alive, key=loads.__getitem__)
        light = min(alive, key=loads.__getitem__)
        if loads[heavy] <= self.config.rebalance_ratio * loads[light] or loads[heavy] <= 0:
            self.redirects.clear()
            return
        b = int(now // self.config.window_s)
        index = self.cluster.index
        gap = (loads[heavy] - loads[light]) / 2
        best_key, best_work = None, float("inf")
        for key, work in self.key_work[heavy].items():
            w = work.total(b)
            if 0 < w < best_work and w <= gap and index.requests_in_window(key, now) >= 2 \
                    and self.redirects.get(key) != light:
                best_key, best_work = key, w
        if best_key is not None:
            self.redirects[best_key] = light

    def on_finished(self, inflight: Inflight, now: float, ttft_s: float | None) -> None:
        key = self._req_key.pop(inflight.request_id, None)
        if key is None or ttft_s is None:
            return
        b = int(now // self.config.autoscale_window_s)
        t = self._ttft.add(key, b, ttft_s)
        # Autoscaling: mean TTFT in this window >= ratio x the previous window's.
        if t.bucket == b and t.n_cur >= 4 and t.n_prev >= 4:
            if t.cur / t.n_cur >= self.config.autoscale_ttft_ratio * (t.prev / t.n_prev):
                self._autoscale.add(key)


class E2Tiered(PrebleE2):
    name = "e2_tiered"
    """E2 with tier- and transfer-aware costs, replication by KV copy (module docstring)."""

    uses_tiers = True
    uses_pulls = True

    queue_weight = 3.0
    """A request waits behind the node's queued prefill before its own starts, while the
    windowed work is a share of throughput over three minutes: the queue weighs more.
    Swept 1 / 2 / 3 / 5 over the 15 workload x load points of sim_policies.py (8 nodes):
    3 against 1 lowered loogle and videoqa latency by 3-16% (mean and p99) and cost at most
    1.5% on toolbench and programming p99, 3-5% on agent mid and loogle high p99
    (docs/decisions.md)."""

    def matched_blocks(self, match: MatchResult) -> tuple[int, int]:
        return match.longest, match.holders

    def _exploit(self, pc: PlanContext, holders: Sequence[int], alive: tuple[int, ...],
                 now: float) -> tuple[int, "_Costs", Branch]:
        """Preble's exploit among the holders, then a move to a non-holder (the prefix copied
        or recomputed there, whichever its plan says) when it clearly serves this request
        sooner, by either of two rules.

        - Queue (hot prefixes only, `_is_hot`): the prefill work already queued on the node
          + this request's plan (a pull, for a non-holder) + the recompute harm of what it
          evicts there, `autoscale_ttft_ratio` (2) times below the best holder's queue +
          plan. This compares delays, not Preble's windowed Load (seconds of work over three
          minutes: a share of throughput, not a wait): Load against a pull of tens of
          milliseconds would copy prefixes at every small imbalance, and queue bursts pass.
        - Decode (any prefix): the request's decode there (`_decode_s`: its own steps at the
          node's batch and the slowdown it adds to the requests decoding beside it)
          `decode_move_ratio` (1.5) times below the best holder's, and the whole delay
          (queue + plan + eviction + decode) too. A node decoding a batch several times
          another's slows every token of every answer it takes (chat on 8-32 nodes,
          README); with a decode step that does not grow with the batch (an engine whose
          decode is not measured: `FlatDecode`) this rule never moves.

        "The best holder" is the one Preble's exploit picks (Load + plan); other holders are
        not weighed on decode, so a lightly decoding second holder can lose the request to a
        copy. With both rules in play every candidate's eviction is priced.
        """
        cl = self.cluster
        plans = self.planner.plan_times(pc, cl.n_nodes)
        costs = self._costs(holders, pc, now, with_evict=False, all_plans=plans)
        best = costs.argmin()
        if len(holders) == len(alive):
            return best, costs, Branch.EXPLOIT
        # A copy costs cache space everywhere (duplicates evict other prefixes), which the
        # LRU-front eviction price underestimates: require a clear win, Preble's autoscaling
        # factor (TTFT x2) applied to expected delay; a lower bar (x1.5) for decode, whose
        # gain lasts the whole answer. Eviction harm >= 0 and no node decodes faster than an
        # idle one, so only nodes that clear the bar without them are priced.
        ratio = self.config.autoscale_ttft_ratio
        pend = cl.terms.pending_s
        held = costs.nodes[best]
        held_q = pend[held] + costs.plans[best]
        floor_q = self._floor_q(pc, pend, plans)
        by_queue = floor_q * ratio < held_q and self._is_hot(pc.req, len(holders), len(alive), now)
        out = pc.req.max_output_tokens
        grow = pc.prompt_tokens + out
        held_dec = self._decode_s(held, out, grow)
        idle_dec = out * cl.cost.decode_step_s(grow, 1)
        held_t = held_q + held_dec
        dratio = self.config.decode_move_ratio
        by_decode = idle_dec * dratio < held_dec and (floor_q + idle_dec) * dratio < held_t
        if not (by_queue or by_decode):
            return best, costs, Branch.EXPLOIT
        if by_decode:
            costs.decodes = [held_dec if i == best else None for i in range(len(costs.nodes))]
        holder_set = set(holders)
        others, decs = [], []
        for n in alive:
            if n in holder_set:
                continue
            q = pend[n] + plans[n]
            ok = by_queue and q * ratio < held_q
            d = 0.0  # decode enters the ranking only where the decode rule is in play
            if by_decode and (ok or (q + idle_dec) * dratio < held_t):
                d = self._decode_s(n, out, grow)
                ok = ok or (d * dratio < held_dec and (q + d) * dratio < held_t)
            if ok:
                others.append(n)
                decs.append(d)
        if not others:
            return best, costs, Branch.EXPLOIT
        # Eviction is priced in ascending base and pruned where the total cannot win. With both
        # rules in play a node failing one can outrank one passing the other: price them all.
        alt = self._costs(others, pc, now, all_plans=plans, slack=_INF if by_queue and by_decode else 1.0,
                          base=[pend[n] + plans[n] + d for n, d in zip(others, decs)])
        if by_decode:
            alt.decodes = decs
        merged = costs.extend(alt)
        choice, choice_t = None, _INF
        for j, (n, ev, d) in enumerate(zip(alt.nodes, alt.evicts, decs)):
            q = pend[n] + ev + alt.plans[j]
            if q + d < choice_t and ((by_queue and q * ratio < held_q)
                                     or (by_decode and d * dratio < held_dec and (q + d) * dratio < held_t)):
                choice, choice_t = j, q + d
        if choice is not None:
            return len(costs.nodes) + choice, merged, Branch.REPLICATE
        return best, merged, Branch.EXPLOIT

    @staticmethod
    def _floor_q(pc: PlanContext, pend: list[float], plans: list[float]) -> float:
        """min(pend[n] + plans[n]) over every node, the same float. Nodes outside the match
        plan `pc.default_s`, and float addition is monotonic, so it is min(pend) + default_s
        or a matched node's own sum, whichever is lower; unless a matched node plans above
        the default (its own lower tiers priced over a pull), which takes the full scan."""
        default = pc.default_s
        floor = min(pend) + default
        for n in pc.match.nodes:
            p = plans[n]
            if p > default:
                return min(map(add, pend, plans))
            q = pend[n] + p
            if q < floor:
                floor = q
        return floor

    def _decode_s(self, node: int, out: int, grow: int) -> float:
        """Decode time a request of `out` output tokens adding `grow` tokens of KV costs on
        `node`: its own `out` steps at the node's batch, plus the slowdown each step adds to
        the requests decoding there for as long as both decode. The batch is the requests past
        their first token: those still waiting for their prefill are the queue term's (counted
        in both, a queued node looked twice as slow, and long-document nodes shed requests for
        nothing: loogle with measured links, 5-10% slower). The router knows their output
        budgets, not what is left of them, so the slowdown is an upper bound, and their KV is
        counted at prompt + budget. Steps priced by the cost model's
        decode step: a measured fit (a profile's, or the live router's calibration), a
        preset's roofline, or flat (an engine not measured yet: the same on every node)."""
        cl = self.cluster
        ns, cost = cl.nodes[node], cl.cost
        step, shape = cost.decode.step_seconds, cost.shape  # cost.decode_step_s, one call less
        b, kv = ns.n_inflight - ns.n_prefilling, ns.decoding_kv_tokens
        with_it = step(shape, kv + grow, b + 1)
        if not b:
            return out * with_it
        return out * with_it + min(b * out, cl.terms.decode_tokens[node]) * (with_it - step(shape, kv, b))

    def _is_hot(self, req: RouteRequest, n_holders: int, n_alive: int, now: float) -> bool:
        """A prefix is hot, worth one more node, while its requests in the window per node
        holding it are at least `replicate_hot_share` of an average node's requests.

        With one holder: more than one node should serve it (a conversation's history or a
        document asked a few times is not; copying those only spends cache space). Dividing
        by the holders bounds the copies by demand: at the default share a prefix with 2.5%
        of the requests on 128 nodes earns about 6 holders, not 128. Without the division
        each copy to an idle node was judged alone, and queue burst after queue burst spread
        hot prefixes to every node (toolbench at 128 nodes: 3,276 copies, the eight most
        requested prefixes on all 128 nodes; with it, 311). docs/decisions.md has the sweep.
        """
        key = self._prefix_key(req, now)
        if key is None:
            return False
        self._trim_work(now)
        per_node = len(self._work_log) / max(n_alive, 1)
        wanted = self.config.replicate_hot_share * per_node * max(n_holders, 1)
        return self.cluster.index.requests_in_window(key, now) >= wanted


class _Costs:
    """Parallel lists of cost terms for candidate nodes (no per-candidate objects on the
    decision path; `candidates()` builds them for `explain`)."""

    __slots__ = ("nodes", "loads", "evicts", "plans", "totals", "decodes")

    def __init__(self, nodes: list[int], loads: list[float], evicts: list[float], plans: list[float],
                 totals: list[float]) -> None:
        self.nodes, self.loads, self.evicts, self.plans, self.totals = nodes, loads, evicts, plans, totals
        self.decodes: list[float | None] | None = None  # e2_tiered's decode term, where it priced it

    def argmin(self) -> int:
        """Position of the lowest total (the first of equals)."""
        totals = self.totals
        return totals.index(min(totals))

    def extend(self, other: "_Costs") -> "_Costs":
        merged = _Costs([*self.nodes, *other.nodes], self.loads + other.loads, self.evicts + other.evicts,
                        self.plans + other.plans, self.totals + other.totals)
        if self.decodes is not None or other.decodes is not None:
            merged.decodes = (self.decodes or [None] * len(self.nodes)) + (other.decodes or [None] * len(other.nodes))
        return merged

    def candidates(self) -> list[CandidateCost]:
        """inf in `evicts` marks a node not priced (it could not win; see `_evicts`): None."""
        decodes = self.decodes or [None] * len(self.nodes)
        return [CandidateCost(n, ld, ev if ev != _INF else None, p, dec)
                for n, ld, ev, p, dec in zip(self.nodes, self.loads, self.evicts, self.plans, decodes)]
