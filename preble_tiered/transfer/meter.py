"""Measured bandwidth per data path, as an exponentially weighted moving average.

Paths are named by what they move: "dram" and "disk" (a tier's blocks into the engine's
cache), "net:<peer address>" (blocks pulled from that node). Callers time their own
transfers and pass the durations in (this module reads no clock); transfers below
`min_bytes` are ignored because fixed per-call latency, not bandwidth, dominates them.
Thread-safe: the engine thread records loads while the agent's loop records pulls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    bytes_per_s: float
    samples: int


class BandwidthMeter:
    def __init__(self, alpha: float = 0.25, min_bytes: int = 256 << 10) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.min_bytes = min_bytes
        self._rates: dict[str, Rate] = {}
        self._lock = threading.Lock()

    def observe(self, link: str, nbytes: int, seconds: float) -> None:
        """Record `nbytes` moved over `link` in `seconds` (ignored below `min_bytes`)."""
        if nbytes < self.min_bytes or seconds <= 0:
            return
        r = nbytes / seconds
        with self._lock:
            old = self._rates.get(link)
            if old is None:
                self._rates[link] = Rate(r, 1)
            else:
                self._rates[link] = Rate(old.bytes_per_s + self.alpha * (r - old.bytes_per_s), old.samples + 1)

    def rate(self, link: str) -> float | None:
        with self._lock:
            got = self._rates.get(link)
        return None if got is None else got.bytes_per_s

    def rates(self) -> dict[str, Rate]:
        with self._lock:
            return dict(self._rates)
