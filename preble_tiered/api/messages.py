"""The dataclass shapes of what crosses the wire between the router and a node agent.

`convert` turns them into protobuf and back; past the servicers and the node client, the
router works with these only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from preble_tiered.types import GenParams, Tier


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node says about itself when it registers."""

    name: str
    model: str
    vocab_size: int
    max_model_len: int
    block_size: int
    kv_capacity_tokens: int
    kv_bytes_per_token: int
    hash_namespace: str = ""
    max_num_seqs: int = 0
    """Most sequences the engine runs at once (0: not reported)."""
    max_batch_tokens: int = 0
    """The engine's token budget per step (0: not reported)."""


@dataclass(frozen=True, slots=True)
class PullSource:
    """Blocks a node pulls from a peer before it runs a request."""

    address: str
    name: str
    block_hashes: list[int]


@dataclass(frozen=True, slots=True)
class DispatchOrder:
    """A request as the router hands it to a node (a scheduler `Decision`, addressed)."""

    request_id: str
    prompt: list[int]
    params: GenParams
    priority_group: int = 0
    expected_cached: dict[str, int] | None = None
    pull: PullSource | None = None


class TokenChunk(NamedTuple):
    """New tokens of a running request (one engine step's worth)."""

    token_ids: Sequence[int]
    text: str


@dataclass(frozen=True, slots=True)
class NodeDone:
    """The last message of a request on a node."""

    finish_reason: str
    cached: dict[str, int]
    """Prompt tokens served from cache, by source (hbm, dram, disk, remote)."""
    ttft_s: float = 0.0
    """The node's time from receiving the request to its first token (0: not reported)."""
    engine_ttft_s: float = 0.0
    """The engine's, from admitting it, when it met nothing else there from its arrival (0: it
    did, or not reported)."""


@dataclass(frozen=True, slots=True)
class TierUsage:
    tier: Tier
    used_bytes: int
    capacity_bytes: int
    blocks: int
    pinned_blocks: int


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A node's load report."""

    ready: bool = False
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_used_tokens: int = 0
    tpot_ms: float = 0.0
    event_seq: int = 0
    """The last residency batch the node published (a router behind it resyncs)."""
    prefill_samples: list[tuple[int, int, float]] = field(default_factory=list)
    """(new tokens, context tokens, seconds) measured since the last report."""
    link_rates: dict[str, float] = field(default_factory=dict)
    """Measured bandwidths in bytes/s: "dram", "disk", "net:<peer>"."""
    tiers: list[TierUsage] = field(default_factory=list)
    decode_steps: list[tuple[int, float, float, int]] = field(default_factory=list)
    """(batch size, mean context tokens, mean seconds, steps) of decode-only steps since the
    last report."""
