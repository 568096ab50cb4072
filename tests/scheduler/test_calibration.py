import pytest

from preble_tiered.scheduler.calibration import CalibrationConfig, PrefillCalibrator
from preble_tiered.scheduler.cost_model import LinearPrefill, engine_cost_model
from preble_tiered.scheduler.clock import ManualClock
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig

TRUE = LinearPrefill(15.0, 0.2, 0.001, 1e-5)


def feed(cal, sizes, model=TRUE):
    for e in sizes:
        cal.add(e, e + 64, model.seconds(e, e + 64))


def test_first_fit_waits_for_enough_distinct_sizes_then_recovers_the_model():
    cal = PrefillCalibrator(CalibrationConfig(min_samples=8, min_distinct=3, refit_every=4))
    feed(cal, [512] * 10)
    assert cal.maybe_refit() is None  # one size only: degenerate
    feed(cal, [128, 1024, 2048, 3000])
    fitted = cal.maybe_refit()
    assert fitted is not None
    for e in (100, 700, 2500):
        assert fitted.seconds(e, e + 64) == pytest.approx(TRUE.seconds(e, e + 64), rel=0.02)
    assert cal.maybe_refit() is None  # not due until refit_every more samples
    feed(cal, [256, 512, 768, 1536])
    assert cal.maybe_refit() is not None and cal.fits == 2


def test_nonsense_samples_are_ignored_and_an_insane_fit_is_rejected():
    cal = PrefillCalibrator(CalibrationConfig(min_samples=4, min_distinct=2, refit_every=1))
    cal.add(0, 10, 0.1)
    cal.add(10, 5, 0.1)  # context shorter than the new tokens
    cal.add(100, 100, -1.0)
    assert len(cal) == 0
    # samples no 4-term linear model can fit within 10x: alternating tiny/huge times
    for i, e in enumerate([100, 200, 300, 400, 500, 600]):
        cal.add(e, e, 1e-5 if i % 2 else 100.0)
    assert cal.maybe_refit() is None and cal.rejected >= 1 and cal.fitted is None


def test_scheduler_update_cost_reaches_the_planner_and_mark_up_revives_a_node():
    s = Scheduler(SchedulerConfig(policy="e2_tiered", n_nodes=2), engine_cost_model("t", 8192, 4096), ManualClock())
    s.mark_down(1)
    assert not s.cluster.nodes[1].alive
    s.mark_up(1, hbm_capacity_tokens=2048)
    assert s.cluster.nodes[1].alive and s.cluster.nodes[1].hbm_capacity_tokens == 2048
    new = engine_cost_model("t", 8192, 4096, prefill=TRUE)
    s.update_cost(new)
    assert s.cluster.cost is new and s.policy.planner.cost is new
    with pytest.raises(ValueError):
        s.mark_up(0, hbm_capacity_tokens=1)
    with pytest.raises(ValueError):
        engine_cost_model("t", 8191, 4096)
