"""Scheduler facade and cluster bookkeeping: events, dispatch/finish counters, TPOT, clocks."""

import pytest

from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored
from preble_tiered.scheduler.clock import ManualClock
from preble_tiered.scheduler.cluster import TPOT_SEED_S, TpotTracker, WindowedSum
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig
from preble_tiered.scheduler.cost_model import cost_preset
from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.types import Action, Branch, Decision, Plan, PlanSegment, PullOrder, RouteRequest
from preble_tiered.types import Tier

BS = 32


def make_sched(policy="e2_tiered", n_nodes=4, hbm_tokens=100_000, **policy_cfg):
    clock = ManualClock()
    cfg = SchedulerConfig(policy, n_nodes, BS, hbm_tokens, PolicyConfig(**policy_cfg))
    return Scheduler(cfg, cost_preset("mistral-7b-a6000"), clock), clock


def test_apply_routes_each_event_kind_to_the_index():
    s, clock = make_sched()
    s.apply(BlockStored(1, Tier.HBM, (1, 2, 3)))
    s.apply(BlockStored(1, Tier.DRAM, (1, 2, 3)))
    s.apply(BlockStored(2, Tier.DISK, (1, 2)))
    s.apply(BlockRemoved(1, Tier.HBM, (3,)))
    res = s.index.match([1, 2, 3])
    assert (res.get(1).hbm, res.get(1).dram) == (2, 1)
    assert res.get(2).disk == 2
    s.apply(AllBlocksCleared(1, Tier.DRAM))
    assert s.index.node_blocks(1, Tier.DRAM) == set() and s.index.node_blocks(1, Tier.HBM) == {1, 2}
    s.apply(AllBlocksCleared(2))
    assert s.index.match([1, 2]).get(2) is None
    with pytest.raises(TypeError, match="not a residency event"):
        s.apply("stored")


def test_dispatch_and_finish_bookkeeping_returns_to_zero():
    s, clock = make_sched("least_load")
    d = s.schedule(RouteRequest("r", [1, 2, 3], 100, 11))
    ns = s.cluster.nodes[d.node]
    assert (ns.n_inflight, ns.n_prefilling, ns.inflight_tokens, ns.decode_tokens, ns.active_kv_tokens) == \
        (1, 1, 111, 11, 111)
    assert ns.pending_prefill_tokens == 100 and ns.pending_prefill_s == pytest.approx(d.plan.est_prefill_s)
    assert s.cluster.hbm_free_tokens(d.node) == 100_000 - 11
    clock.advance(0.5)
    s.on_first_token("r")
    assert (ns.n_prefilling, ns.pending_prefill_tokens, ns.inflight_tokens) == (0, 0, 11)
    assert ns.pending_prefill_s == 0.0
    clock.advance(1.0)
    inf = s.on_finish("r", 11)
    assert inf.request_id == "r" and inf.first_token_at == 0.5
    assert (ns.n_inflight, ns.inflight_tokens, ns.decode_tokens, ns.active_kv_tokens) == (0, 0, 0, 0)
    assert ns.tpot.value == pytest.approx(0.1)  # 1.0 s over 10 tokens after the first
    assert s.on_finish("r", 11) is None  # already closed
    assert s.branch_counts == {"baseline": 1}


def test_finish_without_first_token_counts_the_first_token_now():
    s, clock = make_sched("least_load")
    s.schedule(RouteRequest("r", [1], 40, 1))
    clock.advance(2.0)
    inf = s.on_finish("r", 1)
    assert inf.first_token_at == 2.0
    assert s.cluster.nodes[inf.node].n_prefilling == 0
    assert s.cluster.nodes[inf.node].tpot.value == TPOT_SEED_S  # one output token: no TPOT sample


def test_hit_ratio_is_windowed_cached_over_prompt_tokens():
    s, clock = make_sched("least_load", window_s=10.0)
    s.cluster.on_dispatch("a", 0, 100, 80, 1, 0.0, 0.0)
    s.cluster.on_dispatch("b", 0, 100, 0, 1, 0.0, 5.0)
    assert s.cluster.hit_ratio(0, 5.0) == pytest.approx(0.4)
    assert s.cluster.hit_ratio(0, 10.0) == 0.0  # the first sample left the window at t=10
    assert s.cluster.hit_ratio(1, 5.0) == 0.0


def test_predicted_cached_by_source():
    plan = Plan(0, (PlanSegment(Action.IN_PLACE, 2, 64, Tier.HBM), PlanSegment(Action.FETCH, 1, 32, Tier.DRAM),
                    PlanSegment(Action.FETCH, 1, 32, Tier.DISK), PlanSegment(Action.PULL, 3, 96, Tier.HBM, 2),
                    PlanSegment(Action.RECOMPUTE, 0, 7)))
    got = Decision("r", 0, plan, Branch.EXPLOIT).predicted_cached
    assert got == {"hbm": 64, "dram": 32, "disk": 32, "remote": 96}
    assert plan.cached_tokens == 224 and plan.recompute_tokens == 7
    assert plan.tokens(Action.FETCH) == 64 and plan.tokens(Action.FETCH, Tier.DISK) == 32


@pytest.mark.parametrize("held_blocks,priority,group", [
    (0, 0, 0),  # no hit: group 0
    (0, 3, 3),  # the client's priority shifts the group
    (2, 0, 4),  # 64 of 128 tokens cached: hit ratio 0.5 -> group 4
    (2, 9, 9),  # clamped at the top group
    (2, -9, 0),  # and at the bottom
    (3, 0, 7),  # 96 of 128: 0.75 -> group 7
])
def test_schedule_sets_the_fair_queue_group_from_the_plan_and_the_priority(held_blocks, priority, group):
    s, _ = make_sched("least_load", n_nodes=1)
    if held_blocks:
        s.apply(BlockStored(0, Tier.HBM, tuple(range(1, held_blocks + 1))))
    d = s.schedule(RouteRequest("r", [1, 2, 3, 4], 4 * BS, 5, priority=priority))
    assert d.plan.cached_tokens == held_blocks * BS
    assert d.priority_group == group


def test_pull_order_names_the_pulled_blocks_only_while_the_source_is_alive():
    s, _ = make_sched()
    plan = Plan(0, (PlanSegment(Action.IN_PLACE, 1, BS, Tier.HBM), PlanSegment(Action.PULL, 2, 2 * BS, Tier.HBM, 2),
                    PlanSegment(Action.RECOMPUTE, 0, 5)), local_blocks=1, pull_blocks=2, pull_from=2)
    assert s._pull_order(plan, [10, 11, 12, 13]) == PullOrder(2, [11, 12])
    s.mark_down(2)
    assert s._pull_order(plan, [10, 11, 12, 13]) is None
    assert s._pull_order(Plan(0, (PlanSegment(Action.RECOMPUTE, 0, 5),)), [10]) is None


def test_order_on_plans_a_warm_up_without_counting_it():
    s, _ = make_sched()
    s.apply(BlockStored(1, Tier.HBM, (1, 2)))
    d = s.order_on(0, RouteRequest("w", [1, 2, 3], 3 * BS, 1))
    assert d.node == 0 and d.branch is Branch.REPLICATE and d.priority_group == 0
    assert s.cluster.nodes[0].n_inflight == 0 and "w" not in s.cluster.inflight


def test_scheduler_config_bounds():
    with pytest.raises(ValueError, match="block_size"):
        SchedulerConfig(block_size=0)
    with pytest.raises(ValueError, match="n_nodes"):
        SchedulerConfig(n_nodes=0)
    with pytest.raises(ValueError, match="hbm_tokens"):
        SchedulerConfig(block_size=32, hbm_tokens=31)


def test_manual_clock_only_moves_forward():
    c = ManualClock(1.0)
    c.advance(0.5)
    assert c.now() == 1.5
    c.set(1.5)
    with pytest.raises(ValueError, match="cannot go back"):
        c.set(1.0)


def test_windowed_sum_drops_samples_a_window_old():
    w = WindowedSum(10.0)
    w.add(0.0, 1.0)
    w.add(4.0, 2.0)
    assert w.trim(9.99) == 3.0
    assert w.trim(10.0) == 2.0  # the t=0 sample is exactly one window old
    assert w.trim(14.0) == 0.0


def test_tpot_tracker_is_the_median_of_the_last_samples():
    t = TpotTracker()
    assert t.value == TPOT_SEED_S
    for x in (0.3, 0.1, 0.2):
        t.add(x)
    assert t.value == 0.2
    t.add(0.0)  # non-positive samples are ignored
    assert t.value == 0.2
    for _ in range(400):
        t.add(0.05)
    assert t.value == 0.05  # only the last 200 count


# ------------------------------------------------------------------ pending prefixes
def test_e2_records_a_dispatched_prefix_as_pending_until_the_request_finishes():
    s, clock = make_sched("preble_e2")
    p = list(range(100, 164))
    d1 = s.schedule(RouteRequest("r1", p + [1], 65 * BS, 10))
    assert d1.node == 0
    nm = s.index.match(p).get(0)
    assert (nm.pending, nm.hbm, nm.hbm_prefix) == (64, 0, 64)  # promised, not resident
    assert s.index.node_blocks(0, Tier.HBM) == set()
    # The next request for the prefix follows it, before any residency event arrives.
    s.policy.add_work(0, clock.now(), 0.5)
    d2 = s.schedule(RouteRequest("r2", p + [2], 65 * BS, 10))
    assert (d2.node, d2.branch.value) == (0, "exploit")
    assert [(seg.action, seg.tokens) for seg in d2.plan.segments] == [(Action.IN_PLACE, 2048), (Action.RECOMPUTE, 32)]
    s.on_finish("r1", 10)
    s.on_finish("r2", 10)
    assert s.index.match(p).get(0) is None  # promises dropped; nothing was ever stored


def test_a_stored_block_fulfils_the_promise():
    s, _ = make_sched("e2_tiered")
    p = list(range(100, 110))
    s.schedule(RouteRequest("r1", p, 10 * BS, 10))
    s.apply(BlockStored(0, Tier.HBM, tuple(p[:4])))
    nm = s.index.match(p).get(0)
    assert (nm.hbm, nm.pending) == (4, 6)
    s.on_finish("r1", 10)
    nm = s.index.match(p).get(0)
    assert (nm.hbm, nm.pending) == (4, 0)


def test_baselines_do_not_record_pending_prefixes():
    for policy in ("round_robin", "least_load", "sglang_cache_aware", "dynamo_kv"):
        s, _ = make_sched(policy)
        s.schedule(RouteRequest("r1", [1, 2, 3], 3 * BS, 10))
        assert s.index.match([1, 2, 3]).nodes == {}, policy


def test_a_pending_prefix_is_never_a_pull_source():
    s, clock = make_sched("e2_tiered")
    p = list(range(100, 164))
    assert s.schedule(RouteRequest("r1", p + [1], 65 * BS, 10)).node == 0
    s.cluster.nodes[0].pending_prefill_s = 10.0  # node 0 is far behind (and p is hot)
    d = s.schedule(RouteRequest("r2", p + [2], 65 * BS, 10))
    assert d.node != 0
    assert [seg.action for seg in d.plan.segments] == [Action.RECOMPUTE]  # nothing to pull yet
    assert d.plan.pull_from is None


def test_mark_down_drops_pending_promises():
    s, _ = make_sched("preble_e2")
    p = list(range(100, 110))
    s.schedule(RouteRequest("r1", p, 10 * BS, 10))
    s.mark_down(0)
    assert s.index.match(p).get(0) is None


@pytest.mark.parametrize("seed", range(5))
def test_load_terms_track_every_dispatch_first_token_and_finish(seed):
    """E2's Load_n reads flat per-node lists; after any sequence of dispatches, first
    tokens, finishes (TPOT samples) and direct writes they equal what NodeState says."""
    import random

    rng = random.Random(seed)
    s, clock = make_sched("e2_tiered", n_nodes=5)
    live: list[str] = []
    for i in range(400):
        clock.advance(rng.uniform(0.0, 0.3))
        op = rng.random()
        if op < 0.45 or not live:
            d = s.schedule(RouteRequest(f"r{i}", [rng.randrange(50)] + [1000 + i], 64, rng.randint(1, 50)))
            live.append(d.request_id)
        elif op < 0.7:
            s.on_first_token(rng.choice(live))
        elif op < 0.97:
            rid = live.pop(rng.randrange(len(live)))
            s.on_finish(rid, rng.randint(1, 50))
        else:
            s.cluster.nodes[rng.randrange(5)].pending_prefill_s = rng.uniform(0, 2)  # a direct write
        terms, pol = s.cluster.terms, s.policy
        for n, ns in enumerate(s.cluster.nodes):
            assert terms.decode_tokens[n] == ns.decode_tokens
            assert terms.decode_s[n] == ns.decode_tokens * ns.tpot.value
            assert terms.pending_s[n] == ns.pending_prefill_s
        loads = pol.loads(list(range(5)), clock.now())
        assert loads == [pol.prefill_work[n] + ns.decode_tokens * ns.tpot.value
                         + pol.queue_weight * ns.pending_prefill_s for n, ns in enumerate(s.cluster.nodes)]
    assert any(ns.tpot.value != TPOT_SEED_S for ns in s.cluster.nodes)  # TPOT samples did move the median
