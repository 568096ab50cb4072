"""Names shared by every layer: tiers, node ids, the request description a workload emits.

Nothing here does I/O or reads the clock, so the scheduler, the simulator and the servers
can all import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

NodeId = int
"""Nodes are small non-negative ints (bit positions in residency masks)."""

BlockHash = int
"""A 64-bit chained block hash from :mod:`preble_tiered.hashing`."""


class Tier(enum.IntEnum):
    """Where a KV block lives on a node, fastest first (the value orders them)."""

    HBM = 0
    DRAM = 1
    DISK = 2

    @classmethod
    def parse(cls, name: str) -> "Tier":
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown tier {name!r}; expected one of hbm, dram, disk") from None


TIERS: tuple[Tier, ...] = (Tier.HBM, Tier.DRAM, Tier.DISK)


@dataclass(frozen=True, slots=True)
class GenParams:
    """Sampling parameters (vLLM's defaults when unset by the client)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of prompt tokens named by id: equal ids mean equal tokens (see workloads.tokens)."""

    seg_id: str
    n_tokens: int


@dataclass(frozen=True, slots=True)
class WorkloadRequest:
    """One request of a workload or trace, before tokenization.

    Attributes:
        request_id: unique within the stream.
        arrival_s: arrival time in seconds from the start of the stream.
        segments: the prompt as named segments, in order.
        output_tokens: number of tokens to generate.
        workload: the generator that made it (or "trace").
    """

    request_id: str
    arrival_s: float
    segments: tuple[Segment, ...]
    output_tokens: int
    workload: str = ""

    @property
    def prompt_tokens(self) -> int:
        return sum(s.n_tokens for s in self.segments)
