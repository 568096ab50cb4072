"""Dataclasses at the node-agent <-> engine boundary (no vLLM import here, so the router and
the client can use them without loading an engine)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters (vLLM's defaults when unset by the client)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


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


def validate_prompt(vocab_size: int, max_model_len: int, prompt_token_ids: Sequence[int], params: GenParams) -> None:
    """Check a request against the model's limits.

    Raises:
        ValueError: saying what to fix.
    """
    n = len(prompt_token_ids)
    if n == 0:
        raise ValueError("prompt is empty: send text or at least one token id")
    lo, hi = min(prompt_token_ids), max(prompt_token_ids)
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is out of the vocabulary: ids must be in [0, {vocab_size})")
    validate_params(params)
    if n + params.max_tokens > max_model_len:
        raise ValueError(f"prompt of {n} tokens plus max_tokens {params.max_tokens} exceeds the model's limit of "
                         f"{max_model_len} tokens; shorten the prompt or lower max_tokens")


def validate_params(params: GenParams) -> None:
    """Raises ValueError for sampling parameters that make no sense."""
    if params.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {params.max_tokens}")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {params.temperature}")
    if not math.isfinite(params.top_p) or not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
    if len(params.stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(params.stop)}")
    for s in params.stop:
        if not s or len(s) > MAX_STOP_CHARS:
            raise ValueError(f"stop strings must have 1 to {MAX_STOP_CHARS} characters, got {len(s)}")
