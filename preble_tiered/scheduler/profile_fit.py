"""Fit a `ClusterProfile` from what the nodes measured: the samples a router keeps
(`ProfileSamples`) and the facts its nodes registered with. Pure code.

A profile is only as good as its coverage, so `fit_profile` refuses samples too narrow to fit
and says what to add: prefills at too few prompt sizes, decode steps at one batch size.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from preble_tiered.scheduler.cost_model import LinearDecode, LinearPrefill, Links
from preble_tiered.scheduler.profile import ClusterProfile, Coverage, EngineLimits, LinkFigure, ProfileError

MIN_PREFILL_SAMPLES = 8
MIN_PREFILL_SIZES = 3  # distinct new-token sizes, in buckets of PREFILL_BUCKET tokens
PREFILL_BUCKET = 64
MIN_DECODE_BUCKETS = 3
MIN_DECODE_BATCHES = 2
CONTEXT_BUCKET = 256


class DecodeStepSums:
    """Decode-only steps summed per batch size and context bucket (`CONTEXT_BUCKET` tokens),
    so any number of steps stays a few hundred entries: the node sums its steps this way, the
    router the node's sums."""

    def __init__(self) -> None:
        self._sums: dict[tuple[int, int], list[float]] = {}  # (batch, ctx bucket) -> [steps, ctx sum, s sum]

    def __len__(self) -> int:
        return len(self._sums)

    def add(self, batch: int, context_tokens: float, seconds: float, steps: int = 1) -> bool:
        """`steps` steps of `batch` sequences, of mean context `context_tokens` and mean time
        `seconds`; False (nothing kept) when that is not a decode step measurement."""
        if not (batch > 0 and steps > 0 and 0.0 < seconds < 60.0 and context_tokens >= 0):
            return False
        acc = self._sums.setdefault((batch, int(context_tokens) // CONTEXT_BUCKET), [0, 0.0, 0.0])
        acc[0] += steps
        acc[1] += context_tokens * steps
        acc[2] += seconds * steps
        return True

    def clear(self) -> None:
        self._sums.clear()

    def rows(self) -> list[tuple[int, float, float, int]]:
        """(batch, mean context, mean seconds, steps) per bucket."""
        return [(b, c / n, s / n, int(n)) for (b, _), (n, c, s) in sorted(self._sums.items())]

    def fit(self) -> LinearDecode:
        """`LinearDecode.fit` on the buckets, each weighing its steps.

        Raises:
            ValueError: as `LinearDecode.fit` (too few buckets, one batch size)."""
        return LinearDecode.fit([(b, int(c), t, n) for b, c, t, n in self.rows()])


class ProfileSamples:
    """Measured prefills, decode steps and request overheads, bounded (decode steps are kept
    per batch size and context bucket: at most max_num_seqs x max context / 256 entries)."""

    def __init__(self, max_prefill: int = 4096, max_overheads: int = 4096) -> None:
        self.prefill: deque[tuple[int, int, float]] = deque(maxlen=max_prefill)
        self.decode = DecodeStepSums()
        self.overheads: deque[float] = deque(maxlen=max_overheads)

    def add_prefill(self, new_tokens: int, context_tokens: int, seconds: float) -> None:
        if new_tokens > 0 and context_tokens >= new_tokens and 0.0 < seconds < 3600.0:
            self.prefill.append((new_tokens, context_tokens, seconds))

    def add_decode(self, batch: int, context_tokens: float, seconds: float, steps: int) -> None:
        """`steps` decode-only steps of `batch` sequences, mean context and mean time."""
        self.decode.add(batch, context_tokens, seconds, steps)

    def add_overhead(self, seconds: float) -> None:
        """A request's time outside the engine: the router's TTFT less the engine's."""
        if 0.0 <= seconds < 60.0:
            self.overheads.append(seconds)

    def add_request(self, router_ttft_s: float, engine_ttft_s: float, rerouted: bool = False,
                    pulled: bool = False) -> None:
        """A finished request's TTFTs: the router's, and the engine's from admitting it to its
        first token. Its overhead (everything a prefill sample leaves out: the router's hop, the
        node's work before the engine, the hand-offs back) counts only where the request met
        nothing else in the engine from its arrival (its TTFT is 0 otherwise: the overhead would
        then hold queueing, which the simulator models itself), was not re-routed (its TTFT then
        spans two nodes) and pulled nothing from another node first (the simulator prices a pull
        from the links' figures)."""
        if engine_ttft_s > 0 and not rerouted and not pulled:
            self.add_overhead(router_ttft_s - engine_ttft_s)

    def clear(self) -> None:
        self.prefill.clear()
        self.decode.clear()
        self.overheads.clear()

    def decode_rows(self) -> list[tuple[int, float, float, int]]:
        """(batch, mean context, mean seconds, steps) per bucket."""
        return self.decode.rows()


@dataclass(frozen=True)
class NodeFacts:
    """What one node says about its engine and tiers."""

    block_size: int
    max_num_seqs: int
    max_batch_tokens: int
    hbm_tokens: int
    kv_bytes_per_token: int
    dram_bytes: int = 0
    disk_bytes: int = 0


def check_coverage(samples: ProfileSamples) -> None:
    """Raises ProfileError saying what to add when the samples cannot support a fit."""
    sizes = {e // PREFILL_BUCKET for e, _, _ in samples.prefill}
    if len(samples.prefill) < MIN_PREFILL_SAMPLES or len(sizes) < MIN_PREFILL_SIZES:
        raise ProfileError(
            f"too few prefill measurements to fit: {len(samples.prefill)} clean prefills at {len(sizes)} prompt "
            f"size(s); need {MIN_PREFILL_SAMPLES} at {MIN_PREFILL_SIZES} or more sizes at least {PREFILL_BUCKET} "
            "tokens apart (add prompt sizes to the sweep, or serve more varied traffic)")
    rows = samples.decode_rows()
    batches = {b for b, _, _, _ in rows}
    if len(rows) < MIN_DECODE_BUCKETS or len(batches) < MIN_DECODE_BATCHES:
        raise ProfileError(
            f"too few decode measurements to fit: decode-only steps at batch size(s) {sorted(batches) or 'none'} "
            f"in {len(rows)} context bucket(s); need {MIN_DECODE_BATCHES} or more batch sizes and "
            f"{MIN_DECODE_BUCKETS} buckets (add batch sizes to the sweep, e.g. 1 4 16)")


def fit_profile(samples: ProfileSamples, nodes: list[NodeFacts], links: Links, measured_links: set[str], *,
                name: str, model: str, source: str = "") -> ClusterProfile:
    """A profile of a cluster of `nodes` from `samples`; `links` are the router's current
    prices, `measured_links` the kinds ("dram", "disk", "net") a node measured.

    Raises:
        ProfileError: no nodes, or samples too narrow to fit (the message says what to add).
    """
    if not nodes:
        raise ProfileError("no node is serving: start the cluster's nodes (or wait for them) first")
    if any(n.kv_bytes_per_token <= 0 or n.block_size <= 0 for n in nodes):
        raise ProfileError("a node reports no KV geometry (kv_bytes_per_token or block_size 0)")
    check_coverage(samples)
    budget = min(n.max_batch_tokens for n in nodes)
    prefill = LinearPrefill.fit(samples.prefill, chunk=budget)  # as the simulator prices it: per chunk
    rows = samples.decode_rows()
    decode = samples.decode.fit()
    kvb = min(n.kv_bytes_per_token for n in nodes)
    engine = EngineLimits(
        block_size=nodes[0].block_size, max_num_seqs=min(n.max_num_seqs for n in nodes),
        max_batch_tokens=min(n.max_batch_tokens for n in nodes), hbm_tokens=min(n.hbm_tokens for n in nodes),
        dram_tokens=min(n.dram_bytes for n in nodes) // kvb, disk_tokens=min(n.disk_bytes for n in nodes) // kvb)
    figures = {k: LinkFigure(getattr(links, k).bandwidth, getattr(links, k).latency_s, k in measured_links)
               for k in ("dram", "disk", "net")}
    pre_new = [e for e, _, _ in samples.prefill]
    cov = Coverage(prefill_samples=len(samples.prefill), prefill_new_tokens=(min(pre_new), max(pre_new)),
                   decode_steps=sum(n for *_, n in rows),
                   decode_batch=(min(b for b, *_ in rows), max(b for b, *_ in rows)),
                   decode_context_tokens=(int(min(c for _, c, _, _ in rows)), int(max(c for _, c, _, _ in rows))),
                   overhead_samples=len(samples.overheads))
    overhead = statistics.median(samples.overheads) if samples.overheads else 0.0
    return ClusterProfile(name=name, model=model, nodes=len(nodes), kv_bytes_per_token=kvb, prefill=prefill,
                          decode=decode, engine=engine, links=figures, request_overhead_s=overhead, coverage=cov,
                          source=source)
