"""Cluster profiles: round trip, validation naming the field, the decode fit, fitting a profile
from samples (and refusing narrow ones), the mean of calibrations, shipped profiles, and the
simulator config a profile gives."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from preble_tiered.cli import main as cli
from preble_tiered.cli.calibrate import Sweep, host_of_address, nodes_per_host
from preble_tiered.scheduler.cost_model import (RELATIVE_FLOOR, ChunkedPrefill, LinearDecode, LinearPrefill, Links,
                                                _chunk_features, nonneg_lstsq)
from preble_tiered.scheduler.profile import ClusterProfile, Coverage, EngineLimits, LinkFigure, ProfileError, mean_profile
from preble_tiered.scheduler.profile_fit import NodeFacts, ProfileSamples, fit_profile
from preble_tiered.sim import profile_files
from preble_tiered.sim.simulator import Simulator
from preble_tiered.types import Segment, WorkloadRequest


def profile(**kw) -> ClusterProfile:
    base = dict(name="t", model="m", nodes=2, kv_bytes_per_token=8192, prefill=LinearPrefill(5.0, 0.1, 0.001, 1e-6),
                decode=LinearDecode(3.0, 0.1, 0.001),
                engine=EngineLimits(block_size=32, max_num_seqs=16, max_batch_tokens=2048, hbm_tokens=32768,
                                    dram_tokens=100_000, disk_tokens=0),
                links={k: LinkFigure(1e9, 1e-5, k == "net") for k in ("dram", "disk", "net")},
                request_overhead_s=0.003)
    base.update(kw)
    return ClusterProfile(**base)


def test_a_profile_round_trips_through_json(tmp_path):
    p = profile()
    path = tmp_path / "p.json"
    profile_files.save(p, path)
    back = profile_files.load(str(path))
    assert back == p
    assert json.loads(path.read_text())["version"] == 1


def test_the_host_share_round_trips_reaches_the_simulator_and_defaults_to_nodes_apart():
    p = profile(host_nodes=2, host_prefill_slowdown=0.08)
    d = p.to_dict()
    assert (d["host_nodes"], d["host_prefill_slowdown"]) == (2, 0.08) and ClusterProfile.from_dict(d) == p
    cfg = profile_files.sim_config(p, "e2_tiered")
    assert (cfg.host_nodes, cfg.host_prefill_slowdown) == (2, 0.08)
    del d["host_nodes"], d["host_prefill_slowdown"]
    apart = ClusterProfile.from_dict(d)
    assert (apart.host_nodes, apart.host_prefill_slowdown) == (1, 0.0)
    with pytest.raises(ProfileError, match="'host_prefill_slowdown' must be >= 0"):
        profile(host_prefill_slowdown=-0.1)
    with pytest.raises(ProfileError, match="'host_nodes' must be positive"):
        profile(host_nodes=0)
    with pytest.raises(ProfileError, match="'host_prefill_slowdown' must be below 10"):
        profile(host_prefill_slowdown=10.0)
    # calibrations of one cluster average their slowdowns; different host layouts are not one cluster
    m = mean_profile([p, profile(host_nodes=2, host_prefill_slowdown=0.12)])
    assert m.host_prefill_slowdown == pytest.approx(0.10) and m.host_nodes == 2
    with pytest.raises(ProfileError, match="'host_nodes' differs"):
        mean_profile([p, profile()])


def test_nodes_per_host_counts_the_largest_group_of_addresses_on_one_host(monkeypatch):
    assert nodes_per_host(["127.0.0.1:5001", "127.0.0.1:5002"]) == 2
    assert nodes_per_host(["10.0.0.1:5001", "10.0.0.2:5001", "10.0.0.2:5002"]) == 2
    assert nodes_per_host(["[::1]:5001", "[::1]:5002", "[::1]:5003"]) == 3
    assert nodes_per_host(["10.0.0.1:1", "10.0.0.3:1"]) == 1 and nodes_per_host([]) == 1
    # one host however its loopback address is written (localhost from the hosts file)
    assert nodes_per_host(["localhost:5001", "127.0.0.1:5002", "[::1]:5003", "127.0.1.1:5004"]) == 4
    assert host_of_address("[::1]:5001") == host_of_address("localhost:1") == "loopback"
    assert host_of_address("10.0.0.2:80") == "10.0.0.2"
    # a name resolves to its address; one that does not resolve stays as written
    monkeypatch.setattr("socket.getaddrinfo", lambda host, port: [(2, 1, 6, "", ("10.0.0.2", 0))])
    assert nodes_per_host(["gpu-a:5001", "10.0.0.2:5002"]) == 2

    def no_such_host(host, port):
        raise OSError("no such host")
    monkeypatch.setattr("socket.getaddrinfo", no_such_host)
    assert host_of_address("gpu-b:1") == "gpu-b" and nodes_per_host(["gpu-b:1", "gpu-c:1"]) == 1


def test_the_prefill_form_round_trips_and_a_profile_without_it_is_prebles(tmp_path):
    """A fitted prefill prices attention as causal pairs and says so in its JSON; a profile
    written before the form was recorded (no 'causal') is read as Preble's e*ctx, as it was fitted."""
    p = profile(prefill=LinearPrefill(5.0, 0.1, 0.001, 1e-6, causal=True))
    d = p.to_dict()
    assert d["prefill"]["causal"] is True and ClusterProfile.from_dict(d) == p
    del d["prefill"]["causal"]
    old = ClusterProfile.from_dict(d)
    assert old.prefill.causal is False and old.prefill.seconds(1000, 1000) > p.prefill.seconds(1000, 1000)
    d["prefill"]["causal"] = "yes"
    with pytest.raises(ProfileError, match="'prefill.causal' must be bool"):
        ClusterProfile.from_dict(d)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("decode"), "'decode' is missing"),
    (lambda d: d["decode"].pop("b"), "'decode.b' is missing"),
    (lambda d: d["engine"].update(max_num_seqs="16"), "'engine.max_num_seqs' must be int"),
    (lambda d: d["engine"].update(hbm_tokens=0), "'engine.hbm_tokens' must be positive"),
    (lambda d: d["links"].pop("net"), "'links.net' is missing"),
    (lambda d: d["links"]["dram"].update(bandwidth=-1.0), "'links.dram.bandwidth' must be positive"),
    (lambda d: d.update(version=99), "'version' is 99"),
    (lambda d: d.update(kv_bytes_per_token=8191), "'kv_bytes_per_token' must be even"),
    (lambda d: d["prefill"].update(a=float("nan")), "'prefill.a' must be a finite number"),
    (lambda d: d["decode"].update(a=-50.0), "'decode.a' must be >= 0"),
    (lambda d: d["prefill"].update(d=-1e-5), "'prefill.d' must be >= 0"),
    (lambda d: d["decode"].update(a=0.0, b=0.0, c=0.0), "'decode' predicts a non-positive"),
    (lambda d: d["links"]["net"].update(latency_s=float("nan")), "'links.net.latency_s' must be >= 0"),
    (lambda d: d["coverage"].update(decode_batch=[1]), "'coverage.decode_batch' must be [min, max]"),
])
def test_a_bad_profile_is_refused_naming_the_field(mutate, field):
    d = profile().to_dict()
    mutate(d)
    with pytest.raises(ProfileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ClusterProfile.from_dict(d)


def test_a_profile_file_that_is_not_json_or_not_there_gets_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        profile_files.load(str(bad))
    with pytest.raises(ProfileError, match="not a file and not a shipped profile"):
        profile_files.load(str(tmp_path / "missing.json"))


def test_the_decode_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    true = LinearDecode(4.0, 0.15, 0.0012)
    samples = []
    for b in (1, 2, 4, 8, 16):
        for ctx in (200, 2000, 8000, 16000):
            c = ctx * b // 4
            t = true.step_seconds(None, c, b) * (1 + rng.normal(0, 0.01))
            samples.append((b, c, t, int(rng.integers(5, 50))))
    fit = LinearDecode.fit(samples)
    assert fit.a == pytest.approx(4.0, rel=0.05)
    assert fit.b == pytest.approx(0.15, rel=0.1)
    assert fit.c == pytest.approx(0.0012, rel=0.05)


# Prefill steps of the tiny model measured alone on one core of the 2-core EPYC machine
# (benchmarks/engine_steps.py): (new tokens, context tokens up to the chunk's end, seconds).
MEASURED_PREFILLS = [(32, 544, 0.01505), (128, 640, 0.04215), (512, 1024, 0.16963), (32, 1056, 0.01948),
                     (128, 1152, 0.05831), (512, 1536, 0.23686), (32, 3104, 0.03680), (128, 3200, 0.12126),
                     (512, 3584, 0.48350), (64, 64, 0.01534), (256, 256, 0.04876), (1024, 1024, 0.27527)]


def test_the_prefill_fit_prices_short_prefills_as_well_as_long_ones():
    """Fitted on relative error: a 15 ms prefill counts as much as a 480 ms one. On absolute
    error the long ones set the fit and a 32-token question on a 512-token context came out 52% over,
    a 64-token prompt 29% over, a 256-token one 24% under."""
    fit = LinearPrefill.fit(MEASURED_PREFILLS, chunk=2048)
    errors = [fit.seconds(e, c) / t - 1 for e, c, t in MEASURED_PREFILLS]
    assert max(abs(x) for x in errors) < 0.25
    short = [x for (e, _, _), x in zip(MEASURED_PREFILLS, errors) if e <= 128]
    assert max(abs(x) for x in short) < 0.10
    with pytest.raises(ValueError, match="positive time"):
        LinearPrefill.fit([*MEASURED_PREFILLS, (64, 64, 0.0)])


def test_one_bad_prefill_sample_cannot_bend_the_fit():
    """A clock glitch (a 64-token prefill timed at a microsecond) would weigh ~2e8 times a 15 ms
    sample under plain 1/t^2 weights and drag every price to zero; a step that waited on
    something else (the same prefill timed at a second) pulls short prices up. The first pass
    finds either, and the fit on the rest is the clean one."""
    clean = LinearPrefill.fit(MEASURED_PREFILLS, chunk=2048)
    for bad in ((64, 64, 1e-6), (64, 64, 1.0)):
        fit = LinearPrefill.fit([*MEASURED_PREFILLS, bad], chunk=2048)
        for e, c, _ in MEASURED_PREFILLS:
            assert fit.seconds(e, c) == pytest.approx(clean.seconds(e, c), rel=0.02)


def test_with_no_bad_sample_the_prefill_fit_is_plain_relative_error():
    x = np.array([_chunk_features(e, c, 2048, True) for e, c, _ in MEASURED_PREFILLS])
    y = np.array([t * 1e3 for _, _, t in MEASURED_PREFILLS])
    want = nonneg_lstsq(x, y, 1.0 / y ** 2)
    fit = LinearPrefill.fit(MEASURED_PREFILLS, chunk=2048)
    assert [fit.a, fit.b, fit.c, fit.d] == pytest.approx(want.tolist())


def test_a_trim_that_would_leave_too_few_samples_keeps_the_first_pass():
    """Four samples of which one is a glitch: the first pass, bent by it, is off by more than 3x
    on most of them, and fewer than four would be left for four terms, so the first pass's fit
    (all four, the glitch's weight capped) stands; the
    router's calibrator then judges it as any fit (`calibration.py` rejects absurd ones)."""
    samples = [(64, 64, 0.015), (512, 512, 0.12), (2048, 2048, 0.9), (128, 3000, 1e-6)]
    x = np.array([_chunk_features(e, c, None, True) for e, c, _ in samples])
    y = np.array([t * 1e3 for _, _, t in samples])
    first = nonneg_lstsq(x, y, 1.0 / np.maximum(y, RELATIVE_FLOOR * np.median(y)) ** 2)
    fit = LinearPrefill.fit(samples)
    assert [fit.a, fit.b, fit.c, fit.d] == pytest.approx(first.tolist())


def test_the_decode_fit_refuses_a_single_batch_size():
    with pytest.raises(ValueError, match="one batch size"):
        LinearDecode.fit([(4, 100, 0.005, 3), (4, 900, 0.006, 3), (4, 4000, 0.01, 3)])
    with pytest.raises(ValueError, match="at least 3"):
        LinearDecode.fit([(1, 100, 0.005, 3), (4, 900, 0.006, 3)])


def facts(n=2):
    return [NodeFacts(32, 16, 2048, 32768, 8192, 64 << 20, 0) for _ in range(n)]


def measured(prefill_sizes=(64, 512, 2048), batches=(1, 4, 16)) -> ProfileSamples:
    s = ProfileSamples()
    pre = LinearPrefill(8.0, 0.07, 0.0, 4e-5, causal=True)
    for e in prefill_sizes:
        for ctx in (0, 1024, 4096):
            s.add_prefill(e, e + ctx, pre.seconds(e, e + ctx))
    dec = LinearDecode(3.5, 0.05, 0.0013)
    for b in batches:
        for ctx in (100 * b, 1000 * b):
            s.add_decode(b, ctx, dec.step_seconds(None, ctx, b), 10)
    s.add_overhead(0.002)
    s.add_overhead(0.004)
    s.add_overhead(0.003)
    return s


def test_fit_profile_from_samples_gives_the_cluster_and_its_fits():
    p = fit_profile(measured(), facts(), Links(), {"net"}, name="x", model="m", source="test")
    assert p.nodes == 2 and p.engine.max_num_seqs == 16 and p.engine.dram_tokens == (64 << 20) // 8192
    assert p.decode.a == pytest.approx(3.5, rel=1e-3) and p.decode.c == pytest.approx(0.0013, rel=1e-3)
    assert p.prefill.causal
    assert p.prefill.seconds(1000, 1000) == pytest.approx(
        LinearPrefill(8.0, 0.07, 0.0, 4e-5, causal=True).seconds(1000, 1000), rel=1e-3)
    assert p.request_overhead_s == pytest.approx(0.003)
    assert p.links["net"].measured and not p.links["disk"].measured
    assert p.coverage.decode_batch == (1, 16) and p.coverage.prefill_new_tokens == (64, 2048)
    assert p.coverage.overhead_samples == 3
    assert ClusterProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("kw, says", [
    (dict(prefill_sizes=(512,)), "add prompt sizes"),
    (dict(batches=(4,)), "add batch sizes"),
])
def test_fit_profile_refuses_samples_too_narrow_saying_what_to_add(kw, says):
    with pytest.raises(ProfileError, match=says):
        fit_profile(measured(**kw), facts(), Links(), set(), name="x", model="m")
    with pytest.raises(ProfileError, match="no node"):
        fit_profile(measured(), [], Links(), set(), name="x", model="m")


@pytest.mark.parametrize("argv, says", [
    (["--prompt-sizes", "512", "520"], "--prompt-sizes needs 3"),
    (["--batch-sizes", "4"], "--batch-sizes needs 2"),
    (["--prompt-sizes", "64", "512", "1024", "--cached-contexts", "0", "--repeats", "2"], "sends 6 prefills"),
])
def test_calibrate_refuses_a_sweep_too_narrow_to_fit_before_sending_anything(argv, says, capsys, tmp_path):
    rc = cli.main(["calibrate", "--addr", "127.0.0.1:1", "-o", str(tmp_path / "p.json"), *argv])
    assert rc == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_calibrate_refuses_an_output_it_cannot_write_before_sending_anything(capsys, tmp_path):
    rc = cli.main(["calibrate", "--addr", "127.0.0.1:1", "-o", str(tmp_path / "no-such-dir" / "p.json")])
    assert rc == 2 and "not a writable directory" in capsys.readouterr().err


def test_a_sweep_leaves_out_what_the_model_cannot_hold_and_refuses_when_too_little_is_left():
    s = Sweep()
    assert all(c + p + 2 <= 2048 for c, p in s.prefills(2048)) and len(s.prefills(2048)) < len(s.prefills())
    s.check(max_model_len=2048)  # 64-1024 new tokens still fit: enough sizes
    with pytest.raises(ValueError, match="--prompt-sizes needs 3"):
        s.check(max_model_len=300)  # only 64 and 256 fit
    assert s.requests(2, 2048) < s.requests(2)


def test_the_shipped_cpu_tiny_profile_loads_and_drives_the_simulator():
    assert "cpu-tiny" in profile_files.shipped()
    p = profile_files.load("cpu-tiny")
    cfg = profile_files.sim_config(p, "e2_tiered", engine_tiers="all")
    assert cfg.max_running == p.engine.max_num_seqs and cfg.max_batch_tokens == p.engine.max_batch_tokens
    assert cfg.request_overhead_s == p.request_overhead_s and cfg.hbm_tokens == p.engine.hbm_tokens
    reqs = [WorkloadRequest(f"r{i}", i * 0.05, (Segment("doc", 1000), Segment(f"q{i}", 40)), 8) for i in range(20)]
    res = Simulator(reqs, cfg, p.cost_model()).run()
    ttft = [r.ttft_s for r in res.records]
    assert all(math.isfinite(t) and t >= p.request_overhead_s for t in ttft)


def test_the_request_overhead_is_added_to_every_request():
    p = profile(request_overhead_s=0.0)
    reqs = [WorkloadRequest(f"r{i}", i * 1.0, (Segment(f"d{i}", 300),), 4) for i in range(5)]
    base = Simulator(reqs, profile_files.sim_config(p, "round_robin"), p.cost_model()).run()
    slow = Simulator(reqs, profile_files.sim_config(p, "round_robin", request_overhead_s=0.25), p.cost_model()).run()
    for a, b in zip(base.records, slow.records):
        assert b.ttft_s == pytest.approx(a.ttft_s + 0.25) and b.latency_s == pytest.approx(a.latency_s + 0.25)


def test_sim_refuses_cost_and_profile_together(capsys):
    assert cli.main(["sim", "--workload", "toolbench", "--cost", "mistral-7b-a6000", "--profile", "cpu-tiny"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["sim", "--workload", "toolbench", "--router-learns-costs"]) == 2
    assert "for --profile runs" in capsys.readouterr().err


def test_sim_on_a_profile_says_whether_its_router_learns_its_costs(tmp_path, capsys, monkeypatch):
    from preble_tiered.sim import simulator

    seen = []
    real = simulator.Simulator.__init__

    def init(self, requests, config, cost, *a, **kw):
        seen.append(config.learn_costs)
        real(self, requests, config, cost, *a, **kw)
    monkeypatch.setattr(simulator.Simulator, "__init__", init)
    for flag, learns in (([], False), (["--router-learns-costs"], True)):
        out = tmp_path / f"sim-{learns}.json"
        assert cli.main(["sim", "--workload", "toolbench", "--requests", "30", "--nodes", "2", "--policy", "e2_tiered",
                         "--profile", "cpu-tiny", "--quiet", "--json", str(out), *flag]) == 0
        assert f"router={'learns' if learns else 'knows'} costs" in capsys.readouterr().out
        assert json.loads(out.read_text())["profile"]["router_learns_costs"] is learns
        assert seen.pop() is learns  # the simulated router does as the flag says


def test_a_chunked_prefill_fit_makes_the_simulators_chunks_sum_to_the_measured_time():
    # Causal attention pairs sum the same over chunks as over the whole prompt; what chunking
    # adds is a fixed cost per step and each chunk's read of its context.
    true = LinearPrefill(30.0, 0.07, 0.01, 4e-5, causal=True)
    chunk = 2048

    samples = [(e, e + ctx, chunked_with(true, e, e + ctx, chunk)) for e in (64, 512, 2048, 3000, 4000) for ctx in (0, 1024, 3000)]
    fit = LinearPrefill.fit(samples, chunk=chunk)
    for e, c, t in samples:
        assert chunked_with(fit, e, c, chunk) == pytest.approx(t, rel=1e-6)
    plain = LinearPrefill.fit(samples)  # one term per sample: wrong once prompts span chunks
    assert max(abs(chunked_with(plain, e, c, chunk) - t) / t for e, c, t in samples) > 0.02


def chunked_with(model, e, c, chunk):
    """What the simulator charges: one term per chunk, on the context so far."""
    return ChunkedPrefill(model, chunk).seconds(e, c)


def test_a_profiles_cost_model_prices_a_whole_prefill_as_its_chunks():
    p = profile()
    cost = p.cost_model()
    budget = p.engine.max_batch_tokens
    assert cost.prefill_s(500, 1500) == pytest.approx(p.prefill.seconds(500, 1500))  # one chunk: the fit itself
    whole = p.prefill.seconds(budget, budget) + p.prefill.seconds(1000, budget + 1000)
    assert cost.prefill_s(budget + 1000, budget + 1000) == pytest.approx(whole)


def test_a_request_counts_toward_the_overhead_only_alone_in_the_engine_on_one_node_and_with_no_pull():
    s = ProfileSamples()
    s.add_request(0.050, 0.046)  # the router's TTFT and the engine's
    s.add_request(0.050, 0.0)  # the engine ran something else beside it (or the node reported nothing)
    s.add_request(0.900, 0.040, rerouted=True)  # its TTFT spans two nodes
    s.add_request(0.300, 0.040, pulled=True)  # it pulled its prefix first: the simulator prices that itself
    s.add_request(0.010, 0.020)  # negative: clock noise, not an overhead
    assert list(s.overheads) == [pytest.approx(0.004)]


def test_the_client_overhead_is_part_of_the_request_overhead():
    assert profile(request_overhead_s=0.005, client_overhead_s=0.002).client_overhead_s == 0.002
    with pytest.raises(ProfileError, match="'client_overhead_s' is part of 'request_overhead_s'"):
        profile(request_overhead_s=0.001, client_overhead_s=0.002)
    d = profile().to_dict()
    d.pop("client_overhead_s")  # optional: a profile from `preble admin profile` has no client part
    assert ClusterProfile.from_dict(d).client_overhead_s == 0.0


def test_the_mean_of_calibrations_prices_every_shape_at_their_mean_time():
    slow = profile(prefill=LinearPrefill(9.0, 0.2, 0.0, 2e-6), decode=LinearDecode(12.0, 0.3, 0.002),
                   links={k: LinkFigure(1e9, 2e-5, True) for k in ("dram", "disk", "net")},
                   request_overhead_s=0.006, client_overhead_s=0.002,
                   coverage=Coverage(10, (64, 2048), 50, (1, 8), (100, 8000), 7), source="first")
    fast = profile(prefill=LinearPrefill(5.0, 0.1, 0.001, 0.0), decode=LinearDecode(6.0, 0.5, 0.001),
                   links={k: LinkFigure(4e9, 0.0, k != "disk") for k in ("dram", "disk", "net")},
                   request_overhead_s=0.002, client_overhead_s=0.001,
                   coverage=Coverage(12, (32, 3000), 40, (2, 16), (200, 6000), 5), source="second")
    m = mean_profile([slow, fast], name="both")
    for e, c in ((32, 32), (500, 1500), (2048, 6000)):
        assert m.prefill.seconds(e, c) == pytest.approx((slow.prefill.seconds(e, c) + fast.prefill.seconds(e, c)) / 2)
    cost, cs, cf = m.cost_model(), slow.cost_model(), fast.cost_model()
    for batch, ctx in ((1, 100), (8, 4000), (16, 9000)):
        assert cost.decode.step_seconds(cost.shape, ctx, batch) == pytest.approx(
            (cs.decode.step_seconds(cs.shape, ctx, batch) + cf.decode.step_seconds(cf.shape, ctx, batch)) / 2)
    for kind in ("dram", "disk", "net"):  # a link's time for any size is the mean time
        t = lambda p: p.links[kind].latency_s + (1 << 20) / p.links[kind].bandwidth  # noqa: E731
        assert t(m) == pytest.approx((t(slow) + t(fast)) / 2)
    assert [m.links[k].measured for k in ("dram", "disk", "net")] == [True, False, True]
    assert (m.request_overhead_s, m.client_overhead_s) == (pytest.approx(0.004), pytest.approx(0.0015))
    assert m.coverage == Coverage(22, (32, 3000), 90, (1, 16), (100, 8000), 12)
    assert m.name == "both" and "first" in m.source and "second" in m.source
    assert m.engine == slow.engine and ClusterProfile.from_dict(m.to_dict()) == m
    assert mean_profile([slow]).prefill == slow.prefill


def test_the_mean_refuses_profiles_of_different_clusters_naming_the_field():
    p = profile()
    other = profile(engine=EngineLimits(block_size=32, max_num_seqs=16, max_batch_tokens=2048, hbm_tokens=65536))
    with pytest.raises(ProfileError, match="'engine.hbm_tokens' differs"):
        mean_profile([p, other])
    with pytest.raises(ProfileError, match="'nodes' differs"):
        mean_profile([p, profile(nodes=4)])
    with pytest.raises(ValueError, match="at least one"):
        mean_profile([])
    causal = profile(prefill=replace(p.prefill, causal=True))
    with pytest.raises(ProfileError, match="'prefill.causal' differs"):
        mean_profile([p, causal])
    both = mean_profile([causal, causal])
    assert both.prefill.causal is True and both.prefill == causal.prefill
    assert ClusterProfile.from_dict(both.to_dict()) == both


def test_the_mean_takes_the_smaller_kv_capacity_of_two_starts_a_few_blocks_apart():
    """A GPU engine sizes its KV cache at each start from a memory profile: two calibrations of
    one cluster can hold a few blocks more or less. Within 5% that is one cluster."""
    p = profile()
    near = replace(p, engine=replace(p.engine, hbm_tokens=int(p.engine.hbm_tokens * 1.04)))
    assert mean_profile([near, p]).engine == p.engine
    far = replace(p, engine=replace(p.engine, hbm_tokens=int(p.engine.hbm_tokens * 1.06)))
    with pytest.raises(ProfileError, match="'engine.hbm_tokens' differs"):
        mean_profile([p, far])
