"""The tier-backend interface: block keys, stored blocks and what every tier offers.

A tier backend holds opaque KV blocks keyed by (namespace, router block hash). Running out
of room is a return value (`put` returns None), bugs are exceptions (unpin below zero,
removing a pinned block). Residency events carry node 0; the node agent stamps its id.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from preble_tiered.events import ResidencyEvent
from preble_tiered.types import Tier

PLACEHOLDER_NODE = 0
"""Events carry node 0; the node agent replaces it with its own id."""


class BlockKey(NamedTuple):
    """A block's identity: the model namespace (as in hashing) and the router block hash.

    A named tuple, not a dataclass: keys are hashed on every tier operation, and a tuple's
    hash and equality run in C.
    """

    namespace: str
    block_hash: int


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """One block as a tier holds it.

    Attributes:
        key: the block's identity.
        parent: the router hash of the block before it (None for a first block), kept so
            residency events and snapshots can describe chains.
        data: the block's KV bytes, opaque here; any buffer (bytes, memoryview, ...).
    """

    key: BlockKey
    parent: int | None
    data: bytes | memoryview

    @property
    def nbytes(self) -> int:
        data = self.data
        if type(data) is memoryview:  # what saves hand in: no new view just to ask its size
            return data.nbytes
        return len(data) if type(data) is bytes else memoryview(data).nbytes


class TierBackend(ABC):
    """One storage tier of a node (LMCache `StorageBackendInterface` style)."""

    tier: Tier

    @abstractmethod
    def contains(self, key: BlockKey) -> bool:
        """Whether the tier holds `key` (does not count as a use)."""

    @abstractmethod
    def get(self, key: BlockKey) -> StoredBlock | None:
        """The block, marked most recently used; None on a miss (or, on disk, a corrupt block)."""

    @abstractmethod
    def put(self, block: StoredBlock) -> list[StoredBlock] | None:
        """Store `block`, evicting least recently used unpinned blocks to make room.

        Storing a key already held only marks it used (blocks are content-addressed).

        Returns:
            The blocks evicted to make room (the caller may demote them), or None when the
            block could not be stored (all candidates pinned, or the tier is degraded);
            nothing was changed in that case.

        Raises:
            ValueError: if the block alone is larger than the tier's capacity.
        """

    @abstractmethod
    def fits(self, block: StoredBlock) -> bool:
        """Whether `block` alone fits in the tier's capacity (else `put` raises ValueError)."""

    @abstractmethod
    def remove(self, key: BlockKey) -> bool:
        """Drop `key`. Returns False if absent. Raises RuntimeError if it is pinned."""

    @abstractmethod
    def pin(self, key: BlockKey) -> bool:
        """Add one reference to `key` so it is never evicted. Returns False if absent."""

    @abstractmethod
    def unpin(self, key: BlockKey) -> None:
        """Drop one reference. Raises RuntimeError if `key` has no pin left to release."""

    @abstractmethod
    def keys(self) -> list[tuple[BlockKey, int | None]]:
        """(key, parent) of every block held, each parent before its children."""

    @abstractmethod
    def take_events(self) -> list[ResidencyEvent]:
        """Residency events for this tier since the last call (drains the queue)."""

    @property
    @abstractmethod
    def used_bytes(self) -> int: ...

    @property
    @abstractmethod
    def capacity_bytes(self) -> int: ...

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters: hits, misses, evictions, bytes, capacity, blocks, puts, rejected, ..."""

    @abstractmethod
    def close(self) -> None:
        """Release the tier's resources; the tier is unusable afterwards."""


def parents_first(entries: Iterable[tuple[BlockKey, int | None]]) -> list[tuple[BlockKey, int | None]]:
    """Order (key, parent) pairs so every parent present comes before its children.

    Depth-first from the blocks whose parent is absent, keeping the input order among
    siblings, so a chain comes out contiguous (and its BlockStored events coalesce); O(n).
    Reversed, the order puts every descendant before its ancestors. Anything unreachable
    (a parent cycle, only possible with corrupt metadata) is appended rather than lost.
    """
    items = list(entries)
    present = {k for k, _ in items}
    children: dict[BlockKey, list[tuple[BlockKey, int | None]]] = {}
    roots: list[tuple[BlockKey, int | None]] = []
    for key, parent in items:
        pkey = None if parent is None else BlockKey(key.namespace, parent)
        if pkey is not None and pkey in present and pkey != key:
            children.setdefault(pkey, []).append((key, parent))
        else:
            roots.append((key, parent))
    out: list[tuple[BlockKey, int | None]] = []
    seen: set[BlockKey] = set()
    stack = roots[::-1]
    while stack:
        item = stack.pop()
        out.append(item)
        seen.add(item[0])
        stack.extend(reversed(children.get(item[0], ())))
    if len(out) < len(items):
        out.extend(item for item in items if item[0] not in seen)
    return out
