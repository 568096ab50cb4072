import pytest

from preble_tiered.scheduler.calibration import CalibrationConfig, CostLearner, DecodeCalibrator, PrefillCalibrator
from preble_tiered.scheduler.cost_model import ChunkedPrefill, FlatDecode, LinearDecode, LinearPrefill, engine_cost_model
from preble_tiered.scheduler.clock import ManualClock
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig

TRUE = LinearPrefill(15.0, 0.2, 0.001, 1e-5, causal=True)  # the form the calibrator fits


def feed(cal, sizes, model=TRUE, cached=64):
    for e in sizes:
        cal.add(e, e + cached, model.seconds(e, e + cached))


def test_first_fit_waits_for_enough_distinct_sizes_then_recovers_the_model():
    cal = PrefillCalibrator(CalibrationConfig(min_samples=8, min_distinct=3, refit_every=4))
    feed(cal, [512] * 10)
    assert cal.maybe_refit() is None  # one size only: degenerate
    feed(cal, [128, 1024, 2048, 3000])
    feed(cal, [128, 1024, 2048, 3000], cached=2048)
    fitted = cal.maybe_refit()
    assert fitted is not None and fitted.causal  # the engine's attention is causal: so is the fit
    for e in (100, 700, 2500):
        for cached in (0, 64, 1000):
            assert fitted.seconds(e, e + cached) == pytest.approx(TRUE.seconds(e, e + cached), rel=1e-4)
    assert cal.maybe_refit() is None  # not due until refit_every more samples
    feed(cal, [256, 512, 768, 1536])
    assert cal.maybe_refit() is not None and cal.fits == 2


def test_given_the_step_budget_the_fit_is_per_chunk_and_prices_long_prompts_as_the_engine_runs_them():
    true = ChunkedPrefill(TRUE, 512)  # the engine runs prompts past its budget in chunks of 512
    sizes = [128, 256, 512, 1024, 2048, 3000, 4000]
    cal = PrefillCalibrator(CalibrationConfig(min_samples=8, min_distinct=3, refit_every=4))
    feed(cal, sizes * 2, model=true)
    fitted = cal.maybe_refit(chunk=512)
    assert isinstance(fitted, ChunkedPrefill) and fitted.chunk == 512
    for got, want in zip((fitted.per_chunk.a, fitted.per_chunk.b, fitted.per_chunk.d), (TRUE.a, TRUE.b, TRUE.d)):
        assert got == pytest.approx(want, rel=0.05)
    for e in (100, 1500, 3500):
        assert fitted.seconds(e, e + 64) == pytest.approx(true.seconds(e, e + 64), rel=0.01)


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


DECODE = LinearDecode(3.0, 0.3, 0.001)  # ms: 3 + 0.3 per sequence + 1 us per context token


def feed_steps(cal, batches, contexts, model=DECODE, steps=64):
    for b in batches:
        for c in contexts:
            cal.add(b, b * c, model.step_seconds(None, b * c, b), steps)


def test_decode_fit_waits_for_two_batch_sizes_then_recovers_the_step_model():
    cal = DecodeCalibrator(first_fit_steps=64)
    feed_steps(cal, [4], [100, 600, 1200, 2000])
    assert cal.maybe_refit() is None  # one batch size: the per-sequence term is unknowable
    feed_steps(cal, [1, 16], [100, 1200])
    fitted = cal.maybe_refit()
    assert fitted is not None
    assert (fitted.a, fitted.b, fitted.c) == pytest.approx((DECODE.a, DECODE.b, DECODE.c), rel=1e-3)
    assert cal.maybe_refit() is None  # not due until more steps
    feed_steps(cal, [8], [300], steps=64)
    assert cal.maybe_refit() is None  # the next refit waits for twice as many: 128
    feed_steps(cal, [8], [300], steps=64)
    assert cal.maybe_refit() is not None and cal.fits == 2


def test_decode_fit_waits_for_two_context_buckets():
    cal = DecodeCalibrator(first_fit_steps=1)
    for b in (1, 4, 16):  # three batch sizes, every batch's context in one 256-token bucket
        cal.add(b, 100, DECODE.step_seconds(None, 100, b), 64)
    assert len(cal) == 3 and cal.maybe_refit() is None
    feed_steps(cal, [1, 16], [1200])
    assert cal.maybe_refit() is not None


def test_decode_nonsense_is_ignored_and_an_insane_fit_is_rejected():
    cal = DecodeCalibrator(first_fit_steps=1)
    cal.add(0, 100, 0.01, 5)
    cal.add(2, 100, 0.01, 0)
    cal.add(2, -1, 0.01, 5)
    cal.add(2, 100, 0.0, 5)
    assert len(cal) == 0
    for i, (b, c) in enumerate([(1, 100), (2, 600), (4, 1200), (8, 2000), (16, 3000), (2, 4000)]):
        cal.add(b, c, 1e-6 if i % 2 else 5.0, 10)  # no 3-term model fits these within 10x
    assert cal.maybe_refit() is None and cal.rejected >= 1 and cal.fitted is None


def test_the_router_decodes_flat_until_it_has_measured():
    cost = engine_cost_model("t", 8192, 4096)
    assert isinstance(cost.decode, FlatDecode)
    assert cost.decode_step_s(100, 1) == cost.decode_step_s(10_000, 16) > 0


def test_the_cost_learner_swaps_in_each_model_once_its_fit_is_due_and_keeps_the_rest():
    start = engine_cost_model("t", 8192, 4096)
    learner = CostLearner(CalibrationConfig(min_samples=8, min_distinct=3, refit_every=4))
    assert learner.refit(start) is None  # nothing measured: the router keeps its guess
    feed(learner.prefill, [128, 512, 1024, 2048] * 2)
    cost = learner.refit(start, chunk=4096)
    assert cost is not None and cost is not start
    assert isinstance(cost.prefill, ChunkedPrefill) and cost.prefill.seconds(700, 764) == pytest.approx(
        TRUE.seconds(700, 764), rel=1e-4)
    assert cost.decode is start.decode and cost.links is start.links and cost.hbm_tokens == start.hbm_tokens
    assert learner.refit(cost, chunk=4096) is None  # neither fit is due again yet
    for b in (1, 4, 16):
        for c in (100, 1200):
            learner.add_decode(b, c, DECODE.step_seconds(None, c, b), 64)
    later = learner.refit(cost, chunk=4096)
    assert isinstance(later.decode, LinearDecode) and later.prefill is cost.prefill
