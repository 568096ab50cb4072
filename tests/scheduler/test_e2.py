"""E2 (Preble) and e2_tiered on constructed clusters: exploit/explore, tiers, pulls,
rebalancing, autoscaling, prefill/decode balance, dead nodes."""

from dataclasses import replace

import pytest

from preble_tiered.events import BlockStored
from preble_tiered.scheduler.clock import ManualClock
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig
from preble_tiered.scheduler.cost_model import LinearDecode, Link, Links, cost_preset, engine_cost_model
from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.types import Action, Branch, RouteRequest
from preble_tiered.types import Tier

BS = 32
TPOT_SEED = 0.15


def make_sched(policy, n_nodes=4, hbm_tokens=100_000, cost=None, **policy_cfg):
    clock = ManualClock()
    cost = cost or cost_preset("mistral-7b-a6000")
    cfg = SchedulerConfig(policy, n_nodes, BS, hbm_tokens, PolicyConfig(**policy_cfg))
    return Scheduler(cfg, cost, clock), clock


def blocks(n, start):
    """`n` fake block hashes; distinct `start`s give unrelated chains."""
    return list(range(start, start + n))


PREFIX = blocks(64, 10_000)  # 2048 tokens


def req(rid, hashes, prompt_tokens=None, out=10):
    return RouteRequest(rid, list(hashes), prompt_tokens if prompt_tokens is not None else len(hashes) * BS, out)


def hold(s, node, tier, hashes):
    s.apply(BlockStored(node, tier, tuple(hashes)))


def actions(decision):
    return [(seg.action, seg.tier, seg.tokens) for seg in decision.plan.segments]


def d_prefill(s, rid):
    """The estimated prefill seconds the scheduler booked for an in-flight request."""
    return s.cluster.inflight[rid].est_prefill_s


# ------------------------------------------------------------------ exploit / explore
@pytest.mark.parametrize("policy", ["preble_e2", "e2_tiered"])
def test_exploit_when_matched_exceeds_missed(policy):
    s, _ = make_sched(policy)
    prefix = blocks(32, 10_000)  # 1024 tokens in node 1's HBM
    hold(s, 1, Tier.HBM, prefix)
    # 2047 tokens: matched 1024 > missed 1023.
    d = s.schedule(req("r", prefix + blocks(31, 500), prompt_tokens=2047))
    assert (d.node, d.branch) == (1, Branch.EXPLOIT)
    assert actions(d) == [(Action.IN_PLACE, Tier.HBM, 1024), (Action.RECOMPUTE, None, 1023)]


def test_explore_when_matched_equals_missed_and_it_weighs_load():
    s, clock = make_sched("preble_e2", explain=True)
    prefix = blocks(32, 10_000)
    hold(s, 1, Tier.HBM, prefix)
    # 2048 tokens: matched 1024 == missed 1024 -> explore; node 1 is cheapest (half cached).
    d = s.schedule(req("a", prefix + blocks(32, 500)))
    assert (d.node, d.branch) == (1, Branch.EXPLORE)
    # Load on node 1 beyond what its cache saves: explore goes to the first idle node.
    s.policy.add_work(1, clock.now(), 5.0)
    d = s.schedule(req("b", prefix + blocks(32, 700)))
    assert (d.node, d.branch) == (0, Branch.EXPLORE)
    assert actions(d) == [(Action.RECOMPUTE, None, 2048)]
    by_node = {c.node: c for c in d.candidates}
    assert sorted(by_node) == [0, 1, 2, 3]
    cost = s.cluster.cost
    assert by_node[0].plan_s == pytest.approx(cost.prefill_s(2048, 2048))
    assert by_node[1].plan_s == pytest.approx(cost.prefill_s(1024, 2048))
    # Load_n: windowed prefill work + in-flight output tokens x TPOT (0.15 s seed).
    assert by_node[1].load_s == pytest.approx(5.0 + d_prefill(s, "a") + 10 * TPOT_SEED)
    assert by_node[0].load_s == 0.0
    assert min(by_node.values(), key=lambda c: c.total_s).node == 0


def test_preble_e2_exploits_its_holder_even_when_it_is_loaded():
    s, clock = make_sched("preble_e2")
    hold(s, 1, Tier.HBM, PREFIX)
    s.policy.add_work(1, clock.now(), 50.0)
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert (d.node, d.branch) == (1, Branch.EXPLOIT)


def test_preble_e2_ignores_dram_prefixes_e2_tiered_uses_them():
    request = req("r", PREFIX + blocks(1, 1))
    s, _ = make_sched("preble_e2")
    hold(s, 1, Tier.DRAM, PREFIX)
    d = s.schedule(request)
    assert (d.node, d.branch) == (0, Branch.EXPLORE)  # nothing in HBM: all nodes tie
    assert actions(d) == [(Action.RECOMPUTE, None, 2080)]

    s, _ = make_sched("e2_tiered")
    hold(s, 1, Tier.DRAM, PREFIX)
    d = s.schedule(request)
    assert (d.node, d.branch) == (1, Branch.EXPLOIT)
    assert actions(d) == [(Action.FETCH, Tier.DRAM, 2048), (Action.RECOMPUTE, None, 32)]
    assert d.plan.local_blocks == 64 and d.plan.pull_blocks == 0
    assert d.plan.est_fetch_s == pytest.approx(s.cluster.cost.fetch_s(Tier.DRAM, 2048))


def test_e2_tiered_recomputes_when_the_dram_link_is_absurdly_slow():
    slow = cost_preset("mistral-7b-a6000").with_links(Links(dram=Link(1e3), net=Link(1e3)))
    s, _ = make_sched("e2_tiered", cost=slow)
    hold(s, 1, Tier.DRAM, PREFIX)
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert actions(d) == [(Action.RECOMPUTE, None, 2080)]
    assert d.plan.est_fetch_s == 0.0 and d.plan.est_pull_s == 0.0


@pytest.mark.parametrize("dram_bw, expect", [
    (25e9, [(Action.FETCH, Tier.DRAM, 2048), (Action.RECOMPUTE, None, 32)]),
    (1e3, [(Action.RECOMPUTE, None, 2080)]),
])
def test_planner_fetches_from_dram_only_when_cheaper_than_recomputing(dram_bw, expect):
    cost = cost_preset("mistral-7b-a6000").with_links(Links(dram=Link(dram_bw)))
    s, _ = make_sched("e2_tiered", cost=cost)
    hold(s, 1, Tier.DRAM, PREFIX)
    request = req("r", PREFIX + blocks(1, 1))
    planner = s.policy.planner
    pc = planner.prepare(request, s.index.match(request.block_hashes))
    plan = planner.build(1, pc)
    assert [(seg.action, seg.tier, seg.tokens) for seg in plan.segments] == expect
    assert plan.est_ttft_s == pytest.approx(min(cost.fetch_s(Tier.DRAM, 2048) + cost.prefill_s(32, 2080),
                                                cost.prefill_s(2080, 2080)))


def test_e2_tiered_fetches_disk_blocks_and_keeps_hbm_ones_in_place():
    s, _ = make_sched("e2_tiered")
    hold(s, 2, Tier.HBM, PREFIX[:16])
    hold(s, 2, Tier.DISK, PREFIX[16:])
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert (d.node, d.branch) == (2, Branch.EXPLOIT)
    assert actions(d) == [(Action.IN_PLACE, Tier.HBM, 512), (Action.FETCH, Tier.DISK, 1536),
                          (Action.RECOMPUTE, None, 32)]


def make_hot(s, prefix, n=3):
    """Request `prefix` `n` times (each dispatched, none finished): with few requests in the
    window it is then hot (over the hot share of an average node's requests)."""
    for i in range(n):
        s.schedule(req(f"warm{i}", prefix + blocks(1, 900 + i)))


def test_e2_tiered_pulls_a_hot_prefix_from_a_queued_holder_to_an_idle_node():
    s, clock = make_sched("e2_tiered")
    hold(s, 0, Tier.HBM, PREFIX)
    make_hot(s, PREFIX)
    s.cluster.nodes[0].pending_prefill_s = 10.0  # node 0 has 10 s of prefill queued
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert d.node != 0 and d.branch is Branch.REPLICATE
    assert d.plan.segments[0].action is Action.PULL
    assert d.plan.segments[0].source == 0 and d.plan.segments[0].tier is Tier.HBM
    assert (d.plan.pull_from, d.plan.pull_blocks) == (0, 64)
    assert actions(d) == [(Action.PULL, Tier.HBM, 2048), (Action.RECOMPUTE, None, 32)]
    assert d.plan.est_pull_s == pytest.approx(s.cluster.cost.pull_s(2048))


def test_e2_tiered_keeps_a_prefix_that_is_not_hot_on_its_holder():
    # One conversation's history: copying it would only spend cache space elsewhere.
    s, clock = make_sched("e2_tiered")
    for n in range(4):  # plenty of other traffic in the window
        for i in range(5):
            s.schedule(req(f"other{n}{i}", blocks(40, 50_000 + 1000 * n + 50 * i)))
    hold(s, 0, Tier.HBM, PREFIX)
    s.cluster.nodes[0].pending_prefill_s = 10.0
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


@pytest.mark.parametrize("holders, copies", [((0,), True), ((0, 1), False)])
def test_e2_tiered_copies_a_hot_prefix_only_while_its_holders_are_too_few(holders, copies):
    # 20 requests in the window over 4 nodes (5 each), 4 of them for PREFIX: at a hot share
    # of 0.5 it earns a second node (4 >= 0.5 x 5 x 1) but not a third (4 < 0.5 x 5 x 2),
    # however queued the holders are: copies are bounded by demand, not by momentary queues.
    s, clock = make_sched("e2_tiered", replicate_hot_share=0.5)
    for i in range(16):
        s.schedule(req(f"other{i}", blocks(40, 50_000 + 100 * i)))
    for n in holders:
        hold(s, n, Tier.HBM, PREFIX)
    make_hot(s, PREFIX)
    for n in range(4):
        s.cluster.nodes[n].pending_prefill_s = 10.0 if n in holders else 0.0
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert s.index.requests_in_window(PREFIX[-1], clock.now()) == 4
    assert len(s.cluster.inflight) == 20
    if copies:
        assert d.branch is Branch.REPLICATE and d.node not in holders
        assert d.plan.pull_from in holders
    else:
        assert d.branch is Branch.EXPLOIT and d.node in holders


def test_e2_tiered_replicates_only_for_a_clear_win():
    # Holder queue just under twice the alternative's delay: no copy.
    s, clock = make_sched("e2_tiered")
    hold(s, 0, Tier.HBM, PREFIX)
    make_hot(s, PREFIX)
    planner = s.policy.planner
    request = req("r", PREFIX + blocks(1, 1))
    pc = planner.prepare(request, s.index.match(request.block_hashes))
    pull_plan = planner.choice(1, pc).total_s
    local_plan = planner.choice(0, pc).total_s
    for n in (1, 2, 3):
        s.cluster.nodes[n].pending_prefill_s = 0.0
    s.cluster.nodes[0].pending_prefill_s = 2 * pull_plan - local_plan - 1e-3
    assert s.schedule(request).node == 0


def test_e2_tiered_does_not_pull_over_an_absurdly_slow_network():
    slow = cost_preset("mistral-7b-a6000").with_links(Links(net=Link(1e3)))
    s, clock = make_sched("e2_tiered", cost=slow)
    hold(s, 0, Tier.HBM, PREFIX)
    make_hot(s, PREFIX)
    s.cluster.nodes[0].pending_prefill_s = 0.1  # lightly queued holder
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)
    assert all(seg.action is not Action.PULL for seg in d.plan.segments)


def test_e2_tiered_recomputes_on_an_idle_node_rather_than_pulling_slowly_or_queueing():
    slow = cost_preset("mistral-7b-a6000").with_links(Links(net=Link(1e3)))
    s, clock = make_sched("e2_tiered", cost=slow)
    hold(s, 0, Tier.HBM, PREFIX)
    make_hot(s, PREFIX)
    s.cluster.nodes[0].pending_prefill_s = 10.0
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert d.node != 0 and d.branch is Branch.REPLICATE
    assert actions(d) == [(Action.RECOMPUTE, None, 2080)]


def busy_decoding(s, node, batch, out=200, context=1_000):
    """`node` decodes `batch` requests of `out` output tokens and `context` tokens each."""
    ns = s.cluster.nodes[node]
    ns.n_inflight, ns.n_prefilling, ns.decode_tokens = batch, 0, batch * out
    ns.active_kv_tokens = ns.decoding_kv_tokens = batch * (context + out)


def cold_prefix_sched(cost, **policy_cfg):
    """PREFIX on node 0, not hot: plenty of other traffic in the window (on every node)."""
    s, clock = make_sched("e2_tiered", cost=cost, **policy_cfg)
    for n in range(4):
        for i in range(5):
            s.schedule(req(f"other{n}{i}", blocks(40, 50_000 + 1000 * n + 50 * i)))
    hold(s, 0, Tier.HBM, PREFIX)
    for n in range(4):
        busy_decoding(s, n, 2)
    return s


# A measured CPU-like decode step: 5 ms + 2 ms per sequence (batch-bound, as on the CPU profile).
BATCH_BOUND = replace(cost_preset("mistral-7b-a6000"), decode=LinearDecode(5.0, 2.0, 0.0))


def test_e2_tiered_moves_a_cold_prefix_off_a_node_whose_decode_batch_would_slow_it():
    # A conversation's history on a node decoding 14 answers, others decoding 2: its 200
    # tokens would take 200 steps of a batch of 15 there and slow the 14 beside it; copying
    # the history to a node decoding 2 serves it several times sooner.
    s = cold_prefix_sched(BATCH_BOUND)
    busy_decoding(s, 0, 14)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert d.node != 0 and d.branch is Branch.REPLICATE
    assert d.plan.pull_from == 0


def test_a_decode_gap_under_2x_moves_a_request_at_the_decode_ratio_and_not_at_the_queue_ratio():
    # Node 0 decodes 5 answers, the others 2: the request's decode there (its 200 steps at a
    # batch of 6 plus the slowdown of the 5) is 1.8x what it would be elsewhere. That clears
    # decode_move_ratio (1.5), not the queue rule's factor of 2.
    s = cold_prefix_sched(BATCH_BOUND)
    busy_decoding(s, 0, 5)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert d.node != 0 and d.branch is Branch.REPLICATE
    s = cold_prefix_sched(BATCH_BOUND, decode_move_ratio=2.0)
    busy_decoding(s, 0, 5)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


def test_e2_tiered_keeps_a_cold_prefix_when_the_decode_batches_are_even():
    s = cold_prefix_sched(BATCH_BOUND)
    s.cluster.nodes[0].pending_prefill_s = 10.0  # a queue burst alone never moves a cold prefix
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


def test_e2_tiered_keeps_a_cold_prefix_when_decode_does_not_grow_with_the_batch():
    # The GPU preset's roofline: a step reads the weights once, whatever the batch; a larger
    # batch barely slows anyone, so the big batch is no reason to move.
    s = cold_prefix_sched(cost_preset("mistral-7b-a6000"))
    busy_decoding(s, 0, 14)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


def test_an_unmeasured_engine_decode_never_moves_a_prefix():
    # The router's cost model before anything is measured: a flat decode step.
    flat = replace(cost_preset("mistral-7b-a6000"), decode=engine_cost_model("e", 8192, 1 << 16).decode)
    s = cold_prefix_sched(flat)
    busy_decoding(s, 0, 16)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


def test_explain_shows_the_decode_term_of_a_move_for_decode():
    s = cold_prefix_sched(BATCH_BOUND, explain=True)
    busy_decoding(s, 0, 14)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert d.branch is Branch.REPLICATE
    by_node = {c.node: c for c in d.candidates}
    assert by_node[0].decode_s == pytest.approx(s.policy._decode_s(0, 200, 2080 + 200))
    assert by_node[d.node].decode_s is not None and by_node[d.node].decode_s * 2 < by_node[0].decode_s


def test_with_both_rules_in_play_every_candidate_is_priced():
    # A hot prefix on a queued holder that also decodes a big batch: the queue rule and the
    # decode rule both weigh the move. Ranked by queue + plan + decode, a node failing one
    # rule could outrank one passing the other, so no candidate is left unpriced.
    s, _ = make_sched("e2_tiered", cost=BATCH_BOUND, explain=True)
    hold(s, 0, Tier.HBM, PREFIX)
    make_hot(s, PREFIX)
    s.cluster.nodes[0].pending_prefill_s = 10.0
    for n, batch in enumerate((14, 1, 3, 6)):
        busy_decoding(s, n, batch)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert d.branch is Branch.REPLICATE and d.node == 1  # the least busy decoder
    others = [c for c in d.candidates if c.node != 0]
    assert len(others) == 3 and all(c.evict_s is not None and c.decode_s is not None for c in others)


def test_requests_still_waiting_for_their_prefill_are_not_in_the_decode_batch():
    # Queued prefills are the queue term's: a node with 14 requests dispatched and none past
    # its first token decodes nothing yet, and a cold prefix stays on it.
    s = cold_prefix_sched(BATCH_BOUND)
    busy_decoding(s, 0, 14)
    ns = s.cluster.nodes[0]
    ns.n_prefilling, ns.decoding_kv_tokens = 14, 0
    assert s.policy._decode_s(0, 100, 1100) == pytest.approx(100 * 0.007)
    d = s.schedule(req("r", PREFIX + blocks(1, 1), out=200))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


def test_cluster_counts_decoding_kv_from_first_token_to_finish():
    s, clock = make_sched("e2_tiered", cost=BATCH_BOUND)
    s.schedule(req("a", blocks(10, 70_000), out=50))  # 320 prompt tokens
    node = s.cluster.inflight["a"].node
    ns = s.cluster.nodes[node]
    assert (ns.n_inflight - ns.n_prefilling, ns.decoding_kv_tokens) == (0, 0)
    s.on_first_token("a")
    assert (ns.n_inflight - ns.n_prefilling, ns.decoding_kv_tokens) == (1, 370)
    s.on_finish("a", 50)
    assert (ns.n_inflight, ns.decoding_kv_tokens) == (0, 0)


def test_decode_cost_is_own_steps_plus_the_slowdown_of_the_batch():
    s = cold_prefix_sched(BATCH_BOUND)
    busy_decoding(s, 0, 4, out=50)  # 4 requests with output budgets of 50
    # Own: 100 steps of a batch of 5 (15 ms); the 4 others each slowed 2 ms for their 50-step budgets.
    assert s.policy._decode_s(0, 100, 1100) == pytest.approx(100 * 0.015 + 4 * 50 * 0.002)
    busy_decoding(s, 1, 0, out=0, context=0)
    assert s.policy._decode_s(1, 100, 1100) == pytest.approx(100 * 0.007)  # alone: 5 + 2 ms


# ------------------------------------------------------------------ Evict_n and P/D balance
def cache_hot_prefix(hbm_tokens, requests=3, explain=False):
    """Node 0 caches q (2048 tokens), requested `requests` times (one output token each)."""
    s, clock = make_sched("preble_e2", hbm_tokens=hbm_tokens, explain=explain)
    q = blocks(64, 20_000)
    for i in range(requests):
        d = s.schedule(req(f"q{i}", q, out=1))
        assert d.node == 0
        if i == 0:
            hold(s, 0, Tier.HBM, q)
    return s, clock


def test_evict_term_is_the_recompute_cost_of_hot_prefixes_pushed_out():
    # Node 0 has 4099 - 2048 (q) - 3 (outputs) = 2048 tokens free; x needs 4096: all of q goes.
    s, clock = cache_hot_prefix(hbm_tokens=4099, explain=True)
    expect = 2 * s.cluster.cost.prefill_s(2048, 2048)  # hits beyond the first x recompute
    load0 = s.policy.load_s(0, clock.now())
    # Others are busier than node 0, but by less than evicting q would cost.
    for n in (1, 2, 3):
        s.policy.add_work(n, clock.now(), load0 + expect / 2)
    d = s.schedule(req("x", blocks(127, 30_000), prompt_tokens=4095, out=1))
    by_node = {c.node: c for c in d.candidates}
    assert by_node[0].evict_s == pytest.approx(expect)
    assert by_node[1].evict_s == 0.0  # 4099 free: nothing to evict
    assert by_node[0].load_s + by_node[0].plan_s < by_node[1].load_s + by_node[1].plan_s
    assert (d.node, d.branch) == (1, Branch.EXPLORE)


def test_evict_term_is_zero_when_the_request_fits_and_grows_with_overflow():
    s, clock = cache_hot_prefix(hbm_tokens=100_000)
    free = s.cluster.hbm_free_tokens(0)
    assert free == 100_000 - 2048 - 3
    now = clock.now()
    assert s.policy.evict_s(0, free, now) == 0.0
    full = s.policy.evict_s(0, free + 2048, now)
    assert full == pytest.approx(2 * s.cluster.cost.prefill_s(2048, 2048))
    assert 0.0 < s.policy.evict_s(0, free + 1, now) <= full
    assert s.policy.evict_s(1, 100_000, now) == 0.0  # node 1 caches nothing


def test_evicting_a_cold_prefix_costs_nothing():
    s, clock = cache_hot_prefix(hbm_tokens=100_000, requests=1)  # requested once: no hits
    assert s.policy.evict_s(0, 100_000, clock.now()) == 0.0


@pytest.mark.parametrize("hit_ratio, extra, chosen", [
    (0.8, 1.2, 2),  # decode-heavy and within 1.25x of the best: preferred
    (0.8, 1.3, 0),  # decode-heavy but too expensive
    (0.69, 1.0, 0),  # not decode-heavy
])
def test_explore_prefers_a_decode_heavy_node_when_nearly_as_cheap(hit_ratio, extra, chosen):
    s, clock = make_sched("preble_e2")
    now = clock.now()
    # Node 2 has served mostly cache hits (no output tokens, so its Load_n is unchanged).
    s.cluster.on_dispatch("old", 2, 1000, int(1000 * hit_ratio), 0, 0.0, now)
    base = s.cluster.cost.prefill_s(2048, 2048)
    s.policy.add_work(2, now, (extra - 1.0) * base)
    for n in (1, 3):
        s.policy.add_work(n, now, 10.0)
    d = s.schedule(req("r", blocks(64, 40_000)))
    assert (d.node, d.branch) == (chosen, Branch.EXPLORE)


# ------------------------------------------------------------------ rebalancing
def setup_heavy_node(ratio_above: bool):
    """Node 0 holds and serves a hot prefix; node 1's load is set just above/below
    the 1.5x trigger for the moment right after the second request is dispatched."""
    s, clock = make_sched("preble_e2", n_nodes=2, rebalance_interval_s=0.0)
    hot = blocks(64, 50_000)
    d = s.schedule(req("r1", hot + blocks(1, 1)))
    assert d.node == 0 and s.policy.redirects == {}  # no hot prefix known yet
    hold(s, 0, Tier.HBM, hot + blocks(1, 1))
    now = clock.now()
    cost = s.cluster.cost
    # r2 will exploit node 0 with 2048 cached tokens and 10 output tokens.
    load0 = s.policy.load_s(0, now) + cost.prefill_s(32, 2080) + 10 * TPOT_SEED
    factor = 1.001 if ratio_above else 0.999
    s.policy.add_work(1, now, load0 / (1.5 * factor))
    d = s.schedule(req("r2", hot + blocks(1, 2)))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)
    assert s.policy.load_s(0, now) == pytest.approx(load0)
    return s, hot


def test_rebalancing_redirects_the_hot_prefix_above_one_and_a_half_times():
    s, hot = setup_heavy_node(ratio_above=True)
    assert s.policy.redirects == {hot[-1]: 1}
    d = s.schedule(req("r3", hot + blocks(1, 3)))
    assert (d.node, d.branch) == (1, Branch.REBALANCE)


def test_no_rebalancing_just_below_one_and_a_half_times():
    s, hot = setup_heavy_node(ratio_above=False)
    assert s.policy.redirects == {}
    d = s.schedule(req("r3", hot + blocks(1, 3)))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


def test_redirect_to_a_dead_node_is_ignored():
    s, hot = setup_heavy_node(ratio_above=True)
    s.mark_down(1)
    d = s.schedule(req("r3", hot + blocks(1, 3)))
    assert (d.node, d.branch) == (0, Branch.EXPLOIT)


# ------------------------------------------------------------------ autoscaling
@pytest.mark.parametrize("ttft, replicate", [(0.25, True), (0.19, False)])
def test_autoscaling_replicates_a_prefix_whose_ttft_doubled(ttft, replicate):
    # Rebalancing checked once (at t=0, nothing hot yet) and then never: it would otherwise
    # redirect the hot prefix to an idle node (max > 1.5 x 0).
    s, clock = make_sched("preble_e2", window_s=10.0, rebalance_interval_s=1e9)
    hot = blocks(64, 60_000)
    hold(s, 1, Tier.HBM, hot)
    served = []

    def serve(rid, ttft):
        served.append(rid)
        d = s.schedule(req(rid, hot + blocks(1, 100_000 + len(served))))
        assert (d.node, d.branch) == (1, Branch.EXPLOIT)
        clock.advance(ttft)
        s.on_first_token(rid)
        s.on_finish(rid, 10)

    for i in range(5):  # the first request has no prefix key yet (requested once)
        serve(f"w0-{i}", 0.1)  # window 0: 4 samples, mean TTFT 0.1 s
    clock.set(10.0)
    for i in range(3):
        serve(f"w1-{i}", ttft)
    s.policy.add_work(1, clock.now(), 5.0)
    d = s.schedule(req("before", hot + blocks(1, 7)))  # 3 samples in this window: not yet
    assert (d.node, d.branch) == (1, Branch.EXPLOIT)
    clock.advance(ttft)
    s.on_first_token("before")
    s.on_finish("before", 10)  # 4th sample in this window: compare with 2 x 0.1
    d = s.schedule(req("after", hot + blocks(1, 8)))
    if not replicate:
        assert (d.node, d.branch) == (1, Branch.EXPLOIT)
        return
    assert d.branch is Branch.REPLICATE and d.node != 1
    replica = d.node
    # One replica per trigger: the next request exploits again, and the router already
    # counts the replica (its prefix is pending there) among the holders; node 1 is loaded.
    d = s.schedule(req("again", hot + blocks(1, 9)))
    assert (d.node, d.branch) == (replica, Branch.EXPLOIT)


# ------------------------------------------------------------------ node ids and liveness
@pytest.mark.parametrize("policy", ["preble_e2", "e2_tiered"])
def test_decisions_are_node_ids_not_positions_when_nodes_are_dead(policy):
    s, clock = make_sched(policy)
    s.mark_down(0)
    s.mark_down(1)
    # Explore over alive [2, 3] with node 2 loaded: the answer is node 3 (position 1).
    s.policy.add_work(2, clock.now(), 5.0)
    d = s.schedule(req("a", blocks(64, 70_000)))
    assert d.node == 3
    # Exploit: the only holder is node 3.
    hold(s, 3, Tier.HBM, PREFIX)
    d = s.schedule(req("b", PREFIX + blocks(1, 1)))
    assert (d.node, d.branch) == (3, Branch.EXPLOIT)
    for i in range(10):
        assert s.schedule(req(f"c{i}", blocks(8, 80_000 + 100 * i))).node in (2, 3)


def test_mark_down_drops_residency_and_returns_inflight_requests():
    s, _ = make_sched("e2_tiered")
    hold(s, 1, Tier.HBM, PREFIX)
    hold(s, 1, Tier.DRAM, PREFIX)
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))
    assert d.node == 1
    lost = s.mark_down(1)
    assert [inf.request_id for inf in lost] == ["r"]
    assert s.index.match(PREFIX).get(1) is None
    assert s.cluster.nodes[1].n_inflight == 0 and "r" not in s.cluster.inflight
    d = s.schedule(req("r", PREFIX + blocks(1, 1)))  # re-routed elsewhere
    assert d.node != 1


@pytest.mark.parametrize("policy", ["preble_e2", "e2_tiered", "round_robin", "least_load",
                                    "sglang_cache_aware", "dynamo_kv"])
def test_no_alive_node_raises_runtime_error(policy):
    s, _ = make_sched(policy, n_nodes=2)
    s.mark_down(0)
    s.mark_down(1)
    with pytest.raises(RuntimeError, match="no node is alive"):
        s.schedule(req("r", blocks(4, 1)))


def test_schedule_rejects_empty_prompts_and_duplicate_ids():
    s, _ = make_sched("e2_tiered")
    with pytest.raises(ValueError, match="empty"):
        s.schedule(RouteRequest("r", [], 0, 10))
    s.schedule(req("r", blocks(4, 1)))
    with pytest.raises(ValueError, match="already in flight"):
        s.schedule(req("r", blocks(4, 1)))


def test_policy_config_bounds():
    with pytest.raises(ValueError, match="rebalance_ratio"):
        PolicyConfig(rebalance_ratio=1.0)
    with pytest.raises(ValueError, match="window_s"):
        PolicyConfig(window_s=0)
    with pytest.raises(ValueError, match="dynamo_tier_credit"):
        PolicyConfig(dynamo_tier_credit=(1.0, 0.5))
    with pytest.raises(ValueError, match="decode_move_ratio must exceed 1"):
        PolicyConfig(decode_move_ratio=1.0)


def test_per_prefix_policy_state_stays_bounded_over_time():
    # A long-running router sees unboundedly many prefixes: per-prefix work and TTFT windows
    # must forget prefixes idle for two windows.
    s, clock = make_sched("preble_e2", window_s=10.0, autoscale_window_s=10.0)
    for i in range(600):
        clock.advance(0.5)
        p = blocks(4, 100_000 + 10 * i)
        for k in range(2):  # twice, so the prefix has a key
            rid = f"r{i}-{k}"
            s.schedule(req(rid, p + blocks(1, 5_000_000 + 2 * i + k), out=2))
            s.on_first_token(rid)
            s.on_finish(rid, 2)
    per_window = 2 * 10.0 / 0.5  # keys created in two windows
    assert sum(len(w) for w in s.policy.key_work) <= per_window + 2
    assert len(s.policy._ttft) <= per_window + 2
    assert not s.policy._req_key  # every finished request was forgotten


@pytest.mark.parametrize("seed", range(40))
def test_plan_time_is_the_cheapest_choice_exactly(seed):
    """`plan_time` and `plan_times` (the decision path) give bit for bit the time of the
    plan `choice`/`build` make, on random holdings and links that make each branch win."""
    import random

    rng = random.Random(seed)
    links = Links(dram=Link(rng.choice([1e6, 2e9, 25e9])), disk=Link(rng.choice([1e6, 1e9, 5e9])),
                  net=Link(rng.choice([1e6, 1e9, 12.5e9])))
    s, _ = make_sched("e2_tiered", n_nodes=10, cost=cost_preset("mistral-7b-a6000").with_links(links))
    trunk = blocks(40, 50_000)
    for n in range(10):
        for tier in (Tier.HBM, Tier.DRAM, Tier.DISK):
            if rng.random() < 0.5:
                a = rng.randrange(0, 40)
                hold(s, n, tier, trunk[a: a + rng.randrange(1, 40)] if rng.random() < 0.3 else trunk[: rng.randrange(1, 41)])
        if rng.random() < 0.2:
            s.index.add_pending(n, trunk[: rng.randrange(1, 41)])
    request = req("r", trunk[: rng.randrange(1, 41)] + blocks(rng.randrange(0, 3), 90_000))
    planner = s.policy.planner
    pc = planner.prepare(request, s.index.match(request.block_hashes))
    times = planner.plan_times(pc, 10)
    for n in range(10):
        want = planner.choice(n, pc).total_s
        assert planner.plan_time(n, pc) == want and times[n] == want
        assert planner.build(n, pc).est_ttft_s == pytest.approx(want)
    # e2_tiered's floor of queued prefill + plan over every node, from the match alone
    pend = [rng.choice([0.0, rng.uniform(0, 2)]) for _ in range(10)]
    assert s.policy._floor_q(pc, pend, times) == min(p + t for p, t in zip(pend, times))


@pytest.mark.parametrize("policy", ["preble_e2", "e2_tiered"])
def test_pruned_eviction_pricing_makes_the_same_decisions_with_fewer_lru_walks(policy):
    """Explore (and replication) price Evict_n only for nodes whose Load + plan could still
    win. Against a reference pricing every candidate through the public `evict_s`, run in
    lockstep on full HBMs (engines evicting LRU blocks): every decision is the same, and
    the pruned one walks fewer LRUs."""
    import random
    from collections import OrderedDict

    from preble_tiered.events import BlockRemoved

    def price_all(s):
        def evicts(nodes, pc, now, base, slack):
            bs, grow = s.cluster.block_size, pc.prompt_tokens + pc.req.max_output_tokens
            in_place = {n: m.hbm_prefix * bs for n, m in pc.match.nodes.items()}
            return [s.policy.evict_s(n, grow - in_place.get(n, 0), now) for n in nodes]
        return evicts

    n_nodes, cap = 16, 200  # HBM blocks per node: ~3 prompts, so every node is full early
    runs = []
    for reference in (True, False):
        s, clock = make_sched(policy, n_nodes=n_nodes, hbm_tokens=cap * BS, rebalance_interval_s=5.0)
        walks = [0]
        price = s.policy._evict_price

        def counted(node, now, price=price, walks=walks, s=s):
            walks[0] += s.policy._price_at[node] != int(now)  # a refresh walks the LRU
            return price(node, now)

        s.policy._evict_price = counted
        if reference:
            s.policy._evicts = price_all(s)
        runs.append((s, clock, walks, [OrderedDict() for _ in range(n_nodes)]))
    rng = random.Random(7)
    prefixes = [blocks(rng.randrange(8, 60), 100_000 + 1000 * k) for k in range(40)]
    inflight, branches = [], set()
    for i in range(1500):
        k = min(int(rng.paretovariate(1.0)) - 1, len(prefixes) - 1)
        r = req(f"r{i}", prefixes[k] + blocks(rng.randrange(1, 30), 1_000_000 + 100 * i), out=8)
        picks, bump = [], (rng.randrange(n_nodes), rng.uniform(0, 30)) if i % 4 == 0 else None
        for s, clock, _, lrus in runs:
            clock.advance(0.25)
            if bump:  # uneven load, as bursts leave it: some nodes cannot win an explore
                s.policy.add_work(bump[0], clock.now(), bump[1])
            d = s.schedule(r)
            picks.append((d.node, d.branch))
            lru = lrus[d.node]
            for h in r.block_hashes:
                lru[h] = None
                lru.move_to_end(h)
            hold(s, d.node, Tier.HBM, r.block_hashes)
            out = [lru.popitem(last=False)[0] for _ in range(max(0, len(lru) - cap))]
            if out:
                s.apply(BlockRemoved(d.node, Tier.HBM, tuple(out)))
        assert picks[0] == picks[1], f"request {i}"
        branches.add(picks[0][1])
        inflight.append(r.request_id)
        if len(inflight) > 24:
            rid = inflight.pop(0)
            for s, *_ in runs:
                s.on_first_token(rid)
                s.on_finish(rid, 8)
    assert Branch.EXPLORE in branches
    (_, _, all_walks, _), (_, _, pruned_walks, _) = runs
    print(pruned_walks, all_walks, branches)
    assert 0 < pruned_walks[0] < all_walks[0] * 0.8


def test_explain_shows_nodes_that_could_not_win_as_not_priced():
    """A full node whose load + plan alone exceeds pd_slack x the winner's total is not
    priced: `explain` lists it with evict_s None and load + plan as its total."""
    s, clock = cache_hot_prefix(hbm_tokens=4099, explain=True)  # node 0 full of hot q
    now = clock.now()
    s.policy.add_work(0, now, 50.0)  # node 0 could not win, whatever its eviction costs
    for n in (1, 2, 3):
        hold(s, n, Tier.HBM, blocks(120, 60_000 + 1000 * n))  # full, but of cold blocks
    d = s.schedule(req("x", blocks(127, 30_000), prompt_tokens=4095, out=1))
    by_node = {c.node: c for c in d.candidates}
    assert d.node != 0 and sorted(by_node) == [0, 1, 2, 3]
    assert by_node[0].evict_s is None
    assert by_node[0].total_s == pytest.approx(by_node[0].load_s + by_node[0].plan_s)
    assert by_node[0].total_s > s.policy.config.pd_slack * by_node[d.node].total_s
    assert all(by_node[n].evict_s is not None for n in (1, 2, 3))
    # Priced, it would cost more again: the hot prefix on node 0 is what it would evict.
    grow = 4095 + 1
    assert s.policy.evict_s(0, grow, now) > 0.0
