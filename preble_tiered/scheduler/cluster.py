"""The router's view of the nodes: what it dispatched, what they reported, what they hold.

Kept by the `Scheduler` facade and read by every policy. Pure: `now` is passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from preble_tiered.scheduler.cost_model import CostModel
from preble_tiered.scheduler.index import PrefixIndex
from preble_tiered.types import NodeId, Tier

TPOT_SAMPLES = 200  # Preble: median of the last 200 measured TPOTs
TPOT_SEED_S = 0.15  # Preble's seed before anything is measured


class TpotTracker:
    """Median of the last `TPOT_SAMPLES` measured TPOTs (recomputed lazily)."""

    __slots__ = ("_samples", "_median", "_dirty", "seed")

    def __init__(self, seed: float = TPOT_SEED_S) -> None:
        self._samples: deque[float] = deque(maxlen=TPOT_SAMPLES)
        self._median = seed
        self._dirty = 0
        self.seed = seed

    def add(self, tpot_s: float) -> None:
        if tpot_s > 0:
            self._samples.append(tpot_s)
            self._dirty += 1

    @property
    def value(self) -> float:
        # Refresh at most every 8 samples: sorting 200 floats on every decision is waste.
        if self._dirty >= 8 or (self._dirty and len(self._samples) < 16):
            self._median = median(self._samples)
            self._dirty = 0
        return self._median


class WindowedSum:
    """Sum of (time, value) samples within the last `window_s` seconds."""

    __slots__ = ("window_s", "_items", "total")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def add(self, now: float, value: float) -> None:
        items = self._items
        items.append((now, value))
        self.total += value
        if items[0][0] <= now - self.window_s:  # trim(now) when it has work (every decision adds)
            self.trim(now)

    def trim(self, now: float) -> float:
        cutoff = now - self.window_s
        items = self._items
        while items and items[0][0] <= cutoff:
            self.total -= items.popleft()[1]
        if not items:
            self.total = 0.0  # no float drift once empty
        return self.total


@dataclass(slots=True)
class Inflight:
    """A dispatched request the router has not seen finish."""

    request_id: str
    node: NodeId
    prompt_tokens: int
    cached_tokens: int
    max_output_tokens: int
    est_prefill_s: float
    dispatched_at: float
    first_token_at: float | None = None


class LoadTerms:
    """The per-node terms of E2's Load_n that do not depend on the window, as flat lists
    indexed by node id: the decision path reads them for every candidate (a list index
    each, no attribute chains). `NodeState` writes through to them."""

    __slots__ = ("pending_s", "decode_tokens", "decode_s")

    def __init__(self, n_nodes: int) -> None:
        self.pending_s = [0.0] * n_nodes  # estimated compute of dispatched, unstarted prefills
        self.decode_tokens = [0] * n_nodes  # max output tokens of in-flight requests
        self.decode_s = [0.0] * n_nodes  # decode_tokens x the node's TPOT median


@dataclass(slots=True)
class NodeState:
    """One node as the router sees it. `pending_prefill_s` and `decode_tokens` live in the
    cluster's `LoadTerms` (properties below), so every write keeps Load_n's terms exact."""

    node: NodeId
    hbm_capacity_tokens: int
    terms: LoadTerms = field(repr=False, compare=False)
    alive: bool = True  # change it through ClusterState.set_alive (which keeps alive_nodes)
    n_inflight: int = 0
    n_prefilling: int = 0  # dispatched, no first token yet
    pending_prefill_tokens: int = 0  # their uncached prompt tokens
    inflight_tokens: int = 0  # prompt + max output of in-flight requests (least_load)
    active_kv_tokens: int = 0  # prompt + max output of in-flight requests (their KV footprint)
    decoding_kv_tokens: int = 0  # the same, of those past their first token (decoding)
    tpot: TpotTracker = field(default_factory=TpotTracker)
    reported_running: int = 0  # from load reports (real nodes); informational
    reported_waiting: int = 0

    @property
    def pending_prefill_s(self) -> float:
        """Estimated compute of the dispatched prefills with no first token yet."""
        return self.terms.pending_s[self.node]

    @pending_prefill_s.setter
    def pending_prefill_s(self, seconds: float) -> None:
        self.terms.pending_s[self.node] = seconds

    @property
    def decode_tokens(self) -> int:
        """Max output tokens of the in-flight requests."""
        return self.terms.decode_tokens[self.node]

    @decode_tokens.setter
    def decode_tokens(self, tokens: int) -> None:
        self.terms.decode_tokens[self.node] = tokens
        self.refresh_decode()

    def refresh_decode(self) -> None:
        """Recompute decode_tokens x TPOT (after either changes)."""
        t = self.terms
        t.decode_s[self.node] = t.decode_tokens[self.node] * self.tpot.value


class ClusterState:
    """Nodes, the prefix index and the cost model, with dispatch/finish bookkeeping."""

    def __init__(self, n_nodes: int, cost: CostModel, block_size: int, index: PrefixIndex,
                 hbm_tokens: int | None = None, window_s: float = 180.0) -> None:
        if n_nodes <= 0:
            raise ValueError(f"need at least one node, got {n_nodes}")
        if n_nodes > 4096:
            raise ValueError(f"at most 4096 nodes are supported, got {n_nodes}")
        cap = cost.hbm_tokens if hbm_tokens is None else hbm_tokens
        self.cost = cost
        self.block_size = block_size
        self.index = index
        self.window_s = window_s
        self.terms = LoadTerms(n_nodes)
        self.nodes = [NodeState(n, cap, self.terms) for n in range(n_nodes)]
        self.inflight: dict[str, Inflight] = {}
        # Windowed cached/prompt token sums per node (prefill/decode balance).
        self.hit_tokens = [WindowedSum(window_s) for _ in range(n_nodes)]
        self.prompt_tokens = [WindowedSum(window_s) for _ in range(n_nodes)]
        self._alive: tuple[NodeId, ...] | None = None  # alive_nodes(), until a node changes
        self._alive_mask = 0

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def alive_nodes(self) -> tuple[NodeId, ...]:
        """Ids of the alive nodes (kept between membership changes: every decision asks)."""
        if self._alive is None:
            self._alive = tuple(n.node for n in self.nodes if n.alive)
            self._alive_mask = sum(1 << n for n in self._alive)
        return self._alive

    def alive_mask(self) -> int:
        """`alive_nodes()` as a node bitmask."""
        if self._alive is None:
            self.alive_nodes()
        return self._alive_mask

    def set_alive(self, node: NodeId, alive: bool) -> None:
        self.nodes[node].alive = alive
        self._alive = None

    def hbm_used_tokens(self, node: NodeId) -> int:
        return self.index.held_blocks(node, Tier.HBM) * self.block_size

    def hbm_free_tokens(self, node: NodeId) -> int:
        ns = self.nodes[node]
        return ns.hbm_capacity_tokens - self.hbm_used_tokens(node) - ns.decode_tokens

    def hit_ratio(self, node: NodeId, now: float) -> float:
        total = self.prompt_tokens[node].trim(now)
        return self.hit_tokens[node].trim(now) / total if total > 0 else 0.0

    # ------------------------------------------------------------ bookkeeping
    def on_dispatch(self, request_id: str, node: NodeId, prompt_tokens: int, cached_tokens: int,
                    max_output_tokens: int, est_prefill_s: float, now: float) -> None:
        if request_id in self.inflight:
            raise ValueError(f"request {request_id!r} is already in flight")
        self.inflight[request_id] = Inflight(request_id, node, prompt_tokens, cached_tokens,
                                             max_output_tokens, est_prefill_s, now)
        ns, terms = self.nodes[node], self.terms
        ns.n_inflight += 1
        ns.n_prefilling += 1
        ns.pending_prefill_tokens += prompt_tokens - cached_tokens
        ns.inflight_tokens += prompt_tokens + max_output_tokens
        ns.active_kv_tokens += prompt_tokens + max_output_tokens
        # ns.pending_prefill_s and ns.decode_tokens, written to the load terms without their
        # property setters: every decision does this
        terms.pending_s[node] += est_prefill_s
        terms.decode_tokens[node] += max_output_tokens
        ns.refresh_decode()
        self.hit_tokens[node].add(now, cached_tokens)
        self.prompt_tokens[node].add(now, prompt_tokens)

    def on_first_token(self, request_id: str, now: float) -> Inflight | None:
        inf = self.inflight.get(request_id)
        if inf is None or inf.first_token_at is not None:
            return inf
        inf.first_token_at = now
        ns = self.nodes[inf.node]
        ns.n_prefilling -= 1
        ns.decoding_kv_tokens += inf.prompt_tokens + inf.max_output_tokens
        ns.pending_prefill_s = max(0.0, ns.pending_prefill_s - inf.est_prefill_s)
        ns.pending_prefill_tokens -= inf.prompt_tokens - inf.cached_tokens
        ns.inflight_tokens -= inf.prompt_tokens
        return inf

    def on_finish(self, request_id: str, now: float, output_tokens: int) -> Inflight | None:
        """Close a request; records its TPOT. Unknown ids return None (already closed)."""
        inf = self.on_first_token(request_id, now)
        if inf is None:
            return None
        del self.inflight[request_id]
        ns = self.nodes[inf.node]
        ns.n_inflight -= 1
        ns.inflight_tokens -= inf.max_output_tokens
        ns.active_kv_tokens -= inf.prompt_tokens + inf.max_output_tokens
        ns.decoding_kv_tokens -= inf.prompt_tokens + inf.max_output_tokens  # on_first_token added it
        if output_tokens > 1 and inf.first_token_at is not None:
            ns.tpot.add((now - inf.first_token_at) / (output_tokens - 1))
        ns.decode_tokens -= inf.max_output_tokens  # after the TPOT sample: refreshes decode_s
        return inf

    def mark_down(self, node: NodeId, now: float) -> list[Inflight]:
        """Node lost: drop its residency; return its in-flight requests for re-routing."""
        self.set_alive(node, False)
        self.index.clear_node(node, now)
        lost = [inf for inf in self.inflight.values() if inf.node == node]
        for inf in lost:
            self.on_finish(inf.request_id, now, 0)
        return lost
