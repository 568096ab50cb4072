"""A bounded ring of recent routing decisions, for `preble admin explain REQUEST_ID`.

One record per request id (a re-route replaces it, counting the attempt). The ring keeps the
last `capacity` requests and, for `prefixes name --request-id`, their prompt token ids
within a token budget (older prompts are dropped first; their decisions stay).

Recording is cheap on the decision path: the record holds the router's own prompt list (a
reference, no copy) and the policy's parallel cost lists; `finish` packs the prompt into a
4-byte-per-token array once the request is done, and `trim` (the router's once-a-second
housekeeping) drops what is over the bounds. Freeing thousands of cold records one per
decision cost the router ~10-15 us per decision (measured: router_throughput.py
--explain); `record` itself only trims past twice the bounds.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from preble_tiered.scheduler.types import Decision


@dataclass(slots=True)
class DecisionRecord:
    request_id: str
    at: float  # unix seconds
    decision: Decision
    prompt_tokens: int
    predicted: dict[str, int]
    attempt: int = 0
    state: str = "running"  # running, done, failed
    actual: dict[str, int] = field(default_factory=dict)
    ttft_ms: float = 0.0
    prompt: Sequence[int] | None = None  # token ids: the router's list while running, then an array


class DecisionRing:
    def __init__(self, capacity: int = 4096, token_budget: int = 4 << 20) -> None:
        if capacity <= 0 or token_budget < 0:
            raise ValueError("capacity must be positive and token_budget non-negative")
        self.capacity = capacity
        self.token_budget = token_budget
        self._records: OrderedDict[str, DecisionRecord] = OrderedDict()
        self._with_prompt: deque[DecisionRecord] = deque()  # records holding a prompt, oldest first
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, request_id: str) -> DecisionRecord | None:
        return self._records.get(request_id)

    def record(self, request_id: str, at: float, decision: Decision, prompt: list[int],
               predicted: dict[str, int]) -> DecisionRecord:
        old = self._records.pop(request_id, None)
        attempt = 0
        if old is not None:
            attempt = old.attempt + 1
            self._drop_prompt(old)
        rec = DecisionRecord(request_id, at, decision, len(prompt), predicted, attempt)
        if len(prompt) <= self.token_budget:
            rec.prompt = prompt
            self._tokens += len(prompt)
            self._with_prompt.append(rec)
        self._records[request_id] = rec
        if len(self._records) > 2 * self.capacity or self._tokens > 2 * self.token_budget:
            self.trim()  # housekeeping fell behind: keep memory bounded anyway
        return rec

    def trim(self) -> None:
        """Drop the oldest records past `capacity` and the oldest prompts past `token_budget`.
        O(1) amortized per record: each enters and leaves each queue once."""
        while len(self._records) > self.capacity:
            self._drop_prompt(self._records.popitem(last=False)[1])
        held = self._with_prompt
        while held and (self._tokens > self.token_budget or held[0].prompt is None):
            self._drop_prompt(held.popleft())

    def finish(self, rec: DecisionRecord, state: str) -> None:
        """The request ended (`state` done or failed): pack its prompt compactly."""
        rec.state = state
        if rec.prompt is not None and not isinstance(rec.prompt, array):
            rec.prompt = array("I", rec.prompt)

    def _drop_prompt(self, rec: DecisionRecord) -> None:
        if rec.prompt is not None:
            self._tokens -= len(rec.prompt)
            rec.prompt = None
