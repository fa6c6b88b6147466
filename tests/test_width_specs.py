"""Contract tests over every registered width method, and a width method added in one file.

A width method is a spec carrying its facts (structures, importance, criterion, default) and its
behaviour (cut, decide, optionally its own scorer). The prune command and the planner's width step
ask the spec; a method registered under a new name is used by both with no other edit."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from edgeprune import registry
from edgeprune.config.recipe import Calibration, Recipe
from edgeprune.methods.width import STRUCTURES, WidthCut, WidthMethod, WidthShape, default_methods
from edgeprune.planner.methods import candidate_allowed, resolve_methods, width_structures
from edgeprune.store import StepStore
from edgeprune.stages.width import IMPORTANCE, prune_width
from edgeprune.stages.width_step import prune_width_step
from edgeprune.toolchain.hf import load_model

WIDTH = registry.names("width")
TINY = WidthShape(n_layers=4, n_heads=4, n_kv=2, head_dim=32, inter=256, hidden=128)  # conftest.TINY


def test_the_builtin_width_methods_are_registered():
    assert {"heads", "ffn", "taylor"} <= set(WIDTH)


def test_each_structure_has_one_default_method_in_structure_order():
    assert [m.structures for m in default_methods()] == [(s,) for s in STRUCTURES]
    specs = [registry.get("width", n) for n in WIDTH]
    for s in STRUCTURES:
        assert sum(1 for m in specs if m.default and s in m.structures) == 1


@pytest.mark.parametrize("name", WIDTH)
def test_width_spec_is_complete(name):
    m = registry.get("width", name)
    assert isinstance(m, WidthMethod) and m.name == name and m.summary and m.criterion
    assert m.structures and set(m.structures) <= set(STRUCTURES)
    assert m.importance in IMPORTANCE
    assert callable(m.cut) and callable(m.decide) and (m.score is None or callable(m.score))
    assert not m.default or len(m.structures) == 1, f"{name}: a default method covers one structure"


@pytest.mark.parametrize("name", WIDTH)
def test_cut_touches_only_the_methods_structures(name):
    """Mutant caught: a heads-only method whose cut also shrinks the FFN (the CLI halved the FFN)."""
    m = registry.get("width", name)
    cut = m.cut(TINY, 0.5, "groups")
    assert cut == cut.only(m.structures)
    assert cut.heads is not None or cut.ffn_keep is not None, f"{name} cuts nothing of half the tiny model"


@pytest.mark.parametrize("name", WIDTH)
def test_planner_structures_and_candidates_follow_the_spec(name):
    m = registry.get("width", name)
    assert width_structures(name) == tuple(s for s in STRUCTURES if s in m.structures)
    keep = {"heads_keep": [0.5]} if "heads" in m.structures else {"ffn_keep": [0.5]}
    r = resolve_methods(Recipe.model_validate({"width": {"method": name}, "search": keep}))
    assert candidate_allowed(r, 2 if "heads" in m.structures else None, 128 if "ffn" in m.structures else None)
    for s in set(STRUCTURES) - set(m.structures):
        assert not candidate_allowed(r, 2 if s == "heads" else None, 128 if s == "ffn" else None)


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 2000, (4, 16), generator=torch.Generator().manual_seed(1))


def _shape(cfg) -> tuple[int, int, int]:
    return cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size


@pytest.mark.parametrize("name", WIDTH)
def test_prune_makes_exactly_the_cut(name, tiny_llama, windows):
    """The model after `prune --method NAME --fraction 0.5` has the shape the method's cut announced,
    and the structures it does not cover are untouched."""
    m = registry.get("width", name)
    model, _ = load_model(tiny_llama)
    cut = m.cut(WidthShape.of(model.config), 0.5, "groups")
    heads, kv = cut.kept_heads(TINY)
    info = prune_width(model, windows, name, 0.5)
    assert _shape(model.config) == (heads, kv, cut.ffn_keep or TINY.inter)
    assert info["method"] == name and info["importance"] == m.importance
    assert (info["decision"]["heads"] is None) == (cut.heads is None)
    assert (info["decision"]["ffn"] is None) == (cut.ffn_keep is None)


@pytest.mark.parametrize("name", WIDTH)
def test_planner_width_step_makes_the_methods_part_of_the_priced_shape(name, tiny_llama, small_calib, tmp_path):
    m = registry.get("width", name)
    heads = (2, 1) if "heads" in m.structures else (None, None)
    ffn = 128 if "ffn" in m.structures else None
    out, _ = prune_width_step(StepStore(tmp_path / "s"), tiny_llama, "tiny", heads=heads[0], kv_heads=heads[1],
                              ffn=ffn, calib=Calibration(path=small_calib, samples=4, seq_len=32), method=name)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (
        heads[0] or 4, heads[1] or 2, ffn or 256)
    step = json.loads((out / "step.json").read_text())
    assert step["meta"]["method"] == name and step["meta"][name]["method"] == name
    assert ("method" in step["key"]) == (not m.default)


# ---- a width method added in one file ---------------------------------------------------------

PLUGIN = '''
"""Heads by o_proj column norm: no calibration pass, a scorer of its own."""
import torch

from edgeprune.methods.width import WidthMethod, register_width, whole_unit_heads_cut


def o_proj_norm_scores(model, windows):
    rows = []
    for layer in model.model.layers:
        w = layer.self_attn.o_proj.weight.double()
        n_heads = model.config.num_attention_heads
        rows.append((w.reshape(w.shape[0], n_heads, -1) ** 2).sum(dim=(0, 2)))
    return {"heads": torch.stack(rows)}


HEADS_WNORM = register_width(WidthMethod(
    "heads-wnorm", "heads by their o_proj columns' norm", ("heads",), "activation", "o_proj column norm",
    whole_unit_heads_cut, score=o_proj_norm_scores))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Registers heads-wnorm from a file outside the package; the registry is restored afterwards
    (every built-in kind loaded first, so none registers into the copy and is lost with it)."""
    registry.kinds()
    monkeypatch.setattr(registry, "_REGISTRY", {k: dict(v) for k, v in registry._REGISTRY.items()})
    monkeypatch.setattr(registry, "_META", {k: dict(v) for k, v in registry._META.items()})
    path = tmp_path / "heads_wnorm.py"
    path.write_text(textwrap.dedent(PLUGIN))
    spec = importlib.util.spec_from_file_location("heads_wnorm", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "heads_wnorm", module)
    spec.loader.exec_module(module)
    return module


def _kept_groups(model, plugin) -> list[list[int]]:
    """Per layer, the KV group heads-wnorm keeps when one of two goes (its own scores)."""
    scores = plugin.o_proj_norm_scores(model, None)["heads"]
    return [[int(row.reshape(2, 2).sum(1).argmax())] for row in scores]


def test_a_width_method_in_one_file_is_used_by_prune(plugin, tiny_llama, small_calib, tmp_path):
    """Mutant caught: the prune path falling back to its own per-name cases (heads untouched and the
    FFN halved, or the built-in `heads` scores used instead of the method's)."""
    from edgeprune.cli import main

    assert "heads-wnorm" in registry.names("width")
    model, _ = load_model(tiny_llama)
    expected = _kept_groups(model, plugin)
    builtin = prune_width(load_model(tiny_llama)[0], torch.randint(0, 2000, (4, 16)), "heads", 0.5)
    assert [[h // 2 for h in kept][::2] for kept in builtin["decision"]["heads"]] != expected, \
        "pick a plugin whose choice differs from the built-in heads, or the test cannot tell them apart"
    out = tmp_path / "pruned"
    res = CliRunner().invoke(main, ["prune", "--model", str(tiny_llama), "--method", "heads-wnorm", "--fraction",
                                    "0.5", "--calib", str(small_calib), "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (2, 1, 256)
    record = json.loads((out / "edgeprune-pruned.json").read_text())
    assert record["method"] == "heads-wnorm" and "mlp_channels" not in record["removed"]
    assert [[1 - g[0]] for g in record["removed"]["kv_groups"]] == expected


def test_a_width_method_in_one_file_is_used_by_the_planner(plugin, tiny_llama, small_calib, tmp_path):
    """Mutant caught: the planner's width step running the built-in `heads` for any name but taylor."""
    from edgeprune.cli import main

    res = CliRunner().invoke(main, ["plan", "--model", str(tiny_llama), "--runner", "fake", "--calib",
                                    str(small_calib), "--dry-run", "--out", str(tmp_path / "o"), "--width-method",
                                    "heads-wnorm", "--heads-keep", "1.0,0.5", "--no-stream"])
    assert res.exit_code == 0, res.output
    assert "width by heads-wnorm (heads, activation importance)" in res.output
    bad = CliRunner().invoke(main, ["plan", "--model", str(tiny_llama), "--dry-run", "--width-method",
                                    "heads-wnorm", "--ffn-keep", "0.5"])
    assert bad.exit_code == 2 and "does not shrink ffn" in bad.output

    model, _ = load_model(tiny_llama)
    out, _ = prune_width_step(StepStore(tmp_path / "s"), tiny_llama, "tiny", heads=2, kv_heads=1, ffn=None,
                              calib=Calibration(path=small_calib, samples=4, seq_len=32), method="heads-wnorm")
    step = json.loads((out / "step.json").read_text())
    assert step["key"]["method"] == "heads-wnorm" and step["meta"]["heads-wnorm"]["cut"] == {
        "heads": ["groups", 1], "ffn_keep": None}
    pruned, _ = load_model(out)
    for layer, (kept,), old in zip(pruned.model.layers, _kept_groups(model, plugin), model.model.layers):
        cols = slice(kept * 64, kept * 64 + 64)  # KV group g = query heads 2g, 2g + 1 of head_dim 32
        torch.testing.assert_close(layer.self_attn.o_proj.weight, old.self_attn.o_proj.weight[:, cols])
        assert layer.mlp.down_proj.weight.shape == old.mlp.down_proj.weight.shape


def test_cut_only_keeps_the_covered_parts():
    cut = WidthCut(heads=("groups", 1), ffn_keep=128)
    assert cut.only(("heads",)) == WidthCut(heads=("groups", 1))
    assert cut.only(("ffn",)) == WidthCut(ffn_keep=128)
    assert cut.kept_heads(TINY) == (2, 1) and WidthCut(heads=("per-group", 1)).kept_heads(TINY) == (2, 2)
