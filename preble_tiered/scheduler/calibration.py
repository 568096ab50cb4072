"""Fit the router's prefill and decode models from what nodes measure, and keep refining them.

Nodes report `(new_tokens, context_tokens, seconds)` prefill samples with their load reports.
The prefill calibrator keeps the most recent `max_samples`, refits `LinearPrefill` once it
has `min_samples` spread over at least `min_distinct` prompt sizes, and again every
`refit_every` new samples. Given the engines' step budget it fits per chunk, as a profile's
fit and the simulator price a prefill (`ChunkedPrefill`): the router and `preble admin
profile` then price a long prompt alike. A fit that predicts a negative or absurd time for
the sizes seen is rejected (the previous model stays), so a burst of odd samples cannot break
routing.

Nodes also report their decode-only steps summed per (batch size, context bucket). The
decode calibrator fits `LinearDecode` (step = a + b x batch + c x batch context) once they
cover two batch sizes and two context buckets, and refits after twice as many new steps each
time, with the same sanity check. Until then the router's decode model is flat
(`FlatDecode`): no decode figure it has not measured steers a request.

`CostLearner` holds both and turns their fits into the router's next cost model: the router's
load feed and the simulator (which prices as the router knows, not as the engines run) learn
through it alike. Pure code.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from preble_tiered.scheduler.cost_model import ChunkedPrefill, CostModel, LinearDecode, LinearPrefill, PrefillCost
from preble_tiered.scheduler.profile_fit import (CONTEXT_BUCKET, MIN_DECODE_BATCHES, MIN_DECODE_BUCKETS,
                                                  PREFILL_BUCKET, DecodeStepSums)


@dataclass(frozen=True)
class CalibrationConfig:
    min_samples: int = 8
    """Samples needed before the first fit."""
    min_distinct: int = 3
    """Distinct new-token sizes (bucketed by 64 tokens) needed: a fit on one size is degenerate."""
    refit_every: int = 16
    max_samples: int = 512

    def __post_init__(self) -> None:
        if self.min_samples < 4:
            raise ValueError(f"min_samples must be >= 4 (four coefficients), got {self.min_samples}")
        if self.refit_every <= 0 or self.max_samples < self.min_samples:
            raise ValueError("refit_every must be positive and max_samples >= min_samples")


class PrefillCalibrator:
    def __init__(self, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()
        self._samples: deque[tuple[int, int, float]] = deque(maxlen=self.config.max_samples)
        self._since_fit = 0
        self.fitted: PrefillCost | None = None
        self.fits = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, new_tokens: int, context_tokens: int, seconds: float) -> None:
        if new_tokens <= 0 or context_tokens < new_tokens or not 0.0 < seconds < 3600.0:
            return  # not a prefill measurement; ignore rather than poison the fit
        self._samples.append((new_tokens, context_tokens, seconds))
        self._since_fit += 1

    def maybe_refit(self, chunk: int | None = None) -> PrefillCost | None:
        """A newly fitted model when one is due and sane, else None.

        Args:
            chunk: the engines' token budget per step: the fit is per chunk of it and the model
                a `ChunkedPrefill` (None: one term per prefill, a `LinearPrefill`).
        """
        cfg = self.config
        if len(self._samples) < cfg.min_samples:
            return None
        if self.fitted is not None and self._since_fit < cfg.refit_every:
            return None
        if len({e // PREFILL_BUCKET for e, _, _ in self._samples}) < cfg.min_distinct:
            return None
        self._since_fit = 0
        try:
            per_chunk = LinearPrefill.fit(self._samples, chunk=chunk)
        except ValueError:
            self.rejected += 1
            return None
        model = ChunkedPrefill(per_chunk, chunk) if chunk else per_chunk
        if not _within_10x((model.seconds(e, c), t) for e, c, t in self._samples):
            self.rejected += 1
            return None
        self.fitted = model
        self.fits += 1
        return model


class DecodeCalibrator:
    """Decode-only steps (summed per batch size and context bucket) -> a `LinearDecode`.

    The first fit comes once the steps cover two batch sizes and two context buckets in three
    (batch, bucket) cells and `first_fit_steps` steps have arrived; each later refit waits for
    twice as many new steps as the one before (at most `max_refit_steps`), so a settled fit
    stops costing the router's loop a least-squares solve on every poll."""

    def __init__(self, first_fit_steps: int = 64, max_refit_steps: int = 1 << 20) -> None:
        if first_fit_steps <= 0 or max_refit_steps < first_fit_steps:
            raise ValueError("first_fit_steps must be positive and max_refit_steps >= first_fit_steps")
        self._sums = DecodeStepSums()
        self._since_fit = 0
        self._due = first_fit_steps
        self._max_due = max_refit_steps
        self.fitted: LinearDecode | None = None
        self.fits = 0
        self.rejected = 0

    def __len__(self) -> int:
        """(batch size, context bucket) cells measured."""
        return len(self._sums)

    def add(self, batch: int, context_tokens: float, seconds: float, steps: int) -> None:
        if self._sums.add(batch, context_tokens, seconds, steps):
            self._since_fit += steps

    def maybe_refit(self) -> LinearDecode | None:
        """A newly fitted model when one is due and sane, else None."""
        if self._since_fit < self._due:
            return None
        rows = self._sums.rows()
        if (len(rows) < MIN_DECODE_BUCKETS or len({b for b, *_ in rows}) < MIN_DECODE_BATCHES
                or len({int(c) // CONTEXT_BUCKET for _, c, _, _ in rows}) < 2):
            return None  # the per-sequence or the per-token term would be a guess
        self._since_fit = 0
        self._due = min(self._due * 2, self._max_due)
        try:
            model = self._sums.fit()
        except ValueError:
            self.rejected += 1
            return None
        if not _within_10x(((model.a + model.b * b + model.c * c) * 1e-3, t) for b, c, t, _ in rows):
            self.rejected += 1
            return None
        self.fitted = model
        self.fits += 1
        return model


class CostLearner:
    """What the router learns of its engines' speed: their clean prefills and decode-only
    steps, refitted (each calibrator on its own schedule) into the cost model it routes on."""

    def __init__(self, prefill: CalibrationConfig | None = None) -> None:
        self.prefill = PrefillCalibrator(prefill)
        self.decode = DecodeCalibrator()

    def add_prefill(self, new_tokens: int, context_tokens: int, seconds: float) -> None:
        self.prefill.add(new_tokens, context_tokens, seconds)

    def add_decode(self, batch: int, context_tokens: float, seconds: float, steps: int) -> None:
        self.decode.add(batch, context_tokens, seconds, steps)

    def refit(self, cost: CostModel, chunk: int | None = None) -> CostModel | None:
        """`cost` with whichever of its prefill and decode models a due refit replaced, or
        None when neither changed. `chunk`: the engines' token budget per step."""
        prefill, decode = self.prefill.maybe_refit(chunk), self.decode.maybe_refit()
        if prefill is None and decode is None:
            return None
        return replace(cost, prefill=prefill or cost.prefill, decode=decode or cost.decode)


def _within_10x(predicted_measured) -> bool:
    """A fit is sane when it is positive everywhere the measurements live and within 10x of
    each: a burst of odd samples must not break routing."""
    return all(p > 0 and t / 10 <= p <= t * 10 for p, t in predicted_measured)
