"""Synthetic workloads: Table-1 statistics, determinism, scaling, arrivals, popularity, turns."""

import collections
import time

import numpy as np
import pytest

from preble_tiered.workloads import SPECS, WORKLOADS, WorkloadConfig, make_workload
from preble_tiered.workloads.arrivals import make_arrivals
from preble_tiered.workloads.generators import MIXED_WEIGHTS
from preble_tiered.workloads.sampling import FractionModel


def shared_fractions(reqs) -> np.ndarray:
    """Per request: share of its tokens in segments that also occur in another request."""
    uses = collections.Counter(s.seg_id for r in reqs for s in set(r.segments))
    return np.array(
        [sum(s.n_tokens for s in r.segments if uses[s.seg_id] > 1) / r.prompt_tokens for r in reqs]
    )


def prompt_lengths(reqs) -> np.ndarray:
    return np.array([r.prompt_tokens for r in reqs])


def gap_cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("seed", [0, 1])
def test_published_statistics(name, seed):
    spec = SPECS[name]
    reqs = make_workload(name, WorkloadConfig(requests=3000, seed=seed))
    lengths, fractions = prompt_lengths(reqs), shared_fractions(reqs)
    assert abs(lengths.mean() / spec.prompt_mean - 1) < 0.15
    assert abs(lengths.std() / spec.prompt_std - 1) < 0.25
    assert abs(fractions.mean() - spec.shared_mean) < 0.1
    assert abs(fractions.std() - spec.shared_std) < 0.1


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_stream_invariants(name):
    reqs = make_workload(name, WorkloadConfig(seed=5))
    times = [r.arrival_s for r in reqs]
    assert times == sorted(times) and times[0] == 0.0
    assert [r.request_id for r in reqs] == [f"{name}-{i}" for i in range(len(reqs))]
    assert min(r.prompt_tokens for r in reqs) >= 64
    assert all(s.n_tokens >= 1 for r in reqs for s in r.segments)
    sizes = {}
    for r in reqs:
        assert len({s.seg_id for s in r.segments}) == len(r.segments)
        for s in r.segments:
            assert sizes.setdefault(s.seg_id, s.n_tokens) == s.n_tokens  # one id, one length


@pytest.mark.parametrize(
    "name, low, high",
    [("toolbench", 10, 300), ("agent", 26, 26), ("programming", 1, 512), ("videoqa", 4, 32), ("loogle", 1, 35)],
)
def test_output_lengths(name, low, high):
    outs = np.array([r.output_tokens for r in make_workload(name, WorkloadConfig(requests=2000))])
    assert outs.min() >= low and outs.max() <= high
    if name == "toolbench":
        assert 40 <= np.median(outs) <= 90 and outs.max() > 200


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_same_seed_same_stream_other_seed_differs(name):
    cfg = WorkloadConfig(requests=500, seed=11)
    first = make_workload(name, cfg)
    assert make_workload(name, cfg) == first
    other = make_workload(name, WorkloadConfig(requests=500, seed=12))
    assert other != first
    assert not {s.seg_id for r in first for s in r.segments} & {s.seg_id for r in other for s in r.segments}


def test_workloads_never_share_segment_ids():
    ids = {name: {s.seg_id for r in make_workload(name, WorkloadConfig(requests=400)) for s in r.segments}
           for name in WORKLOADS}
    names = sorted(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], (a, b)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_defaults_scale_with_nodes(name):
    small = make_workload(name, WorkloadConfig(nodes=2))
    big = make_workload(name, WorkloadConfig(nodes=8))
    assert len(big) == 4 * len(small)
    rate_small = len(small) / small[-1].arrival_s
    rate_big = len(big) / big[-1].arrival_s
    assert 3.4 < rate_big / rate_small < 4.6


def test_default_sizes_per_two_gpus():
    assert [len(make_workload(n)) for n in ("toolbench", "agent", "programming", "videoqa", "loogle", "mixed")] == [
        3600, 3600, 1500, 1500, 800, 3000]
    assert len(make_workload("loogle", WorkloadConfig(nodes=3))) == 1200
    loogle_docs = {s.seg_id for r in make_workload("loogle", WorkloadConfig(nodes=4)) for s in r.segments
                   if "/doc" in s.seg_id}
    assert 40 <= len(loogle_docs) <= 54


def test_explicit_rps_is_the_total_rate():
    reqs = make_workload("videoqa", WorkloadConfig(nodes=16, requests=4000, rps=50.0))
    assert abs(len(reqs) / reqs[-1].arrival_s / 50.0 - 1) < 0.1


@pytest.mark.parametrize("process, cv_low, cv_high", [("poisson", 0.9, 1.1), ("gamma", 1.5, 2.6)])
def test_arrival_rate_and_burstiness(process, cv_low, cv_high):
    times = make_arrivals(process, 20000, 25.0, np.random.default_rng(4), cv=2.0)
    assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
    assert abs(len(times) / times[-1] / 25.0 - 1) < 0.1
    assert cv_low < gap_cv(times) < cv_high


def test_gamma_workload_is_bursty_at_the_same_rate():
    poisson = make_workload("toolbench", WorkloadConfig(requests=8000, rps=20.0))
    gamma = make_workload("toolbench", WorkloadConfig(requests=8000, rps=20.0, arrival="gamma", burstiness_cv=2.0))
    for reqs in (poisson, gamma):
        assert abs(len(reqs) / reqs[-1].arrival_s / 20.0 - 1) < 0.1
    assert gap_cv(np.array([r.arrival_s for r in gamma])) > 1.5
    assert 0.9 < gap_cv(np.array([r.arrival_s for r in poisson])) < 1.1


def top_share(reqs, kind: str) -> float:
    counts = collections.Counter(s.seg_id for r in reqs for s in r.segments if f"/{kind}" in s.seg_id)
    return counts.most_common(1)[0][1] / len(reqs)


def test_zipf_popularity_is_skewed():
    skewed = make_workload("toolbench", WorkloadConfig(requests=4000))  # default zipf 1.1
    uniform = make_workload("toolbench", WorkloadConfig(requests=4000, zipf=0.0))
    assert top_share(skewed, "tool") > 0.12
    assert top_share(uniform, "tool") < 0.02
    loogle_skewed = make_workload("loogle", WorkloadConfig(zipf=1.1))
    assert top_share(loogle_skewed, "doc") > 3 * top_share(make_workload("loogle"), "doc")


def test_agent_turns_extend_the_previous_turn():
    reqs = make_workload("agent", WorkloadConfig(requests=2000, seed=2))
    episodes = collections.defaultdict(list)
    for r in reqs:
        episode = r.segments[-1].seg_id.rsplit("/", 1)[0]
        episodes[episode].append(r)
    multi = [turns for turns in episodes.values() if len(turns) > 1]
    assert len(multi) > 100
    for turns in multi:
        for prev, cur in zip(turns, turns[1:], strict=False):
            assert cur.arrival_s >= prev.arrival_s
            assert cur.segments[: len(prev.segments)] == prev.segments
            assert len(cur.segments) == len(prev.segments) + 1
    first_segments = collections.Counter(t[0].segments[0].seg_id for t in multi)
    assert first_segments.most_common(1)[0][1] > 1  # episodes of one task share its prompt


def test_mixed_contains_every_part_in_proportion():
    reqs = make_workload("mixed", WorkloadConfig(requests=5000, seed=1))
    parts = collections.Counter(r.workload for r in reqs)
    assert set(parts) == set(MIXED_WEIGHTS)
    for name, weight in MIXED_WEIGHTS.items():
        assert abs(parts[name] / len(reqs) - weight) < 0.03
    assert all(s.seg_id.startswith(f"mixed.{r.workload}/") for r in reqs for s in r.segments)
    assert abs(len(reqs) / reqs[-1].arrival_s / 8.0 - 1) < 0.1


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_large_streams_are_fast(name):
    start = time.perf_counter()
    reqs = make_workload(name, WorkloadConfig(nodes=128, requests=10000))
    assert len(reqs) == 10000
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "kwargs",
    [dict(nodes=0), dict(requests=0), dict(rps=0.0), dict(rps=float("inf")), dict(seed=-1),
     dict(arrival="weibull"), dict(burstiness_cv=0.0), dict(zipf=-1.0), dict(prefixes=0)],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        WorkloadConfig(**kwargs)


def test_unknown_workload_lists_the_choices():
    with pytest.raises(ValueError, match="toolbench"):
        make_workload("chatbot")


def test_prefix_override():
    reqs = make_workload("videoqa", WorkloadConfig(requests=3000, prefixes=5))
    videos = {s.seg_id for r in reqs for s in r.segments if "/video" in s.seg_id}
    assert len(videos) == 5


def test_fraction_model_fit_matches_moments():
    model = FractionModel.fit(0.88, 0.32, inner_std=0.03)
    draws = model.draw(np.random.default_rng(0), 200000)
    assert abs(draws.mean() - 0.88) < 0.01 and abs(draws.std() - 0.32) < 0.01
    assert 0.05 < model.none_prob < 0.2
