"""The holder's side of bulk pulls: leases on blocks in registered memory.

A lease holds the read-only views of the leased blocks' pool slots. The block pool hands a
slot out again only when nothing else refers to it (`kvstore/pool.py`), so while a lease
lives its bytes cannot be overwritten, even if the DRAM tier evicts the block: a peer's
one-sided read always sees the block the checksum describes. Releasing the lease (the
puller's Release, or its expiry) drops the views and the slots are free again.

Pure bookkeeping: time comes in as an argument.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass
class Lease:
    views: list
    expires: float


class LeaseTable:
    """Live leases by id, each with a deadline.

    Args:
        ttl_s: how long a lease lives without a Release (a puller that died).
        max_blocks: most blocks held by all leases together; a lease that would pass it is
            cut short (the puller pulls the rest another way, or recomputes it).
    """

    def __init__(self, ttl_s: float = 30.0, max_blocks: int = 4096) -> None:
        if ttl_s <= 0 or max_blocks <= 0:
            raise ValueError(f"ttl_s and max_blocks must be positive, got {ttl_s} and {max_blocks}")
        self.ttl_s = ttl_s
        self.max_blocks = max_blocks
        self._leases: dict[int, Lease] = {}
        self._ids = itertools.count(1)
        self._held = 0
        self.expired = 0

    @property
    def held_blocks(self) -> int:
        return self._held

    def __len__(self) -> int:
        return len(self._leases)

    def room(self) -> int:
        """Blocks a new lease may still hold."""
        return self.max_blocks - self._held

    def add(self, views: list, now: float) -> int:
        """Hold `views` until released or `now + ttl_s`; returns the lease id (> 0)."""
        lease_id = next(self._ids)
        self._leases[lease_id] = Lease(views, now + self.ttl_s)
        self._held += len(views)
        return lease_id

    def release(self, lease_id: int) -> bool:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        self._held -= len(lease.views)
        return True

    def sweep(self, now: float) -> int:
        """Release every lease past its deadline; returns how many."""
        dead = [i for i, lease in self._leases.items() if lease.expires <= now]
        for i in dead:
            self.release(i)
        self.expired += len(dead)
        return len(dead)
