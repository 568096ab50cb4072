"""The simulator end to end on small clusters: conservation, index == engine residency,
determinism, the ideal bound, trace replay and input errors."""

import functools
import math
from dataclasses import replace

import pytest

from preble_tiered.scheduler.cost_model import CPU_TINY_PREFILL, FlatDecode, LinearDecode, LinearPrefill, cost_preset
from preble_tiered.scheduler.registry import policy_class
from preble_tiered.sim.metrics import TIER_KEYS, ideal_records, shared_prefix_blocks
from preble_tiered.sim.simulator import SimConfig, Simulator, compute_floor, simulate, warm_bound
from preble_tiered.types import Segment, Tier, WorkloadRequest
from preble_tiered.workloads import WorkloadConfig, load_trace, make_workload, write_trace

COST = cost_preset("mistral-7b-a6000")
KVB = COST.kv_bytes_per_token
POLICIES = ["round_robin", "least_load", "sglang_cache_aware", "dynamo_kv", "preble_e2", "e2_tiered"]
# (requests, HBM tokens per node, DRAM tokens per node): a few prompts per node and small
# lower tiers, so every tier fills and spills. Disk is 4x HBM.
WORKLOADS = {"toolbench": (120, 8_000, 16_000), "loogle": (50, 48_000, 48_000)}


@functools.lru_cache(maxsize=None)
def workload(name: str) -> tuple[WorkloadRequest, ...]:
    n = WORKLOADS[name][0]
    return tuple(make_workload(name, WorkloadConfig(nodes=4, requests=n, seed=1)))


def make_config(name: str, policy: str, **kw) -> SimConfig:
    _, hbm, dram = WORKLOADS[name]
    return SimConfig(nodes=4, policy=policy, hbm_tokens=hbm, dram_tokens=dram, disk_tokens=4 * hbm, **kw)


@functools.lru_cache(maxsize=None)
def run_sim(name: str, policy: str, event_delay_s: float = 0.0):
    """(Simulator after the run, its result); cached: tests only read them."""
    sim = Simulator(list(workload(name)), make_config(name, policy, event_delay_s=event_delay_s), COST)
    return sim, sim.run()


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("sim_wall_s", "decision_us")}


CASES = [(w, p) for w in WORKLOADS for p in POLICIES]


# ------------------------------------------------------------------ conservation
@pytest.mark.parametrize("name, policy", CASES)
def test_every_request_finishes_once_with_conserved_tokens(name, policy):
    sim, res = run_sim(name, policy)
    reqs = workload(name)
    assert sorted(r.request_id for r in res.records) == sorted(r.request_id for r in reqs)
    by_id = {r.request_id: r for r in reqs}
    for rec in res.records:
        wr = by_id[rec.request_id]
        assert (rec.prompt_tokens, rec.output_tokens) == (wr.prompt_tokens, wr.output_tokens)
        assert sum(rec.cached[k] for k in TIER_KEYS) + rec.recomputed_tokens == rec.prompt_tokens
        assert rec.recomputed_tokens >= 1  # the last prompt token is always computed
        assert rec.bytes_moved == (rec.cached["dram"] + rec.cached["disk"] + rec.cached["remote"]) * KVB
        assert rec.arrival_s == wr.arrival_s
        assert rec.arrival_s <= rec.first_token_s <= rec.finish_s
        assert 0 < rec.ttft_s <= rec.latency_s
        assert 0 <= rec.node < 4
    assert sum(res.branches.values()) == len(reqs)
    s = res.summary()
    assert s["requests"] == len(reqs)
    assert s["prompt_tokens"] == sum(s["cached_tokens"].values()) + s["recomputed_tokens"]
    assert not sim._inflight and not any(e.has_work() for e in sim.engines)
    assert all(e.reserved == 0 and all(v == 0 for v in e.hbm.values()) for e in sim.engines)


@pytest.mark.parametrize("name, policy", CASES)
def test_tokens_come_only_from_the_tiers_a_policy_runs_with(name, policy):
    _, res = run_sim(name, policy)
    total = res.summary()["cached_tokens"]
    cls = policy_class(policy)
    assert total["hbm"] > 0  # every policy gets some cache hits on these shared workloads
    if not cls.uses_tiers:
        assert total["dram"] == total["disk"] == 0
    if not cls.uses_pulls:
        assert total["remote"] == 0


@pytest.mark.parametrize("name", WORKLOADS)
def test_the_tiered_stack_exercises_every_tier(name):
    # Guards the other tests: with these sizes, HBM, DRAM and disk all carry tokens, and
    # pulls do where prefixes are hot enough to replicate (toolbench's Zipf-popular tools).
    total = run_sim(name, "e2_tiered")[1].summary()["cached_tokens"]
    assert min(total["hbm"], total["dram"], total["disk"]) > 0
    if name == "toolbench":
        assert total["remote"] > 0


# ------------------------------------------------------------------ index == engines
def assert_index_matches_engines(sim):
    index = sim.scheduler.index
    for n, eng in enumerate(sim.engines):
        actual = {Tier.HBM: set(eng.hbm), Tier.DRAM: set(eng.dram.blocks), Tier.DISK: set(eng.disk.blocks)}
        for tier, blocks in actual.items():
            assert index.node_blocks(n, tier) == blocks, (n, tier)
            assert index.held_blocks(n, tier) == len(blocks), (n, tier)


@pytest.mark.parametrize("name, policy", CASES)
def test_index_equals_engine_residency_after_the_run(name, policy):
    sim, _ = run_sim(name, policy)
    assert_index_matches_engines(sim)
    assert sum(len(e.hbm) for e in sim.engines) > 0


@pytest.mark.parametrize("name, policy", CASES)
def test_index_equals_engine_residency_with_delayed_events(name, policy):
    sim, _ = run_sim(name, policy, 0.05)
    assert_index_matches_engines(sim)


def test_event_delay_changes_what_the_router_sees():
    # Same stream, stale index: an index-driven policy decides differently somewhere.
    _, fresh = run_sim("toolbench", "e2_tiered")
    _, stale = run_sim("toolbench", "e2_tiered", 0.05)
    assert [r.node for r in fresh.records] != [r.node for r in stale.records]
    # Round robin never reads the index: identical runs.
    a, b = run_sim("toolbench", "round_robin")[1], run_sim("toolbench", "round_robin", 0.05)[1]
    assert comparable(a.summary()) == comparable(b.summary())


# ------------------------------------------------------------------ determinism and bounds
@pytest.mark.parametrize("policy", POLICIES)
def test_same_inputs_give_identical_runs(policy):
    _, first = run_sim("toolbench", policy)
    again = simulate(list(workload("toolbench")), make_config("toolbench", policy), COST)
    assert comparable(again.summary()) == comparable(first.summary())
    assert [(r.request_id, r.node, r.branch, r.first_token_s, r.finish_s, r.cached) for r in again.records] == \
        [(r.request_id, r.node, r.branch, r.first_token_s, r.finish_s, r.cached) for r in first.records]


@pytest.mark.parametrize("name, policy", CASES)
def test_ideal_bound_is_below_every_policy(name, policy):
    s = run_sim(name, policy)[1].summary()
    assert s["ideal"]["latency"]["mean"] <= s["latency"]["mean"]
    assert s["ideal"]["ttft"]["mean"] <= s["ttft"]["mean"]


def test_ideal_records_by_hand():
    reqs = [WorkloadRequest("a", 0.0, (Segment("sys", 64), Segment("qa", 36)), 3),
            WorkloadRequest("b", 1.0, (Segment("sys", 64), Segment("qb", 36)), 1)]
    hashes = {"a": [1, 2, 3], "b": [1, 2, 4]}
    assert shared_prefix_blocks(hashes) == {"a": 2, "b": 2}
    ideal = ideal_records(reqs, hashes, COST, 32, max_batch_tokens=4096)
    ttft = COST.prefill_s(100 - 64, 100)
    assert ideal[0] == pytest.approx((ttft, ttft + 2 * COST.decode_step_s(100 + 1, 1)))
    assert ideal[1] == pytest.approx((ttft, ttft))


def test_ideal_is_a_lower_bound_for_a_lone_request():
    reqs = [WorkloadRequest("a", 0.0, (Segment("doc", 24_000),), 5)]
    res = simulate(reqs, SimConfig(nodes=1, policy="round_robin", hbm_tokens=30_000), COST)
    ideal_ttft, ideal_latency = res.ideal[0]
    assert ideal_ttft <= res.records[0].ttft_s
    assert ideal_latency <= res.records[0].latency_s


def test_a_lone_short_request_meets_its_ideal():
    # One prefill chunk, nothing shared: the simulator does exactly what the ideal assumes.
    reqs = [WorkloadRequest("a", 0.5, (Segment("doc", 2000),), 5)]
    res = simulate(reqs, SimConfig(nodes=1, policy="round_robin", hbm_tokens=4_000), COST)
    rec = res.records[0]
    assert rec.ttft_s == pytest.approx(COST.prefill_s(2000, 2000))
    assert rec.ttft_s == pytest.approx(res.ideal[0][0])
    assert rec.latency_s == pytest.approx(res.ideal[0][1], rel=1e-5)


def test_a_prefill_beside_a_busy_node_of_its_host_takes_the_hosts_slowdown():
    """Two nodes on one host (CPU nodes sharing cores): b's prefill starts while a's is
    running on the other node and takes 1.5x its price; a's started alone. On separate hosts,
    or once the other node is idle, nothing changes."""
    reqs = [WorkloadRequest("a", 0.0, (Segment("d1", 2000),), 2), WorkloadRequest("b", 0.001, (Segment("d2", 500),), 2)]
    alone = COST.prefill_s(500, 500)

    def ttfts(**kw):
        res = simulate(reqs, SimConfig(nodes=2, policy="round_robin", hbm_tokens=4_000, **kw), COST)
        return {r.request_id: r.ttft_s for r in res.records}

    apart = ttfts()
    assert apart["b"] == pytest.approx(alone)
    shared = ttfts(host_nodes=2, host_prefill_slowdown=0.5)
    assert shared["b"] == pytest.approx(1.5 * alone) and shared["a"] == pytest.approx(apart["a"])
    assert ttfts(host_nodes=1, host_prefill_slowdown=0.5) == apart  # each node its own host
    # four nodes, two per host: node 2 is on the other host, node 1 beside node 0
    four = [reqs[0], WorkloadRequest("b", 0.001, (Segment("d2", 500),), 2),
            WorkloadRequest("c", 0.002, (Segment("d3", 500),), 2)]
    res = simulate(four, SimConfig(nodes=4, policy="round_robin", hbm_tokens=4_000, host_nodes=2,
                                   host_prefill_slowdown=0.5), COST)
    got = {r.request_id: (r.node, r.ttft_s) for r in res.records}
    assert got["b"] == (1, pytest.approx(1.5 * alone)) and got["c"] == (2, pytest.approx(alone))
    # decode-only steps beside the other node's prefill keep their price
    decoding = [reqs[0], WorkloadRequest("b", 0.001, (Segment("d2", 64),), 5)]
    times = [{r.request_id: r.latency_s - r.ttft_s for r in simulate(decoding, SimConfig(
        nodes=2, policy="round_robin", hbm_tokens=4_000, host_nodes=h, host_prefill_slowdown=0.5), COST).records}
        for h in (1, 2)]
    assert times[1]["b"] == pytest.approx(times[0]["b"]) and times[0]["b"] < COST.prefill_s(2000, 2000)
    # b arriving once a has finished: the other node idle, its price
    a_done = simulate(reqs[:1], SimConfig(nodes=2, policy="round_robin", hbm_tokens=4_000), COST).records[0].latency_s
    late = [reqs[0], WorkloadRequest("b", a_done + 1e-3, (Segment("d2", 500),), 2)]
    res = simulate(late, SimConfig(nodes=2, policy="round_robin", hbm_tokens=4_000, host_nodes=2,
                                   host_prefill_slowdown=0.5), COST)
    assert {r.request_id: r.ttft_s for r in res.records}["b"] == pytest.approx(alone)


# ------------------------------------------------------------------ traces and errors
def test_trace_replay_gives_the_same_result(tmp_path):
    path = tmp_path / "toolbench.jsonl"
    write_trace(workload("toolbench"), path)
    replayed = simulate(load_trace(path), make_config("toolbench", "e2_tiered"), COST)
    _, original = run_sim("toolbench", "e2_tiered")
    assert comparable(replayed.summary()) == comparable(original.summary())


def test_request_larger_than_hbm_raises_naming_the_flag():
    reqs = [WorkloadRequest("big", 0.0, (Segment("doc", 5000),), 10)]
    with pytest.raises(ValueError, match="--hbm-tokens"):
        Simulator(reqs, SimConfig(nodes=2, policy="round_robin", hbm_tokens=4096), COST)
    # Prompt + output + two blocks of slack fit exactly.
    Simulator(reqs, SimConfig(nodes=2, policy="round_robin", hbm_tokens=5000 + 10 + 64), COST)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="unknown policy"):
        SimConfig(policy="nope")
    with pytest.raises(ValueError, match="event_delay_s"):
        SimConfig(event_delay_s=-1.0)
    with pytest.raises(ValueError, match="engine_tiers"):
        SimConfig(engine_tiers="some")
    with pytest.raises(ValueError, match="nodes"):
        SimConfig(nodes=0)
    with pytest.raises(ValueError, match="host_prefill_slowdown"):
        SimConfig(host_prefill_slowdown=-0.1)
    with pytest.raises(ValueError, match="no requests"):
        Simulator([], SimConfig(nodes=1), COST)


def test_engine_tiers_all_gives_every_policy_lower_tiers():
    reqs = list(workload("toolbench"))
    sim = Simulator(reqs, make_config("toolbench", "preble_e2", engine_tiers="all"), COST)
    assert sim.engines[0].dram.cap == 2 * 8_000 // 32
    none = Simulator(reqs, make_config("toolbench", "e2_tiered", engine_tiers="none"), COST)
    assert none.engines[0].dram.cap == 0 and none.engines[0].disk.cap == 0
    res = none.run()
    total = res.summary()["cached_tokens"]
    assert total["dram"] == total["disk"] == 0


def test_progress_is_reported_up_to_the_total():
    seen = []
    reqs = list(workload("toolbench"))[:20]
    simulate(reqs, make_config("toolbench", "least_load"), COST, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (20, 20)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_summary_throughput_and_percentiles_are_consistent():
    s = run_sim("toolbench", "e2_tiered")[1].summary()
    for key in ("latency", "ttft"):
        st = s[key]
        assert st["p50"] <= st["p90"] <= st["p99"]
        assert not math.isnan(st["mean"])
    assert s["throughput_rps"] > 0
    assert s["bytes_moved"] == (s["cached_tokens"]["dram"] + s["cached_tokens"]["disk"]
                                + s["cached_tokens"]["remote"]) * KVB


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_warm_bound_computes_only_each_requests_own_tokens(name):
    """The warm-cluster bound: every shared leading block is served from HBM on whichever
    node least_load picks, never computed or evicted; only the rest is computed."""
    reqs = list(workload(name))
    _, hbm, _ = WORKLOADS[name]
    res = warm_bound(reqs, 4, COST, hbm_tokens=hbm)
    sim = Simulator(reqs, SimConfig(nodes=4, policy="least_load", hbm_tokens=hbm), COST)
    shared = shared_prefix_blocks(sim._hashes)
    by_id = {r.request_id: r for r in reqs}
    bs = sim.config.block_size
    for rec in res.records:
        cached = min(shared[rec.request_id] * bs, by_id[rec.request_id].prompt_tokens - 1)
        assert rec.cached == {"hbm": cached, "dram": 0, "disk": 0, "remote": 0}
        assert rec.recomputed_tokens == by_id[rec.request_id].prompt_tokens - cached
    assert sum(shared.values()) > len(reqs)  # the workload does share prefixes
    s, cold = res.summary(), run_sim(name, "least_load")[1].summary()
    assert s["recomputed_tokens"] < cold["recomputed_tokens"]
    assert s["latency"]["mean"] >= s["ideal"]["latency"]["mean"]  # still no faster than alone


def test_compute_floor_counts_unshared_tokens_and_each_shared_block_once():
    # a: sys(64) + q1(40); b: sys(64) + q2(40); c: sys(64) + doc(96) + q3(10); d: doc(96) + q4(8).
    # Shared blocks: sys's 2 (a, b, c); doc's 3 are not shared (c's doc follows sys: other chain).
    def r(rid, *segs):
        return WorkloadRequest(rid, 0.0, tuple(Segment(s, n) for s, n in segs), 4)

    reqs = [r("a", ("sys", 64), ("q1", 40)), r("b", ("sys", 64), ("q2", 40)),
            r("c", ("sys", 64), ("doc", 96), ("q3", 10)), r("d", ("doc", 96), ("q4", 8))]
    f = compute_floor(reqs, block_size=32)
    total = 104 + 104 + 170 + 104
    assert (f.prompt_tokens, f.shared_blocks) == (total, 2)
    assert f.unshared_tokens == total - 3 * 64
    assert f.floor_tokens == f.unshared_tokens + 64
    assert f.share == pytest.approx(f.floor_tokens / total)


@pytest.mark.parametrize("name, policy", CASES)
def test_no_policy_computes_less_than_the_compute_floor(name, policy):
    """The floor is a lower bound on what any policy recomputes (each shared block at least
    once, every other token always); the warm-cluster bound, which starts with every
    shared block, computes no more than the floor's unshared part plus a token a request."""
    reqs = workload(name)
    f = compute_floor(reqs)
    assert run_sim(name, policy)[1].summary()["recomputed_tokens"] >= f.floor_tokens
    _, hbm, _ = WORKLOADS[name]
    warm = warm_bound(list(reqs), 4, COST, hbm_tokens=hbm).summary()["recomputed_tokens"]
    assert f.unshared_tokens <= warm <= f.unshared_tokens + len(reqs) < f.floor_tokens


def test_a_router_that_learns_prices_as_the_real_one_starts_and_ends_on_the_engines_fit():
    """learn_costs: the router starts from engine_cost_model's guess and refits from what the
    simulated nodes measure, while the engines keep the cost model's prices."""
    cost = replace(COST, prefill=LinearPrefill(15.0, 0.2, 0.001, 1e-5, causal=True),
                   decode=LinearDecode(3.0, 0.3, 0.001))  # a measured profile's forms
    # one at a time (clean prefills, batches of one), then bursts of four (bigger batches)
    reqs = [WorkloadRequest(f"r{i}", 1.0 * i if i < 12 else 12.0 + 2.0 * (i // 4), (Segment(f"d{i}", 200 + 300 * (i % 5)),),
                            40) for i in range(40)]
    config = SimConfig(nodes=2, policy="e2_tiered", hbm_tokens=20_000, max_batch_tokens=2048)
    knows = Simulator(reqs, config, cost)
    learns = Simulator(reqs, replace(config, learn_costs=True), cost)
    assert learns.scheduler.cluster.cost.prefill is CPU_TINY_PREFILL
    assert isinstance(learns.scheduler.cluster.cost.decode, FlatDecode)
    assert knows.scheduler.cluster.cost is cost
    ttft = {}
    for name, sim in (("knows", knows), ("learns", learns)):
        ttft[name] = {r.request_id: r.ttft_s for r in sim.run().records}
    fitted = learns.scheduler.cluster.cost
    assert learns.learner.prefill.fits >= 1 and learns.learner.decode.fits >= 1
    for e in (300, 1200):  # the fit of the nodes' measured prefills recovers the engines' prices
        assert fitted.prefill_s(e, e) == pytest.approx(cost.prefill_s(e, e), rel=1e-3)
    assert fitted.decode_step_s(3000, 4) == pytest.approx(cost.decode_step_s(3000, 4), rel=1e-3)
    # requests sent alone take the engines' time whatever the router believes
    assert ttft["learns"]["r0"] == ttft["knows"]["r0"] == pytest.approx(cost.prefill_s(200, 200))
