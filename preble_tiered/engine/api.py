"""The node-agent <-> engine boundary: the dataclasses that cross it and the two ports the
engine is handed (no vLLM import here, so a node agent and its tests can use them without
loading an engine).

    node agent ──EngineRequest──▶ RequestQueue ──take──▶ engine ──EngineOutput──▶ node agent
                                                            │
                    KVRuntime (the node's DRAM/disk tiers) ◀┘ engine + its KV connector

The node agent implements both ports (`node/admission.py`, `node/kv_runtime.py`); the engine
and its connector reach the node's KV tiers only through `KVRuntime`'s methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from preble_tiered.events import ResidencyEvent
from preble_tiered.scheduler.fair_queue import GROUPS
from preble_tiered.types import GenParams, Tier

PRIORITY_GROUPS = GROUPS
"""Preble's cache-hit priority groups: a request's `priority_group` is in 0..9."""


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
    alone_prefill_s: float | None = None
    """On the output with the first token: seconds from the request's admission into the
    engine (what a prefill sample measures), when nothing else was there or queued for it from
    the request's arrival to that token; else None."""


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


# ---------------------------------------------------------------------- admission port


class RequestQueue(Protocol):
    """Requests the engine accepted and has not yet put into vLLM.

    The engine calls every method with its own lock held, so implementations need none.
    """

    def push(self, req: EngineRequest) -> None:
        """Queue `req` (its id is not queued already).

        Raises:
            ValueError: if `req.priority_group` is outside 0..PRIORITY_GROUPS-1.
        """
        ...

    def take(self, slots: int, token_budget: int) -> list[EngineRequest]:
        """The next requests to admit, in order: at most `slots` of them, and after the first
        only while their prompts fit in what is left of `token_budget` (the first request
        that does not fit stays queued, keeping its turn)."""
        ...

    def cancel(self, request_id: str) -> bool:
        """Drop a queued request. Returns False if it is not queued."""
        ...

    def clear(self) -> None:
        """Drop every queued request."""
        ...

    def __len__(self) -> int:
        """Requests queued (cancelled ones not counted)."""
        ...


# ---------------------------------------------------------------------- KV port


@dataclass(slots=True)
class LoadPlan:
    """Blocks of one request that the node's tiers will load instead of vLLM recomputing them."""

    loads: list[tuple[int, int, str]]
    """(block index in the prompt, router hash, source: "dram", "disk" or "remote"), in order."""
    pinned: list[int] = field(default_factory=list)
    """Router hashes pinned for the request (release with `KVRuntime.release_load`)."""


@dataclass(slots=True)
class LoadRead:
    """The blocks read for one step's loads and what reading them cost, per source tier."""

    datas: list[bytes | memoryview | None]
    """One entry per load asked for; None: not loaded (vLLM recomputes from that block on)."""
    nbytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class KVRuntime(Protocol):
    """The node's DRAM/disk KV tiers as the engine and its KV connector use them.

    Thread-safe: the connector's roles run on the engine's step thread while the node agent
    uses the same runtime from its own threads.
    """

    @property
    def namespace(self) -> str:
        """The model namespace of every block (the one block hashing folds into its seed)."""
        ...

    def block_hashes(self, token_ids: Sequence[int]) -> list[int]:
        """Router hashes of the full blocks of `token_ids`."""
        ...

    def set_kv_geometry(self, kv_bytes_per_token: int, kv_capacity_tokens: int) -> None:
        """The engine's KV size, once known: it prices a load against a recompute."""
        ...

    def plan_load(self, request_id: str, hashes: Sequence[int], start_block: int,
                  computed_tokens: int) -> LoadPlan | None:
        """Plan loading the leading run of `hashes[start_block:]` the tiers hold, if that
        beats recomputing it after `computed_tokens`; the planned blocks are pinned and
        counted for `take_loaded(request_id)`.

        Returns:
            The plan, or None when nothing is worth loading.
        """
        ...

    def release_load(self, request_id: str, pinned: Sequence[int], *, forget_counts: bool) -> None:
        """Unpin `pinned`; with `forget_counts`, also drop what `plan_load` counted for the
        request (the plan will not run)."""
        ...

    def missing(self, hashes: Sequence[int]) -> list[int]:
        """The blocks of `hashes` no tier holds, in order."""
        ...

    def read_for_load(self, loads: Sequence[tuple[int, str, str]]) -> LoadRead:
        """Read blocks to load, each given as (router hash, request id, planned source).

        After a request's first block that cannot be read, none of its later blocks are
        read, and its `take_loaded` counts only what was read.
        """
        ...

    def observe_load(self, read: LoadRead, copy_s: float) -> None:
        """Meter a load: `read`'s bytes per source, over its read time plus `copy_s` (the copy
        into the engine's cache) shared by bytes."""
        ...

    def save_slots(self) -> Callable[[], tuple[int, memoryview] | None] | None:
        """Where saved blocks should be copied to (`BlockPool.take`), or None: new buffers."""
        ...

    def save(self, blocks: Sequence[tuple[int, int | None, bytes | memoryview]]) -> None:
        """Store blocks (router hash, parent hash, data) computed by the engine."""
        ...

    def attach_pool(self, block_bytes: int) -> None:
        """Keep DRAM blocks in one arena of `block_bytes` slots (the engine's block size)."""
        ...

    def take_loaded(self, request_id: str) -> dict[str, int]:
        """Tokens loaded for a finished request per source, plus "planned" (what vLLM was
        told it would get); forgets them."""
        ...

    def take_events(self) -> list[ResidencyEvent]:
        """The tiers' residency events since the last call."""
        ...

    def snapshot(self) -> list[tuple[Tier, int, int | None]]:
        """(tier, router hash, parent) of every block held, parents first within a tier."""
        ...

    def close(self) -> None:
        """Release the tiers (the runtime is unusable afterwards)."""
        ...
