"""The fidelity report's per-request table (benchmarks/fidelity_report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fidelity_report import decisions_same, repeatability, requests_decided_alike, ttft_by_request  # noqa: E402


def run(workload: str, new: list[int], others: list[int], measured: list[float], predicted: list[float],
        engine: list[float | None] | None = None) -> dict:
    reqs = {"id": [f"r{i}" for i in range(len(new))], "new_tokens": new, "others_in_flight": others,
            "measured_ttft_ms": measured, "predicted_ttft_ms": predicted}
    return {"workload": workload, "requests": reqs if engine is None else {**reqs, "engine_ttft_ms": engine}}


def test_ttft_by_request_pools_a_workloads_runs_by_new_tokens_and_by_arrival():
    runs = [run("chat", [40, 300, 300], [0, 0, 2], [50.0, 100.0, 140.0], [50.0, 90.0, 100.0], [40.0, 86.0, None]),
            run("chat", [100, 3000], [1, 0], [70.0, 900.0], [56.0, 990.0]),
            run("longdoc", [2048], [0], [800.0], [880.0]),
            {"workload": "longdoc", "requests": {"new_tokens": [10]}}]  # no prediction stored: left out
    rows = {(g["workload"], g["requests"]): g for g in ttft_by_request(runs)}
    small, mid, big = rows["chat", "0-127 new tokens"], rows["chat", "128-511 new tokens"], rows["chat", "2048+ new tokens"]
    assert (small["n"], small["measured_ms"], small["predicted_ms"]) == (2, 60.0, 53.0)
    assert (mid["n"], mid["measured_ms"], mid["predicted_ms"]) == (2, 120.0, 95.0)
    assert mid["error"] == pytest.approx(95 / 120 - 1)
    assert big["n"] == 1 and big["error"] == pytest.approx(0.1)
    assert ("chat", "512-2047 new tokens") not in rows  # no request in that band
    alone, beside = rows["chat", "sent alone"], rows["chat", "sent beside others"]
    assert (alone["n"], beside["n"]) == (3, 2)
    assert beside["measured_ms"] == 105.0 and beside["predicted_ms"] == 78.0
    assert rows["longdoc", "2048+ new tokens"]["n"] == 1 and rows["longdoc", "sent alone"]["n"] == 1
    # the engine's part, where it ran the request alone: only the first run reported it
    assert mid["engine_alone"] == {"n": 1, "engine_ms": 86.0, "measured_ms": 100.0}
    assert alone["engine_alone"] == {"n": 2, "engine_ms": 63.0, "measured_ms": 75.0}
    assert "engine_alone" not in big and "engine_alone" not in rows["longdoc", "sent alone"]


def lat_run(load: str, policy: str, measured: float, predicted: float) -> dict:
    side = lambda v: {"ttft": {"mean": v / 10, "p99": v / 5}, "latency": {"mean": v, "p99": 2 * v}}  # noqa: E731
    return {"workload": "chat", "load": load, "policy": policy, "measured": side(measured), "predicted": side(predicted)}


def test_repeatability_keeps_the_policy_pairs_both_real_runs_ordered_alike_and_checks_the_prediction_on_them():
    now = {"runs": [lat_run("light", "a", 1.0, 1.3), lat_run("light", "b", 1.1, 1.2), lat_run("light", "c", 2.0, 1.9),
                    lat_run("heavy", "a", 3.0, 3.0), lat_run("heavy", "b", 4.0, 4.0)]}
    # light: a and b swap between the runs, c is the slowest in both; heavy: only "a" was measured before
    before = {"runs": [lat_run("light", "a", 1.2, 0.0), lat_run("light", "b", 1.1, 0.0), lat_run("light", "c", 2.5, 0.0),
                       lat_run("heavy", "a", 3.3, 0.0)]}
    rp = repeatability(now, before)
    assert rp["pairs_measured"] == 3  # light's three pairs; heavy has one policy in both runs
    got = {(p["faster"], p["slower"]): p["predicted_same"] for p in rp["pairs"]}
    assert got == {("a", "c"): True, ("b", "c"): True}  # a-b swapped between the runs: left out
    assert [r["same"] for r in rp["rankings"]] == [False, False]  # light: a and b swapped; heavy: b is new
    assert rp["median_abs"]["latency_mean"] == pytest.approx((1 / 11 + 1 / 6) / 2)  # of 1/6, 0, 1/5 and 1/11
    now["runs"][2]["predicted"]["latency"]["mean"] = 1.0  # the twin now puts c first: both kept pairs wrong
    assert not any(p["predicted_same"] for p in repeatability(now, before)["pairs"])


def test_decisions_are_compared_by_branch_counts_where_both_sides_have_them():
    def r(measured, predicted):
        return {"measured": {"branches": measured} if measured else {}, "predicted": {"branches": predicted}}
    runs = [r({"explore": 9, "exploit": 21}, {"exploit": 21, "explore": 9}),  # same counts, any order
            r({"explore": 9, "exploit": 19, "rebalance": 2}, {"explore": 9, "exploit": 21}),
            r(None, {"baseline": 30})]  # an older run without the real router's counts: left out
    assert decisions_same(runs) == "1/2"


def test_requests_decided_alike_need_the_same_branch_and_the_same_new_tokens_to_a_block():
    q = {"branch": ["explore", "exploit", "exploit", "rebalance"], "predicted_branch": ["explore", "exploit", "explore", "exploit"],
         "new_tokens": [3000, 64, 64, 2000], "predicted_new_tokens": [3010, 2900, 64, 2000]}
    # 1: same; 2: the twin recomputed a document the real run had cached; 3, 4: another branch
    assert requests_decided_alike([{"requests": q}, {"requests": {"new_tokens": [1]}}]) == (1, 4)
    assert requests_decided_alike([{"requests": {"new_tokens": [1]}}]) is None  # no branches recorded


def test_the_learning_row_is_summarised_beside_the_calibrations_where_every_run_has_it():
    from fidelity_report import errors, summary_by_calibration, within

    def side(ttft, lat):
        return {"ttft": {"mean": ttft, "p99": 2 * ttft}, "latency": {"mean": lat, "p99": 2 * lat}, "cached_token_share": 0.5}

    def alt(lat):
        p = side(0.1, lat)
        e = errors(side(0.1, 1.0), p)
        return {"predicted": p, "error": e, "within": within(e)}

    runs = [{"workload": "chat", "load": "light", "policy": pol, "measured": side(0.1, 1.0), **alt(1.0),
             "alternatives": {"first": alt(1.0), "before": alt(1.0), "learns": alt(lat)}}
            for pol, lat in (("a", 1.0), ("b", 1.3))]
    doc = {"runs": runs, "summary": {"ttft_mean": "2/2"}}
    got = summary_by_calibration(doc)
    assert list(got) == ["first", "before", "learns", "bracket"]
    assert got["learns"]["latency_mean"] == "1/2" and got["first"]["latency_mean"] == "2/2"  # b learns 30% slow
    del runs[1]["alternatives"]["learns"]  # an older run without the row: left out
    assert "learns" not in summary_by_calibration(doc)
