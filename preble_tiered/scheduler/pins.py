"""Pinned prefixes as desired state, and the pure reconciler that moves the cluster toward it.

An operator pins a named prefix with a tier and a replica count. Each round the router calls
`reconcile` with what it knows (the index's residency, the pins each node acknowledged, the
warm-ups in flight, the clock) and executes the actions it returns:

    WARM   run the prefix on the node (a one-token request; the planner copies its KV from
           another node when that beats recomputing), so the node holds it
    PIN    ask the node to pin the prefix's blocks in the tier (PinBlocks)
    UNPIN  release a node's pins of a prefix that is no longer pinned there
    EXPIRE the pin's TTL passed: drop it (its node pins are released by later rounds)

A pinned tier of HBM keeps the DRAM copy pinned (vLLM's cache has no pins) and re-warms the
node whenever the index shows the prefix left its HBM. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from preble_tiered.scheduler.index import PrefixIndex
from preble_tiered.types import NodeId, Tier


@dataclass(frozen=True, slots=True)
class NamedPrefix:
    name: str
    token_ids: tuple[int, ...]
    hashes: tuple[int, ...]  # chained block hashes of the full blocks
    created: float  # unix seconds

    @property
    def last_hash(self) -> int:
        return self.hashes[-1]


@dataclass(frozen=True, slots=True)
class PinSpec:
    name: str
    tier: Tier
    replicas: int
    created: float  # unix seconds
    expires: float | None = None  # unix seconds; None: until unpinned

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True, slots=True)
class NodePin:
    """What a node said about one prefix's pins (its last PinBlocks answer)."""

    tier: Tier
    pinned: int  # blocks pinned
    blocks: int  # blocks asked for


class PinOp(enum.Enum):
    WARM = "warm"
    PIN = "pin"
    UNPIN = "unpin"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class PinAction:
    op: PinOp
    name: str
    node: NodeId | None = None


def storage_tier(tier: Tier) -> Tier:
    """Where a node keeps the pinned copy: HBM pins hold the DRAM copy."""
    return Tier.DRAM if tier is Tier.HBM else tier


def held_counts(index: PrefixIndex, hashes: Sequence[int], node: NodeId) -> tuple[int, int, int, int]:
    """(blocks in HBM, in DRAM, on disk, in any tier) that `node` holds of `hashes`."""
    bit = 1 << node
    hbm = dram = disk = anyt = 0
    for h in hashes:
        e = index.entry(h)
        if e is None:
            continue
        a, b, c = e.hbm & bit, e.dram & bit, e.disk & bit
        hbm += bool(a)
        dram += bool(b)
        disk += bool(c)
        anyt += bool(a or b or c)
    return hbm, dram, disk, anyt


def replica_state(spec: PinSpec, n_blocks: int, counts: tuple[int, int, int, int], ack: NodePin | None) -> str:
    """"pinned" (held in the tier and pinned there), "held" (held there, the node's pin not
    acknowledged yet), or "missing" (`PinKeeper` reports "warming" while it asks for it)."""
    hbm, dram, disk, _ = counts
    in_tier = dram if storage_tier(spec.tier) is Tier.DRAM else disk
    held = in_tier >= n_blocks and (spec.tier is not Tier.HBM or hbm >= n_blocks)
    if held and ack is not None and ack.tier is spec.tier and ack.pinned >= n_blocks:
        return "pinned"
    return "held" if held else "missing"


def pin_targets(spec: PinSpec, hashes: Sequence[int], index: PrefixIndex, alive: Sequence[NodeId],
                acked: Mapping[NodeId, Mapping[str, NodePin]], inflight: Mapping[NodeId, int]) -> list[NodeId]:
    """The `replicas` nodes that should hold the pin: nodes already pinning it first (stable
    placement), then those holding most of it (cheapest to warm), then the least busy."""
    def rank(n: NodeId):
        return (spec.name not in acked.get(n, {}), -held_counts(index, hashes, n)[3], inflight.get(n, 0), n)

    return sorted(alive, key=rank)[:spec.replicas]


def reconcile(specs: Mapping[str, PinSpec], prefixes: Mapping[str, NamedPrefix], index: PrefixIndex,
              alive: Sequence[NodeId], acked: Mapping[NodeId, Mapping[str, NodePin]],
              inflight: Mapping[NodeId, int], busy: set[tuple[str, NodeId]], now: float) -> list[PinAction]:
    """The actions that move the cluster toward `specs` (see the module docstring).

    Args:
        acked: per node, the prefixes it pins (from its PinBlocks answers); a node that went
            down has no entry.
        busy: (name, node) pairs with an action in flight or backing off after a failure:
            left alone this round.
        now: unix seconds (TTLs are wall-clock so they survive a restart).
    """
    out: list[PinAction] = []
    wanted: dict[NodeId, set[str]] = {}
    for name, spec in specs.items():
        if spec.expired(now):
            out.append(PinAction(PinOp.EXPIRE, name))
            continue
        prefix = prefixes.get(name)
        if prefix is None:
            continue
        n = len(prefix.hashes)
        for node in pin_targets(spec, prefix.hashes, index, alive, acked, inflight):
            wanted.setdefault(node, set()).add(name)
            if (name, node) in busy:
                continue
            counts = held_counts(index, prefix.hashes, node)
            hbm, _, _, anyt = counts
            if anyt < n or (spec.tier is Tier.HBM and hbm < n):
                out.append(PinAction(PinOp.WARM, name, node))
            elif replica_state(spec, n, counts, acked.get(node, {}).get(name)) != "pinned":
                out.append(PinAction(PinOp.PIN, name, node))
    for node, pins in acked.items():
        for name in pins:
            if name not in wanted.get(node, ()) and (name, node) not in busy:
                out.append(PinAction(PinOp.UNPIN, name, node))
    return out
