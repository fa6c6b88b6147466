"""Magnitude, Wanda and SparseGPT: masks on hand-made tensors, reconstruction on a random layer."""

import pytest
import torch

from edgeprune import registry
from edgeprune.errors import ConfigError
from edgeprune.methods.sparsity import (magnitude_prune, nm_keep, parse_nm, reconstruction_error, sparsegpt_prune,
                                        unstructured_keep, wanda_prune)
from edgeprune.stages.sparsify import sparsify
from edgeprune.toolchain.hf import load_model


def test_wanda_keeps_weights_with_large_inputs():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                      [4.0, 3.0, 2.0, 1.0]])
    x_sq = torch.tensor([100.0, 1.0, 1.0, 0.01])  # scores row 0: 10, 2, 3, 0.4; row 1: 40, 3, 2, 0.1
    out = wanda_prune(w, x_sq, 0.5, None)
    assert out.tolist() == [[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]
    # magnitude alone would have kept the 4s and 3s instead
    assert magnitude_prune(w, 0.5, None).tolist() == [[0.0, 0.0, 3.0, 4.0], [4.0, 3.0, 0.0, 0.0]]


def test_unstructured_keep_per_row_and_per_matrix():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert unstructured_keep(s, 0.5, per_row=True).tolist() == [[False, True], [False, True]]
    assert unstructured_keep(s, 0.5, per_row=False).tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_masks_have_exactly_n_nonzeros_per_group(nm):
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    n, m = nm
    for out in (magnitude_prune(w, 0.0, nm), wanda_prune(w, torch.rand(64), 0.0, nm),
                sparsegpt_prune(w, _hessian(torch.randn(256, 64)), 0.0, nm, blocksize=32)):
        nonzero = (out != 0).reshape(16, 64 // m, m).sum(-1)
        assert torch.all(nonzero == n)


def test_nm_keep_picks_the_largest_in_each_group():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.2, 4.0, 3.0, 2.0, 1.0]])
    assert nm_keep(s, (2, 4)).int().tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return x.T @ x


def test_sparsegpt_reconstructs_a_random_layer_better_than_magnitude_and_wanda():
    torch.manual_seed(0)
    # correlated inputs with a few outlier channels, as in real activations
    mix = torch.randn(128, 128) / 128 ** 0.5
    scale = torch.where(torch.rand(128) < 0.05, 20.0, 1.0)
    x = (torch.randn(2048, 128) @ mix) * scale
    held_out = (torch.randn(2048, 128) @ mix) * scale  # same distribution, tokens not used for the Hessian
    w = torch.randn(64, 128)
    h = _hessian(x)
    for nm in (None, (2, 4)):
        pruned = {"magnitude": magnitude_prune(w, 0.5, nm), "wanda": wanda_prune(w, (x * x).sum(0), 0.5, nm),
                  "sparsegpt": sparsegpt_prune(w, h, 0.5, nm, blocksize=32)}
        assert (pruned["sparsegpt"] == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
        for data in (x, held_out):
            err = {k: reconstruction_error(w, v, data) for k, v in pruned.items()}
            # the OBS update must generalise beyond its calibration tokens, not only fit them
            assert err["sparsegpt"] < 0.8 * err["wanda"] < 0.8 * err["magnitude"], (nm, err)


def test_parse_nm_and_bad_patterns():
    assert parse_nm("2:4") == (2, 4)
    with pytest.raises(ConfigError, match="0 < N < M"):
        parse_nm("4:2")
    with pytest.raises(ConfigError, match="not two integers"):
        parse_nm("half")
    with pytest.raises(ConfigError, match="did you mean 'wanda'"):
        registry.get("sparsity", "wamda")


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
def test_sparsify_the_tiny_model(tiny_llama, name):
    model, _ = load_model(tiny_llama)
    ids = torch.randint(0, 1000, (4, 16))
    rep = sparsify(model, ids, name, 0.5, batch_size=2)
    assert rep["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert torch.isfinite(model(ids).logits).all()
    rep = sparsify(model, ids, name, nm=(2, 4))  # a second pass onto 2:4 keeps the pattern exact
    q = model.model.layers[0].self_attn.q_proj.weight
    assert torch.all((q != 0).reshape(q.shape[0], -1, 4).sum(-1) <= 2)
