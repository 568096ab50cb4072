"""Arrival processes: when each request of a synthetic stream arrives.

Every process takes the request count, the mean rate and a seeded numpy Generator, and
returns sorted arrival times in seconds; the first request arrives at t = 0 and the gaps
between consecutive requests have mean `1 / rps`.

- ``poisson``: exponential gaps (coefficient of variation 1).
- ``gamma``: gamma gaps with shape ``k = cv**-2`` and the same mean, so ``cv > 1`` gives bursts
  of closely spaced requests separated by long lulls (the "bursty" option of docs/architecture.md §8).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

ArrivalFn = Callable[[int, float, np.random.Generator, float], np.ndarray]
"""(n_requests, rps, rng, cv) -> sorted arrival times in seconds."""


def _check(n: int, rps: float) -> None:
    if n < 0:
        raise ValueError(f"number of arrivals must be >= 0, got {n}")
    if not (rps > 0 and math.isfinite(rps)):
        raise ValueError(f"arrival rate must be a positive finite requests/s, got {rps}")


def _times_from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Arrival times from the n-1 gaps after the first request (which arrives at 0)."""
    out = np.zeros(gaps.shape[0] + 1)
    np.cumsum(gaps, out=out[1:])
    return out


def poisson_arrivals(n: int, rps: float, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """`n` Poisson arrivals at `rps` requests/s (`cv` is ignored: it is always 1)."""
    _check(n, rps)
    if n == 0:
        return np.zeros(0)
    return _times_from_gaps(rng.exponential(1.0 / rps, size=n - 1))


def gamma_arrivals(n: int, rps: float, rng: np.random.Generator, cv: float = 2.0) -> np.ndarray:
    """`n` arrivals with gamma gaps of mean `1/rps` and coefficient of variation `cv`."""
    _check(n, rps)
    if not (cv > 0 and math.isfinite(cv)):
        raise ValueError(f"burstiness cv must be a positive finite number, got {cv}")
    if n == 0:
        return np.zeros(0)
    shape = cv**-2
    return _times_from_gaps(rng.gamma(shape, 1.0 / (rps * shape), size=n - 1))


ARRIVALS: dict[str, ArrivalFn] = {
    "poisson": poisson_arrivals,
    "gamma": gamma_arrivals,
}


def make_arrivals(name: str, n: int, rps: float, rng: np.random.Generator, cv: float = 2.0) -> np.ndarray:
    """Arrival times from the process registered as `name` (see :data:`ARRIVALS`).

    Raises:
        ValueError: on an unknown process name or out-of-range parameters.
    """
    try:
        fn = ARRIVALS[name]
    except KeyError:
        raise ValueError(f"unknown arrival process {name!r}; expected one of {sorted(ARRIVALS)}") from None
    return fn(n, rps, rng, cv)
