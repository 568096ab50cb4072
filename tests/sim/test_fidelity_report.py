"""The fidelity report's per-request table (benchmarks/fidelity_report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fidelity_report import ttft_by_request  # noqa: E402


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
