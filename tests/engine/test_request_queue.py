"""The engine's request queue rule (slots, one step's token budget, the first always goes,
a request that does not fit keeps its turn; cancelled entries are skipped), on its FIFO."""

from __future__ import annotations

import pytest

from preble_tiered.engine.api import EngineRequest
from preble_tiered.engine.request_queue import FifoQueue
from preble_tiered.types import GenParams


def req(rid: str, tokens: int, group: int = 0) -> EngineRequest:
    return EngineRequest(rid, [5] * tokens, GenParams(), priority_group=group)


def ids(reqs) -> list[str]:
    return [r.request_id for r in reqs]


def test_take_stops_at_the_free_slots():
    q = FifoQueue()
    for i in range(5):
        q.push(req(f"r{i}", 10))
    assert ids(q.take(3, 1000)) == ["r0", "r1", "r2"]
    assert len(q) == 2
    assert q.take(0, 1000) == [] and len(q) == 2
    assert ids(q.take(5, 1000)) == ["r3", "r4"] and len(q) == 0


def test_first_request_goes_whatever_its_size_and_one_that_does_not_fit_keeps_its_turn():
    q = FifoQueue()
    q.push(req("big", 5000))
    q.push(req("a", 30))
    q.push(req("b", 30))
    assert ids(q.take(4, 2048)) == ["big"]  # over budget, but alone
    assert ids(q.take(4, 50)) == ["a"]  # b would exceed what is left
    assert ids(q.take(4, 50)) == ["b"]


def test_budget_counts_every_admitted_prompt():
    q = FifoQueue()
    for i, n in enumerate([20, 20, 20, 5]):
        q.push(req(f"r{i}", n))
    assert ids(q.take(8, 45)) == ["r0", "r1"]  # r2 would need 60 of 45; r3 waits behind it
    assert ids(q.take(8, 45)) == ["r2", "r3"]


def test_cancelled_requests_are_skipped_and_an_id_can_come_back():
    q = FifoQueue()
    first = req("x", 10)
    q.push(first)
    q.push(req("y", 10))
    assert q.cancel("x") and not q.cancel("x") and not q.cancel("never")
    assert len(q) == 1
    again = req("x", 10)
    q.push(again)  # the same id, a new request: queued behind y
    got = q.take(8, 1000)
    assert ids(got) == ["y", "x"] and got[1] is again
    q.push(req("z", 10))
    q.clear()
    assert len(q) == 0 and q.take(8, 1000) == []


@pytest.mark.parametrize("group", [-1, 10])
def test_priority_group_outside_0_to_9_is_refused(group):
    q = FifoQueue()
    with pytest.raises(ValueError, match=r"priority_group must be in 0\.\.9"):
        q.push(req("r", 10, group))
    assert len(q) == 0
