"""What a simulated engine is made of and hands back: its config, a request inside it with
what it cost, and a step's result (`engine.SimEngine` runs them)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from preble_tiered.scheduler.types import Plan


@dataclass(frozen=True)
class SimEngineConfig:
    """One simulated node."""

    hbm_tokens: int
    """KV capacity of GPU memory, in tokens."""
    dram_tokens: int = 0
    """Host-memory KV tier capacity in tokens (0: none)."""
    disk_tokens: int = 0
    """Disk KV tier capacity in tokens (0: none)."""
    block_size: int = 32
    max_batch_tokens: int = 4096
    """Token budget of one step (chunked prefill)."""
    max_running: int = 256
    """Most requests admitted at once."""
    fair_k: int = 10
    """Fair-queue quota unit (Preble: 10)."""
    report_samples: bool = False
    """Keep clean prefills and decode-only steps for `take_samples` (the router's live fit)."""

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.hbm_tokens < self.block_size:
            raise ValueError(f"hbm_tokens must hold at least one block, got {self.hbm_tokens}")
        if self.dram_tokens < 0 or self.disk_tokens < 0:
            raise ValueError("tier capacities cannot be negative")
        if self.max_batch_tokens < 1 or self.max_running < 1:
            raise ValueError("max_batch_tokens and max_running must be positive")


class State(enum.Enum):
    QUEUED = 0
    LOADING = 1
    PREFILL = 2
    DECODE = 3
    DONE = 4


@dataclass(slots=True)
class SimRequest:
    """A request inside a SimEngine, with what it cost."""

    request_id: str
    hashes: list[int]
    prompt_tokens: int
    output_tokens: int
    plan: Plan
    state: State = State.QUEUED
    hit_ratio: float = 0.0
    computed: int = 0  # prompt tokens whose KV exists (cached or computed)
    generated: int = 0
    ready_at: float = 0.0
    scheduled: bool = False  # ran in a step (vLLM no longer counts it as waiting)
    reserved_blocks: int = 0  # KV blocks held for blocks not yet in the cache + output
    held: list[int] = field(default_factory=list)  # cache blocks this request references
    cached: dict[str, int] = field(default_factory=lambda: {"hbm": 0, "dram": 0, "disk": 0, "remote": 0})
    recomputed: int = 0
    bytes_moved: int = 0
    first_token_at: float | None = None
    finished_at: float | None = None
    admitted_at: float = 0.0
    clean: bool = False  # nothing else in the engine from its admission to its first token
    sharing: list[int] = field(default_factory=list)  # blocks another request computes in this step


@dataclass(slots=True)
class StepResult:
    duration: float
    first_tokens: list[SimRequest]
    finished: list[SimRequest]
