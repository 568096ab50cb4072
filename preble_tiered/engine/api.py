"""Dataclasses at the node-agent <-> engine boundary (no vLLM import here, so a node agent and
its tests can use them without loading an engine)."""

from __future__ import annotations

from dataclasses import dataclass

from preble_tiered.types import GenParams


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: GenParams
    priority_group: int = 0
    """0..9: Preble's cache-hit priority group (fair admission)."""


@dataclass
class EngineOutput:
    """New tokens of one request from one engine step; the last one has `finished` set."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    num_cached_tokens: int
    """vLLM's real `RequestOutput.num_cached_tokens` (its own prefix cache plus connector loads)."""
    error: str | None = None
    cached_by_tier: dict[str, int] | None = None
    """On the final output: num_cached_tokens split into hbm/dram/disk/remote."""


@dataclass(frozen=True)
class ModelInfo:
    model: str
    vocab_size: int
    max_model_len: int
    block_size: int
    kv_capacity_tokens: int
    kv_bytes_per_token: int
    eos_token_id: int | None = None


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_usage: float
    kv_used_tokens: int
    tpot_s: float | None
    steps: int
