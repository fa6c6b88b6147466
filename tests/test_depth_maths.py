import math

import pytest
import torch

from edgeprune.methods.depth import BLOCK_INFLUENCE, angular_distance, block_influence, cosine, lowest_k


def test_bi_of_identical_states_is_zero():
    h = torch.randn(10, 16)
    assert block_influence(h, h).item() == pytest.approx(0.0, abs=1e-12)


def test_bi_of_orthogonal_states_is_one():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [5.0, 0.0]])
    assert block_influence(a, b).item() == pytest.approx(1.0)


def test_bi_of_opposite_states_is_two_and_scale_invariant():
    a = torch.randn(4, 8)
    assert block_influence(a, -3.0 * a).item() == pytest.approx(2.0)
    assert block_influence(a, 7.0 * a).item() == pytest.approx(0.0, abs=1e-12)


def test_bi_averages_over_tokens():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # token 0 unchanged (0), token 1 orthogonal (1)
    assert block_influence(a, b).item() == pytest.approx(0.5)


def test_angular_distance_of_45_degrees():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0]])
    assert angular_distance(a, b).item() == pytest.approx(0.25)
    assert cosine(a, b).item() == pytest.approx(1 / math.sqrt(2))


def test_bi_stats_per_layer_and_selection():
    h0 = torch.tensor([[1.0, 0.0]])
    h1 = torch.tensor([[1.0, 0.0]])       # layer 0 changes nothing -> BI 0
    h2 = torch.tensor([[0.0, 1.0]])       # layer 1 rotates 90 degrees -> BI 1
    h3 = torch.tensor([[0.1, 1.0]])       # layer 2 small change
    stats = BLOCK_INFLUENCE.stats([h0, h1, h2, h3])
    assert stats[0].item() == pytest.approx(0.0)
    assert stats[1].item() == pytest.approx(1.0)
    assert 0 < stats[2].item() < 0.01
    assert BLOCK_INFLUENCE.select(stats, 2) == [0, 2]


def test_lowest_k_breaks_ties_by_index():
    assert lowest_k(torch.tensor([0.5, 0.1, 0.1, 0.9]), 1) == [1]
