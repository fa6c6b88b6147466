"""llama.cpp's perplexity protocol as pure functions (edgeprune/evaluation/llama_ppl.py), on hand-made logits
whose answers are worked out by hand in each test."""

import math

import numpy as np
import pytest

from edgeprune.evaluation import llama_ppl as lp

LN2 = math.log(2)


def test_chunks_are_whole_disjoint_and_start_with_bos():
    """Guards: chunks that overlap or include a partial tail (llama.cpp takes len // n_ctx whole chunks), a
    chunk whose first token is not BOS (llama.cpp replaces it), or BOS put in when the vocab adds none."""
    ids = [0, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # BOS 0 + 9 text tokens: two chunks of 4, two left over
    assert lp.make_chunks(ids, 4, None, bos=0).tolist() == [[0, 11, 12, 13], [0, 15, 16, 17]]
    assert lp.make_chunks(ids, 4, 1, bos=0).tolist() == [[0, 11, 12, 13]]
    assert lp.make_chunks(ids, 4, None, bos=None).tolist() == [[0, 11, 12, 13], [14, 15, 16, 17]]
    assert lp.make_chunks(ids, 4, 5, bos=None).shape == (2, 4)  # --chunks beyond the text: capped


def test_only_the_second_half_of_a_chunk_is_scored():
    """n_ctx = 5: first = 2, rows 2 and 3 predict tokens 3 and 4 (two scored; n_ctx - 1 - n_ctx//2).

    Row 2 gives token 3 (= 2) p = 2/4, row 3 gives token 4 (= 0) p = 1/8: NLL ln 2 and ln 8, ppl = exp(ln 4) = 4.
    Rows 0, 1 (first half) and 4 (predicts past the chunk) are uniform and must not count.
    Guards: scoring the whole chunk (ppl -> 3-ish), an off-by-one pairing row i with token i."""
    uniform = np.zeros(3)
    logits = np.stack([uniform, uniform, np.log([1.0, 1, 2]), np.log([1.0, 3, 4]), uniform])
    chunk = np.array([0, 1, 1, 2, 0])
    nll = lp.chunk_nll(logits, chunk)
    assert nll == pytest.approx([LN2, 3 * LN2], rel=1e-12)
    assert lp.scored_per_chunk(5) == 2 and lp.scored_per_chunk(512) == 255
    ppl, unc = lp.ppl_estimate(nll)
    # mean ln 4; var = (1 + 9)/2 ln²2 - 4 ln²2 = ln²2; standard error sqrt(var / (n - 1)) = ln 2; unc = ppl * ln 2
    assert ppl == pytest.approx(4.0, rel=1e-12) and unc == pytest.approx(4 * LN2, rel=1e-12)


def test_running_estimate_is_cumulative_over_chunks():
    """llama.cpp prints exp(mean NLL so far) after each chunk. Guards: a per-chunk (not cumulative) estimate."""
    assert lp.running_ppl([np.array([LN2]), np.array([3 * LN2])]) == pytest.approx([2.0, 4.0], rel=1e-12)


def test_log_prob_codes_match_llama_cpp_for_a_hand_row():
    """Row [0, -1, -12, -20]: the floor is max - 16 = -16 (the -20 is clamped to code 0), scale = 16 / 65535,
    codes round((x + 16) / scale) = 65535, 61439 (15/16 of 65535 = 61439.06), 16384 (4/16: 16383.75), 0.
    Guards: no clamp to 16 nats (scale too coarse), truncation instead of rounding."""
    base = lp.quantize_log_probs(np.array([[0.0, -1.0, -12.0, -20.0]]))
    lse = math.log(1 + math.exp(-1) + math.exp(-12) + math.exp(-20))
    assert base.codes.tolist() == [[65535, 61439, 16384, 0]]
    assert base.scale[0] == pytest.approx(16 / 65535, rel=1e-6)
    assert base.log_probs()[0] == pytest.approx([-lse, -1 - lse, -12 - lse, -16 - lse], abs=2e-4)


def test_kld_terms_for_a_hand_pair():
    """Base p = (1/2, 1/2), model q = (1/4, 3/4), next token 1:
    KL(p||q) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3); NLL ln(4/3) vs base ln 2; Δp = 3/4 - 1/2 = 1/4.
    The base's top is token 0 (a tie goes to the first index, as llama.cpp's strict > scan), the model's token 1.
    Guards: KL in the wrong direction (KL(q||p) = 0.1308), Δp with the sign flipped, argmax on ties."""
    base = lp.quantize_log_probs(np.log([[0.5, 0.5]]))
    t = lp.kld_terms(np.log([[0.25, 0.75]]), base, np.array([1]))
    assert t.kld[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert t.nll[0] == pytest.approx(math.log(4 / 3), rel=1e-9) and t.nll_base[0] == pytest.approx(LN2, rel=1e-6)
    assert t.p_diff[0] == pytest.approx(0.25, rel=1e-6)
    assert t.same_top.tolist() == [False]


def test_kld_sum_skips_base_log_probs_below_minus_16():
    """Base: token 0 at logit 0 and 20,000 tokens at -17; model: uniform over all 20,001. llama.cpp's sum keeps
    only token 0 (the others sit on the floor code): p0 (ln p0 + ln 20001). The full KL adds the tail's
    20,000 p_i (ln p_i + ln 20001), about -5.9e-3, so the two differ. Guards: summing the floor tokens too."""
    n = 20_000
    row = np.concatenate([[0.0], np.full(n, -17.0)])
    base = lp.quantize_log_probs(row[None])
    t = lp.kld_terms(np.zeros((1, n + 1)), base, np.array([0]))
    lse = math.log(1 + n * math.exp(-17))
    llama = math.exp(-lse) * (-lse + math.log(n + 1))
    full = llama + n * math.exp(-17 - lse) * (-17 - lse + math.log(n + 1))
    assert t.kld[0] == pytest.approx(llama, rel=1e-5)
    assert abs(full - llama) > 4e-3


def test_percentiles_median_and_uncertainty_rules():
    """[1, 2, 3, 4]: median (2 + 3)/2; 90th percentile at 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3) = 3.7.
    Uncertainty is 0 up to 10 values (llama.cpp's count > 10 rule). Guards: numpy's default percentile
    conventions drifting, an uncertainty printed for tiny samples."""
    v = np.array([1.0, 2, 3, 4])
    assert lp.median(v) == 2.5 and lp.median(v[:3]) == 2.0
    assert lp.percentile(v, 0.9) == pytest.approx(3.7) and lp.percentile(v, 0.0) == 1 and lp.percentile(v, 1) == 4
    assert lp.mean_and_uncertainty(np.arange(10.0)) == (4.5, 0.0)
    # 11 values 0..10: mean 5, population variance 10, standard error sqrt(10 / 10) = 1
    assert lp.mean_and_uncertainty(np.arange(11.0)) == pytest.approx((5.0, 1.0))


def test_kld_summary_of_hand_terms():
    """Four positions: KLD 0.1..0.4, Δp (0.1, -0.1, 0.2, 0), 3 of 4 same top, NLL ln 2 vs base ln 4.
    Mean KLD 0.25, its median 0.25, 99th pct 0.3 + 0.97 * 0.1; RMS Δp sqrt(0.06 / 4); same top 0.75 ± sqrt(0.75 *
    0.25 / 3) = 0.25; PPL 2 vs base 4, ratio 1/2. Guards: a mislabelled or mis-scaled statistic."""
    t = lp.KLDTerms(nll=np.full(4, LN2), nll_base=np.full(4, 2 * LN2), kld=np.array([0.1, 0.2, 0.3, 0.4]),
                    p_diff=np.array([0.1, -0.1, 0.2, 0.0]), same_top=np.array([True, True, False, True]))
    s = lp.kld_summary(t)
    assert s["kld_mean"] == pytest.approx(0.25) and s["kld_median"] == pytest.approx(0.25)
    assert s["kld_p99"] == pytest.approx(0.397, rel=1e-6) and s["kld_max"] == pytest.approx(0.4)
    assert s["kld_min"] == pytest.approx(0.1) and s["kld_p0_1"] == pytest.approx(0.1003, rel=1e-5)
    assert s["dp_rms"] == pytest.approx(math.sqrt(0.015)) and s["dp_mean"] == pytest.approx(0.05)
    assert s["same_top"] == 0.75 and s["same_top_unc"] == pytest.approx(0.25)
    assert s["ppl"] == pytest.approx(2.0) and s["parent_ppl"] == pytest.approx(4.0)
    assert s["ppl_ratio"] == pytest.approx(0.5) and s["ln_ppl_ratio"] == pytest.approx(-LN2)
    assert s["positions"] == 4
