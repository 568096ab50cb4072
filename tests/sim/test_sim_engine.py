"""SimEngine: HBM prefix cache with LRU eviction, demotion to DRAM/disk with residency
events, reference protection, the node's admission rule, loads, pulls and chunked prefill."""

import pytest

from preble_tiered.sim.engine import SimEngine
from preble_tiered.sim.engine_types import SimEngineConfig, SimRequest, State
from preble_tiered.events import BlockRemoved, BlockStored
from preble_tiered.scheduler.cost_model import cost_preset
from preble_tiered.scheduler.types import Plan
from preble_tiered.types import Tier

BS = 4
COST = cost_preset("mistral-7b-a6000")
HBM, DRAM, DISK = Tier.HBM, Tier.DRAM, Tier.DISK


def make_engine(hbm_blocks=8, dram_blocks=0, disk_blocks=0, node=0, peer=None, max_batch_tokens=4096):
    cfg = SimEngineConfig(hbm_tokens=hbm_blocks * BS, dram_tokens=dram_blocks * BS, disk_tokens=disk_blocks * BS,
                          block_size=BS, max_batch_tokens=max_batch_tokens)
    return SimEngine(node, cfg, COST, peer)


def make_req(rid, hashes, prompt_tokens=None, out=1, plan=None):
    """A request whose prompt is exactly its blocks unless `prompt_tokens` says otherwise."""
    return SimRequest(rid, list(hashes), prompt_tokens if prompt_tokens is not None else len(hashes) * BS,
                      out, plan or Plan(0, ()))


def run(eng, now=0.0):
    """Step `eng` until it has no work; returns the time it went idle."""
    while eng.has_work():
        dur, work = eng.plan_step(now)
        if not work:
            now = eng.next_ready()
            assert now is not None, "engine has work but nothing can ever run"
            continue
        now += dur
        eng.finish_step(work, now, dur)
    return now


def serve(eng, r, now=0.0):
    eng.submit(r)
    return run(eng, now)


def hbm_removed(events):
    return [h for ev in events if isinstance(ev, BlockRemoved) and ev.tier is HBM for h in ev.hashes]


# ------------------------------------------------------------------ basics and events
def test_computed_blocks_are_stored_and_reported():
    eng = make_engine()
    r = make_req("a", [1, 2, 3], prompt_tokens=14, out=3)
    serve(eng, r)
    assert r.state is State.DONE and r.generated == 3
    assert r.first_token_at is not None and r.finished_at > r.first_token_at
    assert eng.take_events() == [BlockStored(0, HBM, (1, 2, 3), None)]
    assert eng.take_events() == []  # drained once
    assert set(eng.hbm) == {1, 2, 3} and all(v == 0 for v in eng.hbm.values())
    assert list(eng.lru) == [3, 2, 1]  # unreferenced, freed tail first: 3 is evicted first
    assert eng.reserved == 0 and eng.used_blocks() == 3
    assert (r.cached, r.recomputed, r.bytes_moved) == ({"hbm": 0, "dram": 0, "disk": 0, "remote": 0}, 14, 0)


def test_a_cache_hit_reuses_blocks_but_computes_the_last_token():
    eng = make_engine()
    serve(eng, make_req("a", [1, 2, 3]))
    eng.take_events()
    r = make_req("b", [1, 2, 3])  # the same 12-token prompt
    serve(eng, r, 10.0)
    # Blocks 1 and 2 in place; block 3 would cover the last token, which is always computed.
    assert r.cached["hbm"] == 8 and r.recomputed == 4
    assert eng.take_events() == []  # nothing new was stored


def test_chunked_prefill_splits_the_prompt_by_the_step_budget():
    eng = make_engine(max_batch_tokens=8)
    r = make_req("a", [1, 2, 3, 4, 5], out=1)
    eng.submit(r)
    steps = []
    now = 0.0
    while eng.has_work():
        dur, work = eng.plan_step(now)
        steps.append(([t for _, t in work], dur))
        now += dur
        eng.finish_step(work, now, dur)
    assert [w for w, _ in steps] == [[8], [8], [4]]
    assert [d for _, d in steps] == pytest.approx([COST.prefill_s(8, 8), COST.prefill_s(8, 16), COST.prefill_s(4, 20)])
    assert r.first_token_at == pytest.approx(sum(d for _, d in steps))


def test_decode_steps_use_the_roofline():
    eng = make_engine()
    r = make_req("a", [1, 2], out=3)
    eng.submit(r)
    dur, work = eng.plan_step(0.0)
    eng.finish_step(work, dur, dur)
    dur2, work2 = eng.plan_step(dur)
    assert work2 == [(r, 1)]
    assert dur2 == pytest.approx(COST.decode_step_s(8 + 1, 1))  # context: prompt + 1 generated


# ------------------------------------------------------------------ LRU eviction
def test_lru_evicts_least_recently_used_unreferenced_blocks():
    eng = make_engine(hbm_blocks=6)
    for i, h in enumerate([10, 20, 30]):  # one-block requests, one at a time
        serve(eng, make_req(f"r{h}", [h]), 10.0 * i)
    serve(eng, make_req("hit", [10, 99], out=1), 40.0)  # uses block 10 again: now most recent
    eng.take_events()
    assert list(eng.lru) == [20, 30, 99, 10]
    # 1 prompt block + 3 output blocks on top of 4 cached: 2 must go.
    serve(eng, make_req("new", [50], out=12), 50.0)
    assert hbm_removed(eng.take_events()) == [20, 30]
    assert set(eng.hbm) == {10, 99, 50}
    assert eng.stats["evicted_blocks"] == 2


def test_eviction_takes_an_older_request_before_a_newer_one():
    eng = make_engine(hbm_blocks=8)
    a, b = [1, 2, 3], [4, 5, 6]
    serve(eng, make_req("a", a))
    serve(eng, make_req("b", b), 10.0)
    eng.take_events()
    serve(eng, make_req("c", [7, 8, 9]), 20.0)  # 3 + 1 output blocks: 2 must go
    gone = hbm_removed(eng.take_events())
    assert len(gone) == 2 and set(gone) <= set(a)
    assert set(b) <= set(eng.hbm)


def test_eviction_within_one_request_takes_the_tail_first():
    # Blocks of one request are freed tail first (as vLLM does), so what stays cached is
    # still a usable prefix; evicting the head would strand the rest of the chain.
    eng = make_engine(hbm_blocks=6)
    serve(eng, make_req("a", [1, 2, 3, 4]))
    eng.take_events()
    serve(eng, make_req("b", [7, 8]), 10.0)  # 2 + 1 blocks: 1 must go
    assert hbm_removed(eng.take_events()) == [4]
    assert {1, 2, 3} <= set(eng.hbm)  # the surviving part of the chain is still a prefix


def test_referenced_blocks_are_never_evicted_and_a_request_that_does_not_fit_waits():
    eng = make_engine(hbm_blocks=8)
    a = make_req("a", [1, 2, 3], out=20)  # 3 prompt + 5 output blocks: all of HBM
    eng.submit(a)
    dur, work = eng.plan_step(0.0)
    eng.finish_step(work, dur, dur)  # prefilled, now decoding: blocks 1-3 referenced
    assert a.state is State.DECODE and eng.used_blocks() == 8
    b = make_req("b", [40, 41, 42, 43, 44])  # 5 prompt + 1 output blocks
    eng.submit(b)
    now = dur
    while a.state is not State.DONE:
        dur, work = eng.plan_step(now)
        assert b.state is State.QUEUED and len(eng.queue) == 1  # waits: nothing is evictable
        assert {1, 2, 3} <= set(eng.hbm) and all(eng.hbm[h] == 1 for h in (1, 2, 3))
        now += dur
        eng.finish_step(work, now, dur)
    eng.take_events()
    end = run(eng, now)  # a finished: b is admitted, evicting one of a's unreferenced blocks
    assert b.state is State.DONE and b.first_token_at > a.finished_at
    assert len(hbm_removed(eng.take_events())) == 1
    assert eng.reserved == 0 and end == b.finished_at


def test_blocks_shared_by_two_running_requests_stay_referenced_until_both_finish():
    eng = make_engine(hbm_blocks=16)
    serve(eng, make_req("warm", [1, 2]))
    r1 = make_req("r1", [1, 2, 3], out=1)
    r2 = make_req("r2", [1, 2, 4], out=5)
    eng.submit(r1)
    eng.submit(r2)
    now = 20.0
    while r1.state is not State.DONE:
        dur, work = eng.plan_step(now)
        now += dur
        eng.finish_step(work, now, dur)
    assert r2.state is State.DECODE
    assert eng.hbm[1] == 1 and eng.hbm[2] == 1 and 1 not in eng.lru  # still r2's
    assert eng.hbm[3] == 0 and 3 in eng.lru
    run(eng, now)
    assert all(v == 0 for v in eng.hbm.values())
    assert eng.reserved == 0


def test_a_waiting_request_looks_up_the_cache_when_first_scheduled_as_vllm_does():
    """Admitted while a computes their shared prefix, b gets no room in a's last prefill step;
    when vLLM first schedules it a step later, all of a's blocks are cached: b computes only
    its own block."""
    eng = make_engine(hbm_blocks=32, max_batch_tokens=8)
    a = make_req("a", [1, 2, 3, 4])
    eng.submit(a)
    dur, work = eng.plan_step(0.0)  # a computes blocks 1-2 this step, 3-4 the next
    now = dur
    eng.finish_step(work, now, dur)
    b = make_req("b", [1, 2, 3, 4, 5])
    eng.submit(b)
    dur, work = eng.plan_step(now)
    assert [r.request_id for r, _ in work] == ["a"] and b.cached["hbm"] == 8  # blocks 1-2 at admission
    now += dur
    eng.finish_step(work, now, dur)
    dur, work = eng.plan_step(now)  # b's first step (a is done): blocks 3-4 are cached since
    assert dict((r.request_id, n) for r, n in work) == {"b": 4} and b.cached["hbm"] == 16
    now += dur
    eng.finish_step(work, now, dur)
    run(eng, now)
    assert b.recomputed == 4 and eng.reserved == 0 and all(v == 0 for v in eng.hbm.values())


def engine_after_a_first_chunk():
    """An engine of a 12-token step budget after the first step of a 4-block request `a`
    (blocks 1-3 computed, block 4 left): (engine, a, now)."""
    eng = make_engine(hbm_blocks=32, max_batch_tokens=12)
    a = make_req("a", [1, 2, 3, 4])
    eng.submit(a)
    dur, work = eng.plan_step(0.0)
    eng.finish_step(work, dur, dur)
    return eng, a, dur


def test_a_request_shares_the_blocks_an_earlier_request_computes_in_the_same_step():
    """vLLM caches a block when it schedules the step that fills it: b, first scheduled in
    the step where a computes the prefix's last block, shares it and computes only its own,
    and both have their first token at the end of that step."""
    eng, a, now = engine_after_a_first_chunk()
    b = make_req("b", [1, 2, 3, 4, 5], out=2)
    eng.submit(b)
    dur, work = eng.plan_step(now)  # a: block 4; b: blocks 1-3 cached, 4 computed by a now
    assert dict((r.request_id, n) for r, n in work) == {"a": 4, "b": 4}
    now += dur
    res = eng.finish_step(work, now, dur)
    assert {r.request_id for r in res.first_tokens} == {"a", "b"} and a.first_token_at == b.first_token_at
    assert b.recomputed == 4 and b.cached["hbm"] == 16 and eng.hbm[4] == 1  # b's; a finished
    assert eng.take_events() == [BlockStored(0, HBM, (1, 2, 3), None), BlockStored(0, HBM, (4,), 3),
                                 BlockStored(0, HBM, (5,), 4)]  # each block stored once
    run(eng, now)
    assert eng.reserved == 0 and all(v == 0 for v in eng.hbm.values())


def test_a_first_step_hit_stops_before_the_last_prompt_token():
    """The same prompt again, its blocks all cached or computed this step: the last block
    is computed anyway (the engine needs the last token's logits), as at admission."""
    eng, a, now = engine_after_a_first_chunk()
    b = make_req("b", [1, 2, 3, 4])
    eng.submit(b)
    dur, work = eng.plan_step(now)  # a: block 4; b: blocks 1-3, not 4
    assert dict((r.request_id, n) for r, n in work) == {"a": 4, "b": 4} and b.cached["hbm"] == 12
    now += dur
    eng.finish_step(work, now, dur)
    run(eng, now)
    assert b.recomputed == 4 and eng.reserved == 0 and all(v == 0 for v in eng.hbm.values())


def test_at_most_max_running_requests_run_at_once():
    cfg = SimEngineConfig(hbm_tokens=64 * BS, block_size=BS, max_batch_tokens=4096, max_running=2)
    eng = SimEngine(0, cfg, COST)
    reqs = [make_req(f"r{i}", [10 * i + 1], out=3) for i in range(5)]
    for r in reqs:
        eng.submit(r)
    now, peak = 0.0, 0
    while eng.has_work():
        dur, work = eng.plan_step(now)
        peak = max(peak, len(eng.running))
        now += dur
        eng.finish_step(work, now, dur)
    assert peak == 2 and all(r.state is State.DONE for r in reqs)


def test_admission_takes_one_step_budget_of_prompts_and_waits_while_one_is_unscheduled():
    eng = make_engine(hbm_blocks=64, max_batch_tokens=8)
    a, b, c = (make_req(x, [i * 10 + k for k in range(1, 4)], out=2) for i, x in enumerate("abc"))
    for r in (a, b, c):
        eng.submit(r)
    dur, work = eng.plan_step(0.0)
    # a (12 tokens) is always taken; b does not fit what is left of the 8-token budget.
    assert [r.request_id for r in eng.running] == ["a"]
    assert [(r.request_id, n) for r, n in work] == [("a", 8)]
    eng.finish_step(work, dur, dur)
    eng.plan_step(dur)
    assert [r.request_id for r in eng.running] == ["a", "b"]  # a ran a step: the next round
    run(eng, dur)
    assert all(r.state is State.DONE for r in (a, b, c))


def test_nothing_is_admitted_while_a_running_request_has_not_had_a_step():
    eng = make_engine(hbm_blocks=64, max_batch_tokens=4)
    a, b, c = make_req("a", [1, 2]), make_req("b", [5, 6]), make_req("c", [9])
    eng.submit(a)
    eng.plan_step(0.0)  # a runs, taking the whole budget
    eng.submit(b)
    eng.submit(c)
    eng._admit(0.0)
    assert [r.request_id for r in eng.running] == ["a", "b"]  # the first of a round is always taken
    eng._admit(0.0)
    assert [r.request_id for r in eng.running] == ["a", "b"]  # b has not run: vLLM has someone waiting
    assert not b.scheduled and len(eng.queue) == 1


# ------------------------------------------------------------------ tiers
def test_demotion_hbm_to_dram_to_disk_with_events():
    # One-block requests (prompt block + output block) through a 5-block HBM.
    eng = make_engine(hbm_blocks=5, dram_blocks=2, disk_blocks=2)
    for i, h in enumerate([1, 2, 3, 4]):
        serve(eng, make_req(f"r{h}", [h]), 10.0 * i)
    assert eng.take_events() == [BlockStored(0, HBM, (h,), None) for h in (1, 2, 3, 4)]
    serve(eng, make_req("r5", [5]), 50.0)  # evict 1 to DRAM
    assert eng.take_events() == [
        BlockRemoved(0, HBM, (1,)), BlockStored(0, DRAM, (1,)), BlockStored(0, HBM, (5,), None)]
    serve(eng, make_req("r6", [6]), 60.0)
    assert eng.take_events() == [
        BlockRemoved(0, HBM, (2,)), BlockStored(0, DRAM, (2,)), BlockStored(0, HBM, (6,), None)]
    serve(eng, make_req("r7", [7]), 70.0)  # evict 3; DRAM overflows: its LRU (1) goes to disk
    assert eng.take_events() == [
        BlockRemoved(0, HBM, (3,)), BlockStored(0, DRAM, (3,)),
        BlockRemoved(0, DRAM, (1,)), BlockStored(0, DISK, (1,)), BlockStored(0, HBM, (7,), None)]
    serve(eng, make_req("r8", [8]), 80.0)
    eng.take_events()
    serve(eng, make_req("r9", [9]), 90.0)  # disk overflows: 1 is dropped for good
    assert eng.take_events() == [
        BlockRemoved(0, HBM, (5,)), BlockStored(0, DRAM, (5,)),
        BlockRemoved(0, DRAM, (3,)), BlockStored(0, DISK, (3,)), BlockRemoved(0, DISK, (1,)),
        BlockStored(0, HBM, (9,), None)]
    assert set(eng.hbm) == {6, 7, 8, 9} and list(eng.dram.blocks) == [4, 5] and list(eng.disk.blocks) == [2, 3]
    assert eng.tier_of(1) is None and eng.tier_of(2) is DISK and eng.tier_of(4) is DRAM
    assert eng.tier_of(9) is HBM and eng.holds(3) and not eng.holds(1)
    assert eng.stats["demoted_bytes"] == 5 * BS * COST.kv_bytes_per_token
    assert eng.stats["evicted_blocks"] == 5


def test_a_block_already_in_dram_is_not_stored_twice():
    eng = make_engine(hbm_blocks=3, dram_blocks=4)
    serve(eng, make_req("a", [1]))
    serve(eng, make_req("b", [2], out=5), 10.0)  # 1 + 2 blocks: evicts 1 to DRAM
    r = make_req("c", [1, 3], prompt_tokens=9)  # fetches 1 back up; it stays in DRAM
    serve(eng, r, 20.0)
    assert r.cached["dram"] == 4 and 1 in eng.dram.blocks and 1 in eng.hbm
    eng.take_events()
    serve(eng, make_req("d", [4], out=5), 30.0)  # evicts 1 and 3 from HBM
    events = eng.take_events()
    assert {h for e in events if isinstance(e, BlockRemoved) and e.tier is HBM for h in e.hashes} == {1, 3}
    assert [e for e in events if isinstance(e, BlockStored) and e.tier is DRAM] == [BlockStored(0, DRAM, (3,))]
    assert list(eng.dram.blocks)[-2:] in ([1, 3], [3, 1])  # both most recent in DRAM now


def test_a_block_dropped_while_admitting_a_request_is_not_counted_as_fetched():
    eng = make_engine(hbm_blocks=5, dram_blocks=1, disk_blocks=0)
    serve(eng, make_req("a", [1]))
    serve(eng, make_req("b", [2], out=13), 10.0)  # evicts 1 to DRAM (its only slot)
    assert list(eng.dram.blocks) == [1]
    eng.take_events()
    r = make_req("c", [1, 3], prompt_tokens=9, out=9)  # needs 5 blocks: evicts 2 to DRAM
    eng.submit(r)
    eng.plan_step(20.0)
    events = eng.take_events()
    dropped = BlockRemoved(0, DRAM, (1,)) in events and not eng.disk.cap
    assert not (dropped and r.cached["dram"] == 4)


def test_without_tiers_evicted_blocks_are_gone():
    eng = make_engine(hbm_blocks=2)
    serve(eng, make_req("a", [1]))
    eng.take_events()
    serve(eng, make_req("b", [2]), 10.0)
    assert eng.take_events() == [BlockRemoved(0, HBM, (1,)), BlockStored(0, HBM, (2,), None)]
    assert not eng.holds(1)


def test_blocks_found_in_dram_and_disk_are_fetched_up_and_stay_below():
    eng = make_engine(hbm_blocks=8, dram_blocks=8, disk_blocks=8)
    for h in (1, 2):
        eng.dram.blocks[h] = None
    eng.disk.blocks[3] = None
    r = make_req("a", [1, 2, 3, 9], prompt_tokens=17, out=1)
    eng.submit(r)
    assert r.hit_ratio == pytest.approx(12 / 17)  # priority counts lower-tier hits too
    dur, work = eng.plan_step(0.0)
    assert work == [] and r.state is State.LOADING
    # DRAM and disk loads run on their own links, in parallel.
    expect = max(COST.fetch_s(DRAM, 2 * BS), COST.fetch_s(DISK, BS))
    assert r.ready_at == pytest.approx(expect) and eng.next_ready() == r.ready_at
    assert eng.take_events() == [BlockStored(0, HBM, (1, 2, 3), None)]
    assert r.cached == {"hbm": 0, "dram": 8, "disk": 4, "remote": 0}
    assert r.bytes_moved == 12 * COST.kv_bytes_per_token and r.recomputed == 5
    run(eng, 0.0)
    assert r.first_token_at >= r.ready_at
    assert 1 in eng.dram.blocks and 3 in eng.disk.blocks  # copied up, not moved


def test_loads_on_one_link_queue_behind_each_other():
    eng = make_engine(hbm_blocks=32, dram_blocks=32)
    for h in (1, 2, 3, 4):
        eng.dram.blocks[h] = None
    r1 = make_req("a", [1, 2, 50])
    r2 = make_req("b", [3, 4, 60])
    eng.submit(r1)
    eng.submit(r2)
    eng.plan_step(0.0)
    one = COST.fetch_s(DRAM, 2 * BS)
    assert sorted([r1.ready_at, r2.ready_at]) == pytest.approx([one, 2 * one])


def test_a_node_without_tiers_does_not_use_dram_blocks():
    eng = make_engine(hbm_blocks=8)  # dram capacity 0
    eng.dram.blocks[1] = None  # (cannot happen; proves the engine does not look)
    r = make_req("a", [1, 2], prompt_tokens=9)
    serve(eng, r)
    assert r.cached["dram"] == 0 and r.recomputed == 9


# ------------------------------------------------------------------ pulls
def test_pull_from_a_peer_copies_the_planned_blocks_it_still_holds():
    engines = {}
    src = make_engine(hbm_blocks=16, node=0, peer=engines.__getitem__)
    dst = make_engine(hbm_blocks=16, node=1, peer=engines.__getitem__)
    engines.update({0: src, 1: dst})
    serve(src, make_req("warm", [1, 2, 3, 4]))
    src.take_events()
    plan = Plan(1, (), local_blocks=0, pull_blocks=4, pull_from=0)
    r = make_req("a", [1, 2, 3, 4, 5], prompt_tokens=21, plan=plan)
    dst.submit(r)
    dst.plan_step(0.0)
    assert r.state is State.LOADING and r.ready_at == pytest.approx(COST.pull_s(4 * BS))
    assert r.cached == {"hbm": 0, "dram": 0, "disk": 0, "remote": 16}
    assert r.bytes_moved == 16 * COST.kv_bytes_per_token and r.recomputed == 5
    assert dst.take_events() == [BlockStored(1, HBM, (1, 2, 3, 4), None)]
    assert set(src.hbm) == {1, 2, 3, 4}  # the source keeps its copy
    run(dst, 0.0)
    assert r.state is State.DONE


def test_pull_stops_at_the_first_block_the_source_no_longer_holds():
    engines = {}
    src = make_engine(hbm_blocks=16, node=0, peer=engines.__getitem__)
    dst = make_engine(hbm_blocks=16, node=1, peer=engines.__getitem__)
    engines.update({0: src, 1: dst})
    serve(src, make_req("warm", [1, 2, 4]))  # block 3 never made it (or was evicted)
    plan = Plan(1, (), local_blocks=0, pull_blocks=4, pull_from=0)
    r = make_req("a", [1, 2, 3, 4], prompt_tokens=17, plan=plan)
    serve(dst, r)
    assert r.cached["remote"] == 8 and r.recomputed == 9


# ------------------------------------------------------------------ config
def test_config_bounds():
    with pytest.raises(ValueError, match="at least one block"):
        SimEngineConfig(hbm_tokens=3, block_size=4)
    with pytest.raises(ValueError, match="negative"):
        SimEngineConfig(hbm_tokens=64, dram_tokens=-1)
    with pytest.raises(ValueError, match="block_size"):
        SimEngineConfig(hbm_tokens=64, block_size=0)


# ------------------------------------------------------------------ what a node reports
def test_the_engine_reports_clean_prefills_and_decode_only_steps_as_a_node_does():
    cfg = SimEngineConfig(hbm_tokens=64 * BS, block_size=BS, max_batch_tokens=4096, report_samples=True)
    eng = SimEngine(0, cfg, COST)
    a = make_req("a", [1, 2, 3], out=3)
    end = serve(eng, a)
    prefills, decodes = eng.take_samples()
    # alone from admission to first token: a sample of its own prefill; then two decode-only
    # steps, of which a node measures the first (it times a step to the next one's start)
    assert prefills == [(3 * BS, 3 * BS, pytest.approx(COST.prefill_s(3 * BS, 3 * BS)))]
    assert [(b, c, n) for b, c, _, n in decodes] == [(1, 3 * BS + 1, 1)]
    assert decodes[0][2] == pytest.approx(COST.decode_step_s(3 * BS + 1, 1))
    assert eng.take_samples() == ([], [])  # each measurement is reported once
    # b's prefix is cached (a's blocks): its sample counts the new tokens only
    b = make_req("b", [1, 2, 3, 4], out=1)
    serve(eng, b, end)
    assert [(e, c) for e, c, _ in eng.take_samples()[0]] == [(BS, 4 * BS)]
    # c and d admitted together: neither prefill is clean; their steps mix prefill and decode
    c, d = make_req("c", [20, 21], out=3), make_req("d", [30, 31], out=3)
    eng.submit(c)
    eng.submit(d)
    run(eng, end + 1.0)
    prefills, decodes = eng.take_samples()
    assert prefills == [] and [b for b, *_ in decodes] == [2]  # two decode steps of both; the last unmeasured
    # without report_samples nothing is kept
    quiet = make_engine(hbm_blocks=64)
    serve(quiet, make_req("a", [1, 2, 3], out=3))
    assert quiet.take_samples() == ([], [])


def test_a_prefill_is_not_clean_once_another_request_is_admitted_before_its_first_token():
    cfg = SimEngineConfig(hbm_tokens=64 * BS, block_size=BS, max_batch_tokens=BS, report_samples=True)
    eng = SimEngine(0, cfg, COST)
    a = make_req("a", [1, 2, 3], out=1)  # three steps of one block each
    eng.submit(a)
    dur, work = eng.plan_step(0.0)
    eng.finish_step(work, dur, dur)
    eng.submit(make_req("b", [9], out=1))
    run(eng, dur)
    assert eng.take_samples()[0] == []  # b joined a's prefill: neither ran alone
    c = make_req("c", [40], out=1)
    serve(eng, c, 10.0)
    assert eng.take_samples()[0] == [(BS, BS, pytest.approx(COST.prefill_s(BS, BS)))]  # the engine empty again
