"""The pure pin reconciler: what it asks for, given residency, node acks and the clock."""

from __future__ import annotations

from preble_tiered.scheduler.index import PrefixIndex
from preble_tiered.scheduler.pins import NamedPrefix, NodePin, PinOp, PinSpec, held_counts, reconcile, replica_state
from preble_tiered.types import Tier

HASHES = (11, 12, 13, 14)
PREFIX = {"sys": NamedPrefix("sys", tuple(range(128)), HASHES, 0.0)}


def spec(replicas=1, tier=Tier.DRAM, expires=None):
    return {"sys": PinSpec("sys", tier, replicas, 0.0, expires)}


def index_with(**held) -> PrefixIndex:
    """held: e.g. n0_dram=4 -> node 0 holds the first 4 blocks in DRAM."""
    idx = PrefixIndex()
    for key, n in held.items():
        node, tier = key.split("_")
        idx.store(int(node[1:]), Tier[tier.upper()], HASHES[:n], None, 0.0)
    return idx


def ops(actions):
    return sorted((a.op.value, a.name, a.node) for a in actions)


def test_held_counts_per_tier():
    idx = index_with(n0_hbm=2, n0_dram=4, n1_disk=3)
    assert held_counts(idx, HASHES, 0) == (2, 4, 0, 4)
    assert held_counts(idx, HASHES, 1) == (0, 0, 3, 3)


def test_a_node_that_lacks_the_prefix_is_warmed_then_pinned():
    idx = index_with(n1_dram=2)
    # node 1 holds part of it: the cheapest to warm
    assert ops(reconcile(spec(), PREFIX, idx, [0, 1], {}, {}, set(), 0.0)) == [("warm", "sys", 1)]
    idx = index_with(n1_dram=4)
    assert ops(reconcile(spec(), PREFIX, idx, [0, 1], {}, {}, set(), 0.0)) == [("pin", "sys", 1)]
    acked = {1: {"sys": NodePin(Tier.DRAM, 4, 4)}}
    assert reconcile(spec(), PREFIX, idx, [0, 1], acked, {}, set(), 0.0) == []


def test_a_partial_ack_or_another_tier_is_pinned_again():
    idx = index_with(n0_dram=4, n0_disk=4)
    assert ops(reconcile(spec(), PREFIX, idx, [0], {0: {"sys": NodePin(Tier.DRAM, 3, 4)}}, {}, set(), 0.0)) == \
        [("pin", "sys", 0)]
    assert ops(reconcile(spec(tier=Tier.DISK), PREFIX, idx, [0], {0: {"sys": NodePin(Tier.DRAM, 4, 4)}}, {},
                         set(), 0.0)) == [("pin", "sys", 0)]


def test_an_evicted_pinned_copy_is_warmed_again():
    # acked as pinned, but the index says the node no longer holds it (e.g. the node restarted)
    idx = index_with()
    acked = {0: {"sys": NodePin(Tier.DRAM, 4, 4)}}
    assert ops(reconcile(spec(), PREFIX, idx, [0, 1], acked, {}, set(), 0.0)) == [("warm", "sys", 0)]


def test_hbm_pins_warm_when_the_prefix_left_hbm():
    idx = index_with(n0_dram=4)
    acked = {0: {"sys": NodePin(Tier.HBM, 4, 4)}}
    assert ops(reconcile(spec(tier=Tier.HBM), PREFIX, idx, [0], acked, {}, set(), 0.0)) == [("warm", "sys", 0)]
    idx = index_with(n0_dram=4, n0_hbm=4)
    assert reconcile(spec(tier=Tier.HBM), PREFIX, idx, [0], acked, {}, set(), 0.0) == []


def test_two_replicas_use_two_nodes_the_least_busy_when_none_holds_it():
    idx = index_with()
    acts = reconcile(spec(replicas=2), PREFIX, idx, [0, 1, 2], {}, {0: 5, 1: 0, 2: 1}, set(), 0.0)
    assert ops(acts) == [("warm", "sys", 1), ("warm", "sys", 2)]


def test_placement_is_stable_nodes_already_pinning_stay_targets():
    idx = index_with(n0_dram=4, n2_dram=4)
    acked = {2: {"sys": NodePin(Tier.DRAM, 4, 4)}}
    # node 0 holds it too and is idle, but node 2 already pins it: no churn
    assert reconcile(spec(), PREFIX, idx, [0, 1, 2], acked, {0: 0, 2: 9}, set(), 0.0) == []


def test_busy_pairs_are_left_alone():
    idx = index_with()
    assert reconcile(spec(), PREFIX, idx, [0], {}, {}, {("sys", 0)}, 0.0) == []


def test_unpinned_or_moved_pins_are_released_on_their_nodes():
    idx = index_with(n0_dram=4)
    acked = {0: {"sys": NodePin(Tier.DRAM, 4, 4), "old": NodePin(Tier.DRAM, 2, 2)}}
    assert ops(reconcile(spec(), PREFIX, idx, [0], acked, {}, set(), 0.0)) == [("unpin", "old", 0)]
    assert ops(reconcile({}, PREFIX, idx, [0], acked, {}, set(), 0.0)) == [("unpin", "old", 0), ("unpin", "sys", 0)]


def test_ttl_expiry():
    idx = index_with(n0_dram=4)
    acked = {0: {"sys": NodePin(Tier.DRAM, 4, 4)}}
    assert reconcile(spec(expires=100.0), PREFIX, idx, [0], acked, {}, set(), 99.9) == []
    acts = reconcile(spec(expires=100.0), PREFIX, idx, [0], acked, {}, set(), 100.0)
    assert [(a.op, a.name) for a in acts] == [(PinOp.EXPIRE, "sys"), (PinOp.UNPIN, "sys")]


def test_a_replica_held_in_its_tier_but_not_yet_acknowledged_reads_held_not_missing():
    idx = index_with(n0_dram=4, n1_dram=2)
    assert replica_state(spec()["sys"], 4, held_counts(idx, HASHES, 0), None) == "held"
    assert replica_state(spec()["sys"], 4, held_counts(idx, HASHES, 1), None) == "missing"
    assert replica_state(spec()["sys"], 4, held_counts(idx, HASHES, 0), NodePin(Tier.DRAM, 4, 4)) == "pinned"
    assert replica_state(spec(tier=Tier.DISK)["sys"], 4, held_counts(idx, HASHES, 0), None) == "missing"
