"""Angular, attention-norm and ppl-greedy: maths on hand-made tensors, plumbing on the tiny model."""

import math

import pytest
import torch

from edgeprune import registry
from edgeprune.errors import ConfigError
from edgeprune.methods.angular import ANGULAR, angular_matrix, best_block
from edgeprune.methods.attention_norm import ATTENTION_NORM, attention_scores
from edgeprune.methods.ppl_greedy import greedy_order, select_greedy
from edgeprune.streaming.layerwise import GreedyOracle, layer0_inputs, lm_nll, run_layer
from edgeprune.stages.score import depth_stats
from edgeprune.surgery.layers import remove_layers
from edgeprune.toolchain.hf import load_model


def _unit(deg: float) -> torch.Tensor:
    r = math.radians(deg)
    return torch.tensor([[math.cos(r), math.sin(r)]])


def test_angular_matrix_on_hand_made_rotations():
    # h_l at angles 0, 90, 100, 110, 200 degrees: layers 1 and 2 rotate by 10 degrees each
    hiddens = [_unit(a) for a in (0, 90, 100, 110, 200)]
    d = angular_matrix(hiddens)
    assert d[0, 1].item() == pytest.approx(0.5)
    assert d[1, 3].item() == pytest.approx(20 / 180)
    assert d[3, 1].item() == d[1, 3].item() and d[2, 2].item() == 0.0
    assert best_block(d, 1) == [1]       # d[1,2] = d[2,3] = 10 deg: tie goes to the lower start
    assert best_block(d, 2) == [1, 2]    # the block 1..2 moves the state by 20 degrees only
    assert ANGULAR.layer_scores(d) == pytest.approx([0.5, 10 / 180, 10 / 180, 0.5])
    with pytest.raises(ConfigError, match="block of 4"):
        best_block(d, 4)


def test_attention_scores_zero_for_silent_attention_and_relative_norm():
    h = torch.tensor([[3.0, 4.0]])
    silent = attention_scores(h, torch.zeros_like(h))
    assert silent.tolist() == pytest.approx([0.0, 0.0])
    orth = attention_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 2.0]]))  # h + a = (0, 2)
    assert orth.tolist() == pytest.approx([1.0, math.sqrt(5)])
    stats = torch.tensor([[0.3, 1.0], [0.1, 9.0], [0.2, 0.1]])
    assert ATTENTION_NORM.select(stats, 2) == [1, 2]


def test_greedy_order_follows_the_oracle():
    # loss = 1 + sum of per-layer costs, plus a penalty when layers 1 and 2 are both removed
    cost = [0.5, 0.1, 0.2, 0.3]

    def oracle(removed, j):
        gone = removed | {j}
        return 1 + sum(cost[i] for i in gone) + (5.0 if {1, 2} <= gone else 0.0)

    stats = greedy_order(oracle, 4, 3)
    assert stats[:, 0].tolist() == pytest.approx([1.5, 1.1, 1.2, 1.3])
    assert stats[:3, 1].tolist() == [1, 3, 0]  # 2 would be next-cheapest alone but collides with 1
    assert stats[3, 1].item() == -1
    assert select_greedy(stats, 2) == [1, 3]
    with pytest.raises(ConfigError, match="at most 3"):
        select_greedy(stats, 4)


def test_layerwise_run_matches_full_forward(tiny_llama):
    model, _ = load_model(tiny_llama)
    ids = torch.randint(0, 1000, (2, 16))
    h, kw = layer0_inputs(model, ids)
    for layer in model.model.layers:
        h = run_layer(layer, h, kw)
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert lm_nll(model, h, ids) == pytest.approx(ref.item(), rel=1e-5)


def test_greedy_oracle_equals_a_really_pruned_model(tiny_llama):
    model, _ = load_model(tiny_llama)
    ids = torch.randint(0, 1000, (2, 16))
    oracle = GreedyOracle(model, ids)
    got = oracle(frozenset({0}), 2)
    pruned, _ = load_model(tiny_llama)
    remove_layers(pruned, [0, 2])
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(pruned(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert got == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("name,shape", [("angular", (5, 5)), ("attention-norm", (4, 2)), ("ppl-greedy", (4, 3))])
def test_every_depth_method_scores_the_tiny_model(tiny_llama, name, shape):
    model, _ = load_model(tiny_llama)
    windows = torch.randint(0, 1000, (3, 12))
    stats = depth_stats(model, windows, name, batch_size=2)
    method = registry.get("depth", name)
    assert tuple(stats.shape) == shape
    picked = method.select(stats, 2)
    assert len(picked) == 2 and all(0 <= i < 4 for i in picked)
    assert len(method.layer_scores(stats)) == 4


def test_depth_method_typo_answers_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'angular'"):
        registry.get("depth", "angualr")


@pytest.mark.parametrize("name", ["block-influence", "angular", "attention-norm"])
def test_streamed_scoring_equals_in_memory(tiny_llama, name):
    from edgeprune.streaming.stream import streamed_depth_stats

    model, _ = load_model(tiny_llama)
    windows = torch.randint(0, 1000, (3, 12))
    ref = depth_stats(model, windows, name, batch_size=2)
    got = streamed_depth_stats(tiny_llama, windows, name, batch_size=2)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_ppl_greedy_cannot_stream(tiny_llama):
    from edgeprune.streaming.stream import streamed_depth_stats

    with pytest.raises(ConfigError, match="cannot be streamed"):
        streamed_depth_stats(tiny_llama, torch.randint(0, 1000, (1, 8)), "ppl-greedy")
