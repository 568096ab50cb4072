"""The five Preble workloads and their mix, chosen by name.

    make_workload("toolbench", WorkloadConfig(nodes=4, seed=1)) -> list[WorkloadRequest]

Statistics follow Preble's Table 1 (docs/architecture.md §8). Default stream sizes are per 2 GPUs and
scale linearly with `nodes / 2` (rounded up); an explicit `rps` is the total cluster rate.
Only segment descriptions are produced; :mod:`.tokens` turns them into token ids.

Segment ids are "<workload>/s<seed>/<kind><k>" for shared content and ".../q<i>" (or
".../ep<e>/t<j>" for agent turns) for a request's own part, so different seeds and workloads
never collide; the parts of "mixed" use the namespace "mixed.<workload>".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xxhash

from preble_tiered.types import WorkloadRequest
from preble_tiered.workloads.agent import agent_drafts
from preble_tiered.workloads.arrivals import ARRIVALS, make_arrivals
from preble_tiered.workloads.prefixed import prefixed_drafts
from preble_tiered.workloads.sampling import OutputLengths
from preble_tiered.workloads.spec import Draft, StreamPlan, WorkloadSpec

SPECS: dict[str, WorkloadSpec] = {
    s.name: s
    for s in (
        WorkloadSpec("toolbench", 1835, 742, 0.85, 0.13, inner_std=0.13,
                     output=OutputLengths(10, 300, median=60, sigma=0.8),
                     prefixes=200, requests=3600, rps=12, zipf=1.1, prefix_kind="tool",
                     head_tokens=300),
        WorkloadSpec("agent", 2285, 471, 0.97, 0.14, inner_std=0.03,
                     output=OutputLengths(26, 26), prefixes=200, requests=3600, rps=12,
                     prefix_kind="task"),
        WorkloadSpec("programming", 3871, 1656, 0.97, 0.074, inner_std=0.05,
                     output=OutputLengths(64, 512), prefixes=130, requests=1500, rps=3,
                     prefix_kind="shots"),
        WorkloadSpec("videoqa", 9865, 5976, 0.88, 0.32, inner_std=0.03,
                     output=OutputLengths(4, 32), prefixes=200, requests=1500, rps=5,
                     prefix_kind="video"),
        WorkloadSpec("loogle", 23474, 6105, 0.91, 0.24, inner_std=0.03,
                     output=OutputLengths(8, 35), prefixes=27, requests=800, rps=1,
                     prefix_kind="doc"),
    )
}
"""Per-workload statistics and defaults per 2 GPUs (prefixes, requests, rps)."""

MIXED_WEIGHTS: dict[str, float] = {
    "toolbench": 0.30, "agent": 0.25, "programming": 0.20, "videoqa": 0.15, "loogle": 0.10,
}
"""Share of each workload's requests in "mixed"."""
MIXED_REQUESTS = 3000
MIXED_RPS = 8.0

_BUILDERS: dict[str, Callable[[WorkloadSpec, StreamPlan], list[Draft]]] = {
    "toolbench": prefixed_drafts,
    "agent": agent_drafts,
    "programming": prefixed_drafts,
    "videoqa": prefixed_drafts,
    "loogle": prefixed_drafts,
}


@dataclass(frozen=True)
class WorkloadConfig:
    """How big, how fast and how skewed a generated stream is.

    Attributes:
        nodes: GPUs in the cluster; default counts and rates scale with `nodes / 2`.
        requests: total requests (None: the workload default, scaled).
        rps: total cluster arrival rate in requests/s (None: the default, scaled).
        seed: seeds content and arrivals; part of every segment id.
        arrival: arrival process, a key of :data:`arrivals.ARRIVALS` ("poisson", "gamma").
        burstiness_cv: coefficient of variation of gaps for "gamma" arrivals.
        zipf: popularity exponent over prefixes (None: the workload default; 0: uniform).
        prefixes: distinct shared prefixes (None: the default, scaled); in "mixed" it
            applies to every part.
    """

    nodes: int = 2
    requests: int | None = None
    rps: float | None = None
    seed: int = 0
    arrival: str = "poisson"
    burstiness_cv: float = 2.0
    zipf: float | None = None
    prefixes: int | None = None

    def __post_init__(self) -> None:
        _require(self.nodes >= 1, f"nodes must be >= 1, got {self.nodes}")
        _require(self.requests is None or self.requests >= 1,
                 f"requests must be >= 1 (or None for the default), got {self.requests}")
        _require(self.rps is None or (self.rps > 0 and math.isfinite(self.rps)),
                 f"rps must be a positive finite total rate (or None), got {self.rps}")
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _require(self.arrival in ARRIVALS,
                 f"unknown arrival process {self.arrival!r}; expected one of {sorted(ARRIVALS)}")
        _require(self.burstiness_cv > 0 and math.isfinite(self.burstiness_cv),
                 f"burstiness_cv must be positive and finite, got {self.burstiness_cv}")
        _require(self.zipf is None or (self.zipf >= 0 and math.isfinite(self.zipf)),
                 f"zipf must be >= 0 (or None for the default), got {self.zipf}")
        _require(self.prefixes is None or self.prefixes >= 1,
                 f"prefixes must be >= 1 (or None for the default), got {self.prefixes}")

    @property
    def scale(self) -> float:
        """Multiplier of the per-2-GPU defaults."""
        return self.nodes / 2

    def count(self, default: int) -> int:
        """`default` per 2 GPUs scaled to this cluster, rounded up."""
        return max(1, math.ceil(default * self.scale))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _rng(seed: int, label: str) -> np.random.Generator:
    """An independent generator per (seed, label), the same in every process."""
    return np.random.default_rng([seed, xxhash.xxh32_intdigest(label.encode())])


def _plan(spec: WorkloadSpec, config: WorkloadConfig, n: int, rps: float, namespace: str) -> StreamPlan:
    return StreamPlan(
        namespace=namespace,
        seed=config.seed,
        n_requests=n,
        n_prefixes=config.prefixes or config.count(spec.prefixes),
        zipf=spec.zipf if config.zipf is None else config.zipf,
        rps=rps,
        rng=_rng(config.seed, namespace),
    )


def _requests(name: str, times: np.ndarray, drafts: list[Draft], labels: list[str]) -> list[WorkloadRequest]:
    return [
        WorkloadRequest(f"{name}-{i}", t, d.segments, d.output_tokens, w)
        for i, (t, d, w) in enumerate(zip(times.tolist(), drafts, labels, strict=True))
    ]


def _arrivals(config: WorkloadConfig, n: int, rps: float, label: str) -> np.ndarray:
    return make_arrivals(config.arrival, n, rps, _rng(config.seed, label + "/arrivals"), config.burstiness_cv)


def generate_single(spec: WorkloadSpec, config: WorkloadConfig) -> list[WorkloadRequest]:
    """One workload's stream, sorted by arrival."""
    n = config.requests or config.count(spec.requests)
    rps = config.rps or spec.rps * config.scale
    drafts = _BUILDERS[spec.name](spec, _plan(spec, config, n, rps, spec.name))
    return _requests(spec.name, _arrivals(config, n, rps, spec.name), drafts, [spec.name] * n)


def generate_mixed(config: WorkloadConfig) -> list[WorkloadRequest]:
    """All five workloads in one stream; each request's `workload` names its part.

    One arrival process at the total rate is split among the parts by `MIXED_WEIGHTS`, so the
    mix keeps the chosen burstiness. Request ids are "mixed-<i>".
    """
    n = config.requests or config.count(MIXED_REQUESTS)
    rps = config.rps or MIXED_RPS * config.scale
    times = _arrivals(config, n, rps, "mixed")
    names = list(MIXED_WEIGHTS)
    weights = np.array([MIXED_WEIGHTS[k] for k in names])
    labels = _rng(config.seed, "mixed/labels").choice(len(names), size=n, p=weights / weights.sum())
    drafts: list[Draft | None] = [None] * n
    for j, name in enumerate(names):
        slots = np.flatnonzero(labels == j)
        if slots.size == 0:
            continue
        spec = SPECS[name]
        plan = _plan(spec, config, int(slots.size), rps * slots.size / n, f"mixed.{name}")
        for slot, draft in zip(slots.tolist(), _BUILDERS[name](spec, plan), strict=True):
            drafts[slot] = draft
    return _requests("mixed", times, drafts, [names[j] for j in labels.tolist()])


WORKLOADS: dict[str, Callable[[WorkloadConfig], list[WorkloadRequest]]] = {
    **{name: functools.partial(generate_single, spec) for name, spec in SPECS.items()},
    "mixed": generate_mixed,
}
"""Workload generators by name: `WORKLOADS[name](config)`."""


def make_workload(name: str, config: WorkloadConfig | None = None) -> list[WorkloadRequest]:
    """The stream of workload `name` (a key of :data:`WORKLOADS`), sorted by arrival.

    Raises:
        ValueError: on an unknown workload name.
    """
    try:
        generate = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; expected one of {sorted(WORKLOADS)}") from None
    return generate(config or WorkloadConfig())
