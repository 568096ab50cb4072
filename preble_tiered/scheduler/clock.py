"""Clocks. Scheduling code takes a Clock and never reads time any other way."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since an arbitrary epoch, monotonic."""
        ...


class ManualClock:
    """A clock that moves only when told to: the simulator's and the tests'."""

    __slots__ = ("_t",)

    def __init__(self, t: float = 0.0) -> None:
        self._t = float(t)

    def now(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"clock cannot go back from {self._t} to {t}")
        self._t = float(t)

    def advance(self, dt: float) -> None:
        self.set(self._t + dt)


class MonotonicClock:
    """The real clock, injected by the router process (never read inside the scheduler)."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()
