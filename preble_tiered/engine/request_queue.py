"""Request queues in front of the engine: the admission rule every `RequestQueue` shares, and
the engine's default order, first come first admitted (the node agent hands the engine its
fair queue instead; see `node/admission.py`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

from preble_tiered.engine.api import PRIORITY_GROUPS, EngineRequest


class OrderedRequestQueue(ABC):
    """A `RequestQueue` whose order a subclass chooses (`_append`, `_put_back`, `_pop`,
    `_clear`); this class keeps the queued ids, cancellations and the admission rule.

    A cancelled request's entry stays in the order until it is reached, then is skipped.
    """

    def __init__(self) -> None:
        self._live: dict[str, EngineRequest] = {}  # queued and not cancelled, by id

    def __len__(self) -> int:
        return len(self._live)

    def push(self, req: EngineRequest) -> None:
        if not 0 <= req.priority_group < PRIORITY_GROUPS:
            raise ValueError(f"priority_group must be in 0..{PRIORITY_GROUPS - 1}, got {req.priority_group}")
        self._append(req)
        self._live[req.request_id] = req

    def take(self, slots: int, token_budget: int) -> list[EngineRequest]:
        """Up to `slots` requests; after the first, only while their prompts fit in what is
        left of `token_budget`. The first that does not fit is put back and keeps its turn."""
        out: list[EngineRequest] = []
        while len(out) < slots:
            req = self._next_live()
            if req is None:
                break
            n = len(req.prompt_token_ids)
            if out and n > token_budget:
                self._put_back(req)
                break
            del self._live[req.request_id]
            out.append(req)
            token_budget -= n
        return out

    def cancel(self, request_id: str) -> bool:
        return self._live.pop(request_id, None) is not None

    def clear(self) -> None:
        self._live.clear()
        self._clear()

    def _next_live(self) -> EngineRequest | None:
        while True:
            req = self._pop()
            if req is None or self._live.get(req.request_id) is req:
                return req  # else: cancelled (its id may be queued again as a new request)

    @abstractmethod
    def _append(self, req: EngineRequest) -> None:
        """Add a new request to the order."""

    @abstractmethod
    def _put_back(self, req: EngineRequest) -> None:
        """Return the request `_pop` just gave, so it comes out next again."""

    @abstractmethod
    def _pop(self) -> EngineRequest | None:
        """Take the next entry of the order (live or cancelled); None when there is none."""

    @abstractmethod
    def _clear(self) -> None:
        """Drop every entry."""


class FifoQueue(OrderedRequestQueue):
    """Admission in arrival order (the priority group is checked, not used)."""

    def __init__(self) -> None:
        super().__init__()
        self._q: deque[EngineRequest] = deque()

    def _append(self, req: EngineRequest) -> None:
        self._q.append(req)

    def _put_back(self, req: EngineRequest) -> None:
        self._q.appendleft(req)

    def _pop(self) -> EngineRequest | None:
        return self._q.popleft() if self._q else None

    def _clear(self) -> None:
        self._q.clear()
