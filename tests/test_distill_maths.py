"""Loss maths on hand-made tensors: values checked against direct formulas."""

import math

import pytest
import torch

from edgeprune.methods.distill import (IGNORE, kd_loss, kd_loss_topk, lm_loss, mixed_loss, share_regained)


def test_lm_loss_is_shifted_cross_entropy_over_labelled_positions():
    # Position 0 predicts token 1, position 1 predicts token 2; token 2 is IGNORE so only one term counts.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 1, IGNORE]])
    expected = -math.log(math.exp(0.0) / (math.exp(2.0) + 2))  # p(token 1 | position 0)
    assert float(lm_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_zero_for_identical_and_matches_formula():
    t = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert float(kd_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[[3.0, 2.0, 1.0]]])
    T = 2.0
    p = torch.softmax(t / T, -1)[0, 0]
    q = torch.softmax(s / T, -1)[0, 0]
    expected = T * T * float((p * (p.log() - q.log())).sum())
    assert float(kd_loss(s, t, T)) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_mask_excludes_positions():
    t = torch.tensor([[[1.0, 0.0], [5.0, 0.0]]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])  # only position 1 disagrees
    assert float(kd_loss(s, t, 1.0, torch.tensor([[True, False]]))) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_loss(s, t, 1.0, torch.tensor([[False, True]]))) > 4.0


def test_topk_with_full_vocab_equals_full_kd_and_truncation_differs():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    top = t.topk(7, dim=-1)
    full = kd_loss(s, t, 1.5)
    assert float(kd_loss_topk(s, top.values, top.indices, 1.5)) == pytest.approx(float(full), rel=1e-5)
    top2 = t.topk(2, dim=-1)
    assert float(kd_loss_topk(s, top2.values, top2.indices, 1.5)) != pytest.approx(float(full), rel=1e-3)


def test_mixed_loss_weights_and_missing_terms():
    ce, kd = torch.tensor(2.0), torch.tensor(4.0)
    assert float(mixed_loss(ce, kd, 0.25)) == pytest.approx(0.25 * 4 + 0.75 * 2)
    assert float(mixed_loss(ce, None, 0.25)) == 2.0
    assert float(mixed_loss(None, kd, 0.25)) == 4.0


def test_share_regained():
    assert share_regained(10.0, 20.0, 10.0) == pytest.approx(1.0)
    assert share_regained(10.0, 20.0, 20.0) == pytest.approx(0.0)
    assert share_regained(10.0, 40.0, 20.0) == pytest.approx(0.5)  # halfway in log space
    with pytest.raises(ValueError):
        share_regained(10.0, 9.0, 9.0)
