"""What a workload generator is given (spec, plan) and what it hands back (drafts)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from preble_tiered.types import Segment
from preble_tiered.workloads.sampling import FractionModel, OutputLengths


@dataclass(frozen=True)
class WorkloadSpec:
    """Published statistics of one workload and its default stream size per 2 GPUs.

    Attributes:
        name: registry name, also the namespace of its segment ids.
        prompt_mean: mean prompt tokens (docs/architecture.md §8).
        prompt_std: standard deviation of prompt tokens.
        shared_mean: mean fraction of a prompt shared with other requests.
        shared_std: standard deviation of that fraction.
        inner_std: std of the fraction among requests that share something (see
            :meth:`FractionModel.fit`); it decides how many requests share nothing.
        output: output-token distribution.
        prefixes: distinct shared prefixes (tools, tasks, problem sets, videos, documents).
        requests: requests in the default stream.
        rps: default arrival rate, requests/s.
        zipf: default popularity exponent over prefixes (None: uniform).
        prefix_kind: word used in prefix segment ids ("tool", "video", ...).
        head_tokens: tokens of a system prompt shared by every request (0: none).
    """

    name: str
    prompt_mean: float
    prompt_std: float
    shared_mean: float
    shared_std: float
    inner_std: float
    output: OutputLengths
    prefixes: int
    requests: int
    rps: float
    zipf: float | None = None
    prefix_kind: str = "doc"
    head_tokens: int = 0

    def __post_init__(self) -> None:
        if self.prompt_mean <= 0 or self.prompt_std < 0:
            raise ValueError(f"{self.name}: prompt mean must be > 0 and std >= 0")
        if min(self.prefixes, self.requests) < 1 or self.rps <= 0:
            raise ValueError(f"{self.name}: prefixes, requests and rps must be positive")
        _ = self.fractions  # fit now, so a bad table entry fails at import time

    @functools.cached_property
    def fractions(self) -> FractionModel:
        """The shared-fraction mixture fitted to (shared_mean, shared_std)."""
        return FractionModel.fit(self.shared_mean, self.shared_std, self.inner_std)


@dataclass(frozen=True, eq=False)
class StreamPlan:
    """The resolved parameters of one generator run.

    Attributes:
        namespace: prefix of every segment id (workload name, or "mixed.<name>").
        seed: the stream's seed (part of every segment id).
        n_requests: how many requests to draft.
        n_prefixes: how many distinct shared prefixes.
        zipf: popularity exponent over prefixes (None or 0: uniform).
        rps: the stream's mean arrival rate (the agent uses it to pace episodes).
        rng: the generator to draw content from.
    """

    namespace: str
    seed: int
    n_requests: int
    n_prefixes: int
    zipf: float | None
    rps: float
    rng: np.random.Generator

    @property
    def id_root(self) -> str:
        """Root of this stream's segment ids: "<namespace>/s<seed>"."""
        return f"{self.namespace}/s{self.seed}"


@dataclass(slots=True)
class Draft:
    """A request's content before it gets an id and an arrival time."""

    segments: tuple[Segment, ...]
    output_tokens: int
