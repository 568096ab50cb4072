"""Per-request records, run summaries (docs/architecture.md §8), and the ideal bound."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from preble_tiered.scheduler.cost_model import ChunkedPrefill, CostModel
from preble_tiered.types import WorkloadRequest

TIER_KEYS = ("hbm", "dram", "disk", "remote")


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    node: int
    branch: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    decision_us: float = 0.0
    first_token_s: float = float("nan")
    finish_s: float = float("nan")
    cached: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIER_KEYS, 0))
    recomputed_tokens: int = 0
    bytes_moved: int = 0
    server_ttft_s: float = float("nan")
    """TTFT as the router measured it (a benchmark's client knows it from the usage)."""
    node_ttft_s: float = float("nan")
    """TTFT as the node measured it (received -> first token), from the usage."""
    engine_ttft_s: float = float("nan")
    """The engine's (admitted -> first token), from the usage, where the request met nothing else there."""

    def fill_from(self, r) -> None:  # r: SimRequest (kept untyped: no engine import here)
        self.first_token_s = r.first_token_at
        self.finish_s = r.finished_at
        self.cached = dict(r.cached)
        self.recomputed_tokens = r.recomputed
        self.bytes_moved = r.bytes_moved

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        n = self.output_tokens - 1
        return (self.finish_s - self.first_token_s) / n if n > 0 else 0.0


def stats(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


@dataclass
class SimResult:
    policy: str
    records: list[RequestRecord]
    ideal: list[tuple[float, float]]  # (ttft_s, latency_s) per request, served alone
    branches: dict[str, int]
    wall_s: float
    engine_stats: list[dict]

    def summary(self, workload: str = "", nodes: int = 0) -> dict:
        """The run in the JSON shape `preble sim --json` writes."""
        recs = self.records
        lat = [r.latency_s for r in recs]
        ttft = [r.ttft_s for r in recs]
        tpot = [r.tpot_s for r in recs if r.output_tokens > 1]
        norm = [r.latency_s / max(r.output_tokens, 1) for r in recs]
        start = min(r.arrival_s for r in recs)
        end = max(r.finish_s for r in recs)
        cached = Counter()
        for r in recs:
            cached.update(r.cached)
        dec = [r.decision_us for r in recs]
        ideal_t = [t for t, _ in self.ideal]
        ideal_l = [lat_ for _, lat_ in self.ideal]
        prompt = sum(r.prompt_tokens for r in recs)
        return {
            "policy": self.policy,
            "workload": workload,
            "nodes": nodes,
            "requests": len(recs),
            "latency": stats(lat),
            "ttft": stats(ttft),
            "tpot": stats(tpot),
            "normalized_latency": stats(norm),
            "throughput_rps": len(recs) / (end - start) if end > start else 0.0,
            "prompt_tokens": prompt,
            "cached_tokens": {k: int(cached[k]) for k in TIER_KEYS},
            "recomputed_tokens": int(sum(r.recomputed_tokens for r in recs)),
            "bytes_moved": int(sum(r.bytes_moved for r in recs)),
            "decision_us": {"mean": float(np.mean(dec)), "p99": float(np.percentile(dec, 99))},
            "branches": dict(self.branches),
            "ideal": {"latency": stats(ideal_l), "ttft": stats(ideal_t)},
            "sim_wall_s": self.wall_s,
        }


def shared_prefix_blocks(hashes: dict[str, list[int]]) -> dict[str, int]:
    """Per request, its leading blocks that appear in at least one other request."""
    counts: Counter[int] = Counter()
    for hs in hashes.values():
        counts.update(hs)
    out = {}
    for rid, hs in hashes.items():
        k = 0
        while k < len(hs) and counts[hs[k]] >= 2:
            k += 1
        out[rid] = k
    return out


def chunked_prefill_s(cost: CostModel, cached: int, prompt: int, chunk: int) -> float:
    """Prefill of tokens [cached, prompt) in chunks of `chunk`, as an engine alone runs it."""
    return ChunkedPrefill(cost.prefill, chunk).seconds(prompt - cached, prompt)


def ideal_records(requests: Sequence[WorkloadRequest], hashes: dict[str, list[int]], cost: CostModel,
                  block_size: int, max_batch_tokens: int) -> list[tuple[float, float]]:
    """Each request served alone on an idle node with its shared prefix already in HBM:
    TTFT = chunked prefill of the unshared tail (the engine's own chunking, so this is a
    true lower bound); latency adds (output - 1) batch-of-one decode steps."""
    shared = shared_prefix_blocks(hashes)
    out = []
    for r in requests:
        L = r.prompt_tokens
        cached = min(shared[r.request_id] * block_size, L - 1)
        ttft = chunked_prefill_s(cost, cached, L, max_batch_tokens)
        # Decode step time is linear in context, so the mean step is the middle one.
        decode = (r.output_tokens - 1) * cost.decode_step_s(L + r.output_tokens // 2, 1)
        out.append((ttft, ttft + decode))
    return out
