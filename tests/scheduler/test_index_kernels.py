"""The native index kernels (C) against the Python reference: same results on random
operation streams, masks wider than 64 bits included, and clear errors at their limits."""

import math
import random

import pytest

from preble_tiered.scheduler import _index_py
from preble_tiered.scheduler.index import KERNEL_ENV, NodeMatch, PrefixIndex, kernel_names
from preble_tiered.types import TIERS, Tier

native = pytest.mark.skipif("native" not in kernel_names(), reason="C extension not built here")


def _native():
    from preble_tiered.scheduler import _index_native

    return _index_native


def snapshot(ix: PrefixIndex) -> dict:
    return {h: (e.parent, e.hbm, e.dram, e.disk, e.pending, e.pins, e.bucket, e.demand_cur, e.demand_prev,
                e.last_access, e.idle_at) for h, e in ix.items()}


def match_tuple(res):
    return ({n: tuple(g) for n, g in res.nodes.items()}, res.longest, res.holders, res.longest_hbm,
            res.hbm_holders, res.n_blocks, None if res.source is None else tuple(res.source), res.shapes)


@native
@pytest.mark.parametrize("n_nodes,seed", [(4, 0), (4, 1), (64, 2), (130, 3), (256, 4), (256, 5)])
def test_native_equals_python_on_random_streams(n_nodes, seed):
    rng = random.Random(seed)
    a = PrefixIndex(5.0, kernel="native")
    b = PrefixIndex(5.0, kernel="python")
    trunks = [[rng.randrange(1, 2**64) for _ in range(24)] for _ in range(3)]
    t = 0.0
    for _ in range(600):
        t += rng.expovariate(20.0)
        trunk = rng.choice(trunks)
        hs = trunk[: rng.randint(0, 24)] + [rng.randrange(1, 2**64) for _ in range(rng.randint(0, 4))]
        node = rng.choice([0, 63, 64, n_nodes - 1, rng.randrange(n_nodes)])
        op = rng.random()
        if op < 0.3:
            tier, parent = rng.choice(TIERS), rng.choice([None, trunk[0]])
            assert a.store(node, tier, hs, parent, t) == b.store(node, tier, hs, parent, t)
        elif op < 0.45:
            tier = rng.choice(TIERS)
            assert a.remove(node, tier, hs, t) == b.remove(node, tier, hs, t)
        elif op < 0.55:
            for ix in (a, b):
                ix.clear_pending(node, hs, t)
        elif op < 0.6:
            assert match_tuple(a.match(hs)) == match_tuple(b.match(hs))
        else:  # a request, dispatched with its pending marks
            ga, gb = a.lookup(hs, t), b.lookup(hs, t)
            assert match_tuple(ga) == match_tuple(gb)
            assert a.shared_depth(hs, t) == b.shared_depth(hs, t)
            a.add_pending_entries(node, ga.entries)
            b.add_pending_entries(node, gb.entries)
        assert len(a) == len(b)
    assert snapshot(a) == snapshot(b)
    for node in (0, 64, n_nodes - 1):
        for tier in TIERS:
            assert a.held_blocks(node, tier) == b.held_blocks(node, tier)
            assert a.node_blocks(node, tier) == b.node_blocks(node, tier)
    a.expire_all(t + 3 * a.window_s)
    b.expire_all(t + 3 * b.window_s)
    assert snapshot(a) == snapshot(b)


@native
def test_native_entry_behaves_like_the_python_one():
    from preble_tiered.scheduler import _index_native

    wide = (1 << 200) | (1 << 64) | 1
    for cls in (_index_native.BlockEntry, _index_py.BlockEntry):
        e = cls(7, hbm=wide, pins=2)
        assert (e.parent, e.hbm, e.dram, e.pending, e.pins, e.bucket) == (7, wide, 0, 0, 2, -1)
        assert e.idle_at == -math.inf and e.kept
        assert e.mask(Tier.HBM) == wide and e.mask(Tier.DISK) == 0
        assert [e.holds(Tier.HBM, n) for n in (0, 1, 64, 200, 255, 300)] == [True, False, True, True, False, False]
        assert not e.holds(Tier.DRAM, 0)
        e.hbm, e.pins = 0, 0
        assert not e.kept
        e.disk |= 1 << 255
        assert e.kept and e.disk == 1 << 255
        assert cls(None).parent is None


@native
def test_native_kernel_refuses_what_it_cannot_hold():
    from preble_tiered.scheduler import _index_native

    e = _index_native.BlockEntry(None)
    with pytest.raises(ValueError, match="256"):
        e.hbm = 1 << 256
    with pytest.raises(ValueError, match="negative"):
        e.dram = -1
    with pytest.raises(TypeError):
        e.disk = "1"
    ix = PrefixIndex(10.0, kernel="native")
    with pytest.raises(ValueError, match="node 256 out of range"):
        ix.store(256, Tier.HBM, [1, 2], None, 0.0)
    assert len(ix) == 0 and ix.held_blocks(256, Tier.HBM) == 0  # nothing half-done
    with pytest.raises(ValueError, match="native index holds 256 nodes"):
        PrefixIndex(10.0, kernel="native", n_nodes=300)
    # A mixed index is refused rather than misread.
    with pytest.raises(TypeError, match="only the native BlockEntry"):
        ix._entries[5] = _index_py.BlockEntry(None, hbm=1)
    assert 5 not in ix and len(ix) == 0
    with pytest.raises(TypeError, match="entries must be an EntryMap"):
        _native().walk({}, [].append, [1], None, 0, NodeMatch)


def test_kernel_choice(monkeypatch):
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert PrefixIndex(10.0, n_nodes=300).kernel == "python"  # wider than the native masks
    assert PrefixIndex(10.0).kernel == kernel_names()[0]
    monkeypatch.setenv(KERNEL_ENV, "python")
    assert PrefixIndex(10.0).kernel == "python"
    with pytest.raises(ValueError, match="unknown index kernel"):
        PrefixIndex(10.0, kernel="rust")


@native
def test_native_walk_survives_callbacks_that_drop_entries():
    """The idle queue's append is the index's own, but the kernel must not trust it: an
    entry it just made stays alive (and counted) even if the dict loses it meanwhile."""
    from preble_tiered.scheduler import _index_native as N
    from preble_tiered.scheduler.index import NodeMatch

    d = N.EntryMap()
    out = N.walk(d, lambda h: d.clear(), [1, 2, 3], 1.0, 0, NodeMatch)
    walked = out[5]
    assert len(walked) == 3 and all(e.demand_cur == 1 for e in walked)
    assert [e.parent for e in walked] == [None, 1, 2]
    with pytest.raises(TypeError, match="tuple type"):
        N.walk(N.EntryMap(), [].append, [1], None, 0, dict)
    with pytest.raises(TypeError, match="block hashes must be ints"):
        N.walk(N.EntryMap(), [].append, [1, 2.0], None, 0, NodeMatch)


@native
def test_native_entry_setters_validate_before_changing():
    from preble_tiered.scheduler import _index_native as N

    class Sneaky(int):
        def to_bytes(self, *a, **k):
            return b""

    e = N.BlockEntry(None, hbm=5)
    with pytest.raises(ValueError):
        e.hbm = 1 << 300
    assert e.hbm == 5  # a refused assignment keeps what was there
    assert N.BlockEntry(None, hbm=Sneaky(1 << 100)).hbm == 1 << 100  # int.to_bytes, not the override
    with pytest.raises(TypeError, match="parent"):
        N.BlockEntry([1])
    with pytest.raises(AttributeError):
        e.parent = 3  # read-only: entries never form reference cycles


@pytest.mark.parametrize("kernel", kernel_names())
def test_a_bad_hash_leaves_no_half_done_mutation(kernel):
    ix = PrefixIndex(10.0, kernel=kernel)
    ix.store(0, Tier.HBM, [1, 2], None, 0.0)
    for call in (lambda: ix.store(0, Tier.HBM, [3, 4, [5]], 2, 0.0),
                 lambda: ix.remove(0, Tier.HBM, [1, "2"], 0.0),
                 lambda: ix.clear_pending(0, [1, None], 0.0)):
        with pytest.raises(TypeError, match="ints"):
            call()
    assert sorted(h for h, _ in ix.items()) == [1, 2] and ix.held_blocks(0, Tier.HBM) == 2
    assert ix.remove(0, Tier.HBM, [1, 2], 1.0) == 2 and ix.held_blocks(0, Tier.HBM) == 0


@native
def test_native_groups_many_distinct_shapes_like_python():
    """256 nodes in (almost) all different layouts: the shape table's probing and
    collisions, against the Python grouping."""
    rng = random.Random(9)
    a, b = PrefixIndex(5.0, kernel="native"), PrefixIndex(5.0, kernel="python")
    hs = [rng.randrange(1, 2**64) for _ in range(64)]
    for node in range(256):
        k = 1 + node % 64
        tier = rng.choice([Tier.DRAM, Tier.DISK])
        for ix in (a, b):
            ix.store(node, Tier.HBM, hs[: 1 + (node // 64) * 7 % k], None, 0.0)
        a.store(node, tier, hs[:k], None, 0.0)
        b.store(node, tier, hs[:k], None, 0.0)
    ra, rb = a.match(hs), b.match(hs)
    assert match_tuple(ra) == match_tuple(rb)
    assert len(ra.shapes) > 100 and sum(map(len, ra.shapes.values())) == 256
    for shape, nodes in ra.shapes.items():
        assert nodes == sorted(nodes) and all(ra.nodes[n][1:] == shape for n in nodes)


@native
@pytest.mark.parametrize("seed,key_range", [(0, 1 << 64), (1, 300), (2, 5000)])
def test_entry_map_behaves_as_a_dict(seed, key_range):
    """The native table against a dict on random inserts, replacements, deletes, reads and
    iteration: small key ranges make long probe clusters, so backward-shift deletion and
    the grow/shrink rehashes are exercised."""
    N = _native()
    rng = random.Random(seed)
    m, d = N.EntryMap(), {}
    for step in range(30000):
        k = rng.randrange(key_range)
        op = rng.random()
        if op < 0.45 or (op < 0.7 and step < 10000):
            e = N.BlockEntry(None, pins=step)
            m[k] = e
            d[k] = e
        elif op < 0.9:
            if k in d:
                del m[k]
                del d[k]
            else:
                with pytest.raises(KeyError):
                    del m[k]
        else:
            assert m.get(k) is d.get(k) and (k in m) == (k in d)
        if step % 5000 == 4999:
            assert len(m) == len(d) and dict(m.items()) == d
            assert sorted(m) == sorted(d) and sorted(m.keys()) == sorted(d)
            assert sorted(map(id, m.values())) == sorted(map(id, d.values()))
            assert all(m[k] is v for k, v in d.items())
    grown = m.table_bytes()
    for k in list(d):
        del m[k]
    assert len(m) == 0 and list(m.items()) == [] and m.table_bytes() < grown  # memory follows size


@native
def test_entry_map_refuses_bad_keys_and_changes_during_iteration():
    N = _native()
    m = N.EntryMap()
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
            m[bad] = N.BlockEntry(None)
        assert bad not in m and m.get(bad, 7) == 7
    for bad in ("a", True):
        with pytest.raises(TypeError, match="must be ints"):
            m[bad] = N.BlockEntry(None)
    assert "a" not in m and len(m) == 0
    m[(1 << 64) - 1] = N.BlockEntry(None)  # the top of the range is a hash like any other
    assert ((1 << 64) - 1) in m and next(iter(m)) == (1 << 64) - 1
    it = iter(m.items())
    m[3] = N.BlockEntry(3)
    with pytest.raises(RuntimeError, match="changed during iteration"):
        next(it)
    m.clear()
    assert len(m) == 0 and m.get(3) is None


@pytest.mark.parametrize("kernel", kernel_names())
def test_hashes_outside_64_bits_are_refused_by_both_kernels(kernel):
    ix = PrefixIndex(10.0, kernel=kernel)
    ix.store(0, Tier.HBM, [1, 2], None, 0.0)
    for call in (lambda: ix.store(0, Tier.HBM, [3, -4], 2, 0.0),
                 lambda: ix.remove(0, Tier.HBM, [1, 1 << 64], 0.0)):
        with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
            call()
    assert sorted(h for h, _ in ix.items()) == [1, 2] and ix.held_blocks(0, Tier.HBM) == 2


@native
def test_walk_callbacks_get_the_hash_even_if_the_callers_list_changes():
    from preble_tiered.scheduler import _index_native as N

    m = N.EntryMap()
    hashes = [10**12 + i for i in range(8)]
    expected = list(hashes)
    seen = []

    def idle_append(h):
        seen.append(h)
        if len(seen) == 1:  # the caller's list moves (and its items die) mid-walk
            hashes.clear()
            hashes.extend(10**13 + j for j in range(10000))

    N.walk(m, idle_append, hashes, 1.0, 0, NodeMatch)
    assert seen == expected and sorted(m) == expected


@native
def test_entry_map_replacing_a_value_keeps_iterators_valid():
    N = _native()
    m = N.EntryMap()
    for k in range(100):
        m[k] = N.BlockEntry(None)
    it = iter(m.items())
    first = next(it)
    e = N.BlockEntry(5, pins=3)
    m[first[0]] = e  # a new value for an existing key: no rehash, as for a dict
    assert m[first[0]] is e and len(list(it)) == 99 and len(m) == 100


@pytest.mark.parametrize("kernel", kernel_names())
def test_both_kernels_refuse_bad_hashes_before_any_change(kernel):
    ix = PrefixIndex(10.0, kernel=kernel)
    for bad in (-1, 1 << 64):
        for call in (lambda: ix.lookup([1, 2, bad], 1.0), lambda: ix.match([bad]),
                     lambda: ix.record_access([3, bad], 1.0), lambda: ix.pin([4, 5, bad], 1.0),
                     lambda: ix.add_pending(0, [6, bad]), lambda: ix.shared_depth([7, bad], 1.0)):
            with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
                call()
    assert len(ix) == 0  # nothing created, nothing pinned


@pytest.mark.parametrize("seed", [0, 1])
def test_hbm_scan_is_the_same_in_both_kernels_and_matches_per_entry_reads(seed):
    """The eviction price's LRU walk: keys passed over (unknown, or not in the node's HBM)
    and (size, requests beyond the first) of those held, stopping after `limit` held."""
    rng = random.Random(seed)
    ixs = [PrefixIndex(10.0, kernel=k) for k in kernel_names()]
    keys = [rng.randrange(1, 2**64) for _ in range(300)]
    for k in keys[:250]:
        node, tier = rng.randrange(3), rng.choice([Tier.HBM, Tier.HBM, Tier.DRAM])
        t, asks = rng.choice([0.0, 12.0, 25.0]), rng.randrange(4)
        for ix in ixs:
            ix.store(node, tier, [k], None, t)
            for _ in range(asks):
                ix.record_access([k], t)
    items = [(k, rng.randrange(1, 5000)) for k in keys]
    rng.shuffle(items)
    for node in range(3):
        for limit in (0, 5, 1000):
            results = [ix.hbm_scan(iter(items), node, 25.0, limit) for ix in ixs]
            assert all(r == results[0] for r in results)
            stale, seen = results[0]
            ix = ixs[0]
            want_stale, want_seen = [], []
            for k, size in items:  # the same, one entry at a time
                if len(want_seen) >= limit:
                    break
                e = ix.entry(k)
                if e is None or not e.holds(Tier.HBM, node):
                    want_stale.append(k)
                else:
                    want_seen.append((size, ix.requests_in_window(k, 25.0) - 1))
            assert (stale, seen) == (want_stale, want_seen)
    assert any(h > 0 for _, h in results[0][1]) and results[0][0]  # both branches exercised
    with pytest.raises(TypeError, match="pairs|unpack"):
        ixs[0].hbm_scan([5], 0, 25.0, 3)
