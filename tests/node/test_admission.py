"""The node's fair admission queue: Preble's priority groups in front of the engine, with the
engine's take rule (slots, token budget, keeping the turn of a request that does not fit)."""

from __future__ import annotations

import pytest

from preble_tiered.engine.api import EngineRequest
from preble_tiered.node.admission import FairAdmissionQueue
from preble_tiered.types import GenParams


def req(rid: str, group: int, tokens: int = 10) -> EngineRequest:
    return EngineRequest(rid, [5] * tokens, GenParams(), priority_group=group)


def ids(reqs) -> list[str]:
    return [r.request_id for r in reqs]


def test_high_hit_groups_are_admitted_first_with_growing_quotas():
    q = FairAdmissionQueue(k=1)
    for i in range(3):
        q.push(req(f"low-{i}", 0))
    for i in range(4):
        q.push(req(f"mid-{i}", 2))  # quota 3 per round
    q.push(req("high", 9))
    assert ids(q.take(100, 10_000)) == ["high", "mid-0", "mid-1", "mid-2", "low-0", "mid-3", "low-1", "low-2"]


def test_a_request_over_the_budget_keeps_its_turn_in_the_round():
    q = FairAdmissionQueue(k=1)
    q.push(req("a", 2))
    q.push(req("b", 2, tokens=500))
    q.push(req("c", 2))
    q.push(req("z", 0))
    assert ids(q.take(8, 100)) == ["a"]  # b does not fit in what is left
    assert ids(q.take(8, 1000)) == ["b", "c", "z"]  # b first, still in group 2's round


def test_cancel_skips_the_entry_and_len_counts_live_requests():
    q = FairAdmissionQueue()
    q.push(req("a", 9))
    q.push(req("b", 0))
    assert q.cancel("a") and len(q) == 1
    assert ids(q.take(8, 1000)) == ["b"]
    q.push(req("c", 3))
    q.clear()
    assert len(q) == 0 and q.take(8, 1000) == []


def test_group_outside_the_queues_groups_is_refused():
    with pytest.raises(ValueError, match=r"0\.\.9"):
        FairAdmissionQueue().push(req("r", 10))
