"""Preble's local fair queue: hit-ratio groups (pushed as groups), (g+1)*k quotas, top-down rounds, FCFS."""

import random

import pytest

from preble_tiered.scheduler.fair_queue import FairQueue, hit_group


def make_queue(k: int = 1) -> FairQueue:
    return FairQueue(k=k)


def drain(q: FairQueue) -> list:
    out = []
    while q:
        out.append(q.pop())
    return out


@pytest.mark.parametrize("ratio, group", [
    (0.0, 0), (0.05, 0), (0.1, 0), (0.11, 1), (0.2, 1), (0.25, 2), (0.5, 4), (0.95, 9), (1.0, 9),
])
def test_group_formula(ratio, group):
    assert hit_group(ratio) == group


@pytest.mark.parametrize("bad", [-0.01, 1.01])
def test_group_rejects_ratios_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="hit ratio"):
        hit_group(bad)


def test_bad_constructor_args():
    with pytest.raises(ValueError):
        FairQueue(k=0)
    with pytest.raises(ValueError):
        FairQueue(groups=0)


def test_push_takes_a_group_in_range():
    q = make_queue()
    q.push("a", 9)
    q.push("b", 0)
    assert len(q) == 2
    assert q.items() == ["a", "b"]
    for bad in (-1, 10):
        with pytest.raises(ValueError, match=r"group must be in 0\.\.9"):
            q.push("c", bad)
        with pytest.raises(ValueError, match=r"group must be in 0\.\.9"):
            q.push_front("c", bad)
    assert len(q) == 2


def test_quota_is_g_plus_one_times_k_per_round():
    q = make_queue(k=1)
    for i in range(7):
        q.push(f"h{i}", 2)  # group 2: quota 3 per round
    for i in range(3):
        q.push(f"z{i}", 0)  # group 0: quota 1 per round
    assert drain(q) == ["h0", "h1", "h2", "z0", "h3", "h4", "h5", "z1", "h6", "z2"]


def test_quota_scales_with_k():
    q = make_queue(k=2)
    for i in range(5):
        q.push(f"h{i}", 1)  # group 1: quota (1+1)*2 = 4
    for i in range(3):
        q.push(f"z{i}", 0)  # group 0: quota 2
    assert drain(q) == ["h0", "h1", "h2", "h3", "z0", "z1", "h4", "z2"]


def test_rounds_go_top_down_over_non_empty_groups_and_wrap():
    q = make_queue(k=1)
    for i in range(12):
        q.push(f"g9-{i}", 9)  # quota 10
    for i in range(7):
        q.push(f"g5-{i}", 5)  # quota 6
    for i in range(2):
        q.push(f"g0-{i}", 0)  # quota 1
    got = drain(q)
    assert got == ([f"g9-{i}" for i in range(10)] + [f"g5-{i}" for i in range(6)] + ["g0-0"]
                   + ["g9-10", "g9-11", "g5-6", "g0-1"])


def test_fcfs_within_a_group():
    q = make_queue(k=10)
    order = [f"r{i}" for i in range(25)]
    for r in order:
        q.push(r, 4)  # all group 4
    assert drain(q) == order


def test_no_starvation_under_a_constant_stream_of_high_hit_requests():
    q = make_queue(k=10)
    q.push("low", 0)
    for i in range(200):
        q.push(f"hi{i}", 9)
    served, n = None, 0
    while served != "low":
        served = q.pop()
        n += 1
        q.push(f"new{n}", 9)  # a new high-hit request arrives after every pop
        assert n <= 10 * 10 + 1  # at most one full top round before group 0's turn
    assert n == 101


def test_push_front_keeps_the_items_turn():
    def fill(q):
        for i in range(4):
            q.push(f"h{i}", 2)  # group 2, quota 3
        q.push("z0", 0)

    plain = make_queue(k=1)
    fill(plain)
    want = drain(plain)

    q = make_queue(k=1)
    fill(q)
    got = [q.pop(), q.pop()]
    x = q.pop()  # the last of this round's quota cannot be admitted yet
    q.push_front(x, 2)
    got += drain(q)
    assert got == want == ["h0", "h1", "h2", "z0", "h3"]


def test_push_front_in_another_group_does_not_extend_the_round():
    q = make_queue(k=1)
    for i in range(3):
        q.push(f"h{i}", 2)  # group 2, quota 3
    q.push("z0", 0)
    assert q.pop() == "h0"
    q.push_front("z-back", 0)  # goes before z0 in group 0, the current round is group 2's
    assert drain(q) == ["h1", "h2", "z-back", "z0"]


def test_peek_equals_the_next_pop():
    rng = random.Random(7)
    q = make_queue(k=2)
    for _ in range(2000):
        if q and rng.random() < 0.55:
            expect = q.peek()
            assert q.pop() is expect
        else:
            q.push(object(), rng.choice([0, 0, 2, 4, 7, 9]))


def test_peek_does_not_consume_or_start_a_round():
    q = make_queue(k=1)
    q.push("a", 0)
    q.push("b", 9)
    assert q.peek() == "b" and q.peek() == "b"
    assert len(q) == 2
    assert drain(q) == ["b", "a"]


def test_items_lists_top_group_first():
    q = make_queue()
    q.push("a", 0)
    q.push("b", 9)
    q.push("c", 4)
    assert q.items() == ["b", "c", "a"]


def test_empty_pop_and_peek_raise_index_error():
    q = make_queue()
    with pytest.raises(IndexError):
        q.pop()
    with pytest.raises(IndexError):
        q.peek()
    q.push("x", 2)
    q.pop()
    with pytest.raises(IndexError):
        q.pop()
