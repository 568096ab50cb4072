"""A bounded ring of recent routing decisions, for `preble admin explain REQUEST_ID`.

One record per request id (a re-route replaces it, counting the attempt). The ring keeps the
last `capacity` requests and, for `prefixes name --request-id`, their prompt token ids
within a token budget (older prompts are dropped first; their decisions stay).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
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
    prompt: array | None = None  # token ids (uint32), while within the token budget


class DecisionRing:
    def __init__(self, capacity: int = 4096, token_budget: int = 4 << 20) -> None:
        if capacity <= 0 or token_budget < 0:
            raise ValueError("capacity must be positive and token_budget non-negative")
        self.capacity = capacity
        self.token_budget = token_budget
        self._records: OrderedDict[str, DecisionRecord] = OrderedDict()
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
            rec.prompt = array("I", prompt)
            self._tokens += len(prompt)
        self._records[request_id] = rec
        while len(self._records) > self.capacity:
            self._drop_prompt(self._records.popitem(last=False)[1])
        if self._tokens > self.token_budget:
            for r in self._records.values():  # oldest first
                self._drop_prompt(r)
                if self._tokens <= self.token_budget:
                    break
        return rec

    def _drop_prompt(self, rec: DecisionRecord) -> None:
        if rec.prompt is not None:
            self._tokens -= len(rec.prompt)
            rec.prompt = None
