"""Distributions the workload generators draw from (lengths, popularity, shared fractions).

The generators match a published prompt-length mean/std and shared-fraction mean/std
(docs/architecture.md §8). Two ideas keep the sampled statistics on target:

- **Stratified prefix lengths.** Prefix `k` gets the length-distribution quantile at the
  middle of its slice of the popularity mass (prefixes visited in a seeded random order).
  The request-weighted distribution of prefix lengths then matches the target whatever the
  popularity skew, so one very popular prefix does not drag the stream's mean length.
- **A mixture for the shared fraction.** A small share of requests has no shared prefix at
  all; the rest draw their fraction from a Beta near 1. :meth:`FractionModel.fit` solves the
  mixture weight and Beta mean from the published mean and std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_STD_NORMAL = NormalDist()


def lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and standard deviation."""
    if mean <= 0 or std < 0:
        raise ValueError(f"lognormal needs mean > 0 and std >= 0, got mean={mean}, std={std}")
    sigma2 = math.log1p((std / mean) ** 2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def lognormal_quantiles(mean: float, std: float, u: np.ndarray) -> np.ndarray:
    """Quantiles at probabilities `u` (in (0, 1)) of the lognormal with this mean/std."""
    mu, sigma = lognormal_params(mean, std)
    z = np.fromiter((_STD_NORMAL.inv_cdf(float(p)) for p in u), dtype=float, count=len(u))
    return np.exp(mu + sigma * z)


def lognormal_draws(rng: np.random.Generator, mean: float, std: float, n: int) -> np.ndarray:
    """`n` draws from the lognormal with this mean and standard deviation."""
    mu, sigma = lognormal_params(mean, std)
    return rng.lognormal(mu, sigma, size=n)


def popularity(n_prefixes: int, zipf: float | None, rng: np.random.Generator) -> np.ndarray:
    """Probability of each prefix: uniform, or Zipf(`zipf`) over a seeded random ranking."""
    if n_prefixes < 1:
        raise ValueError(f"need at least one prefix, got {n_prefixes}")
    if not zipf:
        return np.full(n_prefixes, 1.0 / n_prefixes)
    weights = np.arange(1, n_prefixes + 1, dtype=float) ** -zipf
    probs = np.empty(n_prefixes)
    probs[rng.permutation(n_prefixes)] = weights / weights.sum()
    return probs


def stratified_lengths(probs: np.ndarray, mean: float, std: float, rng: np.random.Generator) -> np.ndarray:
    """One lognormal length per prefix so that request-weighted lengths match (mean, std).

    Prefixes are visited in a seeded random order; each takes the quantile at the middle of
    its slice of the cumulative popularity mass.
    """
    order = rng.permutation(len(probs))
    mass = probs[order]
    mids = np.clip(np.cumsum(mass) - mass / 2, 1e-9, 1 - 1e-9)
    out = np.empty(len(probs))
    out[order] = lognormal_quantiles(mean, std, mids)
    return out


def prefix_moments(target_mean: float, target_std: float, factor: np.ndarray) -> tuple[float, float]:
    """(mean, std) of X such that X * factor has the target mean/std, X independent of factor.

    `factor` is a sample of the multiplier (for instance 1 / shared fraction). When the
    factor alone is more variable than the target, the std falls back to 5% of the mean.
    """
    if factor.size == 0:
        return target_mean, target_std
    mean = target_mean / float(factor.mean())
    second = (target_std**2 + target_mean**2) / float((factor**2).mean())
    return mean, math.sqrt(max(second - mean**2, (0.05 * mean) ** 2))


@dataclass(frozen=True)
class FractionModel:
    """Shared fraction per request: 0 with probability `none_prob`, else Beta(mean, std).

    Attributes:
        none_prob: share of requests without any shared prefix.
        inner_mean: mean fraction of the requests that do share a prefix.
        inner_std: standard deviation of that fraction.
    """

    none_prob: float
    inner_mean: float
    inner_std: float

    def __post_init__(self) -> None:
        if not 0 <= self.none_prob < 1:
            raise ValueError(f"none_prob must be in [0, 1), got {self.none_prob}")
        if not 0 < self.inner_mean < 1:
            raise ValueError(f"inner_mean must be in (0, 1), got {self.inner_mean}")
        if not 0 < self.inner_std**2 < self.inner_mean * (1 - self.inner_mean):
            raise ValueError(
                f"inner_std={self.inner_std} is impossible for a Beta with mean {self.inner_mean}; "
                f"it must satisfy 0 < std**2 < mean*(1-mean)"
            )

    @classmethod
    def fit(cls, mean: float, std: float, inner_std: float) -> FractionModel:
        """The mixture with overall `mean`/`std` whose Beta part has standard deviation `inner_std`.

        With q = none_prob and c = inner_mean: mean = (1-q)c and
        mean**2 + std**2 = (1-q)(c**2 + inner_std**2), so c solves c**2 - K c + inner_std**2 = 0
        with K = (mean**2 + std**2) / mean (the larger root).
        """
        k = (mean**2 + std**2) / mean
        disc = k * k - 4 * inner_std**2
        if disc < 0:
            raise ValueError(f"no mixture has mean={mean}, std={std} with inner_std={inner_std}")
        inner = min((k + math.sqrt(disc)) / 2, 1 - 1e-6)
        none = max(0.0, 1 - mean / inner)
        return cls(none_prob=none, inner_mean=inner, inner_std=inner_std)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` fractions in [0, 1]; exactly 0 marks a request with no shared prefix."""
        c, v = self.inner_mean, self.inner_std
        total = c * (1 - c) / v**2 - 1
        out = rng.beta(c * total, (1 - c) * total, size=n)
        out[rng.random(n) < self.none_prob] = 0.0
        return out


@dataclass(frozen=True)
class OutputLengths:
    """Output-token counts: uniform integers in [low, high], or a clipped lognormal.

    Attributes:
        low: smallest count (>= 1).
        high: largest count (>= low); low == high gives a fixed count.
        median: when set, draw lognormal(log(median), sigma) and clip to [low, high].
        sigma: log-space spread of the lognormal.
    """

    low: int
    high: int
    median: float | None = None
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"need 1 <= low <= high, got low={self.low}, high={self.high}")
        if self.median is not None and (self.median <= 0 or self.sigma < 0):
            raise ValueError(f"lognormal needs median > 0 and sigma >= 0, got {self.median}, {self.sigma}")

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` output-token counts (int64)."""
        if self.median is None:
            return rng.integers(self.low, self.high + 1, size=n)
        raw = rng.lognormal(math.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(raw), self.low, self.high).astype(np.int64)
