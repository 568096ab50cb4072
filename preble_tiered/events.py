"""Residency events: what a node reports about its KV blocks, per tier.

Nodes queue these and the driver drains them once per step (vLLM `take_events()` style);
the router applies them to its PrefixIndex in order. Sequence numbers and snapshots live in
the transport (the node agent and the router), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from preble_tiered.types import NodeId, Tier


@dataclass(frozen=True, slots=True)
class BlockStored:
    """`node` now holds `hashes` (a chain; the first one's parent is `parent`) in `tier`."""

    node: NodeId
    tier: Tier
    hashes: tuple[int, ...]
    parent: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    node: NodeId
    tier: Tier
    hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """`node` dropped everything in `tier` (None: in every tier), e.g. after a restart."""

    node: NodeId
    tier: Tier | None = None


ResidencyEvent = BlockStored | BlockRemoved | AllBlocksCleared
