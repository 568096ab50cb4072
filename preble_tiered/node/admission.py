"""Fair admission in front of the node's engine: Preble's local fair queue (cache-hit priority
groups, `scheduler/fair_queue.py`) as the engine's `RequestQueue`.

The router sends each request's priority group; the engine takes requests from this queue
only while vLLM's own waiting queue is empty, so this order, not vLLM's FCFS, decides who
runs first.
"""

from __future__ import annotations

from preble_tiered.engine.api import PRIORITY_GROUPS, EngineRequest
from preble_tiered.engine.request_queue import OrderedRequestQueue
from preble_tiered.scheduler.fair_queue import FairQueue


class FairAdmissionQueue(OrderedRequestQueue):
    """Requests in Preble's fair order: groups visited top-down with (g + 1) * k per round.

    Args:
        k: quota unit of a round (Preble: 10).
    """

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self._fq: FairQueue[EngineRequest] = FairQueue(k, PRIORITY_GROUPS)

    def _append(self, req: EngineRequest) -> None:
        self._fq.push(req, req.priority_group)

    def _put_back(self, req: EngineRequest) -> None:
        self._fq.push_front(req, req.priority_group)

    def _pop(self) -> EngineRequest | None:
        return self._fq.pop() if len(self._fq) else None

    def _clear(self) -> None:
        self._fq = FairQueue(self._fq.k, self._fq.groups)
