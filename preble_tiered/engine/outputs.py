"""What the engine reports about its requests: the record it keeps of each one from `add` to
its final output, the EngineOutputs made from vLLM's RequestOutputs (with the cached tokens
split by tier on the final one), and the timings measured from them: clean prefills, TPOT,
and decode-only steps by batch size and context."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from preble_tiered.engine.api import EngineOutput, EngineRequest, KVRuntime
from preble_tiered.scheduler.profile_fit import DecodeStepSums

_FINISH_REASONS = frozenset({"stop", "length", "abort"})


@dataclass(slots=True)
class Tracked:
    """A request from `add` until its final output."""

    req: EngineRequest
    in_vllm: bool = False
    admitted_at: float = 0.0
    clean: bool = False  # nothing else ran in vLLM from its admission to its first token
    arrived_idle: bool = False  # nothing was in vLLM or queued for it when the request arrived
    first_token: bool = False
    last_token_at: float | None = None
    num_cached_tokens: int = 0
    generated: int = 0


def to_output(o: Any, t: Tracked, kv: KVRuntime | None) -> EngineOutput:
    """The EngineOutput of vLLM's RequestOutput `o` (DELTA) for request `t`; on the final one,
    the cached tokens split into hbm/dram/disk/remote with what `kv` loaded for it."""
    c = o.outputs[0] if o.outputs else None
    reason = c.finish_reason if (c is not None and o.finished) else None
    error = None
    if o.finished and reason not in _FINISH_REASONS:
        error, reason = f"vLLM ended the request with finish reason {reason!r}", None
    t.num_cached_tokens = o.num_cached_tokens or 0
    by_tier = None
    if o.finished:
        loaded = kv.take_loaded(o.request_id) if kv is not None else {}
        dram, disk, remote = loaded.get("dram", 0), loaded.get("disk", 0), loaded.get("remote", 0)
        # vLLM's count includes every token the connector planned to load, loaded or not.
        hbm = max(0, t.num_cached_tokens - loaded.get("planned", dram + disk + remote))
        by_tier = {"hbm": hbm, "dram": dram, "disk": disk, "remote": remote}
    return EngineOutput(
        request_id=o.request_id, new_token_ids=list(c.token_ids) if c else [],
        new_text=c.text if c else "", finished=bool(o.finished), finish_reason=reason,
        prompt_tokens=len(t.req.prompt_token_ids), num_cached_tokens=t.num_cached_tokens,
        error=error, cached_by_tier=by_tier,
    )


def decode_batch(in_vllm: Iterable[Tracked]) -> tuple[int, int] | None:
    """(sequences, context tokens) when the next step is decode only: every request in vLLM
    has its first token (none prefilling, none just admitted); else None. The engine times
    such a step from its start to the next step's start, so what its loop does between steps
    (outputs to the agent, admission, stats, events) counts, as it does in a request's time
    per token."""
    n = ctx = 0
    for t in in_vllm:
        if not t.first_token:
            return None
        n += 1
        ctx += len(t.req.prompt_token_ids) + t.generated
    return (n, ctx) if n else None


def final_output(t: Tracked, reason: str | None, error: str | None = None) -> EngineOutput:
    """A final output with no new tokens (abort, shutdown, rejection, crash)."""
    return EngineOutput(request_id=t.req.request_id, new_token_ids=[], new_text="",
                        finished=True, finish_reason=reason,
                        prompt_tokens=len(t.req.prompt_token_ids),
                        num_cached_tokens=t.num_cached_tokens, error=error)


class Timings:
    """Prefill samples, time per output token and decode step times, measured from outputs
    and steps (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[tuple[int, int, float]] = []
        self._tpots: deque[float] = deque(maxlen=64)
        self._steps = DecodeStepSums()

    def observe_step(self, batch: int, context_tokens: int, seconds: float) -> None:
        """A decode-only step of `batch` sequences holding `context_tokens`, `seconds` long."""
        with self._lock:
            self._steps.add(batch, context_tokens, seconds)

    def take_decode_steps(self) -> list[tuple[int, float, float, int]]:
        """(batch size, mean context tokens, mean seconds, steps) per bucket since the last call."""
        with self._lock:
            steps, self._steps = self._steps, DecodeStepSums()
        return steps.rows()

    def observe(self, t: Tracked, out: EngineOutput, now: float) -> None:
        """Record `out` of request `t`, produced at `now` (monotonic seconds)."""
        if not out.new_token_ids:
            return
        t.generated += len(out.new_token_ids)
        if not t.first_token:
            t.first_token = True
            if t.clean:
                seconds = now - t.admitted_at
                if t.arrived_idle:  # it waited on nothing: the rest of its TTFT is overhead
                    out.alone_prefill_s = seconds
                with self._lock:
                    self._samples.append((out.prompt_tokens - out.num_cached_tokens, out.prompt_tokens, seconds))
        elif t.last_token_at is not None:
            with self._lock:
                self._tpots.append((now - t.last_token_at) / len(out.new_token_ids))
        t.last_token_at = now

    def take_prefill_samples(self) -> list[tuple[int, int, float]]:
        """(new tokens, context tokens, seconds) of clean prefills since the last call."""
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def tpot(self) -> float | None:
        """Median seconds per output token over the latest decode steps; None before any."""
        with self._lock:
            return statistics.median(self._tpots) if self._tpots else None
