"""Cost model: the published prefill fits, fitting, KV sizes, links, presets."""

import dataclasses

import numpy as np
import pytest

from preble_tiered.scheduler.cost_model import (
    COST_PRESETS,
    GB,
    LinearPrefill,
    Link,
    Links,
    PrebleMistralA6000Prefill,
    attention_pairs,
    cost_preset,
)
from preble_tiered.types import Tier


def mistral():
    return cost_preset("mistral-7b-a6000")


@pytest.mark.parametrize("tokens, seconds", [(1000, 0.125), (4000, 0.539), (8000, 1.15), (24000, 4.4)])
def test_mistral_a6000_reproduces_the_design_figures(tokens, seconds):
    assert mistral().prefill_s(tokens, tokens) == pytest.approx(seconds, rel=0.02)


def test_mistral_prefill_pieces_by_hand():
    p = PrebleMistralA6000Prefill()
    # e < 192: flat 22 ms, attention 0.32/2 (c <= 1024, e <= 1024), no e*c term.
    assert p.seconds(100, 100) == pytest.approx((22 + 0.16) / 0.9 * 1e-3)
    # 192 <= e < 384: quadratic piece.
    e = 300
    assert p.seconds(e, e) == pytest.approx((-118 + 1.25 * e - 2.56e-3 * e * e + 0.16) / 0.9 * 1e-3)
    # e = 512 new tokens with 4096 of context: attention halved (e <= 1024), e*c > 1024^2.
    e, c = 512, 4096
    expect = 0.10842571 * e + 4.21 + (1.86e-4 * c + 0.159) / 2 + 1.13e-3 * e + 1.75e-3 * c + 2.19e-6 * e * c
    assert p.seconds(e, c) == pytest.approx(expect / 0.9 * 1e-3)
    # Context shorter than the new tokens is taken as the new tokens.
    assert p.seconds(2000, 10) == p.seconds(2000, 2000)
    assert p.seconds(0, 5000) == 0.0


def test_mistral_prefill_grows_with_context_for_the_same_new_tokens():
    p = PrebleMistralA6000Prefill()
    assert p.seconds(512, 512) < p.seconds(512, 4096) < p.seconds(512, 16384)


def test_llama70b_formula_at_a_point_by_hand():
    cm = cost_preset("llama3-70b-h100-tp2")
    # 18.67 + 0.0799*1000 + 2.69e-3*3000 + 7.44e-7*1000*3000 = 108.872 ms
    assert cm.prefill_s(1000, 3000) == pytest.approx(0.108872)
    assert cm.prefill_s(0, 3000) == 0.0
    assert cm.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2


def test_kv_bytes_per_token_mistral():
    assert mistral().kv_bytes_per_token == 131072
    assert mistral().hbm_tokens == 198_516


@pytest.mark.parametrize("causal", [True, False])
def test_fit_recovers_known_coefficients_from_noiseless_samples(causal):
    true = LinearPrefill(12.5, 0.08, 0.003, 6e-7, causal=causal)
    samples = [(e, c, true.seconds(e, c)) for e in (64, 512, 2048, 8000) for c in (e, e + 1000, e + 20000)]
    fit = LinearPrefill.fit(samples, causal=causal)
    assert np.allclose([fit.a, fit.b, fit.c, fit.d], [12.5, 0.08, 0.003, 6e-7], rtol=1e-6)
    assert fit.causal is causal


def test_causal_attention_counts_each_new_token_against_what_precedes_it():
    """4 new tokens on 6 cached: they attend to 7, 8, 9 and 10 tokens (34 pairs); Preble's
    form charges 4 x 10. On nothing cached the causal form charges half (plus the diagonal)."""
    attn = LinearPrefill(0.0, 0.0, 0.0, 1.0, causal=True)
    assert attn.seconds(4, 10) == pytest.approx(34e-3)
    assert LinearPrefill(0.0, 0.0, 0.0, 1.0).seconds(4, 10) == pytest.approx(40e-3)
    assert attn.seconds(1000, 1000) == pytest.approx(1000 * 1001 / 2 * 1e-3)
    assert attention_pairs(4, 10, causal=True) == 34 and attention_pairs(4, 10, causal=False) == 40


def test_a_fit_of_the_wrong_form_misprices_what_the_right_one_recovers():
    """Samples from a causal engine across prompt sizes on short and long contexts: the causal
    fit prices every one exactly; Preble's e*ctx cannot, and misses some by more than 5%."""
    true = LinearPrefill(10.0, 0.17, 0.001, 2.6e-4, causal=True)
    shapes = [(e, cached + e) for e in (32, 64, 128, 256, 512, 1024) for cached in (0, 512, 2048)]
    samples = [(e, c, true.seconds(e, c)) for e, c in shapes]
    causal, flat = LinearPrefill.fit(samples), LinearPrefill.fit(samples, causal=False)
    assert max(abs(causal.seconds(e, c) / t - 1) for e, c, t in samples) < 1e-6
    assert max(abs(flat.seconds(e, c) / t - 1) for e, c, t in samples) > 0.05


def test_fit_accepts_an_iterator():
    true = LinearPrefill(1.0, 0.1, 0.01, 1e-6, causal=True)
    fit = LinearPrefill.fit((e, c, true.seconds(e, c)) for e, c in [(10, 10), (100, 500), (1000, 1000), (50, 4000), (700, 9000)])
    assert fit.seconds(300, 3000) == pytest.approx(true.seconds(300, 3000))


def test_fit_rejects_fewer_than_four_samples():
    with pytest.raises(ValueError, match="at least 4 samples"):
        LinearPrefill.fit([(1, 1, 0.1), (2, 2, 0.2), (3, 3, 0.3)])


def test_fit_rejects_identical_samples():
    with pytest.raises(ValueError, match="degenerate"):
        LinearPrefill.fit([(100, 100, 0.1)] * 5)


def test_link_time_is_latency_plus_bytes_over_bandwidth():
    link = Link(2 * GB, 1e-3)
    assert link.seconds(4 * GB) == pytest.approx(2.001)
    assert link.seconds(0) == 0.0  # nothing to move: no latency either
    with pytest.raises(ValueError, match="bandwidth"):
        Link(0)


def test_fetch_and_pull_use_the_tier_links_and_kv_size():
    cm = mistral()
    kvb = 131072
    assert cm.fetch_s(Tier.HBM, 1000) == 0.0
    assert cm.fetch_s(Tier.DRAM, 1000) == pytest.approx(20e-6 + 1000 * kvb / 25e9)
    assert cm.fetch_s(Tier.DISK, 1000) == pytest.approx(100e-6 + 1000 * kvb / 5e9)
    assert cm.pull_s(1000) == pytest.approx(50e-6 + 1000 * kvb / 12.5e9)
    slow = cm.with_links(Links(dram=Link(1e3)))
    assert slow.fetch_s(Tier.DRAM, 1000) == pytest.approx(1000 * kvb / 1e3)
    assert slow.pull_s(1000) == cm.pull_s(1000)  # other links keep their presets
    assert cm.fetch_s(Tier.DRAM, 1000) == pytest.approx(20e-6 + 1000 * kvb / 25e9)  # original unchanged
    assert dataclasses.replace(cm, links=Links(net=Link(1.0))).pull_s(1) == pytest.approx(kvb)


def test_decode_step_is_a_roofline():
    cm = mistral()
    weights = 7.24e9 * 2
    achieved = 768e9 * 0.8  # 80% of the A6000's datasheet bandwidth
    assert cm.decode_step_s(0, 1) == pytest.approx(weights / achieved + 0.004)
    assert cm.decode_step_s(10_000, 4) == pytest.approx((weights + 10_000 * 131072) / achieved + 0.004)
    assert cm.decode_step_s(10_000, 0) == 0.0
    # A 7B fp16 model at batch 1 on an A6000: ~27 ms, in the measured 23-30 ms range.
    assert 0.023 < cm.decode_step_s(2000, 1) < 0.030


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError) as err:
        cost_preset("gpt-5-on-a-toaster")
    for name in COST_PRESETS:
        assert name in str(err.value)
