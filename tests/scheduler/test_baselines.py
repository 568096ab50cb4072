"""Baselines: round_robin, least_load, sglang_cache_aware, dynamo_kv, and the registry."""

import pytest

from preble_tiered.events import BlockStored
from preble_tiered.scheduler.clock import ManualClock
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig
from preble_tiered.scheduler.cost_model import cost_preset
from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.registry import make_policy, policy_class, policy_names
from preble_tiered.scheduler.types import Action, Branch, RouteRequest
from preble_tiered.types import Tier

BS = 32


def make_sched(policy, n_nodes=4, hbm_tokens=100_000, **policy_cfg):
    clock = ManualClock()
    cfg = SchedulerConfig(policy, n_nodes, BS, hbm_tokens, PolicyConfig(**policy_cfg))
    return Scheduler(cfg, cost_preset("mistral-7b-a6000"), clock), clock


def blocks(n, start):
    return list(range(start, start + n))


def req(rid, hashes, prompt_tokens=None, out=10):
    return RouteRequest(rid, list(hashes), prompt_tokens if prompt_tokens is not None else len(hashes) * BS, out)


def hold(s, node, tier, hashes):
    s.apply(BlockStored(node, tier, tuple(hashes)))


def busy(s, node, n_requests, prefix="busy"):
    """Give `node` `n_requests` in-flight requests (one token each, nothing cached)."""
    for i in range(n_requests):
        s.cluster.on_dispatch(f"{prefix}-{node}-{i}", node, 1, 0, 0, 0.0, 0.0)


# ------------------------------------------------------------------ round_robin / least_load
def test_round_robin_cycles_and_skips_dead_nodes():
    s, _ = make_sched("round_robin")
    got = [s.schedule(req(f"a{i}", blocks(2, 100 * i))).node for i in range(6)]
    assert got == [0, 1, 2, 3, 0, 1]
    s.mark_down(3)
    s.mark_down(0)
    got = [s.schedule(req(f"b{i}", blocks(2, 1000 + 100 * i))).node for i in range(5)]
    assert got == [2, 1, 2, 1, 2]
    assert s.branch_counts == {"baseline": 11}


def test_round_robin_ignores_the_cache_but_plans_with_it():
    s, _ = make_sched("round_robin")
    hold(s, 2, Tier.HBM, blocks(8, 1))
    d = s.schedule(req("r", blocks(8, 1) + blocks(2, 50)))
    assert (d.node, d.branch) == (0, Branch.BASELINE)
    assert [seg.action for seg in d.plan.segments] == [Action.RECOMPUTE]
    s.schedule(req("r1", blocks(2, 60)))
    d = s.schedule(req("r2", blocks(8, 1) + blocks(2, 70)))
    assert d.node == 2
    assert [(seg.action, seg.tokens) for seg in d.plan.segments] == [(Action.IN_PLACE, 256), (Action.RECOMPUTE, 64)]


def test_least_load_picks_fewest_outstanding_tokens():
    s, _ = make_sched("least_load")
    assert s.schedule(req("a", blocks(10, 1), out=50)).node == 0  # 320 + 50 tokens on node 0
    assert s.schedule(req("b", blocks(4, 100), out=10)).node == 1  # 138 tokens on node 1
    assert s.schedule(req("c", blocks(20, 200), out=10)).node == 2
    assert s.schedule(req("d", blocks(1, 300), out=1)).node == 3  # node 3: 33 tokens
    # Loads now: 370, 138, 650, 33 -> node 3 again, then node 1.
    assert s.schedule(req("e", blocks(4, 400), out=10)).node == 3  # node 3: 171
    assert s.schedule(req("f", blocks(1, 500), out=1)).node == 1
    s.on_first_token("c")  # prompt tokens of c are no longer outstanding: node 2 has 10
    assert s.schedule(req("g", blocks(1, 600), out=1)).node == 2


def test_least_load_skips_dead_nodes():
    s, _ = make_sched("least_load")
    s.mark_down(0)
    assert s.schedule(req("a", blocks(4, 1))).node == 1


# ------------------------------------------------------------------ sglang_cache_aware
def test_sglang_balanced_high_match_rate_goes_to_the_longest_approximate_match():
    s, _ = make_sched("sglang_cache_aware")
    p = blocks(8, 1)
    assert s.schedule(req("a", p + blocks(2, 50))).node == 0  # empty trees: smallest is node 0
    assert s.schedule(req("b", blocks(4, 60))).node == 1  # no match: smallest tree
    # 8 of 10 blocks matched on node 0: rate 0.8 > 0.5 even though node 0 is busier.
    assert s.schedule(req("c", p + blocks(2, 70))).node == 0


def test_sglang_low_match_rate_goes_to_the_smallest_tree():
    s, _ = make_sched("sglang_cache_aware")
    p = blocks(5, 1)
    s.policy.tree.insert(0, p + blocks(30, 500))  # node 0's tree: 35 blocks
    s.policy.tree.insert(1, blocks(40, 900))  # 40 blocks
    s.policy.tree.insert(2, blocks(3, 1500))  # 3 blocks
    s.policy.tree.insert(3, blocks(10, 2000))
    # Exactly 0.5 match rate (5 of 10 blocks on node 0) is not > 0.5: smallest tree.
    d = s.schedule(req("a", p + blocks(5, 3000)))
    assert d.node == 2
    assert s.policy.tree.size(2) == 13  # the routed request joined node 2's tree
    assert s.schedule(req("b", blocks(4, 6000))).node == 3  # now the smallest (10 blocks)


def test_sglang_match_rate_threshold_uses_prompt_tokens():
    s, _ = make_sched("sglang_cache_aware")
    p = blocks(5, 1)
    s.policy.tree.insert(0, p)
    s.policy.tree.insert(1, blocks(1, 900))
    s.policy.tree.insert(2, blocks(1, 901))
    s.policy.tree.insert(3, blocks(1, 902))
    # 160 matched tokens of 319: rate > 0.5 -> node 0 despite its bigger tree.
    assert s.schedule(req("a", p + blocks(4, 3000), prompt_tokens=319)).node == 0
    # 160 of 320: rate == 0.5 -> smallest tree (node 1).
    assert s.schedule(req("b", p + blocks(5, 4000), prompt_tokens=320)).node == 1


@pytest.mark.parametrize("loads, imbalanced", [
    ((130, 65), True),  # diff 65 > 64 and 130 > 97.5
    ((128, 64), False),  # diff == 64: not imbalanced
    ((195, 130), False),  # max == 1.5 x min: not imbalanced
    ((196, 130), True),  # diff 66, 196 > 195
    ((100, 0), True),
    ((60, 0), False),  # diff 60 <= 64
])
def test_sglang_imbalance_rule(loads, imbalanced):
    s, _ = make_sched("sglang_cache_aware", n_nodes=2)
    p = blocks(8, 1)
    s.policy.tree.insert(0, p)  # node 0 has the prefix and the bigger load
    busy(s, 0, loads[0])
    busy(s, 1, loads[1])
    d = s.schedule(req("r", p + blocks(2, 50)))
    assert d.node == (1 if imbalanced else 0)


def test_sglang_imbalance_sends_to_fewest_in_flight_not_smallest_tree():
    s, _ = make_sched("sglang_cache_aware", n_nodes=3)
    s.policy.tree.insert(1, blocks(50, 900))  # node 1 has the biggest tree but no load
    busy(s, 0, 100)
    busy(s, 2, 80)
    assert s.schedule(req("r", blocks(4, 1))).node == 1


def test_sglang_routes_by_its_own_tree_not_the_real_index():
    s, _ = make_sched("sglang_cache_aware")
    p = blocks(8, 1)
    hold(s, 2, Tier.HBM, p)  # the engines report p on node 2
    d = s.schedule(req("a", p + blocks(2, 50)))
    assert d.node == 0  # sglang's tree is empty: smallest tree, not node 2
    assert [seg.action for seg in d.plan.segments] == [Action.RECOMPUTE]  # plan follows node 0's holdings
    assert s.schedule(req("b", p + blocks(2, 60))).node == 0  # its tree says node 0


def test_sglang_tree_is_bounded_lru():
    s, _ = make_sched("sglang_cache_aware", sglang_tree_tokens=10 * BS)
    tree = s.policy.tree
    assert tree.capacity == 10
    tree.insert(0, blocks(8, 1))
    tree.insert(0, blocks(4, 100))
    assert tree.size(0) == 10
    assert tree.match(blocks(8, 1), 0b1) == (0, 0)  # its oldest blocks (the head) were evicted
    assert tree.match(blocks(4, 100), 0b1) == (4, 0b1)


def test_sglang_tree_match_respects_alive_nodes():
    s, _ = make_sched("sglang_cache_aware")
    tree = s.policy.tree
    tree.insert(1, blocks(6, 1))
    tree.insert(2, blocks(3, 1))
    assert tree.match(blocks(6, 1), 0b1111) == (6, 0b0010)
    assert tree.match(blocks(6, 1), 0b1101) == (3, 0b0100)


# ------------------------------------------------------------------ dynamo_kv
def test_dynamo_prefers_a_dram_held_prefix_over_an_empty_node():
    s, _ = make_sched("dynamo_kv")
    p = blocks(16, 1)
    hold(s, 2, Tier.DRAM, p)
    d = s.schedule(req("r", p + blocks(4, 50)))
    assert d.node == 2
    assert [(seg.action, seg.tier, seg.tokens) for seg in d.plan.segments] == [
        (Action.FETCH, Tier.DRAM, 512), (Action.RECOMPUTE, None, 128)]


def test_dynamo_prefers_hbm_over_dram_over_disk():
    s, _ = make_sched("dynamo_kv")
    p = blocks(16, 1)
    hold(s, 1, Tier.DISK, p)
    hold(s, 2, Tier.DRAM, p)
    hold(s, 3, Tier.HBM, p)
    assert s.schedule(req("a", p + blocks(4, 50))).node == 3
    s2, _ = make_sched("dynamo_kv")
    hold(s2, 1, Tier.DISK, p)
    hold(s2, 2, Tier.DRAM, p)
    assert s2.schedule(req("a", p + blocks(4, 50))).node == 2
    s3, _ = make_sched("dynamo_kv")
    hold(s3, 1, Tier.DISK, p)
    assert s3.schedule(req("a", p + blocks(4, 50))).node == 1


@pytest.mark.parametrize("extra_blocks, winner", [(3, 3), (4, 2), (5, 2)])
def test_dynamo_tier_credit_trades_off_against_load(extra_blocks, winner):
    # HBM on node 3 earns 16 credit, DRAM on node 2 earns 12: node 3 wins unless it carries
    # at least 4 blocks of extra cost (ties go to the lower node id).
    s, clock = make_sched("dynamo_kv")
    p = blocks(16, 1)
    hold(s, 2, Tier.DRAM, p)
    hold(s, 3, Tier.HBM, p)
    # Half a block still to prefill + half a block of active KV = one block of cost each.
    for i in range(extra_blocks):
        s.cluster.on_dispatch(f"x{i}", 3, BS // 2, 0, 0, 0.0, 0.0)
    assert s.schedule(req("r", p + blocks(4, 50))).node == winner


def test_dynamo_cost_formula_on_a_loaded_node():
    s, _ = make_sched("dynamo_kv", n_nodes=2)
    p = blocks(10, 1)
    hold(s, 0, Tier.HBM, p)
    # Node 0: 10 blocks of credit, but 11 blocks of pending prefill (+ their KV) -> node 1.
    s.cluster.on_dispatch("x", 0, 11 * BS, 0, 0, 0.0, 0.0)
    assert s.schedule(req("r", p + blocks(2, 50))).node == 1
    s2, _ = make_sched("dynamo_kv", n_nodes=2)
    hold(s2, 0, Tier.HBM, p)
    s2.cluster.on_dispatch("x", 0, 4 * BS, 0, 0, 0.0, 0.0)  # 8 blocks of cost < 10 of credit
    assert s2.schedule(req("r", p + blocks(2, 50))).node == 0


def test_dynamo_custom_credits():
    s, _ = make_sched("dynamo_kv", dynamo_tier_credit=(1.0, 0.0, 0.0))
    p = blocks(16, 1)
    hold(s, 2, Tier.DRAM, p)
    assert s.schedule(req("r", p + blocks(4, 50))).node == 0  # DRAM earns nothing: tie -> node 0


# ------------------------------------------------------------------ registry
def test_registry_lists_every_policy():
    assert set(policy_names()) >= {"round_robin", "least_load", "sglang_cache_aware", "dynamo_kv",
                                   "preble_e2", "e2_tiered"}
    assert policy_class("dynamo_kv").name == "dynamo_kv"
    assert policy_class("dynamo_kv").uses_tiers and not policy_class("dynamo_kv").uses_pulls
    assert policy_class("e2_tiered").uses_pulls and not policy_class("preble_e2").uses_tiers


def test_unknown_policy_raises_listing_known_names():
    with pytest.raises(ValueError) as err:
        policy_class("random_guess")
    for name in ("round_robin", "least_load", "sglang_cache_aware", "dynamo_kv", "preble_e2", "e2_tiered"):
        assert name in str(err.value)
    s, _ = make_sched("round_robin")
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", s.cluster)
