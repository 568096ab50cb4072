"""A cluster profile: every cost fact the simulator needs to stand for one real cluster.

Measured, not guessed: the prefill fit `[1, e, c, causal attention pairs]` (`LinearPrefill`)
from the nodes' clean prefills, the decode step fit `[1, batch, context]` from the nodes'
measured decode steps, the engine's limits (sequences, step token budget, block size, KV per
tier), the link bandwidths the nodes measured, the fixed time a request spends outside the
engine (router hop, tokenization, gRPC) and, where nodes share a host's cores, how much slower
a prefill runs while another node there works. The router assembles one from what its nodes
report (`preble admin profile`); `preble calibrate` drives a sweep first for good coverage;
`preble sim --profile` runs on one, `preble router --profile` routes on one.

A profile is a versioned JSON document (`to_dict` / `from_dict`; files in `sim/profile_files.py`).
Bad or missing fields raise `ProfileError` naming the field. Pure code: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from preble_tiered.scheduler.cost_model import (ChunkedPrefill, CostModel, LinearDecode, LinearPrefill, Link,
                                                Links, ModelShape, kv_shape)

PROFILE_VERSION = 1
LINK_KINDS = ("dram", "disk", "net")


class ProfileError(ValueError):
    """A profile document that cannot be used; the message names the field."""


@dataclass(frozen=True)
class EngineLimits:
    """What one node's engine can hold and run at once."""

    block_size: int
    max_num_seqs: int
    """Most sequences running at once (vLLM's max_num_seqs)."""
    max_batch_tokens: int
    """Token budget of one step (vLLM's max_num_batched_tokens, chunked prefill)."""
    hbm_tokens: int
    """KV capacity of the engine's own cache, in tokens."""
    dram_tokens: int = 0
    disk_tokens: int = 0


@dataclass(frozen=True)
class LinkFigure:
    """One data path: seconds = latency_s + bytes / bandwidth."""

    bandwidth: float
    """Bytes per second."""
    latency_s: float = 0.0
    measured: bool = False
    """True when a node measured it; False when it is the preset's figure."""


@dataclass(frozen=True)
class Coverage:
    """What the fits rest on: a fit says nothing outside these ranges."""

    prefill_samples: int = 0
    prefill_new_tokens: tuple[int, int] = (0, 0)
    decode_steps: int = 0
    decode_batch: tuple[int, int] = (0, 0)
    decode_context_tokens: tuple[int, int] = (0, 0)
    overhead_samples: int = 0
    """Requests the request overhead is the median of (those that met nothing else in the engine)."""
    host_samples: int = 0
    """Prefills the host slowdown is the median of (`preble calibrate`; 0: not measured)."""


@dataclass(frozen=True)
class ClusterProfile:
    """See the module docstring. Times in the fits are milliseconds (as `LinearPrefill` and
    `LinearDecode` keep them); everything else is seconds, bytes and tokens."""

    name: str
    model: str
    nodes: int
    kv_bytes_per_token: int
    prefill: LinearPrefill
    decode: LinearDecode
    engine: EngineLimits
    links: dict[str, LinkFigure]
    request_overhead_s: float = 0.0
    """Time per request outside the engine, added to TTFT: the router's TTFT less the node's
    (router hop, gRPC), plus `client_overhead_s`."""
    client_overhead_s: float = 0.0
    """Of `request_overhead_s`, the client's own hop (its TTFT less the router's), where a
    client measured it (`preble calibrate`); `preble admin profile` has no client: 0."""
    host_nodes: int = 1
    """Nodes that share one host's cores (`preble calibrate` counts them from the nodes'
    addresses; 1 otherwise)."""
    host_prefill_slowdown: float = 0.0
    """How much slower a prefill runs while another node of its host works: the median of its
    engine time beside another node's decode stream over the same size's alone, less 1
    (`preble calibrate` measures it; `preble admin profile` has none: 0)."""
    coverage: Coverage = field(default_factory=Coverage)
    source: str = ""
    """How it was measured (the command)."""
    version: int = PROFILE_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ProfileError for values no cluster can have."""
        _positive("nodes", self.nodes)
        _positive("kv_bytes_per_token", self.kv_bytes_per_token)
        if self.kv_bytes_per_token % 2:
            raise ProfileError(f"profile field 'kv_bytes_per_token' must be even (K and V), got {self.kv_bytes_per_token}")
        e = self.engine
        for name in ("block_size", "max_num_seqs", "max_batch_tokens", "hbm_tokens"):
            _positive(f"engine.{name}", getattr(e, name))
        for name in ("dram_tokens", "disk_tokens"):
            if getattr(e, name) < 0:
                raise ProfileError(f"profile field 'engine.{name}' cannot be negative, got {getattr(e, name)}")
        for kind in LINK_KINDS:
            if kind not in self.links:
                raise ProfileError(f"profile field 'links.{kind}' is missing")
            _positive(f"links.{kind}.bandwidth", self.links[kind].bandwidth)
        _positive("host_nodes", self.host_nodes)
        for name in ("request_overhead_s", "client_overhead_s", "host_prefill_slowdown"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ProfileError(f"profile field '{name}' must be >= 0, got {v}")
        if self.host_prefill_slowdown >= MAX_HOST_SLOWDOWN:
            raise ProfileError(f"profile field 'host_prefill_slowdown' must be below {MAX_HOST_SLOWDOWN}, got "
                               f"{self.host_prefill_slowdown}")
        if self.client_overhead_s > self.request_overhead_s:
            raise ProfileError("profile field 'client_overhead_s' is part of 'request_overhead_s' and cannot exceed it")
        for kind in LINK_KINDS:
            lat = self.links[kind].latency_s
            if not math.isfinite(lat) or lat < 0:
                raise ProfileError(f"profile field 'links.{kind}.latency_s' must be >= 0, got {lat}")
        for name, fit in (("prefill", self.prefill), ("decode", self.decode)):
            for k, v in asdict(fit).items():
                if isinstance(v, bool):  # the prefill's form, not a term
                    continue
                if not math.isfinite(v):
                    raise ProfileError(f"profile field '{name}.{k}' must be a finite number, got {v}")
                if v < 0:  # the fits are non-negative: a negative term gives negative times somewhere
                    raise ProfileError(f"profile field '{name}.{k}' must be >= 0, got {v}")
        # A fit must give positive times where the engine runs.
        if self.prefill.seconds(e.block_size, e.block_size) <= 0 or self.prefill.seconds(e.max_batch_tokens, e.max_batch_tokens) <= 0:
            raise ProfileError("profile field 'prefill' predicts a non-positive prefill time; refit it with more samples")
        if self.decode.step_seconds(_NO_SHAPE, 1, 1) <= 0:
            raise ProfileError("profile field 'decode' predicts a non-positive decode step; refit it with more samples")

    # ---------------------------------------------------------------- the cost model
    def cost_model(self) -> CostModel:
        """The scheduler's and simulator's cost model for this cluster."""
        shape = kv_shape(self.model, self.kv_bytes_per_token)
        links = Links(**{k: Link(f.bandwidth, f.latency_s) for k, f in self.links.items() if k in LINK_KINDS})
        # The prefill fit is per chunk (`fit_profile`): a whole prefill is priced as its chunks.
        return CostModel(name=f"profile:{self.name}", prefill=ChunkedPrefill(self.prefill, self.engine.max_batch_tokens),
                         shape=shape, decode=self.decode, hbm_tokens=self.engine.hbm_tokens, links=links)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coverage"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["coverage"].items()}
        return {"version": d.pop("version"), **d}

    @classmethod
    def from_dict(cls, d: Any) -> "ClusterProfile":
        """Raises ProfileError naming the first missing or bad field."""
        if not isinstance(d, dict):
            raise ProfileError(f"a profile is a JSON object, got {type(d).__name__}")
        version = _get(d, "", "version", int)
        if version != PROFILE_VERSION:
            raise ProfileError(f"profile field 'version' is {version}; this build reads version {PROFILE_VERSION}")
        pre = _obj(d, "", "prefill")
        dec = _obj(d, "", "decode")
        eng = _obj(d, "", "engine")
        links = _obj(d, "", "links")
        cov = d.get("coverage", {})
        if not isinstance(cov, dict):
            raise ProfileError("profile field 'coverage' must be an object")
        return cls(
            name=_get(d, "", "name", str), model=_get(d, "", "model", str), nodes=_get(d, "", "nodes", int),
            kv_bytes_per_token=_get(d, "", "kv_bytes_per_token", int),
            prefill=LinearPrefill(*(_get(pre, "prefill.", k, float) for k in ("a", "b", "c", "d")),
                                  causal=_get(pre, "prefill.", "causal", bool, default=False)),
            decode=LinearDecode(*(_get(dec, "decode.", k, float) for k in ("a", "b", "c"))),
            engine=EngineLimits(
                **{k: _get(eng, "engine.", k, int) for k in ("block_size", "max_num_seqs", "max_batch_tokens",
                                                            "hbm_tokens")},
                **{k: _get(eng, "engine.", k, int, default=0) for k in ("dram_tokens", "disk_tokens")}),
            links={k: LinkFigure(_get(_obj(links, "links.", k), f"links.{k}.", "bandwidth", float),
                                 _get(links[k], f"links.{k}.", "latency_s", float, default=0.0),
                                 _get(links[k], f"links.{k}.", "measured", bool, default=False))
                   for k in LINK_KINDS},
            request_overhead_s=_get(d, "", "request_overhead_s", float, default=0.0),
            client_overhead_s=_get(d, "", "client_overhead_s", float, default=0.0),
            host_nodes=_get(d, "", "host_nodes", int, default=1),
            host_prefill_slowdown=_get(d, "", "host_prefill_slowdown", float, default=0.0),
            coverage=Coverage(
                prefill_samples=_get(cov, "coverage.", "prefill_samples", int, default=0),
                prefill_new_tokens=_pair(cov, "prefill_new_tokens"),
                decode_steps=_get(cov, "coverage.", "decode_steps", int, default=0),
                decode_batch=_pair(cov, "decode_batch"),
                decode_context_tokens=_pair(cov, "decode_context_tokens"),
                overhead_samples=_get(cov, "coverage.", "overhead_samples", int, default=0),
                host_samples=_get(cov, "coverage.", "host_samples", int, default=0)),
            source=_get(d, "", "source", str, default=""),
        )


MAX_HOST_SLOWDOWN = 10.0
"""`host_prefill_slowdown` must be below this (as `SimConfig` requires)."""

HBM_TOLERANCE = 0.05
"""`mean_profile`: how far apart (as a share) calibrations' engine KV capacities may lie."""


def mean_profile(profiles: Sequence[ClusterProfile], name: str | None = None) -> ClusterProfile:
    """One cluster's calibrations taken at different moments, as one profile whose every time is
    their mean at the same shape: the fits' terms and the overheads averaged (a fit is linear in
    its terms), and each link's latency and time per byte averaged. For a machine whose speed
    drifts between calibrations: a calibration just before some runs and one just after them
    bracket the speed the runs ran at.

    Raises:
        ValueError: for no profiles.
        ProfileError: where the profiles differ in what is not a time (model, nodes, KV bytes
            per token, the engine's limits): they are not of one cluster. The engine's KV
            capacity may differ by `HBM_TOLERANCE` (a GPU engine sizes its cache from a memory
            profile taken at each start, which can come out a few blocks apart): the mean
            takes the smallest.
    """
    if not profiles:
        raise ValueError("mean_profile needs at least one profile")
    hbm = min(p.engine.hbm_tokens for p in profiles)
    if max(p.engine.hbm_tokens for p in profiles) <= hbm * (1 + HBM_TOLERANCE):  # the engine's own sizing
        profiles = [replace(p, engine=replace(p.engine, hbm_tokens=hbm)) for p in profiles]
    first = profiles[0]
    for p in profiles[1:]:
        if p.prefill.causal != first.prefill.causal:
            raise ProfileError("profile field 'prefill.causal' differs between the profiles: their prefill fits "
                               "price attention differently and cannot be averaged; recalibrate the older one")
        for key in ("model", "nodes", "kv_bytes_per_token", "engine", "host_nodes"):
            if getattr(p, key) != getattr(first, key):
                diff = next((f"engine.{f.name}" for f in fields(EngineLimits)
                             if getattr(p.engine, f.name) != getattr(first.engine, f.name)), key) if key == "engine" else key
                raise ProfileError(f"profile field '{diff}' differs between the profiles ({getattr(first, key)!r} "
                                   f"against {getattr(p, key)!r}): they are not calibrations of one cluster")
    n = len(profiles)

    def mean(values: Any) -> float:
        return math.fsum(values) / n

    def mean_fit(which: str) -> Any:
        fit = getattr(first, which)
        terms = [f.name for f in fields(fit) if not isinstance(getattr(fit, f.name), bool)]
        return replace(fit, **{k: mean(getattr(getattr(p, which), k) for p in profiles) for k in terms})

    links = {k: LinkFigure(bandwidth=1.0 / mean(1.0 / p.links[k].bandwidth for p in profiles),
                           latency_s=mean(p.links[k].latency_s for p in profiles),
                           measured=all(p.links[k].measured for p in profiles)) for k in LINK_KINDS}
    covs = [p.coverage for p in profiles]

    def span(key: str) -> tuple[int, int]:
        spans = [getattr(c, key) for c in covs if getattr(c, key) != (0, 0)]
        return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (0, 0)

    coverage = Coverage(prefill_samples=sum(c.prefill_samples for c in covs), prefill_new_tokens=span("prefill_new_tokens"),
                        decode_steps=sum(c.decode_steps for c in covs), decode_batch=span("decode_batch"),
                        decode_context_tokens=span("decode_context_tokens"),
                        overhead_samples=sum(c.overhead_samples for c in covs),
                        host_samples=sum(c.host_samples for c in covs))
    return replace(first, name=name or first.name, prefill=mean_fit("prefill"), decode=mean_fit("decode"), links=links,
                   request_overhead_s=mean(p.request_overhead_s for p in profiles),
                   client_overhead_s=mean(p.client_overhead_s for p in profiles),
                   host_prefill_slowdown=mean(p.host_prefill_slowdown for p in profiles), coverage=coverage,
                   source=f"the mean of {n} profiles: " + "; ".join(p.source or p.name for p in profiles))


_NO_SHAPE = ModelShape("none", 1, 1, 1, 1, 0.0)
_MISSING = object()


def _positive(name: str, v: float) -> None:
    if not v > 0:
        raise ProfileError(f"profile field '{name}' must be positive, got {v}")


def _obj(d: dict, prefix: str, key: str) -> dict:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        raise ProfileError(f"profile field '{prefix}{key}' is missing")
    if not isinstance(v, dict):
        raise ProfileError(f"profile field '{prefix}{key}' must be an object, got {type(v).__name__}")
    return v


def _get(d: dict, prefix: str, key: str, typ: type, default: Any = _MISSING) -> Any:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        if default is _MISSING:
            raise ProfileError(f"profile field '{prefix}{key}' is missing")
        return default
    ok = (isinstance(v, bool) if typ is bool else
          isinstance(v, int) and not isinstance(v, bool) if typ is int else
          isinstance(v, (int, float)) and not isinstance(v, bool) if typ is float else isinstance(v, typ))
    if not ok:
        raise ProfileError(f"profile field '{prefix}{key}' must be {typ.__name__}, got {v!r}")
    return float(v) if typ is float else v


def _pair(cov: dict, key: str) -> tuple[int, int]:
    v = cov.get(key, [0, 0])
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v)):
        raise ProfileError(f"profile field 'coverage.{key}' must be [min, max], got {v!r}")
    return int(v[0]), int(v[1])
