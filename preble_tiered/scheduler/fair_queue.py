"""Preble's local fair queue: cache-hit priority groups with growing quotas.

A request with cache-hit ratio r belongs to group g = ceil(10 r) - 1 (g = 0 with no hit):
`hit_group` computes it, and the queue takes the group. Scheduling rounds visit the non-empty groups round-robin from the top (most hits first);
a round admits up to (g + 1) * k requests of its group, FCFS inside the group. High-hit
requests (cheap, they mostly decode) go first and in larger numbers, and every non-empty
group is visited once per cycle, so nothing starves.

Used by the simulator's engines and by the node agents' admission (`node/admission.py`).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


GROUPS = 10
"""Preble's cache-hit priority groups: a request's group is in 0..GROUPS-1."""


def hit_group(hit_ratio: float, groups: int = GROUPS) -> int:
    """Priority group of a request whose prompt is `hit_ratio` cached (0 <= r <= 1)."""
    if not 0.0 <= hit_ratio <= 1.0:
        raise ValueError(f"hit ratio must be within [0, 1], got {hit_ratio}")
    if hit_ratio == 0.0:
        return 0
    return min(groups - 1, max(0, math.ceil(hit_ratio * groups) - 1))


class FairQueue(Generic[T]):
    """Priority groups (0..groups-1, by cache-hit ratio) with per-round quotas of (g + 1) * k.

    Args:
        k: quota unit (Preble: 10).
        groups: number of groups (Preble: 10).
    """

    def __init__(self, k: int = 10, groups: int = GROUPS) -> None:
        if k <= 0 or groups <= 0:
            raise ValueError(f"k and groups must be positive, got k={k}, groups={groups}")
        self.k = k
        self.groups = groups
        self._q: list[deque[T]] = [deque() for _ in range(groups)]
        self._len = 0
        self._group = 0  # group of the current round; the first round wraps to the top
        self._left = 0  # admissions left in the current round

    def __len__(self) -> int:
        return self._len

    def push(self, item: T, group: int) -> None:
        """Queue `item` at the back of `group`.

        Raises:
            ValueError: if `group` is not in 0..groups-1.
        """
        self._q[self._check(group)].append(item)
        self._len += 1

    def pop(self) -> T:
        """The next request under the round/quota rule.

        Raises:
            IndexError: when the queue is empty.
        """
        if not self._len:
            raise IndexError("pop from an empty FairQueue")
        if self._left <= 0 or not self._q[self._group]:
            self._next_round()
        self._left -= 1
        self._len -= 1
        return self._q[self._group].popleft()

    def peek(self) -> T:
        """The item `pop` would return, without taking it (or starting a new round)."""
        if not self._len:
            raise IndexError("peek into an empty FairQueue")
        if self._left > 0 and self._q[self._group]:
            return self._q[self._group][0]
        return self._q[self._following_group()][0]

    def push_front(self, item: T, group: int) -> None:
        """Put back an item just popped from `group` that could not be admitted (keeps its turn).

        Raises:
            ValueError: if `group` is not in 0..groups-1.
        """
        g = self._check(group)
        self._q[g].appendleft(item)
        self._len += 1
        if g == self._group:
            self._left += 1

    def _check(self, group: int) -> int:
        if not 0 <= group < self.groups:
            raise ValueError(f"group must be in 0..{self.groups - 1}, got {group}; "
                             "use hit_group(hit_ratio) to get a request's group")
        return group

    def _following_group(self) -> int:
        g = self._group
        for _ in range(self.groups):
            g = (g - 1) % self.groups  # top-down, wrapping to the top after group 0
            if self._q[g]:
                return g
        raise AssertionError("non-empty FairQueue has no non-empty group")

    def _next_round(self) -> None:
        self._group = self._following_group()
        self._left = (self._group + 1) * self.k

    def items(self) -> list[T]:
        """Every queued item, top group first (for inspection)."""
        return [x for q in reversed(self._q) for x in q]
