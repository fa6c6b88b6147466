"""Pure evaluation maths on hand-made arrays: NLL terms, KL divergence, paired bootstrap."""

import math

import numpy as np
import pytest

from edgeprune.evaluation.metrics import kl_per_position, log_softmax, pair_terms, paired_bootstrap, token_nll


def test_token_nll_matches_hand_values():
    logits = np.array([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [5.0, 5.0, 5.0]])
    tokens = [1, 0, 2]
    # row 0 (uniform) predicts token 0... scored tokens are tokens[1:] = [0, 2]
    got = token_nll(logits, tokens)
    assert got == pytest.approx([math.log(3), math.log(4)])  # p(0|uniform)=1/3, p(2|[2,1,1]/4)=1/4


def test_kl_is_zero_for_identical_and_matches_two_class_formula():
    x = np.random.default_rng(0).normal(size=(4, 7))
    assert kl_per_position(x, x + 3.0) == pytest.approx(np.zeros(4), abs=1e-12)  # shift-invariant
    p, q = 0.8, 0.5
    ref, new = np.log([[p, 1 - p]]), np.log([[q, 1 - q]])
    want = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert kl_per_position(ref, new)[0] == pytest.approx(want)
    assert np.exp(log_softmax(ref)).sum() == pytest.approx(1.0)


def test_bootstrap_ci_covers_true_difference_at_nominal_rate():
    rng = np.random.default_rng(1)
    true_diff, covered = -0.10, 0
    for trial in range(100):
        # paired items: a shared difficulty makes the two models' answers correlated, as in real evals
        easy = rng.random(300) < 0.5
        a = np.where(easy, rng.random(300) < 0.9, rng.random(300) < 0.3).astype(float)
        b = np.where(easy, rng.random(300) < 0.8, rng.random(300) < 0.2).astype(float)
        r = paired_bootstrap(a, b, iters=1000, seed=trial)
        covered += r["ci_low"] <= true_diff <= r["ci_high"]
        assert r["ci_low"] <= r["diff"] <= r["ci_high"]
    assert 88 <= covered <= 100  # 95% nominal; 100 trials


def test_bootstrap_ci_is_zero_width_for_identical_models_and_rejects_unpaired():
    a = np.array([1.0, 0.0, 1.0, 1.0])
    r = paired_bootstrap(a, a.copy(), iters=200)
    assert r["diff"] == r["ci_low"] == r["ci_high"] == 0.0
    big = paired_bootstrap(np.zeros(400), np.r_[np.ones(200), np.zeros(200)], iters=500)
    assert big["diff"] == 0.5 and 0.4 < big["ci_low"] < 0.5 < big["ci_high"] < 0.6
    with pytest.raises(ValueError):
        paired_bootstrap(a, a[:3])


def test_pair_terms_equal_the_separate_functions():
    rng = np.random.default_rng(2)
    ref, new, toks = rng.normal(size=(6, 11)), rng.normal(size=(6, 11)), rng.integers(0, 11, size=6)
    t = pair_terms(ref, new, toks)
    assert t["nll"] == pytest.approx(token_nll(new, toks).sum())
    assert t["ref_nll"] == pytest.approx(token_nll(ref, toks).sum())
    assert t["kl"] == pytest.approx(kl_per_position(ref[:-1], new[:-1]))
    assert (t["top1"] == new[:-1].argmax(-1)).all()
