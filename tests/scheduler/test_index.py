"""PrefixIndex: exact per-node, per-tier residency, matching, demand windows and expiry."""

import random

import pytest

from preble_tiered.scheduler.index import PrefixIndex, iter_bits, kernel_names
from preble_tiered.types import TIERS, Tier

HBM, DRAM, DISK = Tier.HBM, Tier.DRAM, Tier.DISK
KERNEL = ["python"]


@pytest.fixture(autouse=True, params=kernel_names())
def kernel(request):
    """Every test runs on each index kernel built here (native C and the Python reference)."""
    KERNEL[0] = request.param
    yield request.param
    KERNEL[0] = "python"


def make_index(window_s: float = 10.0) -> PrefixIndex:
    ix = PrefixIndex(window_s, kernel=KERNEL[0])
    assert ix.kernel == KERNEL[0]
    return ix


def chain(n: int, start: int = 100) -> list[int]:
    """`n` distinct fake block hashes (the index treats hashes as opaque ints)."""
    return list(range(start, start + n))


def counts(res, node):
    nm = res.get(node)
    return None if nm is None else (nm.hbm, nm.dram, nm.disk, nm.hbm_prefix)


# ------------------------------------------------------------------ residency and match
def test_empty_index_matches_nothing():
    ix = make_index()
    res = ix.match(chain(4))
    assert res.n_blocks == 4
    assert (res.longest, res.holders, res.longest_hbm, res.hbm_holders) == (0, 0, 0, 0)
    assert res.nodes == {}
    assert ix.match([]).n_blocks == 0


def test_store_then_match_per_node_and_tier():
    ix = make_index()
    h = chain(6)
    assert ix.store(0, HBM, h[:4], None, 0.0) == 4
    assert ix.store(1, DRAM, h[:6], None, 0.0) == 6
    assert ix.store(2, DISK, h[:2], None, 0.0) == 2
    res = ix.match(h)
    assert counts(res, 0) == (4, 0, 0, 4)
    assert counts(res, 1) == (0, 6, 0, 0)
    assert counts(res, 2) == (0, 0, 2, 0)
    assert res.get(3) is None
    assert sorted(res.nodes) == [0, 1, 2]
    assert (res.longest, res.holders) == (6, 0b010)
    assert (res.longest_hbm, res.hbm_holders) == (4, 0b001)


def test_remove_changes_match_for_that_node_and_tier_only():
    ix = make_index()
    h = chain(5)
    ix.store(0, HBM, h, None, 0.0)
    ix.store(0, DRAM, h, None, 0.0)
    ix.store(1, HBM, h, None, 0.0)
    assert ix.remove(0, HBM, h[3:], 1.0) == 2
    res = ix.match(h)
    # Node 0: blocks 0-2 in HBM, 3-4 only in DRAM; node 1 untouched.
    assert counts(res, 0) == (3, 2, 0, 3)
    assert counts(res, 1) == (5, 0, 0, 5)
    assert (res.longest, res.holders) == (5, 0b11)
    assert (res.longest_hbm, res.hbm_holders) == (5, 0b10)
    assert ix.remove(0, DRAM, h, 2.0) == 5
    assert counts(ix.match(h), 0) == (3, 0, 0, 3)


def test_store_and_remove_count_only_real_changes():
    ix = make_index()
    h = chain(4)
    assert ix.store(0, HBM, h[:2], None, 0.0) == 2
    assert ix.store(0, HBM, h, None, 0.0) == 2  # two were already held
    assert ix.held_blocks(0, HBM) == 4
    assert ix.remove(0, HBM, [h[0], h[0], 999], 0.0) == 1  # duplicate and unknown ignored
    assert ix.remove(0, DRAM, h, 0.0) == 0  # not held in that tier
    assert ix.held_blocks(0, HBM) == 3
    assert ix.held_blocks(0, DRAM) == 0


def test_held_blocks_counters_per_node_and_tier():
    ix = make_index()
    ix.store(0, HBM, chain(3), None, 0.0)
    ix.store(0, DRAM, chain(5), None, 0.0)
    ix.store(1, HBM, chain(2, 500), None, 0.0)
    ix.remove(0, DRAM, chain(2), 0.0)
    assert {(n, t): ix.held_blocks(n, t) for n in (0, 1) for t in TIERS} == {
        (0, HBM): 3, (0, DRAM): 3, (0, DISK): 0, (1, HBM): 2, (1, DRAM): 0, (1, DISK): 0}
    assert ix.node_blocks(0, DRAM) == set(chain(5)[2:])
    assert ix.node_blocks(1, HBM) == set(chain(2, 500))


def test_best_tier_per_block_when_held_in_several_tiers():
    ix = make_index()
    h = chain(6)
    ix.store(0, DISK, h, None, 0.0)  # everything on disk
    ix.store(0, DRAM, h[1:4], None, 0.0)  # blocks 1-3 also in DRAM
    ix.store(0, HBM, [h[0], h[2]], None, 0.0)  # blocks 0 and 2 also in HBM
    # Best tiers: b0 HBM, b1 DRAM, b2 HBM, b3 DRAM, b4 DISK, b5 DISK.
    assert counts(ix.match(h), 0) == (2, 2, 2, 1)


def test_gap_in_a_nodes_chain_ends_its_prefix():
    ix = make_index()
    h = chain(6)
    ix.store(0, HBM, h[:2] + h[3:], None, 0.0)  # block 2 missing
    ix.store(1, DRAM, h[2:3], None, 0.0)  # another node's block does not bridge the gap
    res = ix.match(h)
    assert counts(res, 0) == (2, 0, 0, 2)
    assert res.get(1) is None  # node 1 holds no block 0
    assert (res.longest, res.holders) == (2, 0b01)


def test_hbm_prefix_ends_at_first_non_hbm_block_but_prefix_goes_on():
    ix = make_index()
    h = chain(5)
    ix.store(0, HBM, h, None, 0.0)
    ix.store(1, HBM, h[:2] + h[3:], None, 0.0)
    ix.store(1, DRAM, h[2:3], None, 0.0)
    res = ix.match(h)
    assert counts(res, 1) == (4, 1, 0, 2)
    assert (res.longest, res.holders) == (5, 0b11)  # both hold a usable 5-block prefix
    assert (res.longest_hbm, res.hbm_holders) == (5, 0b01)


def test_nodes_with_identical_holdings_get_identical_shapes():
    ix = make_index()
    h = chain(4)
    for n in range(4):
        ix.store(n, HBM, h[:2], None, 0.0)
    ix.store(3, HBM, h[2:], None, 0.0)
    res = ix.match(h)
    assert sorted(res.nodes) == [0, 1, 2, 3]
    assert all(nm.node == n for n, nm in res.nodes.items())
    assert res.get(0).shape == res.get(1).shape == res.get(2).shape != res.get(3).shape
    assert counts(res, 0) == (2, 0, 0, 2) and counts(res, 3) == (4, 0, 0, 4)
    assert (res.longest, res.holders, res.longest_hbm, res.hbm_holders) == (4, 0b1000, 4, 0b1000)


def test_pull_source_is_the_longest_held_prefix_never_a_pending_one():
    ix = make_index()
    p = chain(8)
    assert ix.match(p).source is None
    ix.add_pending(1, p)  # 8 blocks promised on node 1: not there yet
    ix.store(2, Tier.DISK, p[:5], None, 0.0)
    ix.store(3, Tier.DRAM, p[:5], None, 0.0)
    ix.store(3, Tier.HBM, p[:2], None, 0.0)
    ix.store(4, Tier.HBM, p[:2], None, 0.0)
    ix.store(4, Tier.DISK, p[2:5], None, 0.0)
    res = ix.match(p)
    assert res.longest == 8 and res.holders == 1 << 1  # the pending node is the longest holder
    assert res.source.node == 3  # 5 blocks like nodes 2 and 4, 2 of them in HBM like 4: lowest id
    ix.store(1, Tier.HBM, p, None, 0.0)  # the promise is kept: node 1 now holds all 8
    assert ix.match(p).source.node == 1
    ix.clear_node(1, 0.0)
    ix.clear_node(3, 0.0)
    assert ix.match(p).source.node == 4 and ix.match(p[:1]).source.node == 4


def test_ties_for_longest_list_every_holder():
    ix = make_index()
    h = chain(3)
    ix.store(1, HBM, h, None, 0.0)
    ix.store(3, DRAM, h, None, 0.0)
    ix.store(5, HBM, h, None, 0.0)
    res = ix.match(h)
    assert (res.longest, res.holders) == (3, 0b101010)
    assert (res.longest_hbm, res.hbm_holders) == (3, 0b100010)
    assert list(iter_bits(res.holders)) == [1, 3, 5]


def test_clear_node_drops_one_node_in_every_or_one_tier():
    ix = make_index()
    h = chain(4)
    for t in TIERS:
        ix.store(0, t, h, None, 0.0)
    ix.store(1, HBM, h, None, 0.0)
    assert ix.clear_node(0, 1.0, DRAM) == 4
    assert ix.node_blocks(0, DRAM) == set() and ix.node_blocks(0, HBM) == set(h)
    assert ix.held_blocks(0, DRAM) == 0 and ix.held_blocks(0, HBM) == 4
    assert ix.clear_node(0, 1.0) == 8  # HBM + disk copies
    assert ix.match(h).get(0) is None
    assert counts(ix.match(h), 1) == (4, 0, 0, 4)
    assert [ix.held_blocks(0, t) for t in TIERS] == [0, 0, 0]
    assert ix.held_blocks(1, HBM) == 4


# ------------------------------------------------------------------ randomized cross-check
PENDING = "pending"  # the router's own promise: HBM soon (see PrefixIndex.add_pending)
RANK = {HBM: 0, PENDING: 1, DRAM: 2, DISK: 3}  # best copy first


def reference_match(held: dict, hashes: list[int], n_nodes: int) -> dict:
    """Per node, loop over blocks: best copy per block until the first block it lacks;
    (hbm, dram, disk, pending, leading blocks all in HBM or pending)."""
    out = {}
    for n in range(n_nodes):
        per = {HBM: 0, PENDING: 0, DRAM: 0, DISK: 0}
        hbm_prefix, k = None, 0
        for i, h in enumerate(hashes):
            kinds = [t for t in (HBM, PENDING, DRAM, DISK) if h in held[n, t]]
            if not kinds:
                break
            per[min(kinds, key=RANK.__getitem__)] += 1
            if hbm_prefix is None and HBM not in kinds and PENDING not in kinds:
                hbm_prefix = i
            k += 1
        if k:
            out[n] = (per[HBM], per[DRAM], per[DISK], per[PENDING], k if hbm_prefix is None else hbm_prefix)
    return out


@pytest.mark.parametrize("seed", range(300))
def test_match_equals_per_node_reference(seed):
    rng = random.Random(seed)
    n_nodes = 8
    ix = make_index()
    chains = [[rng.randrange(1, 2**63) for _ in range(rng.randint(1, 12))] for _ in range(3)]
    for _ in range(3):  # branches sharing a prefix with an earlier chain
        base = rng.choice(chains)
        chains.append(base[: rng.randint(0, len(base))] + [rng.randrange(1, 2**63) for _ in range(rng.randint(1, 6))])
    blocks = sorted({h for c in chains for h in c})
    density = rng.choice([0.2, 0.5, 0.8, 0.95])
    with_pending = rng.random() < 0.5
    held = {(n, t): set() for n in range(n_nodes) for t in (*TIERS, PENDING)}
    for n in range(n_nodes):
        if with_pending:  # promised first; a later HBM store fulfils the promise
            hs = [h for h in blocks if rng.random() < density / 2]
            ix.add_pending(n, hs)
            held[n, PENDING].update(hs)
        for t in TIERS:
            hs = [h for h in blocks if rng.random() < density]
            ix.store(n, t, hs, None, 0.0)
            held[n, t].update(hs)
            if t is HBM:
                held[n, PENDING].difference_update(hs)
        if rng.random() < 0.3:  # and take some away again
            t = rng.choice(TIERS)
            gone = [h for h in blocks if rng.random() < 0.5]
            ix.remove(n, t, gone, 0.0)
            held[n, t].difference_update(gone)
    for c in chains:
        query = c + [rng.randrange(1, 2**63)] if rng.random() < 0.3 else c
        res = ix.match(query)
        ref = reference_match(held, query, n_nodes)
        got = {n: (g.hbm, g.dram, g.disk, g.pending, g.hbm_prefix) for n, g in res.nodes.items()}
        assert got == ref
        assert all(nm.node == n for n, nm in res.nodes.items())
        longest = max((sum(v[:4]) for v in ref.values()), default=0)
        longest_hbm = max((v[4] for v in ref.values()), default=0)
        assert res.longest == longest
        assert res.holders == sum(1 << n for n, v in ref.items() if longest and sum(v[:4]) == longest)
        assert res.longest_hbm == longest_hbm
        assert res.hbm_holders == sum(1 << n for n, v in ref.items() if longest_hbm and v[4] == longest_hbm)
        # the pull source: nothing pending, most blocks held, then most in HBM, lowest id
        sources = sorted((-(v[0] + v[1] + v[2]), -v[0], n) for n, v in ref.items() if not v[3] and sum(v[:3]))
        assert (res.source.node if res.source else None) == (sources[0][2] if sources else None)
        assert res.source is None or res.source is res.nodes[res.source.node]
        shapes: dict = {}
        for n in sorted(ref):
            shapes.setdefault((ref[n][0], ref[n][1], ref[n][2], ref[n][3], ref[n][4]), []).append(n)
        assert res.shapes == shapes
    for n in range(n_nodes):
        for t in TIERS:
            assert ix.held_blocks(n, t) == len(held[n, t])
            assert ix.node_blocks(n, t) == held[n, t]


def match_tuple(res):
    return ({n: (g.hbm, g.dram, g.disk, g.pending, g.hbm_prefix) for n, g in res.nodes.items()},
            res.longest, res.holders, res.longest_hbm, res.hbm_holders, res.n_blocks)


@pytest.mark.parametrize("seed", range(60))
def test_lookup_equals_record_access_then_match(seed):
    rng = random.Random(seed)
    a, b = make_index(window_s=5.0), make_index(window_s=5.0)
    trunk = [rng.randrange(1, 2**63) for _ in range(16)]
    t = 0.0
    for step in range(40):
        t += rng.expovariate(4.0)
        op = rng.random()
        hs = trunk[: rng.randint(0, 16)] + [rng.randrange(1, 2**63) for _ in range(rng.randint(0, 3))]
        if op < 0.25:  # residency changes, applied to both
            n, tier = rng.randrange(4), rng.choice(TIERS)
            for ix in (a, b):
                ix.store(n, tier, hs, None, t)
        elif op < 0.35:
            n, tier = rng.randrange(4), rng.choice(TIERS)
            for ix in (a, b):
                ix.remove(n, tier, hs, t)
        elif op < 0.45:
            n = rng.randrange(4)
            for ix in (a, b):
                ix.add_pending(n, hs)
        else:  # a request
            got = a.lookup(hs, t)
            b.record_access(hs, t)
            want = b.match(hs)
            assert match_tuple(got) == match_tuple(want)
            assert [e is a.entry(h) for e, h in zip(got.entries, hs)] == [True] * len(hs)
        for h in trunk:
            if h in a and h in b:  # (expiry may run on a different schedule, see below)
                assert a.requests_in_window(h, t) == b.requests_in_window(h, t)
    # Expiry may run on a different schedule, but what is left in the end is the same.
    a.expire_all(t + 3 * a.window_s)
    b.expire_all(t + 3 * b.window_s)
    assert len(a) == len(b)
    assert [h in a for h in trunk] == [h in b for h in trunk]


def test_lookup_keeps_expiry_exact():
    ix = make_index(window_s=10.0)
    x, a, d = 1, 2, 3
    ix.store(0, HBM, [x], None, 0.0)
    ix.lookup([x, a], 0.0)
    ix.lookup([x, a], 8.0)  # a requested again at t=8
    ix.lookup([d], 9.0)  # d idle since t=9
    ix.expire_all(10.5)
    assert a in ix and d in ix
    ix.expire_all(18.0)  # a: no residency, no demand since t=8: a whole window
    assert a not in ix
    assert d in ix


def test_record_access_keeps_expiry_exact():
    ix = make_index(window_s=10.0)
    x, a, d = 1, 2, 3
    ix.store(0, HBM, [x], None, 0.0)
    ix.record_access([x, a], 0.0)
    ix.record_access([x, a], 8.0)
    ix.record_access([d], 9.0)
    ix.expire_all(10.5)
    ix.expire_all(18.0)
    assert a not in ix and d in ix


# ------------------------------------------------------------------ pending (dispatched, not yet stored)
def test_pending_blocks_count_as_an_in_place_prefix_until_stored():
    ix = make_index()
    h = chain(4)
    ix.store(0, HBM, h[:1], None, 0.0)
    ix.add_pending(0, h)  # a request dispatched to node 0 will compute the rest
    res = ix.match(h)
    assert counts(res, 0) == (1, 0, 0, 4)
    assert res.get(0).pending == 3 and res.get(0).blocks == 4
    assert (res.longest, res.holders, res.longest_hbm, res.hbm_holders) == (4, 0b1, 4, 0b1)
    assert ix.held_blocks(0, HBM) == 1 and ix.node_blocks(0, HBM) == {h[0]}  # not residency
    ix.store(0, HBM, h[1:3], None, 1.0)  # two of them arrive
    assert ix.match(h).get(0).pending == 1 and ix.match(h).get(0).hbm == 3


def test_an_hbm_copy_beats_a_pending_one_and_pending_beats_dram():
    ix = make_index()
    h = chain(3)
    ix.store(0, DRAM, h, None, 0.0)
    ix.add_pending(0, h[1:])
    ix.store(0, HBM, h[2:], None, 0.0)
    # b0: DRAM only; b1: pending over DRAM; b2: HBM (its promise is fulfilled).
    nm = ix.match(h).get(0)
    assert (nm.hbm, nm.pending, nm.dram, nm.disk, nm.hbm_prefix) == (1, 1, 1, 0, 0)


def test_clear_pending_drops_the_promise_and_lets_the_entry_expire():
    ix = make_index(window_s=10.0)
    h = chain(2)
    ix.add_pending(1, h)
    ix.expire_all(100.0)
    assert all(x in ix for x in h)  # a pending entry is kept
    ix.clear_pending(1, h, 100.0)
    assert ix.match(h).get(1) is None
    ix.expire_all(109.0)
    assert all(x in ix for x in h)
    ix.expire_all(110.0)
    assert len(ix) == 0


def test_clear_node_drops_pending_only_when_clearing_every_tier():
    ix = make_index()
    h = chain(2)
    ix.add_pending(0, h)
    ix.clear_node(0, 0.0, DRAM)
    assert ix.match(h).get(0).pending == 2
    ix.clear_node(0, 0.0)
    assert ix.match(h).get(0) is None


# ------------------------------------------------------------------ demand and depth
def test_demand_window_counts_and_decays():
    ix = make_index(window_s=10.0)
    h = chain(2)
    ix.record_access(h, 1.0)
    ix.record_access(h[:1], 2.0)
    assert ix.requests_in_window(h[0], 3.0) == 2
    assert ix.requests_in_window(h[1], 3.0) == 1
    assert ix.demand(h[0], 3.0) == 2.0
    # Next bucket: the previous bucket's count is still in the window, weighted down linearly.
    assert ix.requests_in_window(h[0], 12.0) == 2
    assert ix.demand(h[0], 12.0) == pytest.approx(2 * 0.8)
    ix.record_access(h[:1], 12.0)
    assert ix.requests_in_window(h[0], 12.0) == 3
    assert ix.demand(h[0], 12.0) == pytest.approx(1 + 2 * 0.8)
    assert ix.requests_in_window(h[1], 25.0) == 0 and ix.demand(h[1], 25.0) == 0.0
    assert ix.demand(12345, 0.0) == 0.0


def test_shared_depth_counts_blocks_requested_at_least_twice():
    ix = make_index()
    a = chain(6)
    ix.record_access(a, 0.0)
    assert ix.shared_depth(a, 0.0) == 0
    ix.record_access(a[:4] + [900, 901], 0.5)
    assert ix.shared_depth(a, 0.5) == 4
    assert ix.shared_depth(a, 0.5, min_requests=1) == 6
    assert ix.shared_depth(a, 0.5, min_requests=3) == 0
    assert ix.shared_depth([], 0.5) == 0


def linear_depth(ix: PrefixIndex, hashes, now, k):
    d = 0
    while d < len(hashes) and ix.requests_in_window(hashes[d], now) >= k:
        d += 1
    return d


@pytest.mark.parametrize("seed", range(40))
def test_shared_depth_equals_linear_scan(seed):
    rng = random.Random(seed)
    ix = make_index(window_s=5.0)
    trunk = [rng.randrange(1, 2**63) for _ in range(20)]
    t = 0.0
    for _ in range(rng.randint(1, 30)):
        t += rng.expovariate(2.0)
        k = rng.randint(0, 20)
        ix.record_access(trunk[:k] + [rng.randrange(1, 2**63) for _ in range(rng.randint(0, 3))], t)
        probe = trunk[: rng.randint(0, 20)] + [rng.randrange(1, 2**63)] * rng.randint(0, 1)
        for m in (1, 2, 3):
            assert ix.shared_depth(probe, t, m) == linear_depth(ix, probe, t, m)


# ------------------------------------------------------------------ pins and expiry
def test_unpin_below_zero_raises_and_changes_nothing():
    ix = make_index()
    ix.pin([1, 2], 0.0)
    ix.unpin([1], 0.0)
    with pytest.raises(ValueError, match="not pinned"):
        ix.unpin([2, 1], 0.0)  # block 1 has no pin left
    assert ix.entry(2).pins == 1  # all-or-nothing: block 2 kept its pin
    with pytest.raises(ValueError, match="not pinned"):
        ix.unpin([77], 0.0)  # unknown block


def test_pins_are_counted():
    ix = make_index()
    ix.pin([5], 0.0)
    ix.pin([5], 0.0)
    ix.unpin([5], 0.0)
    assert ix.entry(5).pins == 1
    ix.expire_all(100.0)
    assert 5 in ix


def test_expiry_drops_only_idle_entries_after_a_whole_window():
    ix = make_index(window_s=10.0)
    ix.record_access([1, 2], 0.0)  # requested, never stored
    ix.store(0, HBM, [3], None, 0.0)  # resident
    ix.pin([4], 0.0)  # pinned
    ix.record_access([5], 0.0)
    ix.store(0, DRAM, [6], None, 0.0)
    ix.remove(0, DRAM, [6], 5.0)  # idle only since t=5
    ix.record_access([5], 8.0)  # requested again later (calls come in time order)
    ix.expire_all(9.99)
    assert all(h in ix for h in (1, 2, 3, 4, 5, 6))
    ix.expire_all(10.0)  # exactly one window of no demand
    assert 1 not in ix and 2 not in ix
    assert all(h in ix for h in (3, 4, 5, 6))
    ix.expire_all(15.0)
    assert 6 not in ix and 5 in ix
    ix.expire_all(18.0)
    assert 5 not in ix
    assert 3 in ix and 4 in ix
    assert len(ix) == 2
    assert ix.match([3]).holders == 0b1  # expiry never touches residency


def test_expired_entry_comes_back_empty_when_requested_again():
    ix = make_index(window_s=10.0)
    ix.record_access([1], 0.0)
    ix.expire_all(20.0)
    assert 1 not in ix
    ix.record_access([1], 21.0)
    assert ix.requests_in_window(1, 21.0) == 1


def test_unpinned_entry_expires_a_window_after_the_unpin():
    ix = make_index(window_s=10.0)
    ix.pin([4], 0.0)
    ix.unpin([4], 3.0)
    ix.expire_all(12.0)
    assert 4 in ix
    ix.expire_all(13.0)
    assert 4 not in ix


def test_mutations_expire_old_entries_without_expire_all():
    # Expiry is amortized into every mutating call (a batch at a time).
    ix = make_index(window_s=10.0)
    ix.record_access(chain(30), 0.0)
    ix.record_access([9999], 20.0)
    assert len(ix) == 1


def test_len_stays_bounded_over_a_long_stream_of_unique_requests():
    window, rate, blocks = 10.0, 100.0, 4
    ix = make_index(window_s=window)
    rng = random.Random(0)
    peak = 0
    for i in range(20_000):
        now = i / rate  # 200 s of traffic: 20 windows
        ix.record_access([rng.randrange(1, 2**63) for _ in range(blocks)], now)
        peak = max(peak, len(ix))
    per_window = int(window * rate * blocks)  # entries created by one window of requests
    assert peak <= 2 * per_window
    ix.expire_all(now)
    assert len(ix) <= per_window + blocks  # only the last window's requests are left


def test_clear_node_makes_entries_expirable():
    ix = make_index(window_s=10.0)
    ix.store(0, HBM, [1, 2], None, 0.0)
    ix.clear_node(0, 1.0)
    ix.expire_all(10.5)
    assert 1 in ix
    ix.expire_all(11.0)
    assert 1 not in ix and 2 not in ix and len(ix) == 0


def test_clear_node_does_not_extend_the_life_of_unrelated_idle_entries():
    ix = make_index(window_s=10.0)
    ix.record_access([1], 0.0)  # idle since t=0, no demand afterwards
    ix.store(0, HBM, [2], None, 0.0)
    ix.clear_node(0, 5.0)
    ix.expire_all(10.0)  # block 1 has had no residency and no demand for a whole window
    assert 1 not in ix
    assert 2 in ix  # block 2 has been idle only since t=5


def test_bad_window_raises():
    with pytest.raises(ValueError, match="window_s"):
        PrefixIndex(0)
