"""Streams of [shared prefix] + [unique question] requests (tool use, few-shot, video, documents).

    request i:   [head]           [prefix k]            [q{i}]
                 shared by all    shared by requests    this request
                 (toolbench)      that chose k          only

Each request draws its shared fraction f from the workload's :class:`FractionModel`. A request
with f > 0 picks prefix k by popularity and adds a unique part of `len(prefix k) * (1-f)/f`
tokens; one with f = 0 is a single unique segment of lognormal length. Prefix lengths are
stratified (see :mod:`.sampling`) with moments chosen so that the whole prompt matches the
published mean and std.
"""

from __future__ import annotations

import numpy as np

from preble_tiered.types import Segment
from preble_tiered.workloads.sampling import (
    lognormal_draws,
    popularity,
    prefix_moments,
    stratified_lengths,
)
from preble_tiered.workloads.spec import Draft, StreamPlan, WorkloadSpec

MIN_PROMPT = 64
"""No prompt is shorter than this many tokens."""
MIN_UNIQUE = 16
"""A request's own part (its question) has at least this many tokens."""
MIN_PREFIX = 32
"""A shared prefix segment has at least this many tokens."""
MIN_SHARED_FRACTION = 0.1
"""Requests that share a prefix share at least this fraction (bounds the unique part)."""
MAX_STDS = 5.0
"""Unshared prompts are clipped to mean + MAX_STDS * std."""


def solo_lengths(spec: WorkloadSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Lengths of `n` prompts that share nothing: the full prompt distribution, clipped."""
    raw = lognormal_draws(rng, spec.prompt_mean, spec.prompt_std, n)
    hi = spec.prompt_mean + MAX_STDS * spec.prompt_std
    return np.clip(np.rint(raw), MIN_PROMPT, hi).astype(np.int64)


def prefixed_drafts(spec: WorkloadSpec, plan: StreamPlan) -> list[Draft]:
    """`plan.n_requests` drafts of a single-prefix workload, in arrival order."""
    rng, n = plan.rng, plan.n_requests
    frac = spec.fractions.draw(rng, n)
    shared = frac > 0
    growth = 1.0 / np.clip(frac[shared], MIN_SHARED_FRACTION, 1.0)  # prompt / prefix length
    probs = popularity(plan.n_prefixes, plan.zipf, rng)
    mean, std = prefix_moments(spec.prompt_mean, spec.prompt_std, growth)
    lengths = stratified_lengths(probs, mean, std, rng)
    prefix_len = np.maximum(np.rint(lengths), spec.head_tokens + MIN_PREFIX).astype(np.int64)
    choice = rng.choice(plan.n_prefixes, size=n, p=probs)
    chosen_len = prefix_len[choice[shared]]
    unique = np.empty(n, np.int64)
    floor = np.maximum(MIN_UNIQUE, MIN_PROMPT - chosen_len)
    unique[shared] = np.maximum(np.rint(chosen_len * (growth - 1)), floor)
    unique[~shared] = solo_lengths(spec, rng, int(n - shared.sum()))
    outputs = spec.output.draw(rng, n)
    return _assemble(spec, plan, prefix_len, np.where(shared, choice, -1), unique, outputs)


def _assemble(
    spec: WorkloadSpec,
    plan: StreamPlan,
    prefix_len: np.ndarray,
    choice: np.ndarray,
    unique: np.ndarray,
    outputs: np.ndarray,
) -> list[Draft]:
    """Drafts from per-request prefix choices (-1: none), unique lengths and output lengths."""
    root = plan.id_root
    head = (Segment(f"{root}/system", spec.head_tokens),) if spec.head_tokens else ()
    body_len = (prefix_len - spec.head_tokens).tolist()
    prefixes: dict[int, tuple[Segment, ...]] = {}
    drafts = []
    for i, (k, u, o) in enumerate(zip(choice.tolist(), unique.tolist(), outputs.tolist(), strict=True)):
        own = Segment(f"{root}/q{i}", u)
        if k < 0:
            drafts.append(Draft((own,), o))
            continue
        prefix = prefixes.get(k)
        if prefix is None:
            prefix = prefixes[k] = head + (Segment(f"{root}/{spec.prefix_kind}{k}", body_len[k]),)
        drafts.append(Draft(prefix + (own,), o))
    return drafts
